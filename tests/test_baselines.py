"""Classical baselines of the paper's Sec. 4: threshold mixing ratio and box counting."""

import json
import math

import numpy as np
import pytest

from hagg_tf.evaluation import baselines
from hagg_tf.evaluation.predictions import BASELINE_KEYS
from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.descriptors import describe
from hagg_tf.model.generator import sample_aggregate
from hagg_tf.model.parameters import TIO2, WO3, GeneratorConfig, ModelParameters
from hagg_tf.stem import HaadfTable, HaadfTables, render_stem

WO3_LEVEL, TIO2_LEVEL = 0.1, 0.01  # intensity fractions of the step tables below


def _step_tables():
    """Tables whose intensity jumps to a constant at any positive thickness, so that every
    pixel of a particle, rim included, has its material's level exactly."""
    thickness = np.array([0.0, 1e-6, 100.0])
    return HaadfTables([
        HaadfTable("WO3", WO3, "gamma", "a", thickness, np.array([0.0, WO3_LEVEL, WO3_LEVEL])),
        HaadfTable("TiO2", TIO2, "rutile", "a", thickness,
                   np.array([0.0, TIO2_LEVEL, TIO2_LEVEL])),
    ])


def _grid_aggregate(labels):
    """Equal spheres on a 3 × 3 grid in the xy plane, 16 nm apart: no overlap in projection,
    and every particle sits at the same sub-pixel offset, so all footprints are equal."""
    xy = np.array([(x, y) for y in (-16.0, 0.0, 16.0) for x in (-16.0, 0.0, 16.0)])
    positions = np.column_stack([xy, np.zeros(len(xy))])
    return Aggregate(positions=positions, radii=np.full(len(xy), 4.0), labels=labels,
                     cluster_ids=np.arange(len(xy)))


# ------------------------------------------------------------------------------ box counting


def test_box_counting_of_filled_square_and_lines_is_exact():
    square = np.zeros((300, 300), bool)
    square[20:276, 30:286] = True  # 256 × 256: N(s) = (256 / s)²
    sizes, counts = baselines.box_counts(square)
    assert sizes.tolist() == [2, 4, 8, 16, 32, 64, 128, 256]
    assert counts.tolist() == [(256 // s) ** 2 for s in sizes]
    assert baselines.box_counting_dimension(square) == pytest.approx(2.0, abs=1e-12)

    horizontal = np.zeros((40, 300), bool)
    horizontal[17, 10:266] = True
    assert baselines.box_counting_dimension(horizontal) == pytest.approx(1.0, abs=1e-12)
    diagonal = np.eye(256, dtype=bool)
    assert baselines.box_counting_dimension(diagonal) == pytest.approx(1.0, abs=1e-12)
    rows = np.arange(300)
    steep = np.zeros((300, 120), bool)
    steep[rows, rows // 3] = True  # a line of slope 3, pixelated
    assert baselines.box_counting_dimension(steep, max_box_fraction=0.25) == pytest.approx(
        1.0, abs=0.03)


def test_box_counting_of_disk_is_about_two_and_closer_without_the_largest_boxes():
    yy, xx = np.mgrid[:256, :256]
    disk = (yy - 127.5) ** 2 + (xx - 127.5) ** 2 <= 110.0 ** 2  # extent 221 px
    sizes, counts = baselines.box_counts(disk)
    assert sizes[-1] == 128 and counts[-1] == 4  # the grid-alignment bias at the extent
    whole = baselines.box_counting_dimension(disk)
    quarter = baselines.box_counting_dimension(disk, max_box_fraction=0.25)
    assert baselines.box_counts(disk, max_box_fraction=0.25)[0].tolist() == [2, 4, 8, 16, 32]
    assert whole == pytest.approx(2.0, abs=0.15)
    assert quarter == pytest.approx(2.0, abs=0.08) and abs(quarter - 2) < abs(whole - 2)


def test_box_counting_of_sierpinski_triangle_is_log3_over_log2():
    # Pascal's triangle mod 2: cell (i, j) is set iff i & j == 0; boxes of side 2^m anchored at
    # the corner hold 3^(8 - m) occupied ones, exactly.
    i, j = np.mgrid[:256, :256]
    triangle = (i & j) == 0
    sizes, counts = baselines.box_counts(triangle)
    assert counts.tolist() == [3 ** (8 - int(math.log2(s))) for s in sizes]
    assert baselines.box_counting_dimension(triangle) == pytest.approx(
        math.log(3) / math.log(2), abs=1e-12)
    # Shifting the pattern inside a larger frame changes nothing (anchored at its bounding box).
    framed = np.zeros((400, 300), bool)
    framed[100:356, 7:263] = triangle
    assert baselines.box_counting_dimension(framed) == pytest.approx(math.log2(3), abs=1e-12)


def test_box_counting_without_enough_scales_is_nan():
    assert math.isnan(baselines.box_counting_dimension(np.zeros((32, 32), bool)))
    single = np.zeros((32, 32), bool)
    single[5, 9] = True
    assert math.isnan(baselines.box_counting_dimension(single))
    with pytest.raises(ValueError, match="2-D"):
        baselines.box_counts(np.zeros((2, 8, 8), bool))
    with pytest.raises(ValueError, match="power of two"):
        baselines.box_counts(np.ones((8, 8), bool), min_box=3)
    with pytest.raises(ValueError, match="max_box_fraction"):
        baselines.box_counts(np.ones((8, 8), bool), max_box_fraction=0.0)


def test_calibration_line_is_least_squares_fit():
    raw = np.array([1.4, 1.5, 1.6, 1.7, np.nan])
    truth = 2.0 * raw + 0.1
    slope, intercept = baselines.fit_box_calibration(raw, truth)
    assert (slope, intercept) == pytest.approx((2.0, 0.1))
    with pytest.raises(ValueError, match="distinct"):
        baselines.fit_box_calibration(np.full(4, 1.5), np.arange(4.0))


# ------------------------------------------------------------------------ threshold method


def test_threshold_method_recovers_mixing_ratio_of_non_overlapping_rendered_particles():
    labels = np.array([WO3, TIO2, TIO2, WO3, TIO2, WO3, TIO2, TIO2, WO3])
    image = render_stem(_grid_aggregate(labels), seed=0, tables=_step_tables(),
                        pixel_size_nm=1.0, image_size=64, shot_noise=False, blur=False,
                        scan_noise_nm=0.0)
    fraction = baselines.intensity_fraction(image.counts, image.metadata["electrons_per_pixel"])
    classes = baselines.classify_pixels(fraction, 0.001, 0.05)
    wo3_pixels, tio2_pixels = np.count_nonzero(classes == WO3), np.count_nonzero(classes == TIO2)
    assert wo3_pixels > 0 and wo3_pixels * 5 == tio2_pixels * 4  # equal footprints
    fitted = baselines.ThresholdFit(0.001, 0.05)
    assert fitted.mixing_ratio(fraction) == pytest.approx(4 / 9, abs=1e-15)
    # Stacks give one value per image; an image without particles gives NaN.
    stack = np.stack([fraction, np.zeros_like(fraction)])
    ratios = fitted.mixing_ratio(stack)
    assert ratios.shape == (2,) and ratios[0] == pytest.approx(4 / 9) and np.isnan(ratios[1])
    # κ ≠ 1 (WO3 particles with twice the mean projected area) halves the WO3 count.
    assert baselines.threshold_mixing_ratio(fraction, 0.001, 0.05, area_ratio=2.0) == \
        pytest.approx((4 / 2) / (4 / 2 + 5))
    assert baselines.projected_area_ratio() == 1.0


def _synthetic_class_images(rng, count, size=48):
    """Images of equal 6 × 6 squares: TiO2 at p ∈ [0.003, 0.006], WO3 at p ∈ [0.04, 0.08],
    plus a faint halo (p = 0.0005) around some squares that belongs to the background."""
    electrons = 20_000.0
    images, ratios = [], []
    for _ in range(count):
        fraction = np.zeros((size, size))
        slots = [(r, c) for r in range(2, size - 8, 9) for c in range(2, size - 8, 9)]
        chosen = rng.choice(len(slots), rng.integers(2, 10), replace=False)
        wo3 = rng.random(len(chosen)) < rng.uniform(0.1, 0.9)
        for slot, is_wo3 in zip(chosen, wo3):
            r, c = slots[slot]
            if rng.random() < 0.5:
                fraction[r - 1:r + 7, c - 1:c + 7] = 0.0005
            low, high = (0.04, 0.08) if is_wo3 else (0.003, 0.006)
            fraction[r:r + 6, c:c + 6] = rng.uniform(low, high, (6, 6))
        images.append(np.rint(fraction * electrons).astype(np.uint16))
        ratios.append(wo3.mean())
    return images, electrons, np.array(ratios)


def test_brute_force_fit_finds_thresholds_that_separate_the_classes():
    rng = np.random.default_rng(3)
    images, electrons, ratios = _synthetic_class_images(rng, 40)
    grid = baselines.DEFAULT_THRESHOLD_GRID
    histograms = np.stack([baselines.intensity_histogram(
        baselines.intensity_fraction(counts, electrons), grid) for counts in images])
    assert np.all(histograms.sum(axis=1) == images[0].size)
    fit = baselines.fit_thresholds(histograms, ratios, grid)
    assert fit.train_mae < 1e-12 and fit.num_images == 40
    assert 0.0005 <= fit.background_threshold < 0.003
    assert 0.006 <= fit.wo3_threshold < 0.04
    # The histogram-based search agrees with classifying the pixels directly.
    direct = [fit.mixing_ratio(baselines.intensity_fraction(c, electrons)) for c in images]
    assert np.allclose(direct, ratios, atol=1e-12)


def test_fit_uses_histogram_counts_consistent_with_classification():
    rng = np.random.default_rng(0)
    fraction = rng.choice([0.0, 0.002, 0.01, 0.3], size=(16, 16))
    grid = np.array([0.0, 0.002, 0.005, 0.01, 0.1])
    histogram = baselines.intensity_histogram(fraction, grid)
    above = histogram.sum() - np.cumsum(histogram)[:-1]
    assert above.tolist() == [np.count_nonzero(fraction > t) for t in grid]


# --------------------------------------------------------------- fit, apply, save, errors


@pytest.fixture(scope="module")
def rendered_samples():
    """Twelve small generated aggregates rendered at 64 px (real overlaps and noise)."""
    config = GeneratorConfig(min_size=8, max_size=16)
    samples = []
    for index in range(12):
        params = ModelParameters(1.6 + 0.08 * index, 0.2 + 0.05 * index, 1 + index % 3, 2)
        aggregate = sample_aggregate(params, 5, index, config)
        descriptors = describe(aggregate)
        image = render_stem(aggregate, seed=5, index=index, pixel_size_nm=2.0, image_size=64)
        samples.append(baselines.LabelledImage(image.counts, image.metadata["electrons_per_pixel"],
                                               descriptors.mixing_ratio,
                                               descriptors.fractal_dimension))
    return samples


def test_fit_and_apply_baselines_on_rendered_aggregates(rendered_samples, tmp_path):
    fitted = baselines.fit_baselines(iter(rendered_samples), info={"source": "test"})
    assert fitted.info["num_images"] == 12 and fitted.info["source"] == "test"
    assert 0 <= fitted.threshold.background_threshold < fitted.threshold.wo3_threshold
    assert fitted.box_counting.threshold in baselines.DEFAULT_BOX_THRESHOLDS
    assert fitted.box_counting.max_box_fraction in baselines.DEFAULT_BOX_MAX_FRACTIONS
    assert np.isfinite(fitted.box_counting.train_mae_raw)
    counts = np.stack([s.counts for s in rendered_samples])
    electrons = [s.electrons_per_pixel for s in rendered_samples]
    arrays = baselines.apply_baselines(counts, electrons, fitted)
    assert set(BASELINE_KEYS) <= set(arrays) and set(arrays) == set(baselines.BASELINE_ARRAY_KEYS)
    assert all(value.shape == (12,) for value in arrays.values())
    ratio = arrays[baselines.MIXING_RATIO_KEY]
    assert np.all((ratio >= 0) & (ratio <= 1))
    truth = np.array([s.mixing_ratio for s in rendered_samples])
    assert np.abs(ratio - truth).mean() == pytest.approx(fitted.threshold.train_mae, abs=1e-12)
    raw = arrays[baselines.RAW_FRACTAL_DIMENSION_KEY]
    assert np.all((raw > 0.5) & (raw <= 2.0 + 1e-9))  # a projection: at most 2
    calibrated = arrays[baselines.FRACTAL_DIMENSION_KEY]
    assert np.allclose(calibrated, fitted.box_counting.slope * raw + fitted.box_counting.intercept)
    # The least-squares line is never worse in squared error than the raw values themselves.
    fractal = np.array([s.fractal_dimension for s in rendered_samples])
    assert np.mean((calibrated - fractal) ** 2) <= np.mean((raw - fractal) ** 2)

    path = baselines.save_fitted(fitted, tmp_path / "fitted.json")
    json.loads(path.read_text())  # plain JSON (no NaN tokens)
    assert baselines.load_fitted(path) == fitted
    again = baselines.apply_baselines(iter(counts), electrons, baselines.load_fitted(path))
    assert all(np.array_equal(again[key], arrays[key]) for key in arrays)


def test_json_round_trip_keeps_nan_and_rejects_other_files(tmp_path):
    fitted = baselines.FittedBaselines(
        baselines.ThresholdFit(0.001, 0.02),
        baselines.BoxCountingFit(threshold=0.0, slope=2.5, intercept=-1.9),
        info={"split": "train"})
    loaded = baselines.load_fitted(baselines.save_fitted(fitted, tmp_path / "f.json"))
    assert loaded.threshold.background_threshold == 0.001 and loaded.info == {"split": "train"}
    assert math.isnan(loaded.threshold.train_mae) and math.isnan(loaded.box_counting.train_mae)
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a hagg_tf baselines file"):
        baselines.load_fitted(tmp_path / "other.json")


def test_bad_input_is_rejected_with_clear_errors():
    good = np.zeros((8, 8), np.uint16)
    with pytest.raises(ValueError, match="NaN"):
        baselines.intensity_fraction(np.full((8, 8), np.nan), 100.0)
    with pytest.raises(ValueError, match="2-D"):
        baselines.intensity_fraction(np.zeros((2, 8, 8)), 100.0)
    with pytest.raises(ValueError, match="non-negative"):
        baselines.intensity_fraction(-np.ones((8, 8)), 100.0)
    with pytest.raises(ValueError, match="electrons_per_pixel"):
        baselines.intensity_fraction(good, 0.0)
    with pytest.raises(ValueError, match="background_threshold < wo3_threshold"):
        baselines.ThresholdFit(0.05, 0.01)
    with pytest.raises(ValueError, match="NaN"):
        baselines.threshold_mixing_ratio(np.full((8, 8), np.nan), 0.0, 0.1)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        baselines.apply_baselines(good, 100.0, None)
    with pytest.raises(ValueError, match="histograms"):
        baselines.fit_thresholds(np.zeros((3, 5)), np.zeros(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grid = baselines.DEFAULT_THRESHOLD_GRID
        baselines.fit_thresholds(np.ones((2, grid.size + 1)), np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="no training images"):
        baselines.fit_baselines([])
    with pytest.raises(ValueError, match="finite"):
        baselines.BoxCountingFit(threshold=0.0, slope=math.nan, intercept=0.0)


def test_module_does_not_import_tensorflow():
    import subprocess
    import sys
    code = ("import sys, hagg_tf.evaluation.baselines; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ------------------------------------------------------------------ reading a tiny database


@pytest.fixture(scope="module")
def tiny_database(tiny_database):
    """The tiny preset at its own 64 px (the session's database of tests/conftest.py)."""
    pytest.importorskip("tensorflow")
    from hagg_tf.data import preset

    return tiny_database(preset("tiny").image_size)


def test_split_streaming_fit_and_apply_in_database_order(tiny_database, tmp_path):
    from hagg_tf.data.manifest import load_manifest, shard_paths
    from hagg_tf.data.records import read_samples

    fitted = baselines.fit_baselines_on_split(tiny_database, "train", num_images=10, seed=1)
    assert fitted.info["num_images"] == 10 and len(set(fitted.info["record_index"])) == 10
    again = baselines.fit_baselines_on_split(tiny_database, "train", num_images=10, seed=1)
    assert again.threshold == fitted.threshold  # the subset is a function of the seed

    arrays = baselines.baselines_for_split(tiny_database, "evaluation", fitted=fitted)
    samples = [s for path in shard_paths(load_manifest(tiny_database), "evaluation")
               for s in read_samples(path)]
    assert arrays["record_index"].tolist() == [s.index for s in samples]
    expected = baselines.apply_baselines([s.counts for s in samples],
                                         [s.electrons_per_pixel for s in samples], fitted)
    for key in baselines.BASELINE_ARRAY_KEYS:
        assert np.array_equal(arrays[key], expected[key], equal_nan=True)
    assert np.array_equal(arrays["mixing_ratio"], [s.descriptors.mixing_ratio for s in samples])
    first = baselines.baselines_for_split(tiny_database, "evaluation", fitted=fitted, limit=3)
    assert first["record_index"].tolist() == arrays["record_index"][:3].tolist()

    summary = baselines.run_baselines(tiny_database, tmp_path / "out", num_fit_images=10,
                                      seed=1)
    assert summary["errors"]["images"] == len(samples)
    with np.load(tmp_path / "out" / "evaluation_baselines.npz") as stored:
        assert np.array_equal(stored["record_index"], arrays["record_index"])
    assert baselines.load_fitted(tmp_path / "out" / "fitted.json").threshold == fitted.threshold
