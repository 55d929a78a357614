"""hagg-plot-aggregates: Figs. 2 and 4 as PNG files; bad input fails with one error line."""
import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from hagg_tf.model import io
from hagg_tf.model.generator import sample_aggregate
from hagg_tf.model.parameters import ModelParameters

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_plot(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hagg_tf.cli.plot_aggregates", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def read_png(path):
    """The decoded pixels of a PNG file, after checking its signature and size."""
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE, path
    pixels = iio.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert np.ptp(pixels[..., :3]) > 0  # not a blank canvas
    return pixels


def test_fig2_from_fresh_draws_and_from_an_aggregate_file(tmp_path):
    output = tmp_path / "fresh"
    result = run_plot("--figure=fig2", "--count=2", f"--output={output}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in output.iterdir()) == ["fig2_aggregates.png"]
    assert "fig2_aggregates.png" in result.stdout
    read_png(output / "fig2_aggregates.png")

    # From a file of five aggregates, --count picks how many are drawn: three fill one row of
    # the three-column grid, four need a second row.
    aggregates = [sample_aggregate(ModelParameters(1.8, 0.5, 2, 3), seed=1, index=index)
                  for index in range(5)]
    source = io.save_aggregates(tmp_path / "five.npz", aggregates)
    heights = {}
    for count in (3, 4):
        output = tmp_path / f"count{count}"
        result = run_plot("--figure=fig2", f"--input={source}", f"--count={count}",
                          f"--output={output}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        heights[count] = read_png(output / "fig2_aggregates.png").shape[0]
    assert heights[4] > 1.5 * heights[3]


def test_fig4_writes_the_figure_and_its_table(tmp_path):
    output = tmp_path / "fig4"
    result = run_plot("--figure=fig4", "--per_value=2", "--workers=1", "--seed=3",
                      f"--output={output}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in output.iterdir()) == ["fig4_descriptors.png",
                                                              "fig4_table.json"]
    read_png(output / "fig4_descriptors.png")
    table = json.loads((output / "fig4_table.json").read_text())
    # Table 2's preset values: θ_Df 1.5, 1.6, …, 2.5 and θ_ρ 0.1, 0.2, …, 0.9, two draws each.
    presets = {name: [row["preset"] for row in rows] for name, rows in table.items()}
    np.testing.assert_allclose(presets["fractal_dimension"], np.arange(15, 26) / 10)
    np.testing.assert_allclose(presets["mixing_ratio"], np.arange(1, 10) / 10)
    for rows in table.values():
        assert all(row["count"] == 2 for row in rows)
    for row in table["mixing_ratio"]:
        assert 0.0 <= row["mean"] <= 1.0  # ρ(A) is a fraction


@pytest.mark.parametrize("args, match", [
    (["--figure=fig2", "--input=missing.npz"], "missing.npz"),
    (["--figure=fig2", "--input=junk.npz"], "junk.npz"),
    (["--count=0"], "--count"),
    (["--figure=fig3"], "--figure"),
    (["stray"], "stray"),
])
def test_bad_input_gets_one_error_line_and_exit_status_2(tmp_path, args, match):
    (tmp_path / "junk.npz").write_text("not an aggregate file")
    output = tmp_path / "out"
    result = run_plot(*args, f"--output={output}", cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]
    assert not (output / "fig2_aggregates.png").exists()
