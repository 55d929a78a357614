"""Imaging conditions of the STEM renderer (issue 10): each condition does what it says."""

import dataclasses
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.parameters import TIO2, WO3
from hagg_tf.stem import (ConditionsError, HaadfTable, HaadfTables, ImagingConditions,
                          electrons_per_pixel, image_rng, normalized_intensity, parse_conditions,
                          read_stem_png, render_stem, write_stem_png)

ROOT = Path(__file__).resolve().parents[1]
TAN_BETA = math.tan(21.1e-3)
FILM_SLOPE = 1.0e-4  # synthetic film: intensity 1e-4 per nm of carbon


def _tables(wo3=lambda t: 0.004 * t, tio2=lambda t: 0.0004 * t):
    thickness = np.linspace(0.0, 100.0, 201)
    return HaadfTables([HaadfTable("WO3", WO3, "gamma", "a", thickness, wo3(thickness)),
                        HaadfTable("TiO2", TIO2, "rutile", "a", thickness, tio2(thickness))])


def _film_table(slope=FILM_SLOPE):
    thickness = np.linspace(0.0, 50.0, 51)
    return HaadfTable("C", -1, "amorphous", "random", thickness, slope * thickness)


def _aggregate(positions, radii, labels):
    return Aggregate(positions=np.asarray(positions, dtype=float), radii=radii, labels=labels,
                     cluster_ids=np.arange(len(radii)))


def _sphere(radius=8.0, z=0.0, label=WO3):
    return _aggregate([[0.0, 0.0, z]], [radius], [label])


def _random_aggregate(count, spread, seed):
    rng = np.random.default_rng(seed)
    return Aggregate(positions=rng.normal(scale=spread, size=(count, 3)),
                     radii=rng.uniform(4.0, 9.0, count), labels=rng.integers(0, 2, count),
                     cluster_ids=np.arange(count))


def _digest(image):
    digest = hashlib.sha256()
    digest.update(image.counts.tobytes())
    digest.update(image.intensity.tobytes())
    digest.update(json.dumps(image.metadata, sort_keys=True).encode())
    return digest.hexdigest()


def _pixel_centres(pixel, size, center=(0.0, 0.0)):
    coordinates = (np.arange(size) - 0.5 * (size - 1)) * pixel
    return coordinates + center[0], coordinates + center[1]


# Renders with the shipped tables, hashed (counts, intensity, metadata) with the renderer as it
# was before imaging conditions existed: the paper preset's checksums depend on them.
GOLDEN_CASES = {
    "small_64": (dict(count=12, spread=15.0, seed=0), dict(seed=3, index=1, image_size=64)),
    "no_blur_96": (dict(count=12, spread=15.0, seed=0),
                   dict(seed=3, index=2, image_size=96, pixel_size_nm=0.8, blur=False)),
    "focus_rect_noiseless": (dict(count=20, spread=20.0, seed=1),
                             dict(seed=4, index=0, image_size=(48, 80), focal_plane_nm=30.0,
                                  shot_noise=False)),
    "default_512": (dict(count=40, spread=40.0, seed=2), dict(seed=1, index=7)),
}
GOLDEN_DIGESTS = {
    "small_64": "d6c7b9d783fd8c7b56fc034b1b9ccb34cd00afc95c610ff7e64d540d5714c23b",
    "no_blur_96": "30a106ecfe77471d256da152fa5e7d6016f216f8b3a32efe7571c583c18842cf",
    "focus_rect_noiseless": "f6c144064bd5919fcd3182990d10fb8b2d717b5394acc24b1b8b450d73ab8d18",
    "default_512": "36231d55fb5490bac6db1926c2b2e9183bc4641b5d50a2164e74a5c1da277a0b",
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_default_renders_are_byte_identical_to_the_original_renderer(name):
    aggregate_args, kwargs = GOLDEN_CASES[name]
    aggregate = _random_aggregate(**aggregate_args)
    plain = render_stem(aggregate, **kwargs)
    assert _digest(plain) == GOLDEN_DIGESTS[name]
    # The same through conditions: the case's dose, pixel size and focus moved into them.
    kwargs = dict(kwargs)
    conditions = ImagingConditions(dose=kwargs.pop("dose", 149.0),
                                   pixel_size_nm=kwargs.pop("pixel_size_nm", 1.2),
                                   focal_plane_offset_nm=kwargs.pop("focal_plane_nm", 0.0))
    conditioned = render_stem(aggregate, conditions=conditions, **kwargs)
    np.testing.assert_array_equal(conditioned.counts, plain.counts)
    np.testing.assert_array_equal(conditioned.intensity, plain.intensity)
    if conditions.is_default():  # … and the metadata too
        assert _digest(conditioned) == GOLDEN_DIGESTS[name]
        assert _digest(render_stem(aggregate, conditions=None, **kwargs)) == GOLDEN_DIGESTS[name]


def test_dose_pixel_and_focus_from_conditions_equal_the_arguments():
    aggregate = _random_aggregate(12, 15.0, 0)
    tables = _tables()
    plain = render_stem(aggregate, seed=2, tables=tables, image_size=64, dose=50.0,
                        pixel_size_nm=0.8, focal_plane_nm=-25.0)
    conditions = ImagingConditions(dose=50.0, pixel_size_nm=0.8, focal_plane_offset_nm=-25.0)
    conditioned = render_stem(aggregate, seed=2, tables=tables, image_size=64,
                              conditions=conditions)
    np.testing.assert_array_equal(conditioned.counts, plain.counts)
    np.testing.assert_array_equal(conditioned.intensity, plain.intensity)
    extra = {"conditions", "dark_level", "beam_level", "film_intensity", "film_table",
             "clipped_low_pixels"}
    assert set(conditioned.metadata) - set(plain.metadata) == extra
    assert {k: v for k, v in conditioned.metadata.items() if k not in extra} == plain.metadata
    assert conditioned.metadata["conditions"] == conditions.to_dict()
    with pytest.raises(ValueError, match="dose"):
        render_stem(aggregate, seed=2, tables=tables, dose=60.0, conditions=conditions)
    with pytest.raises(TypeError):
        render_stem(aggregate, seed=2, tables=tables, conditions={"dose": 50.0})


def _empty_field(conditions, size=128, film_table=None, seed=0, index=0):
    # The only particle lies far outside the field: every pixel is support film.
    far = _aggregate([[5000.0, 0.0, 0.0]], [5.0], [WO3])
    return render_stem(far, seed=seed, index=index, tables=_tables(), image_size=size,
                       center_nm=(0.0, 0.0), conditions=conditions,
                       film_table=_film_table() if film_table is None else film_table)


def test_film_background_mean_and_variance_match_its_table_and_the_dose():
    thickness, gain, dark, read = 12.0, 1.5, 200.0, 4.0
    conditions = ImagingConditions(film_thickness_nm=thickness, gain=gain, dark_offset=dark,
                                   read_noise=read, probe_blur_nm=1.0)
    image = _empty_field(conditions)
    film = FILM_SLOPE * thickness
    assert image.metadata["film_intensity"] == pytest.approx(film)
    # Noise-free: the film's intensity everywhere, unchanged by the probe blur.
    np.testing.assert_allclose(image.intensity, film, rtol=1e-6)
    electrons = electrons_per_pixel(149.0, 1.2) * film   # ≈ 25.7 per pixel
    counts = image.counts.astype(np.float64).ravel()
    n = counts.size
    mean = dark + gain * electrons
    # gain² × Poisson variance + read noise + rounding to integers (1/12).
    variance = gain ** 2 * electrons + read ** 2 + 1.0 / 12.0
    assert abs(counts.mean() - mean) < 5 * math.sqrt(variance / n)
    # s.e. of a sample variance ≈ σ² √(2 / n) (near-normal counts; excess kurtosis ≈ 1/λ).
    assert abs(counts.var(ddof=1) - variance) < 5 * variance * math.sqrt(2.0 / n)
    # Shot noise is drawn over the whole field: no pixel is left at the dark level.
    assert np.count_nonzero(image.counts == dark) < 0.05 * n
    normalized = normalized_intensity(image.counts, image.metadata)
    assert abs(normalized.mean() - film) < 5 * math.sqrt(variance / n) / (gain * electrons / film)


def test_film_adds_to_the_aggregate_everywhere():
    tables, sphere = _tables(), _sphere(10.0)
    common = dict(seed=1, tables=tables, pixel_size_nm=0.5, image_size=64, shot_noise=False)
    bare = render_stem(sphere, **common)
    filmed = render_stem(sphere, conditions=ImagingConditions(film_thickness_nm=8.0,
                                                              pixel_size_nm=0.5),
                         film_table=_film_table(), **common)
    np.testing.assert_allclose(filmed.intensity, bare.intensity + FILM_SLOPE * 8.0, atol=1e-7)
    assert filmed.metadata["film_table"]["key"] == "C/amorphous/random"


def test_shipped_film_table_sets_the_background():
    from hagg_tf.stem.tables import load_film_table
    table = load_film_table()
    conditions = ImagingConditions(film_thickness_nm=10.0)
    image = _empty_field(conditions, size=64, film_table=table)
    default = render_stem(_aggregate([[5000.0, 0.0, 0.0]], [5.0], [WO3]), seed=0,
                          tables=_tables(), image_size=64, center_nm=(0.0, 0.0),
                          conditions=conditions)  # film table from load_film_table()
    expected = float(table(10.0))
    assert 0 < expected < 0.01
    assert default.metadata["film_intensity"] == pytest.approx(expected)
    assert default.metadata["film_table"]["source"].endswith("carbon_film_table.csv")
    electrons = electrons_per_pixel(149.0, 1.2) * expected
    counts = image.counts.astype(np.float64)
    assert abs(counts.mean() - electrons) < 5 * math.sqrt(electrons / counts.size)


def test_read_noise_variance_adds_and_leaves_the_shot_noise_alone():
    # Constant intensity 0.05 wherever there is material: a flat disc of Poisson counts.
    level = 0.05
    tables = _tables(wo3=lambda t: np.full_like(t, level), tio2=lambda t: np.full_like(t, level))
    sphere = _sphere(20.0)
    common = dict(seed=5, index=3, tables=tables, pixel_size_nm=1.0, image_size=96)
    clean = render_stem(sphere, **common)
    read, dark = 30.0, 1000.0
    noisy = render_stem(sphere, conditions=ImagingConditions(read_noise=read, dark_offset=dark,
                                                             pixel_size_nm=1.0), **common)
    xs, ys = _pixel_centres(1.0, 96)
    inner = xs[None, :] ** 2 + ys[:, None] ** 2 < 18.0 ** 2
    electrons = electrons_per_pixel(149.0, 1.0) * level
    n = int(inner.sum())
    # Definition: Var = gain² λ + read² + 1/12 (rounding), mean = λ + dark.
    for image, expected in ((clean, electrons), (noisy, electrons + read ** 2 + 1.0 / 12.0)):
        counts = image.counts[inner].astype(np.float64)
        assert abs(counts.var(ddof=1) - expected) < 5 * expected * math.sqrt(2.0 / n)
    assert abs(noisy.counts[inner].mean() - dark - electrons) < 5 * math.sqrt(
        (electrons + read ** 2) / n)
    # Without a film the Poisson draws are today's: the difference is the read noise alone,
    # the same over the whole field, particle or not.
    difference = noisy.counts.astype(np.float64) - clean.counts - dark
    variance = read ** 2 + 1.0 / 12.0
    assert abs(difference.mean()) < 5 * math.sqrt(variance / difference.size)
    assert abs(difference.var(ddof=1) - variance) < 5 * variance * math.sqrt(2.0 / difference.size)
    np.testing.assert_array_equal(noisy.intensity, clean.intensity)
    assert noisy.metadata["dark_level"] == dark
    assert noisy.metadata["beam_level"] == pytest.approx(electrons_per_pixel(149.0, 1.0))


def _second_moment(image, axis):
    weights = image.sum(axis=1 - axis)
    coordinate = np.arange(weights.size)
    mean = (weights * coordinate).sum() / weights.sum()
    return (weights * (coordinate - mean) ** 2).sum() / weights.sum()


@pytest.mark.parametrize("offset, probe_blur", [(-60.0, 0.0), (80.0, 0.0), (40.0, 0.3)])
def test_focus_offset_widens_the_blur_as_height_times_tan_beta(offset, probe_blur):
    tables, pixel = _tables(), 0.25
    sphere = _sphere(1.5)
    common = dict(seed=1, tables=tables, image_size=128, scan_noise_nm=0.0, shot_noise=False)
    sharp = render_stem(sphere, pixel_size_nm=pixel, **common).intensity.astype(np.float64)
    conditions = ImagingConditions(focal_plane_offset_nm=offset, probe_blur_nm=probe_blur,
                                   pixel_size_nm=pixel)
    blurred = render_stem(sphere, conditions=conditions, **common)
    # The particle sits at the centre of mass: |z − z_focal| = |offset|; probe blur adds in
    # quadrature.
    expected = (abs(offset) * TAN_BETA / pixel) ** 2 + (probe_blur / pixel) ** 2
    for axis in (0, 1):
        added = (_second_moment(blurred.intensity.astype(np.float64), axis)
                 - _second_moment(sharp, axis))
        assert added == pytest.approx(expected, rel=0.02)
    assert blurred.intensity.sum() == pytest.approx(sharp.sum(), rel=1e-4)
    assert blurred.metadata["focal_plane_offset_nm"] == offset


def test_probe_blur_applies_without_defocus_blur():
    tables, pixel, probe = _tables(), 0.25, 0.5
    sphere = _sphere(1.5, z=50.0)  # far from any focal plane, but blur=False
    common = dict(seed=1, tables=tables, image_size=96, scan_noise_nm=0.0, shot_noise=False,
                  blur=False)
    sharp = render_stem(sphere, pixel_size_nm=pixel, **common).intensity.astype(np.float64)
    blurred = render_stem(sphere, conditions=ImagingConditions(probe_blur_nm=probe,
                                                               pixel_size_nm=pixel), **common)
    added = _second_moment(blurred.intensity.astype(np.float64), 0) - _second_moment(sharp, 0)
    assert added == pytest.approx((probe / pixel) ** 2, rel=0.02)


def test_saturation_clips_at_65535_and_is_counted():
    tables, sphere = _tables(), _sphere(10.0)
    common = dict(seed=4, tables=tables, image_size=64, center_nm=(0.0, 0.0))
    clean = render_stem(sphere, pixel_size_nm=1.0, **common)
    gain, dark = 80.0, 3000.0
    bright = render_stem(sphere, conditions=ImagingConditions(gain=gain, dark_offset=dark,
                                                              pixel_size_nm=1.0), **common)
    assert clean.metadata["saturated_pixels"] == 0
    # Same Poisson draws (no film): the counts follow from the clean ones exactly.
    signal = np.rint(gain * clean.counts.astype(np.float64) + dark)
    assert np.count_nonzero(signal > 65535) > 50
    np.testing.assert_array_equal(bright.counts, np.minimum(signal, 65535).astype(np.uint16))
    assert bright.counts.dtype == np.uint16
    assert bright.metadata["saturated_pixels"] == np.count_nonzero(signal > 65535)
    # Read noise without offset pushes about half of the empty pixels below 0: clipped, counted.
    low = render_stem(sphere, conditions=ImagingConditions(read_noise=5.0, pixel_size_nm=1.0),
                      **common)
    empty = int(np.count_nonzero(clean.intensity == 0))
    assert low.counts.min() == 0
    # An empty pixel rounds below 0 when the read noise is < −0.5: P = Φ(−0.1) ≈ 0.46.
    below = 0.5 * (1.0 + math.erf(-0.5 / 5.0 / math.sqrt(2.0)))
    clipped = low.metadata["clipped_low_pixels"]
    assert abs(clipped - below * empty) < 6 * math.sqrt(empty * below * (1 - below)) + 5


def _row_centres(intensity, rows):
    """Column of a sphere's centre in each row: the vertex of its chord's thickness².

    With intensity ∝ thickness, I² ∝ R² − y² − (x − c)² is exactly a parabola in the column
    x over the row's chord, so the vertex c of the fitted parabola is the row's centre exactly
    (a centroid of the samples would be off by up to ~0.05 px from the sampling alone).
    """
    centres = []
    for row in rows:
        columns = np.flatnonzero(intensity[row] > 0)
        a, b, _ = np.polyfit(columns, intensity[row, columns].astype(np.float64) ** 2, 2)
        centres.append(-b / (2 * a))
    return np.asarray(centres)


def test_drift_moves_each_row_by_its_share_of_the_drift():
    tables, pixel, size, radius = _tables(), 1.0, 64, 12.0
    drift = (6.0, -4.0)
    sphere = _sphere(radius)
    image = render_stem(sphere, seed=2, tables=tables, pixel_size_nm=pixel, image_size=size,
                        center_nm=(0.0, 0.0), scan_noise_nm=0.0, shot_noise=False,
                        conditions=ImagingConditions(drift_nm=drift, pixel_size_nm=pixel))
    # Row r sees the specimen shifted by drift × r / (H − 1): pixelwise, the sphere there.
    xs, ys = _pixel_centres(pixel, size)
    fraction = np.arange(size) / (size - 1)
    dx, dy = (drift[0] * fraction)[:, None], (drift[1] * fraction)[:, None]
    squared = radius ** 2 - (xs[None, :] - dx) ** 2 - (ys[:, None] - dy) ** 2
    thickness = 2.0 * np.sqrt(np.clip(squared, 0.0, None))
    np.testing.assert_allclose(image.intensity, 0.004 * thickness, atol=1e-6)
    # Row-wise centre of the particle: shifted by the row's share of the x drift.
    rows = np.flatnonzero((image.intensity > 0).sum(axis=1) >= 9)
    assert rows.size > 15
    shift = _row_centres(image.intensity, rows) - 0.5 * (size - 1)
    np.testing.assert_allclose(shift, drift[0] / pixel * rows / (size - 1), atol=1e-3)


@pytest.mark.parametrize("height", [20.0, 150.0])  # σ = 0.42 px and 3.2 px
def test_drift_of_a_blurred_particle_equals_the_translated_image_row_by_row(height):
    tables, pixel, size = _tables(), 1.0, 64
    sphere = _sphere(9.0, z=height)  # alone, at its own centre of mass: focus it off
    focus = -height
    drift = (7.0, 5.0)
    common = dict(seed=2, tables=tables, image_size=size, scan_noise_nm=0.0, shot_noise=False)
    drifted = render_stem(sphere, center_nm=(0.0, 0.0), conditions=ImagingConditions(
        drift_nm=drift, focal_plane_offset_nm=focus, pixel_size_nm=pixel), **common)
    for row in (0, 20, 37, 63):
        share = row / (size - 1)
        # The specimen shifted by +d is the image centre moved by −d.
        moved = render_stem(sphere, pixel_size_nm=pixel, focal_plane_nm=focus,
                            center_nm=(-drift[0] * share, -drift[1] * share), **common)
        np.testing.assert_allclose(drifted.intensity[row], moved.intensity[row], atol=1e-6)
    assert drifted.intensity.max() > 0.01


def test_line_jitter_shifts_whole_rows_by_the_documented_draws():
    tables, pixel, size, radius, jitter = _tables(), 0.5, 96, 20.0, 0.6
    sphere = _sphere(radius)
    seed, index = 8, 2
    image = render_stem(sphere, seed=seed, index=index, tables=tables, pixel_size_nm=pixel,
                        image_size=size, center_nm=(0.0, 0.0), scan_noise_nm=0.0,
                        shot_noise=False,
                        conditions=ImagingConditions(line_jitter_nm=jitter, pixel_size_nm=pixel))
    # Draw order: table choice (2 uniforms per particle), then one normal per scan line.
    rng = image_rng(seed, index)
    tables.choose(sphere.labels, rng)
    offsets = rng.standard_normal(size) * jitter  # nm, along x
    xs, ys = _pixel_centres(pixel, size)
    squared = radius ** 2 - (xs[None, :] - offsets[:, None]) ** 2 - ys[:, None] ** 2
    np.testing.assert_allclose(image.intensity, 0.004 * 2.0 * np.sqrt(np.clip(squared, 0, None)),
                               atol=1e-6)
    # The rows through the particle move by independent offsets of s.d. line_jitter_nm.
    rows = np.flatnonzero((image.intensity > 0).sum(axis=1) >= 12)
    shift = (_row_centres(image.intensity, rows) - 0.5 * (size - 1)) * pixel
    np.testing.assert_allclose(shift, offsets[rows], atol=1e-3)
    assert shift.std(ddof=1) == pytest.approx(jitter, rel=0.45)  # ~70 rows: s.e. ≈ 9 %


def test_small_displacements_agree_with_the_undisplaced_renderer():
    # The displaced-scan code path against the regular one at a negligible drift, for sharp,
    # slightly and strongly blurred particles (no scan noise, which differs per path).
    aggregate = _random_aggregate(15, 15.0, 3)
    tables = _tables()
    common = dict(seed=6, tables=tables, image_size=80, scan_noise_nm=0.0, shot_noise=False)
    for focus in (0.0, 60.0):
        base = render_stem(aggregate, conditions=ImagingConditions(focal_plane_offset_nm=focus),
                           **common).intensity
        moved = render_stem(aggregate, conditions=ImagingConditions(
            focal_plane_offset_nm=focus, drift_nm=(1e-9, -1e-9)), **common).intensity
        np.testing.assert_allclose(moved, base, atol=1e-6 * base.max())


def test_normalized_intensity_recovers_the_intensity_within_shot_noise(tmp_path):
    tables, sphere = _tables(), _sphere(15.0)
    gain, dark, read = 3.0, 300.0, 2.0
    conditions = ImagingConditions(film_thickness_nm=10.0, gain=gain, dark_offset=dark,
                                   read_noise=read, dose=300.0, pixel_size_nm=0.8)
    image = render_stem(sphere, seed=9, tables=tables, image_size=64, conditions=conditions,
                        film_table=_film_table())
    path = write_stem_png(tmp_path / "image.png", image)
    counts, metadata = read_stem_png(path)
    normalized = normalized_intensity(counts, metadata)
    electrons = electrons_per_pixel(300.0, 0.8)
    assert metadata["beam_level"] == pytest.approx(gain * electrons)
    truth = image.intensity.astype(np.float64)
    # Per pixel: Poisson s.d. √(λ) electrons plus read noise and rounding, in beam fractions.
    sd = np.sqrt(gain ** 2 * electrons * truth + read ** 2 + 1.0 / 12.0) / (gain * electrons)
    z_scores = (normalized - truth) / sd
    assert np.abs(z_scores).max() < 5.5
    assert abs(z_scores.mean()) < 5.0 / math.sqrt(z_scores.size)
    # Default metadata (no beam_level): counts / electrons per pixel.
    plain = render_stem(sphere, seed=9, tables=tables, image_size=64)
    np.testing.assert_allclose(normalized_intensity(plain.counts, plain.metadata),
                               plain.counts / plain.metadata["electrons_per_pixel"], rtol=1e-6)


def test_to_dict_from_dict_round_trip_and_helpers():
    conditions = ImagingConditions(film_thickness_nm=5, gain=2.5, dark_offset=100.0,
                                   read_noise=3.0, focal_plane_offset_nm=-40.0,
                                   probe_blur_nm=0.6, line_jitter_nm=0.2, drift_nm=[1.5, -0.5],
                                   dose=80.0, pixel_size_nm=1.0)
    as_dict = conditions.to_dict()
    assert as_dict["drift_nm"] == [1.5, -0.5] and isinstance(as_dict["film_thickness_nm"], float)
    restored = ImagingConditions.from_dict(json.loads(json.dumps(as_dict)))
    assert restored == conditions and hash(restored) == hash(conditions)
    assert ImagingConditions.from_dict({"gain": 2.0}) == ImagingConditions(gain=2.0)
    assert ImagingConditions().is_default() and not conditions.is_default()
    assert ImagingConditions(focal_plane_offset_nm=-0.0).is_default()
    assert conditions.replace(gain=1.0).gain == 1.0 and conditions.gain == 2.5
    with pytest.raises(ValueError, match="colour"):
        ImagingConditions.from_dict({"colour": 1.0})
    with pytest.raises(ValueError, match="colour"):
        conditions.replace(colour=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        conditions.gain = 3.0


@pytest.mark.parametrize("field, value", [
    ("film_thickness_nm", -1.0), ("gain", 0.0), ("gain", -2.0), ("gain", float("nan")),
    ("dark_offset", -5.0), ("read_noise", -1.0), ("read_noise", float("inf")),
    ("focal_plane_offset_nm", float("nan")), ("probe_blur_nm", -0.1), ("line_jitter_nm", -0.1),
    ("dose", 0.0), ("pixel_size_nm", 0.0), ("drift_nm", (1.0, float("nan"))),
    ("drift_nm", (1.0,)), ("drift_nm", 2.0), ("gain", "2"), ("gain", True),
])
def test_invalid_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field) as caught:
        ImagingConditions(**{field: value})
    assert isinstance(caught.value, ConditionsError)


def test_parse_conditions_from_text():
    parsed = parse_conditions("film_thickness_nm=5, read_noise=3,drift_nm=2,-1")
    assert parsed == ImagingConditions(film_thickness_nm=5.0, read_noise=3.0, drift_nm=(2.0, -1.0))
    base = ImagingConditions(dose=50.0)
    assert parse_conditions("gain=2", base=base) == ImagingConditions(dose=50.0, gain=2.0)
    assert parse_conditions("") == ImagingConditions()
    assert parse_conditions(json.dumps(parsed.to_dict())) == parsed
    for text, message in [("colour=3", "colour"), ("gain=two", "gain"), ("gain=1,gain=2", "twice"),
                          ("drift_nm=1", "drift_nm"), ("read_noise=1,2", "read_noise"),
                          ("gain=0", "gain"), ("5", "name=value"), ("{bad json", "JSON")]:
        with pytest.raises(ConditionsError, match=message):
            parse_conditions(text)


def test_reproducible_from_seed_and_index_in_any_order():
    aggregate = _random_aggregate(10, 12.0, 4)
    tables = _tables()
    conditions = ImagingConditions(film_thickness_nm=6.0, gain=1.7, dark_offset=40.0,
                                   read_noise=2.5, focal_plane_offset_nm=20.0, probe_blur_nm=0.5,
                                   line_jitter_nm=0.3, drift_nm=(2.0, 1.0), dose=120.0,
                                   pixel_size_nm=0.9)
    render = lambda index: render_stem(aggregate, seed=21, index=index, tables=tables,
                                       image_size=64, conditions=conditions,
                                       film_table=_film_table())
    forward = [render(i) for i in range(3)]
    backward = [render(i) for i in reversed(range(3))][::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.intensity, b.intensity)
        assert a.metadata == b.metadata
    assert not np.array_equal(forward[0].counts, forward[1].counts)
    assert forward[0].metadata["conditions"] == conditions.to_dict()


def _simulate(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "simulate_stem.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_simulate_stem_conditions_flag(tmp_path):
    thickness = np.linspace(0.0, 80.0, 81)
    table_file = tmp_path / "tables.csv"
    table_file.write_text(HaadfTables([
        HaadfTable("WO3", WO3, "gamma", "a", thickness, 0.004 * thickness),
        HaadfTable("TiO2", TIO2, "rutile", "a", thickness, 0.0004 * thickness)]).to_text())
    film_file = tmp_path / "film.csv"
    film_file.write_text("material,phase,orientation,thickness_nm,intensity\n"
                         "C,amorphous,random,0,0\nC,amorphous,random,40,0.004\n")
    common = ["--theta=1.8,0.5,2,3", "--image_size=48", f"--tables={table_file}",
              "--nosave_aggregates"]
    result = _simulate(*common, f"--output={tmp_path / 'images'}", f"--film_table={film_file}",
                       "--conditions=film_thickness_nm=5,read_noise=3,drift_nm=1,-1",
                       "--pixel_size_nm=4")
    assert result.returncode == 0, result.stderr
    counts, metadata = read_stem_png(tmp_path / "images" / "aggregate_000000.png")
    assert metadata["conditions"] == ImagingConditions(
        film_thickness_nm=5.0, read_noise=3.0, drift_nm=(1.0, -1.0), pixel_size_nm=4.0).to_dict()
    assert metadata["film_intensity"] == pytest.approx(0.0005)
    assert np.count_nonzero(counts) > 0.9 * counts.size  # the film's shot noise everywhere
    failed = _simulate(*common, f"--output={tmp_path / 'bad'}", "--conditions=gain=0,colour=1")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines() == [
        "error: --conditions: unknown imaging condition 'colour' (known: film_thickness_nm, "
        "gain, dark_offset, read_noise, focal_plane_offset_nm, probe_blur_nm, line_jitter_nm, "
        "drift_nm, dose, pixel_size_nm)"]
