"""hagg-characterize: bad input fails with one clear line; the shipped example runs end to end."""
import json
import pathlib
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "characterize.py"
EXAMPLE = REPO / "examples" / "sample_a"
SHIPPED = REPO / "saved_models" / "characterize"


def run_tool(*args, cwd=None):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, timeout=300)


def assert_clean_failure(result, match):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]


def test_bad_input_gets_one_error_line_and_exit_status_2(tmp_path):
    assert_clean_failure(run_tool(), "no images given")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert_clean_failure(run_tool(empty), "no image files")
    colour = tmp_path / "colour"
    colour.mkdir()
    iio.imwrite(colour / "a.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                    dtype=np.uint8))
    assert_clean_failure(run_tool(colour, "--pixel_size_nm=1.2"), "colour image")
    nan = tmp_path / "nan.tif"
    pixels = np.ones((64, 64), np.float32)
    pixels[0, 0] = np.nan
    iio.imwrite(nan, pixels)
    assert_clean_failure(run_tool(nan, "--pixel_size_nm=1.2"), "NaN")
    assert_clean_failure(run_tool(EXAMPLE, "--shadows=0"), "--shadows")


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="no shipped models in saved_models/")
def test_too_few_images_and_missing_models(tmp_path):
    few = sorted(EXAMPLE.glob("*.png"))[:3]
    assert_clean_failure(run_tool(*few), "need at least nu")
    assert_clean_failure(run_tool(EXAMPLE, f"--models={tmp_path}"), "no characterize SavedModel")


def test_shipped_example_runs_end_to_end(tmp_path):
    # No skip: saved_models/characterize/ is part of the repository.
    output = tmp_path / "out"
    result = run_tool(EXAMPLE, f"--output={output}", "--shadows=6", "--nofigure")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "θ_Df =" in result.stdout and "Z_hetero" in result.stdout
    report = json.loads((output / "report.json").read_text())
    theta = report["theta_hat"]
    assert len(theta["fractal_dimension_per_image"]) == 12
    assert 1.3 < theta["fractal_dimension"] < 2.7 and 0 <= theta["mixing_ratio"] <= 1
    assert report["simulated_theta"] == {"fractal_dimension": 1.8, "mixing_ratio": 0.5,
                                         "wo3_cluster_size": 3, "tio2_cluster_size": 2}
    assert report["shadows"]["count"] == 6
    # θ̂ with its bootstrap uncertainty (200 resamples by default), the shadows drawn over it
    uncertainty = report["uncertainty"]["parameters"]["fractal_dimension"]
    assert report["uncertainty"]["resamples"] == 200 and 0 < uncertainty["sd"] < 0.2
    assert uncertainty["interval_95"][0] <= theta["fractal_dimension"] <= \
        uncertainty["interval_95"][1]
    assert report["shadows"]["theta_from"] == "bootstrap"
    assert f"θ_Df = {theta['fractal_dimension']:.3f} ± " in result.stdout
    assert set(report["shadows"]["descriptors"]) >= {"S_TiO2", "Z_hetero", "Z_total"}
    assert (output / "shadows.npz").is_file() and (output / "shadows.xyz").is_file()
    # The shipped networks are trained (saved_models/characterize/3): an untrained or placeholder
    # export must fail here rather than skip the accuracy check.
    card = report["model"]["model_card"]
    assert card.get("status") == "trained", card
    assert "PLACEHOLDER" not in result.stdout
    # They recover the known θ within the evaluation's typical error: measured on E
    # (saved_models/README.md) θ̂_Df MAE 0.030, θ̂_ρ MAE 0.076, θ̂_0 within ±1 in 85 % of groups.
    # (θ̂_1 is not asserted: CNN^1 is close to a constant.)
    assert abs(theta["fractal_dimension"] - 1.8) <= 3 * 0.030
    assert abs(theta["mixing_ratio"] - 0.5) <= 2 * 0.076
    assert abs(theta["wo3_cluster_size"] - 3) <= 1
