"""Physical properties of the HAADF-STEM image formation (SPEC §6, paper Sec. 2.1.4)."""

import math

import numpy as np
import pytest

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.parameters import TIO2, WO3
from hagg_tf.stem import (HaadfTable, HaadfTables, electrons_per_pixel, image_rng,
                          intensity_from_counts, read_stem_png, render_stem, write_stem_png)

SIZE = 64
TAN_BETA = math.tan(21.1e-3)


def _tables(wo3=lambda t: 0.004 * t, tio2=lambda t: 0.0004 * t, orientations=1):
    """Synthetic tables: one phase per material, intensity a given function of thickness."""
    thickness = np.linspace(0.0, 100.0, 201)
    tables = []
    for orientation in range(orientations):
        tables.append(HaadfTable("WO3", WO3, "gamma", f"o{orientation}", thickness,
                                 np.asarray(wo3(thickness), dtype=float)))
        tables.append(HaadfTable("TiO2", TIO2, "rutile", f"o{orientation}", thickness,
                                 np.asarray(tio2(thickness), dtype=float)))
    return HaadfTables(tables)


def _aggregate(positions, radii, labels):
    positions = np.asarray(positions, dtype=float)
    return Aggregate(positions=positions, radii=radii, labels=labels,
                     cluster_ids=np.arange(len(radii)))


def _pixel_centres(pixel_size, center, size=SIZE):
    coordinates = (np.arange(size) - 0.5 * (size - 1)) * pixel_size
    return coordinates + center[0], coordinates + center[1]


@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.37, -0.21)])
def test_sphere_thickness_matches_projection_pixelwise(offset):
    # Intensity = thickness / 100 nm, so the noise-free image is the thickness map.
    tables = _tables(wo3=lambda t: t / 100.0, tio2=lambda t: t / 100.0)
    radius, pixel = 11.3, 0.5
    particle = _aggregate([[offset[0], offset[1], 0.0]], [radius], [WO3])
    image = render_stem(particle, seed=0, tables=tables, pixel_size_nm=pixel, image_size=SIZE,
                        center_nm=(0.0, 0.0), scan_noise_nm=0.0, shot_noise=False)
    xs, ys = _pixel_centres(pixel, (0.0, 0.0))
    squared = radius ** 2 - (xs[None, :] - offset[0]) ** 2 - (ys[:, None] - offset[1]) ** 2
    expected = 2.0 * np.sqrt(np.clip(squared, 0.0, None))
    np.testing.assert_allclose(100.0 * image.intensity, expected, atol=2e-4)
    assert np.count_nonzero(expected) > 1000


def test_mean_counts_equal_dose_times_area_times_intensity_and_poisson_variance():
    intensity_level = 0.1
    tables = _tables(wo3=lambda t: np.full_like(t, intensity_level),
                     tio2=lambda t: np.full_like(t, intensity_level))
    pixel, dose = 1.0, 149.0
    particle = _aggregate([[0.0, 0.0, 0.0]], [30.0], [TIO2])
    per_pixel = dose * (10.0 * pixel) ** 2  # e/Å² × Å²
    samples = []
    for index in range(4):
        image = render_stem(particle, seed=11, index=index, tables=tables, pixel_size_nm=pixel,
                            image_size=SIZE, dose=dose)
        assert image.metadata["electrons_per_pixel"] == pytest.approx(per_pixel)
        assert image.counts.dtype == np.uint16
        # Pixels well inside the disc (scan jitter of 0.01 nm cannot reach the rim).
        xs, ys = _pixel_centres(pixel, (0.0, 0.0))
        inner = xs[None, :] ** 2 + ys[:, None] ** 2 < 29.0 ** 2
        samples.append(image.counts[inner].astype(float))
    counts = np.concatenate(samples)
    expected_mean = per_pixel * intensity_level
    standard_error = math.sqrt(expected_mean / counts.size)
    assert abs(counts.mean() - expected_mean) < 4 * standard_error
    # Var/mean of a Poisson variable is 1; its s.e. here is about sqrt(2 / n) ≈ 0.014.
    assert counts.var(ddof=1) / counts.mean() == pytest.approx(1.0, abs=0.06)


def test_mean_counts_follow_intensity_pixelwise():
    tables = _tables()
    particle = _aggregate([[0.0, 0.0, 0.0]], [14.0], [WO3])
    kwargs = dict(seed=5, tables=tables, pixel_size_nm=0.6, image_size=SIZE, scan_noise_nm=0.0)
    mean = np.mean([render_stem(particle, index=i, **kwargs).counts.astype(float)
                    for i in range(200)], axis=0)
    # Independent expectation: 149 e/Å² on (6 Å)² pixels = 5364 electrons, times the WO3 table
    # (0.004 per nm) of the sphere's thickness at the pixel centres (z = 0: no blur).
    xs, ys = _pixel_centres(0.6, (0.0, 0.0))
    thickness = 2.0 * np.sqrt(np.clip(14.0 ** 2 - xs[None, :] ** 2 - ys[:, None] ** 2, 0.0, None))
    expected = 149.0 * 6.0 ** 2 * 0.004 * thickness
    inside = expected > 100
    # 200 draws: s.e. of the mean is sqrt(λ/200) ≤ 7 % of sqrt(λ).
    z_scores = (mean[inside] - expected[inside]) / np.sqrt(expected[inside] / 200)
    assert np.abs(z_scores).max() < 5.0
    assert abs(z_scores.mean()) < 4.0 / math.sqrt(inside.sum())


def _second_moment(image, axis):
    weights = image.sum(axis=1 - axis)
    coordinate = np.arange(weights.size)
    mean = (weights * coordinate).sum() / weights.sum()
    return (weights * (coordinate - mean) ** 2).sum() / weights.sum()


@pytest.mark.parametrize("height", [-150.0, -40.0, 60.0, 200.0])
def test_blur_width_follows_height_times_tan_beta(height):
    tables = _tables()
    pixel = 0.25
    particle = _aggregate([[0.0, 0.0, 0.0]], [1.5], [WO3])
    common = dict(seed=1, tables=tables, pixel_size_nm=pixel, image_size=160, scan_noise_nm=0.0,
                  shot_noise=False)
    sharp = render_stem(particle, **common).intensity.astype(np.float64)
    # The focal plane sits `height` below the particle: the particle is at z = +height.
    blurred = render_stem(particle, focal_plane_nm=-height, **common)
    sigma_px = abs(height) * TAN_BETA / pixel
    for axis in (0, 1):
        added = _second_moment(blurred.intensity.astype(np.float64), axis) - _second_moment(sharp, axis)
        assert math.sqrt(added) == pytest.approx(sigma_px, rel=0.01)
    # Blurring moves intensity around but keeps the total (the support lies inside the image).
    assert blurred.intensity.sum() == pytest.approx(sharp.sum(), rel=1e-4)
    assert blurred.metadata["focal_plane_z_nm"] == pytest.approx(-height)


@pytest.mark.parametrize("focal_offset", [0.0, 30.0])
def test_each_particle_is_blurred_by_its_own_distance_from_the_focal_plane(focal_offset):
    # Four equal spheres, well apart laterally, at heights -100, 0, +60, +40 nm from their
    # centre of mass, which sits at z = 50 nm (not at 0, so that a focal plane ignoring the
    # centre of mass shows). The focal plane lies `focal_offset` above the centre of mass.
    from scipy import ndimage
    slope, radius, pixel, size = 0.004, 1.5, 0.25, 320  # intensity = slope × thickness (nm)
    tables = _tables(wo3=lambda t: slope * t)
    centre_z = 50.0
    heights = np.array([-100.0, 0.0, 60.0, 40.0])
    lateral = np.array([[-20.0, -20.0], [20.0, -20.0], [-20.0, 20.0], [20.0, 20.0]])
    positions = np.column_stack([lateral, centre_z + heights])
    aggregate = _aggregate(positions, np.full(4, radius), np.full(4, WO3))
    image = render_stem(aggregate, seed=0, tables=tables, pixel_size_nm=pixel, image_size=size,
                        center_nm=(0.0, 0.0), focal_plane_nm=focal_offset, scan_noise_nm=0.0,
                        shot_noise=False)
    focal_z = centre_z + focal_offset
    assert image.metadata["focal_plane_z_nm"] == pytest.approx(focal_z)
    # σ = |z − z_focal| tan β, β = 21.1 mrad (paper Sec. 2.1.4), in pixels.
    sigmas_px = np.abs(centre_z + heights - focal_z) * math.tan(0.0211) / pixel
    xs, ys = _pixel_centres(pixel, (0.0, 0.0), size)
    expected = np.zeros((size, size))
    # Window half-width, pixels: beyond 4σ of the widest blur (11 px at 130 nm) plus the radius.
    half = 60
    intensity = image.intensity.astype(np.float64)
    for (x, y), sigma in zip(lateral, sigmas_px):
        squared = radius ** 2 - (xs[None, :] - x) ** 2 - (ys[:, None] - y) ** 2
        sharp = slope * 2.0 * np.sqrt(np.clip(squared, 0.0, None))
        blurred = ndimage.gaussian_filter(sharp, sigma, mode="constant") if sigma > 0 else sharp
        expected += blurred
        row, col = int(np.argmin(np.abs(ys - y))), int(np.argmin(np.abs(xs - x)))
        window = (slice(row - half, row + half), slice(col - half, col + half))
        for axis in (0, 1):
            added = _second_moment(intensity[window], axis) - _second_moment(sharp[window], axis)
            assert added == pytest.approx(sigma ** 2, abs=0.02 + 0.01 * sigma ** 2)
    np.testing.assert_allclose(intensity, expected, rtol=0, atol=1e-3 * expected.max())


def test_wo3_brighter_than_tio2_of_same_thickness_with_shipped_tables():
    from hagg_tf.stem import load_tables
    tables = load_tables()
    radius = 10.0
    means = {WO3: [], TIO2: []}
    for table_index, table in enumerate(tables.tables):
        particle = _aggregate([[0.0, 0.0, 0.0]], [radius], [table.label])
        image = render_stem(particle, seed=0, tables=tables, pixel_size_nm=0.5, image_size=SIZE,
                            shot_noise=False, table_indices=np.array([table_index]))
        means[table.label].append(image.intensity.sum())
    assert min(means[WO3]) > max(means[TIO2])


def test_two_particles_sum_and_material_contrast():
    tables = _tables()
    both = _aggregate([[-8.0, 0.0, 0.0], [8.0, 0.0, 0.0]], [6.0, 6.0], [WO3, TIO2])
    image = render_stem(both, seed=3, tables=tables, pixel_size_nm=0.5, image_size=SIZE,
                        scan_noise_nm=0.0, shot_noise=False)
    left, right = image.intensity[:, : SIZE // 2], image.intensity[:, SIZE // 2:]
    assert left.sum() == pytest.approx(10.0 * right.sum(), rel=1e-6)  # 0.004 vs 0.0004 per nm
    alone = render_stem(_aggregate([[-8.0, 0.0, 0.0]], [6.0], [WO3]), seed=3, tables=tables,
                        pixel_size_nm=0.5, image_size=SIZE, scan_noise_nm=0.0, shot_noise=False,
                        center_nm=tuple(both.center_of_mass()[:2]))
    np.testing.assert_allclose(image.intensity[:, : SIZE // 2], alone.intensity[:, : SIZE // 2],
                               atol=1e-7)


def test_scan_noise_is_a_tiny_perturbation_at_particle_rims():
    tables = _tables()
    particle = _aggregate([[0.0, 0.0, 0.0], [20.0, 5.0, 90.0]], [9.0, 7.0], [WO3, WO3])
    common = dict(seed=2, tables=tables, pixel_size_nm=1.2, image_size=SIZE, shot_noise=False)
    clean = render_stem(particle, scan_noise_nm=0.0, **common).intensity
    jittered = render_stem(particle, **common).intensity
    difference = np.abs(jittered - clean)
    assert difference.max() > 0
    # Relative to the brightest pixel the effect stays at the per-cent level at most.
    assert difference.max() < 0.05 * clean.max()
    # Far from the rims (interior pixels) the change is far smaller still.
    assert np.median(difference[clean > 0.5 * clean.max()]) < 1e-3 * clean.max()


def test_reproducible_from_seed_and_index_in_any_order():
    tables = _tables(orientations=3)
    rng = np.random.default_rng(0)
    particle = _aggregate(rng.normal(scale=15.0, size=(12, 3)), np.full(12, 4.0),
                          rng.integers(0, 2, 12))
    render = lambda index: render_stem(particle, seed=42, index=index, tables=tables,
                                       pixel_size_nm=1.0, image_size=SIZE)
    forward = [render(i).counts for i in range(3)]
    backward = [render(i).counts for i in reversed(range(3))][::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(forward[0], forward[1])
    first = render(0).metadata
    assert first["seed"] == 42 and first["index"] == 0
    assert len(first["particle_phase"]) == 12
    # The stream is independent of the generator's stream for the same (seed, index).
    generator_stream = np.random.default_rng(np.random.SeedSequence(42, spawn_key=(0,)))
    assert image_rng(42, 0).random() != generator_stream.random()


def test_phases_and_orientations_are_chosen_uniformly():
    tables = _tables(orientations=4)
    labels = np.zeros(20000, dtype=np.int8)
    chosen = tables.choose(labels, np.random.default_rng(1))
    frequencies = np.bincount(chosen, minlength=len(tables))[[0, 2, 4, 6]] / labels.size
    np.testing.assert_allclose(frequencies, 0.25, atol=0.015)
    assert all(tables.tables[i].label == WO3 for i in np.unique(chosen))


def test_particles_outside_and_empty_images():
    tables = _tables()
    far = _aggregate([[0.0, 0.0, 0.0], [500.0, 0.0, 0.0]], [5.0, 5.0], [WO3, WO3])
    image = render_stem(far, seed=0, tables=tables, pixel_size_nm=1.0, image_size=SIZE,
                        center_nm=(0.0, 0.0))
    assert image.metadata["particles_outside"] == 1
    assert image.counts.sum() > 0
    nowhere = render_stem(far, seed=0, tables=tables, pixel_size_nm=1.0, image_size=SIZE,
                          center_nm=(5000.0, 0.0))
    assert nowhere.counts.sum() == 0 and nowhere.metadata["particles_outside"] == 2


def test_png_round_trip_keeps_counts_and_metadata(tmp_path):
    tables = _tables()
    particle = _aggregate([[0.0, 0.0, 0.0], [9.0, 3.0, -20.0]], [6.0, 5.0], [WO3, TIO2])
    image = render_stem(particle, seed=9, index=4, tables=tables, pixel_size_nm=0.8,
                        image_size=SIZE)
    path = write_stem_png(tmp_path / "sub" / "image.png", image)
    counts, metadata = read_stem_png(path)
    assert counts.dtype == np.uint16
    np.testing.assert_array_equal(counts, image.counts)
    assert metadata == image.metadata
    restored = intensity_from_counts(counts, metadata)
    # 149 e/Å² on (8 Å)² pixels: 9536 electrons per pixel.
    np.testing.assert_allclose(restored, counts / 9536.0, rtol=1e-6)
    assert restored.max() > 0


def test_read_rejects_plain_png(tmp_path):
    import imageio.v3 as iio
    path = tmp_path / "plain.png"
    iio.imwrite(path, np.zeros((8, 8), dtype=np.uint16))
    with pytest.raises(ValueError, match="metadata"):
        read_stem_png(path)


def test_default_image_is_512_square_uint16_with_metadata():
    particle = _aggregate([[0.0, 0.0, 0.0], [20.0, 0.0, 5.0]], [10.0, 12.0], [WO3, TIO2])
    image = render_stem(particle, seed=1)
    assert image.counts.shape == (512, 512) and image.counts.dtype == np.uint16
    metadata = image.metadata
    assert metadata["dose_e_per_A2"] == 149.0
    # Dose (e/Å²) × pixel area ((10 Å per nm × pixel nm)²), written out here.
    pixel_area_angstrom2 = (10.0 * metadata["pixel_size_nm"]) ** 2
    assert metadata["electrons_per_pixel"] == pytest.approx(149.0 * pixel_area_angstrom2)
    assert electrons_per_pixel(149.0, 1.2) == pytest.approx(21456.0)  # 149 × 12²
    assert electrons_per_pixel(100.0, 0.5) == pytest.approx(2500.0)  # 100 × 5²
    assert metadata["image_size"] == [512, 512] and metadata["focal_plane_offset_nm"] == 0.0


@pytest.mark.parametrize("shot_noise", [False, True])
def test_counts_saturate_at_65535_instead_of_wrapping(shot_noise):
    # 20 000 e/Å² on 1 nm pixels: 2·10⁶ electrons per pixel; the WO3 table gives 0.004 per nm,
    # so the centre of a 10 nm sphere (20 nm thick) expects 160 000 counts, beyond uint16.
    tables = _tables(wo3=lambda t: 0.004 * t)
    particle = _aggregate([[0.0, 0.0, 0.0]], [10.0], [WO3])
    image = render_stem(particle, seed=4, tables=tables, pixel_size_nm=1.0, image_size=SIZE,
                        center_nm=(0.0, 0.0), dose=20000.0, scan_noise_nm=0.0,
                        shot_noise=shot_noise)
    xs, ys = _pixel_centres(1.0, (0.0, 0.0))
    thickness = 2.0 * np.sqrt(np.clip(100.0 - xs[None, :] ** 2 - ys[:, None] ** 2, 0.0, None))
    expected = 20000.0 * 10.0 ** 2 * 0.004 * thickness
    over = expected > 65535 * 1.05  # well above the limit: Poisson noise cannot bring them under
    assert over.sum() > 100 and (expected > 70000).any() and (expected < 131070).any()
    counts = image.counts
    assert counts.dtype == np.uint16
    assert np.all(counts[over] == 65535)  # clipped, not wrapped round to small values
    below = (expected > 0) & (expected < 65535 * 0.95)
    if shot_noise:
        assert np.all(np.abs(counts[below] - expected[below]) < 6 * np.sqrt(expected[below]) + 1)
    else:
        np.testing.assert_allclose(counts[below], np.rint(expected[below]), atol=1)
    assert image.metadata["saturated_pixels"] >= over.sum()
    assert image.metadata["saturated_pixels"] <= np.count_nonzero(expected > 65535 * 0.95)


def test_bad_arguments_raise():
    particle = _aggregate([[0.0, 0.0, 0.0]], [5.0], [WO3])
    tables = _tables()
    with pytest.raises(ValueError, match="seed"):
        render_stem(particle, tables=tables)
    with pytest.raises(ValueError):
        render_stem(particle, seed=0, tables=tables, pixel_size_nm=0.0)
    with pytest.raises(ValueError, match="other material"):
        render_stem(particle, seed=0, tables=tables, table_indices=np.array([1]))
