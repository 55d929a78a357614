"""Command-line tools of the STEM simulation: outputs and clean failures on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hagg_tf.model.parameters import TIO2, WO3
from hagg_tf.stem import HaadfTable, HaadfTables, read_stem_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def table_file(tmp_path):
    thickness = np.linspace(0.0, 80.0, 81)
    tables = HaadfTables([
        HaadfTable("WO3", WO3, "gamma", "a", thickness, 0.004 * thickness),
        HaadfTable("WO3", WO3, "delta", "a", thickness, 0.0045 * thickness),
        HaadfTable("TiO2", TIO2, "rutile", "a", thickness, 0.0004 * thickness),
    ], provenance={"made_by": "test"})
    path = tmp_path / "tables.csv"
    path.write_text(tables.to_text())
    return path


def _run(tool, *args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_simulate_from_theta_writes_png_with_metadata(tmp_path, table_file):
    out = tmp_path / "images"
    result = _run("simulate_stem.py", "--theta=1.8,0.5,2,3", "--count=2", "--seed=4",
                  "--image_size=64", "--pixel_size_nm=4", f"--tables={table_file}",
                  f"--output={out}", "--nosave_aggregates")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 2
    counts, metadata = read_stem_png(out / "aggregate_000001.png")
    assert counts.shape == (64, 64) and counts.dtype == np.uint16 and counts.max() > 0
    assert metadata["seed"] == 4 and metadata["index"] == 1
    assert metadata["pixel_size_nm"] == 4.0 and metadata["aggregate"]["params"]["mixing_ratio"] == 0.5
    assert metadata["tables"]["source"] == str(table_file)


def test_simulate_same_images_with_two_workers(tmp_path, table_file):
    common = ["--theta=2.0,0.3,1,2", "--count=3", "--seed=8", "--image_size=48",
              "--pixel_size_nm=5", f"--tables={table_file}", "--nosave_aggregates"]
    one = _run("simulate_stem.py", *common, f"--output={tmp_path / 'one'}")
    two = _run("simulate_stem.py", *common, f"--output={tmp_path / 'two'}", "--workers=2")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    for name in ("aggregate_000000.png", "aggregate_000002.png"):
        a, _ = read_stem_png(tmp_path / "one" / name)
        b, _ = read_stem_png(tmp_path / "two" / name)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("args, message", [
    (["--theta=1.8,0.5,2,3", "--tables=/nonexistent/tables.csv"], "not found"),
    (["--theta=1.8,0.5,2"], "four values"),
    (["--theta=3.5,0.5,2,3"], "fractal_dimension"),
    (["--aggregates=/nonexistent/a.npz"], "not found"),
    ([], "exactly one of"),
])
def test_simulate_bad_input_fails_cleanly(tmp_path, table_file, args, message):
    if not any(arg.startswith("--tables") for arg in args):
        args = args + [f"--tables={table_file}"]
    result = _run("simulate_stem.py", *args, f"--output={tmp_path}")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_unknown_material_in_table_fails_cleanly(tmp_path, table_file):
    bad = tmp_path / "bad.csv"
    bad.write_text(table_file.read_text().replace("TiO2,rutile", "ZrO2,rutile", 1))
    result = _run("simulate_stem.py", "--theta=1.8,0.5,2,3", f"--tables={bad}",
                  f"--output={tmp_path}")
    assert result.returncode == 2
    assert "unknown material 'ZrO2'" in result.stderr and "bad.csv" in result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_wrong_aggregate_file_fails_cleanly(tmp_path, table_file):
    pytest.importorskip("hagg_tf.model.io")
    wrong = tmp_path / "not_an_aggregate.npz"
    wrong.write_bytes(b"this is not a zip archive")
    result = _run("simulate_stem.py", f"--aggregates={wrong}", f"--tables={table_file}",
                  f"--output={tmp_path}")
    assert result.returncode == 2
    assert "not_an_aggregate.npz" in result.stderr and "Traceback" not in result.stderr


def test_simulate_from_aggregate_files(tmp_path, table_file):
    model_io = pytest.importorskip("hagg_tf.model.io")
    from hagg_tf.model.generator import sample_aggregate
    from hagg_tf.model.parameters import ModelParameters
    aggregates = [sample_aggregate(ModelParameters(1.9, 0.4, 2, 2), 5, index) for index in range(3)]
    (tmp_path / "in").mkdir()
    model_io.save_aggregate(tmp_path / "in" / "single.npz", aggregates[0])
    model_io.save_aggregates(tmp_path / "in" / "part.npz", aggregates[1:])
    result = _run("simulate_stem.py", f"--aggregates={tmp_path / 'in'}", f"--tables={table_file}",
                  "--image_size=64", "--pixel_size_nm=5", f"--output={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["images"] == 3
    counts, metadata = read_stem_png(tmp_path / "out" / "part_0001.png")
    # A generated aggregate keeps its own (seed, index) for the image.
    assert metadata["seed"] == 5 and metadata["index"] == 2 and counts.max() > 0
    assert (tmp_path / "out" / "single.png").exists()


def test_plot_tables_and_fig3(tmp_path, table_file):
    pytest.importorskip("matplotlib")
    result = _run("plot_stem.py", "--figure=tables", f"--tables={table_file}", f"--output={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stem_tables.png").stat().st_size > 10_000
    result = _run("plot_stem.py", "--figure=fig3", "--theta=1.8,0.5,2,2", "--image_size=128",
                  "--pixel_size_nm=4", f"--tables={table_file}", f"--output={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stem_fig3.png").stat().st_size > 10_000


def test_make_tables_rejects_unknown_phase(tmp_path):
    pytest.importorskip("abtem")
    result = _run("make_haadf_tables.py", "--phases=WO3/epsilon", f"--work_dir={tmp_path}")
    assert result.returncode != 0 and "unknown phase" in result.stderr
    assert "Traceback" not in result.stderr
