"""Estimators (Eqs. 13–15), image checks and preparation, digital shadows — without TensorFlow."""
import math

import imageio.v3 as iio
import numpy as np
import pytest

from hagg_tf import ModelParameters, describe, sample_aggregate
from hagg_tf.estimation import (InputError, ThetaEstimate, combine_mixing_ratio, cyclic_subsets,
                                draw_shadows, estimate_theta, find_image_files,
                                load_stem_images, prepare_images, read_stem_image,
                                round_cluster_size, shadow_summary)
from hagg_tf.estimation.images import background_level, fit_to_size, resample
from hagg_tf.stem import render_stem, write_stem_png

# ----------------------------------------------------------------------------- estimators


def test_cyclic_subsets_use_every_image_in_every_slot_once():
    # n = ν: the ν rotations of the one stack (the paper feeds it once, in the given order)
    np.testing.assert_array_equal(cyclic_subsets(3, 3), [[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    subsets = cyclic_subsets(5, 3)
    assert subsets.shape == (5, 3)
    for slot in range(3):
        assert sorted(subsets[:, slot]) == list(range(5))
    for row in subsets:
        assert len(set(row)) == 3
    with pytest.raises(ValueError, match="at least nu"):
        cyclic_subsets(2, 3)


def test_mixing_ratio_combines_classifier_and_regressor():
    regressor = np.array([0.08, 0.93, 0.45, 0.30, 0.62])
    probability = np.array([0.9, 0.7, 0.2, 0.5, 0.51])
    # Rounded to 0/1 only where the classifier says homogeneous (> 0.5, strictly).
    np.testing.assert_allclose(combine_mixing_ratio(regressor, probability),
                               [0.0, 1.0, 0.45, 0.30, 1.0], atol=1e-7)


def test_estimate_theta_follows_eqs_13_to_15():
    estimate = estimate_theta(
        fractal_dimension=[1.9, 2.1, 2.0, 2.2],
        mixing_ratio_regressor=[0.05, 0.5, 0.6, 0.7],
        homogeneous_probability=[0.8, 0.1, 0.1, 0.1],
        wo3_cluster_size_per_subset=[2.4, 2.8],
        tio2_cluster_size_per_subset=[0.2, 0.3])
    assert math.isclose(estimate.fractal_dimension, 2.05, rel_tol=1e-6)  # Eq. 13
    assert math.isclose(estimate.mixing_ratio, (0.0 + 0.5 + 0.6 + 0.7) / 4, rel_tol=1e-6)
    assert math.isclose(estimate.mixing_ratio_regressor_only, 1.85 / 4, rel_tol=1e-6)
    assert estimate.wo3_cluster_size == 3 and math.isclose(estimate.wo3_cluster_size_raw, 2.6,
                                                           rel_tol=1e-6)
    assert estimate.tio2_cluster_size == 0  # η rounds 0.25 to 0 ...
    params = estimate.shadow_parameters()  # ... and the shadows need clusters of >= 1 particle
    assert params.tio2_cluster_size == 1 and params.wo3_cluster_size == 3
    assert estimate.homogeneous_images == 1 and estimate.num_images == 4
    assert estimate.theta == (estimate.fractal_dimension, estimate.mixing_ratio, 3, 0)
    record = estimate.as_dict()
    assert record["theta"][2:] == [3, 0] and len(record["fractal_dimension_per_image"]) == 4


def test_round_cluster_size_is_the_nearest_integer_at_least_zero():
    # η of Sec. 2.3.4. Below −0.5 plain rounding gives −1, −2: the clamp must make them 0.
    for raw, expected in ((-0.7, 0), (-1.6, 0), (-25.0, 0), (-0.3, 0), (0.0, 0), (0.49, 0),
                          (0.51, 1), (2.6, 3), (5.5, 6), (4.5, 4), (3.49, 3)):  # ties to even
        rounded = round_cluster_size(raw)
        assert type(rounded) is int and rounded == expected, (raw, rounded)  # an int: no −0.0


def test_theta_estimate_from_composite_outputs():
    outputs = {"fractal_dimension": [2.0], "mixing_ratio": [0.4],
               "mixing_ratio_regressor_only": [0.41], "wo3_cluster_size": [3],
               "wo3_cluster_size_raw": [3.2], "tio2_cluster_size": [1],
               "tio2_cluster_size_raw": [0.9],
               "fractal_dimension_per_image": [[2.0, 2.0]],
               "mixing_ratio_regressor_per_image": [[0.4, 0.42]],
               "homogeneous_probability_per_image": [[0.1, 0.2]],
               "mixing_ratio_per_image": [[0.4, 0.42]],
               "wo3_cluster_size_per_subset": [[3.2]], "tio2_cluster_size_per_subset": [[0.9]]}
    estimate = ThetaEstimate.from_outputs(outputs)
    assert estimate.theta == (2.0, 0.4, 3, 1) and estimate.num_images == 2


# ------------------------------------------------------------------------------------ images

@pytest.fixture(scope="module")
def stem_png(tmp_path_factory):
    aggregate = sample_aggregate(ModelParameters(1.8, 0.5, 3, 2), seed=3, index=0)
    image = render_stem(aggregate, seed=3, index=0, image_size=96, pixel_size_nm=6.4)
    path = tmp_path_factory.mktemp("png") / "stem.png"
    write_stem_png(path, image)
    return path, image


def test_package_png_carries_pixel_size_dose_and_theta(stem_png):
    path, image = stem_png
    loaded, warnings = read_stem_image(path)
    assert not warnings
    assert loaded.pixel_size_nm == 6.4
    assert loaded.electrons_per_pixel == image.metadata["electrons_per_pixel"]
    assert loaded.sources == {"pixel_size_nm": "metadata", "electrons_per_pixel": "metadata"}
    np.testing.assert_array_equal(loaded.counts, image.counts)
    assert loaded.describe()["simulated_theta"]["wo3_cluster_size"] == 3


def test_foreign_images_need_pixel_size_and_dose(tmp_path, stem_png):
    _, image = stem_png
    plain16 = tmp_path / "plain16.tif"
    iio.imwrite(plain16, image.counts)
    with pytest.raises(InputError, match="--pixel_size_nm"):
        read_stem_image(plain16)
    loaded, warnings = read_stem_image(plain16, pixel_size_nm=6.4)
    assert loaded.electrons_per_pixel == pytest.approx(149.0 * 64.0 ** 2)  # the paper's dose
    assert any("assuming the paper's 149" in warning for warning in warnings)
    loaded, warnings = read_stem_image(plain16, pixel_size_nm=6.4, dose=100.0)
    assert loaded.electrons_per_pixel == pytest.approx(100.0 * 64.0 ** 2) and not warnings

    plain8 = tmp_path / "plain8.png"
    iio.imwrite(plain8, (image.counts / image.counts.max() * 255).astype(np.uint8))
    with pytest.raises(InputError, match="8-bit image without a dose"):
        read_stem_image(plain8, pixel_size_nm=6.4, dose=149.0)
    loaded, _ = read_stem_image(plain8, pixel_size_nm=6.4, electrons_per_pixel=2000.0)
    assert loaded.dtype == "uint8" and loaded.electrons_per_pixel == 2000.0


@pytest.mark.parametrize("case, match", [
    ("colour", "colour image"),
    ("nan", "NaN or infinite"),
    ("int32", "unsupported pixel type"),
    ("stack", "one 2-D greyscale image"),
    ("constant", "empty image"),
    ("text", "cannot be read as an image"),
    ("negative", "negative pixel values"),
])
def test_bad_images_are_refused_with_a_clear_message(tmp_path, case, match):
    rng = np.random.default_rng(0)
    if case == "colour":
        path = tmp_path / "colour.png"
        iio.imwrite(path, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    elif case == "nan":
        path = tmp_path / "nan.tif"
        pixels = rng.uniform(0, 100, (64, 64)).astype(np.float32)
        pixels[3, 4] = np.nan
        iio.imwrite(path, pixels)
    elif case == "int32":
        path = tmp_path / "int32.tif"
        iio.imwrite(path, rng.integers(0, 1000, (64, 64)).astype(np.int32))
    elif case == "stack":
        path = tmp_path / "stack.tif"
        iio.imwrite(path, rng.integers(0, 1000, (3, 64, 64)).astype(np.uint16))
    elif case == "constant":
        path = tmp_path / "constant.png"
        iio.imwrite(path, np.full((64, 64), 7, np.uint16))
    elif case == "negative":
        path = tmp_path / "negative.tif"
        iio.imwrite(path, rng.uniform(-1, 1, (64, 64)).astype(np.float32))
    else:
        path = tmp_path / "text.png"
        path.write_text("not a PNG at all")
    with pytest.raises(InputError, match=match) as error:
        read_stem_image(path, pixel_size_nm=1.2)
    assert str(path) in str(error.value)


def test_finding_images_in_folders_and_globs(tmp_path, stem_png):
    path, _ = stem_png
    folder = tmp_path / "sample"
    folder.mkdir()
    for index in range(3):
        (folder / f"img{index}.png").write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("microscope log")
    found, notes = find_image_files([folder])
    assert [item.name for item in found] == ["img0.png", "img1.png", "img2.png"]
    assert "skipped 1 non-image file(s): notes.txt" in notes[0]
    found, _ = find_image_files([str(folder / "img[01].png"), folder / "img0.png"])
    assert [item.name for item in found] == ["img0.png", "img1.png"]  # no duplicates
    images, warnings = load_stem_images(found)
    assert len(images) == 2 and not warnings
    with pytest.raises(InputError, match="no images given"):
        find_image_files([])
    with pytest.raises(InputError, match="no such file"):
        find_image_files([tmp_path / "missing"])
    with pytest.raises(InputError, match="not an image file"):
        find_image_files([folder / "notes.txt"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(InputError, match="no image files"):
        find_image_files([empty])
    with pytest.raises(InputError, match="no files match"):
        find_image_files([str(tmp_path / "*.tif")])


def test_preparation_resamples_pads_and_crops(stem_png):
    _, image = stem_png
    loaded, _ = read_stem_image(stem_png[0])
    # Resampling keeps the intensity fraction p = counts / electrons per pixel (dose per area).
    counts, electrons = resample(loaded.counts, loaded.electrons_per_pixel, 2.0)
    assert counts.shape == (192, 192) and electrons == pytest.approx(
        loaded.electrons_per_pixel / 4)
    assert (counts / electrons).sum() / 4 == pytest.approx(
        (loaded.counts / loaded.electrons_per_pixel).sum(), rel=0.02)
    prepared, warnings = prepare_images([loaded, loaded], image_size=156, pixel_size_nm=3.2)
    assert prepared.counts.shape == (2, 156, 156) and prepared.counts.dtype == np.float32
    assert any("resampled" in warning for warning in warnings)
    assert any("resampled 6.4→3.2" in change for change in prepared.changes[0])
    assert any("cropped" in change for change in prepared.changes[0])  # 192 px → 156 px
    # Padding uses the background level; the aggregate stays whole and centred.
    padded, notes = fit_to_size(loaded.counts, 128)
    assert padded.shape == (128, 128) and padded.sum() == loaded.counts.sum()
    assert background_level(loaded.counts) == 0.0
    assert not any(note.startswith("warning") for note in notes)
    cropped, notes = fit_to_size(loaded.counts, 40)
    assert cropped.shape == (40, 40) and notes[-1].startswith("warning")


# ----------------------------------------------------------------------------------- shadows

def test_shadows_are_reproducible_and_summarised_nan_aware():
    params = ModelParameters(1.8, 1.0, 2, 3)  # θ_ρ = 1: all WO3, S_TiO2 undefined
    aggregates, descriptors = draw_shadows(params, count=4, seed=9, workers=1)
    assert [item.index for item in aggregates] == [0, 1, 2, 3]
    again = sample_aggregate(params, 9, 2)
    np.testing.assert_array_equal(aggregates[2].positions, again.positions)
    assert descriptors[2] == describe(again)
    summary = shadow_summary(descriptors)
    assert summary["tio2_cluster_size"]["count"] == 0
    assert summary["tio2_cluster_size"]["mean"] is None  # NaN made JSON-safe
    assert summary["total_coordination"]["count"] == 4
    assert summary["total_coordination"]["mean"] > 1.0
