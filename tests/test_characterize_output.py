"""hagg-characterize's output: messages about the images, one plain line per quantity, the
figure, and digital shadows that are streamed, capped and shown with progress."""
import json
import pathlib
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from hagg_tf import ModelParameters, sample_aggregate
from hagg_tf.estimation import InputError, read_stem_image
from hagg_tf.stem import render_stem

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "characterize.py"
EXAMPLE = REPO / "examples" / "sample_a"
SHIPPED = REPO / "saved_models" / "characterize"
PARAMS = ModelParameters(1.8, 0.5, 3, 2)


def run_tool(*args, timeout=300):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)




@pytest.fixture(scope="module")
def intensity():
    """A simulated image as fractions of the beam (what a float TIFF in [0, 1] holds)."""
    aggregate = sample_aggregate(PARAMS, seed=4, index=0)
    image = render_stem(aggregate, seed=4, index=0, image_size=64, pixel_size_nm=6.4)
    return image.counts / image.metadata["electrons_per_pixel"]


# ------------------------------------------------------------------------- point 5: images

def test_float_and_8_bit_images_are_refused_alike_without_electrons_per_pixel(
        one_error_line, tmp_path,
                                                                              intensity):
    float_tif = tmp_path / "fraction.tif"
    iio.imwrite(float_tif, intensity.astype(np.float32))
    assert 0.0 <= intensity.min() and intensity.max() <= 1.0
    grey_png = tmp_path / "grey.png"
    iio.imwrite(grey_png, np.round(intensity / intensity.max() * 255).astype(np.uint8))
    messages = {}
    for path in (float_tif, grey_png):
        # Neither a pixel size alone nor a dose makes grey values or intensities into counts.
        for dose in (None, 149.0):
            with pytest.raises(InputError) as error:
                read_stem_image(path, pixel_size_nm=6.4, dose=dose)
            message = str(error.value)
            assert message.startswith(f"{path}: ") and "--electrons_per_pixel" in message
            messages[path] = message[len(f"{path}: "):]
    # The same message for both, up to the pixel type it names.
    assert (messages[float_tif].replace("32-bit float", "KIND")
            == messages[grey_png].replace("8-bit", "KIND"))
    # With the beam's value both are accepted the same way.
    loaded, warnings = read_stem_image(float_tif, pixel_size_nm=6.4, electrons_per_pixel=1.0)
    assert loaded.dtype == "float32" and loaded.electrons_per_pixel == 1.0 and not warnings
    assert loaded.sources["electrons_per_pixel"] == "flag"
    # And the tool says so in one line before TensorFlow is loaded.
    line = one_error_line(run_tool(float_tif, "--pixel_size_nm=6.4", timeout=60))
    assert str(float_tif) in line and "--electrons_per_pixel" in line


def test_padding_and_cropping_leave_a_note_per_image():
    from hagg_tf.estimation import StemInput, prepare_images

    rng = np.random.default_rng(0)
    small = StemInput("small.tif", rng.poisson(5.0, (300, 300)).astype(np.float64), "uint16",
                      1.2, 1000.0, {})
    large = StemInput("large.tif", rng.poisson(5.0, (600, 560)).astype(np.float64), "uint16",
                      1.2, 1000.0, {})
    fitting = StemInput("fits.tif", rng.poisson(5.0, (512, 512)).astype(np.float64), "uint16",
                        1.2, 1000.0, {})
    prepared, _ = prepare_images([small, large, fitting], image_size=512, pixel_size_nm=1.2)
    assert prepared.notes == [
        "small.tif: 300×300 px, padded with its background level to the networks' 512×512 px "
        "input",
        "large.tif: 600×560 px, cropped around the aggregate to the networks' 512×512 px input"]


# ------------------------------------------------------------- point 8: what the numbers say

CARD = {"status": "trained",
        "accuracy": {"groups_of_nu": 648, "nu": 12,
                     "per_theta": {"fractal_dimension_mae": 0.0303,
                                   "mixing_ratio_mae_with_classifier": 0.0749,
                                   "wo3_cluster_size_exact": 0.369,
                                   "wo3_cluster_size_within_1": 0.856,
                                   "tio2_cluster_size_exact": 0.177,
                                   "tio2_cluster_size_within_1": 0.503}}}


def fake_result(num_images=7, shadows=5, card=CARD):
    """A CharacterizationResult without TensorFlow: made-up network outputs, real shadows."""
    from conftest import made_up_estimate

    from hagg_tf.estimation import CharacterizationResult, shadow_summary
    from hagg_tf.estimation.images import PreparedImages
    from hagg_tf.estimation.shadows import collect_shadows

    estimate = made_up_estimate(num_images)
    params = estimate.shadow_parameters()
    aggregates, descriptors, restarts = collect_shadows(params, shadows, seed=0, workers=1)
    counts = np.random.default_rng(2).poisson(3.0, (num_images, 64, 64)).astype(np.float32)
    images = [{"path": f"img-{k:02d}.tif", "pixel_size_nm": 1.2} for k in range(num_images)]
    return CharacterizationResult(
        estimate=estimate, shadow_parameters=params, shadows=aggregates,
        descriptors=descriptors, summary=shadow_summary(descriptors), images=images,
        prepared=PreparedImages(counts, np.full(num_images, 1000.0, np.float32),
                                [[] for _ in range(num_images)]),
        warnings=[], notes=[],
        model={"version_dir": "models/1", "metadata": {"pixel_size_nm": 1.2},
               "model_card": card},
        simulated_theta=None, seed=0, timings={}, shadow_count=len(descriptors),
        shadow_restarts=restarts)


def test_console_summary_has_one_plain_line_per_quantity_with_its_typical_error():
    from hagg_tf.estimation import DESCRIPTOR_QUANTITIES, THETA_QUANTITIES, format_summary

    result = fake_result()
    text = format_summary(result)
    values = dict(zip([quantity.symbol for quantity in THETA_QUANTITIES],
                      [f"{result.estimate.fractal_dimension:.3f}",
                       f"{result.estimate.mixing_ratio:.3f}", "3", "2"]))
    expected_errors = {"θ_Df": "typical error ±0.030", "θ_ρ": "typical error ±0.075",
                       "θ_0": "exact in 37 %, ±1 in 86 %", "θ_1": "exact in 18 %, ±1 in 50 %"}
    for quantity in THETA_QUANTITIES + DESCRIPTOR_QUANTITIES:
        lines = [line for line in text.splitlines()
                 if quantity.name in line and f" {quantity.symbol} " in line]
        assert len(lines) == 1, (quantity.symbol, text)
        line = lines[0]
        assert quantity.meaning in line
        if quantity.symbol in values:
            assert f"= {values[quantity.symbol]} " in line, line
            assert expected_errors[quantity.symbol] in line, line
        else:
            stats = result.summary[quantity.key]
            assert f"= {stats['mean']:.3f} " in line and f"spread ±{stats['std']:.3f}" in line
    for jargon in ("ν-stack", "nu-stack", "image passes", "CNN^"):
        assert jargon not in text
    # Networks without a measured accuracy say so instead of inventing an error.
    bare = format_summary(fake_result(card={}))
    assert bare.count("error not measured") == 4 and "typical error ±" not in bare


def test_figure_is_a_contact_sheet_with_scale_bars_subscripts_and_marked_means(tmp_path):
    pytest.importorskip("matplotlib")
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from hagg_tf.estimation import characterization_figure, plot_characterization

    result = fake_result(num_images=7)
    figure = characterization_figure(result)
    axes = figure.get_axes()
    image_axes = [axis for axis in axes if axis.images]
    assert len(image_axes) == 7  # every image, not two of them
    for axis in image_axes:
        bars = [artist for artist in axis.artists if isinstance(artist, AnchoredSizeBar)]
        # 64 px × 1.2 nm = 76.8 nm: the bar is the round 10 nm ≤ a quarter of the field.
        assert len(bars) == 1 and bars[0].txt_label.get_text() == "10 nm"
    titles = " ".join(axis.get_title() for axis in axes) + figure.get_suptitle()
    for tex in (r"$\theta_{D_f}$", r"$\theta_\rho$", r"$S_{\mathrm{TiO}_2}$",
                r"$Z_{\mathrm{hetero}}$", r"$Z_{\mathrm{total}}$"):
        assert tex in titles
    histograms = [axis for axis in axes if axis.patches and not axis.images
                  and axis.get_ylabel() == "shadows"]
    assert len(histograms) == 3
    for axis, key in zip(histograms, ("tio2_cluster_size", "hetero_coordination",
                                      "total_coordination")):
        mean = result.summary[key]["mean"]
        vertical = [line for line in axis.get_lines() if len(line.get_xdata()) == 2
                    and np.allclose(line.get_xdata(), [mean, mean])]
        assert len(vertical) == 1, key
    path = plot_characterization(result, tmp_path / "characterize.png")  # mathtext renders
    assert iio.imread(path).shape[0] > 500


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="no shipped models in saved_models/")
def test_tool_prints_the_padding_and_plain_lines_per_quantity(tmp_path):
    from hagg_tf.stem.io import read_stem_png

    sample = tmp_path / "small"
    sample.mkdir()
    for number, path in enumerate(sorted(EXAMPLE.glob("*.png"))):
        counts, _ = read_stem_png(path)
        iio.imwrite(sample / f"img{number:02d}.tif", counts[106:406, 106:406].astype(np.uint16))
    output = tmp_path / "out"
    result = run_tool(sample, "--pixel_size_nm=1.2", "--dose=149", "--shadows=3",
                      "--nofigure", f"--output={output}")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert any("300×300 px, padded" in line and "512×512" in line for line in notes), \
        result.stderr
    report = json.loads((output / "report.json").read_text())
    card = report["model"]["model_card"]
    for symbol in ("θ_Df", "θ_ρ", "θ_0", "θ_1", "S_TiO2", "Z_hetero", "Z_total"):
        lines = [line for line in result.stdout.splitlines() if f" {symbol} " in line]
        assert len(lines) == 1, result.stdout
        assert report["quantities"][symbol]["meaning"] in lines[0]
    mae = (card.get("accuracy") or {}).get("per_theta", {}).get("fractal_dimension_mae")
    if mae is not None:
        assert f"typical error ±{mae:.3f}" in result.stdout
        assert report["quantities"]["θ_Df"]["typical_error"]["mae"] == mae
    for jargon in ("ν-stack", "image passes", "CNN^"):
        assert jargon not in result.stdout + result.stderr
    assert report["shadows"]["count"] == 3 and report["shadows"]["saved"] == 3


# ------------------------------------------------------------ point 11: many digital shadows

def test_shadows_are_streamed_in_order_whatever_the_workers(monkeypatch):
    from hagg_tf.estimation import shadows
    from hagg_tf.model.descriptors import describe

    params = ModelParameters(1.8, 0.5, 2, 2)
    monkeypatch.setattr(shadows, "SHADOW_BLOCK", 2)
    stream = shadows.iter_shadows(params, shadows.MAX_SHADOWS, seed=5, workers=1)
    first = next(stream)  # lazy: drawing 100 000 shadows first would take half an hour
    stream.close()
    again = sample_aggregate(params, 5, 0)
    np.testing.assert_array_equal(first[0].positions, again.positions)
    assert first[1] == describe(again)
    serial = list(shadows.iter_shadows(params, 7, seed=5, workers=1))
    parallel = list(shadows.iter_shadows(params, 7, seed=5, workers=2))  # 4 blocks, 2 workers
    assert [item[0].index for item in parallel] == list(range(7))
    assert [item[1] for item in parallel] == [item[1] for item in serial]


def test_only_the_first_shadows_are_kept_but_every_one_is_described(monkeypatch, capsys):
    from hagg_tf.estimation import shadows

    params = ModelParameters(1.8, 0.5, 2, 2)
    monkeypatch.setattr(shadows, "PROGRESS_SHADOWS", 3)
    kept, descriptors, restarts = shadows.collect_shadows(params, 6, seed=2, workers=1, keep=2,
                                                          progress=True)
    assert [item.index for item in kept] == [0, 1] and len(descriptors) == 6
    assert restarts == sum(sample_aggregate(params, 2, k).restarts for k in range(6))
    assert "digital shadows" in capsys.readouterr().err  # the progress bar, on stderr
    shadows.collect_shadows(params, 3, seed=2, workers=1, progress=True)
    assert "digital shadows" not in capsys.readouterr().err  # short runs stay quiet


def test_too_many_shadows_are_refused_with_the_maximum(one_error_line):
    from hagg_tf.estimation import characterize
    from hagg_tf.estimation.shadows import MAX_SHADOWS, iter_shadows

    params = ModelParameters(1.8, 0.5, 2, 2)
    with pytest.raises(ValueError, match=f"between 1 and {MAX_SHADOWS}"):
        next(iter_shadows(params, MAX_SHADOWS + 1))
    with pytest.raises(InputError, match=str(MAX_SHADOWS)):  # before images or models are read
        characterize("no/such/folder", shadows=100_000_000)
    line = one_error_line(run_tool(EXAMPLE, "--shadows=100000000", timeout=60))
    assert f"maximum of {MAX_SHADOWS}" in line


def test_a_cluster_size_network_that_answers_nearly_a_constant_is_named_in_a_warning():
    import copy

    from hagg_tf.estimation.model import read_metadata, resolve_version_dir
    from hagg_tf.estimation.quantities import UNRESOLVED_RANGE_SHARE, unresolved_parameter_warnings
    from hagg_tf.model.parameters import TABLE2_CLUSTER_SIZES

    card = read_metadata(resolve_version_dir(
        pathlib.Path(__file__).resolve().parents[1] / "saved_models"))["model_card"]
    # The shipped networks resolve both sizes (raw outputs over their evaluation span most of
    # 1–6); the previous CNN^1 spanned 3.2–4.1 and was flagged, as the card below is.
    assert unresolved_parameter_warnings(card) == []
    flat = copy.deepcopy(card)
    flat["accuracy"]["per_theta"]["tio2_cluster_size_raw_range"] = [3.2, 4.1]
    warnings = unresolved_parameter_warnings(flat)
    assert len(warnings) == 1 and "θ_1" in warnings[0] and "S_TiO2" in warnings[0]
    assert "3.2–4.1" in warnings[0]
    # The rule is the span of the raw outputs against the design's range of true sizes.
    width = max(TABLE2_CLUSTER_SIZES) - min(TABLE2_CLUSTER_SIZES)
    resolved = copy.deepcopy(flat)
    resolved["accuracy"]["per_theta"]["tio2_cluster_size_raw_range"] = [
        1.0, 1.0 + UNRESOLVED_RANGE_SHARE * width]
    assert unresolved_parameter_warnings(resolved) == []
    narrow = copy.deepcopy(resolved)
    narrow["accuracy"]["per_theta"]["wo3_cluster_size_raw_range"] = [2.0, 2.1]
    assert ["θ_0" in warning for warning in unresolved_parameter_warnings(narrow)] == [True]
    # Nothing to judge without an evaluation.
    assert unresolved_parameter_warnings({}) == []
    assert unresolved_parameter_warnings(None) == []
