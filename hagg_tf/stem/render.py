"""HAADF-STEM images of virtual aggregates (paper Sec. 2.1.4, SPEC §6).

Image formation, per particle k with centre (x_k, y_k, z_k) and radius r_k:

1. thickness map by projection along the beam (z): t_k(x, y) = 2 √(r_k² − s²), s the lateral
   distance from the centre — exact for spheres, evaluated at the probe positions (STEM samples
   points: the probe, ~0.1 nm, is far smaller than a ~1.2 nm pixel);
2. intensity map I_k = table_k(t_k), the table of the particle's material in a uniformly
   random phase and orientation;
3. defocus blur: Gaussian of σ_k = |z_k − z_focal| tan β (conical beam, β = 21.1 mrad);
4. sum over particles;
5. scan noise: each probe position is displaced by an independent Gaussian vector with
   s.d. 0.01 nm per axis (paper ref. [17]); sharp particles (σ_k < 1 pixel) are evaluated at the
   displaced positions exactly, blurred ones to first order through the gradient of their
   blurred map (accurate: the map is smooth on the 0.01 nm scale). At 1.2 nm pixels the
   effect is minute: over 30 Table-2 aggregates with the shipped tables its RMS was 0.71
   counts against 17.2 counts of shot noise; single rim pixels, where the projected thickness
   changes steeply, moved by up to 3.2 % of the brightest pixel (benchmarks/bench_stem.py);
6. shot noise: counts ~ Poisson(dose × pixel area × intensity), dose 149 e/Å² (ref. [23]).

Only each particle's bounding box (plus 4σ of blur) is computed, and noise is drawn only over
the aggregate's bounding box: outside it the expected count is exactly zero.

Randomness: one `numpy.random.Generator` per image from ``SeedSequence((seed, STEM_STREAM),
spawn_key=(index,))`` — a function of (seed, index) alone, independent of the aggregate
generator's stream for the same pair and of how work is split over processes. Draw order:
table choice (2 uniforms per particle), scan jitter (2 normals per pixel of the aggregate's
bounding box), then Poisson counts over the same box.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import ndimage

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.stem.tables import HaadfTables, load_tables

#: Default pixel size, nm: with 512 pixels the field of view is 614.4 nm, which holds
#: ≥ 99 % of the aggregates over Table 2 wholly (measured with `coverage.inside_fraction`,
#: see docs/stem.md).
DEFAULT_PIXEL_SIZE_NM = 1.2
DEFAULT_IMAGE_SIZE = 512
DEFAULT_DOSE = 149.0            # electrons per Å², paper Sec. 2.1.4 (ref. [23])
DEFAULT_SEMIANGLE_MRAD = 21.1   # probe semi-convergence angle β
DEFAULT_SCAN_NOISE_NM = 0.01    # s.d. of the probe displacement per axis (ref. [17])
STEM_STREAM = 0x5354454D        # "STEM": separates this stream from the generator's
MAX_COUNT = np.iinfo(np.uint16).max
_BLUR_TRUNCATE = 4.0            # Gaussian support, in σ
_SHARP_SIGMA_PX = 1.0           # below: evaluate at displaced positions; above: first order


@dataclasses.dataclass
class StemImage:
    """A simulated HAADF-STEM image.

    Attributes:
        counts: (H, W) uint16 detector counts (electrons on the detector per pixel).
        intensity: (H, W) float32 noise-free (shot-noise-free, scan noise included) intensity as
            fraction of the incident beam; counts ~ Poisson(electrons_per_pixel × intensity).
        metadata: JSON-able dict: pixel_size_nm, dose_e_per_A2, electrons_per_pixel,
            focal_plane_z_nm, image_size, seed, index, particle tables, … (see `render_stem`).
    """

    counts: np.ndarray
    intensity: np.ndarray
    metadata: dict


def image_rng(seed: int, index: int = 0) -> np.random.Generator:
    """The random stream of image ``index`` under base ``seed`` (see module docstring)."""
    if seed is None or int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative integers, got {seed!r}, {index!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), STEM_STREAM],
                                                        spawn_key=(int(index),)))


def electrons_per_pixel(dose: float, pixel_size_nm: float) -> float:
    """Incident electrons per pixel: dose (e/Å²) × pixel area (Å²)."""
    return dose * (10.0 * pixel_size_nm) ** 2


@functools.lru_cache(maxsize=4096)
def _gaussian_kernel(sigma_key: int) -> np.ndarray:
    """Normalised 1-D Gaussian of σ = sigma_key / 1000 px, truncated at 4σ."""
    sigma = sigma_key / 1000.0
    radius = int(_BLUR_TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _gaussian_blur(patch: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur, zero outside the patch (the patch holds the whole support).

    σ is rounded to 0.001 px (≈ 1 pm) so that kernels can be cached; below 0.125 px the 4σ
    kernel has a single tap and the blur is the identity.
    """
    sigma_key = int(round(sigma_px * 1000.0))
    if sigma_key < 125:
        return patch
    kernel = _gaussian_kernel(sigma_key)
    patch = ndimage.correlate1d(patch, kernel, axis=0, mode="constant")
    return ndimage.correlate1d(patch, kernel, axis=1, mode="constant")


def render_stem(aggregate: Aggregate, *, seed: int | None = None, index: int | None = None,
                rng: np.random.Generator | None = None, tables: HaadfTables | None = None,
                pixel_size_nm: float = DEFAULT_PIXEL_SIZE_NM,
                image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
                dose: float = DEFAULT_DOSE, focal_plane_nm: float = 0.0,
                center_nm: tuple[float, float] | None = None,
                semiangle_mrad: float = DEFAULT_SEMIANGLE_MRAD,
                scan_noise_nm: float = DEFAULT_SCAN_NOISE_NM, shot_noise: bool = True,
                blur: bool = True, table_indices: np.ndarray | None = None) -> StemImage:
    """Render the HAADF-STEM image of an aggregate.

    Args:
        aggregate: the aggregate (positions and radii in nm, labels 0 = WO3, 1 = TiO2).
        seed: base seed; with ``index`` it fixes all randomness (see `image_rng`). Defaults to
            the aggregate's own ``seed``/``index`` when it has them.
        index: index of the image under ``seed`` (default: ``aggregate.index`` or 0).
        rng: a generator to use instead of (seed, index).
        tables: HAADF tables (default: the shipped abTEM tables).
        pixel_size_nm: pixel edge, nm.
        image_size: pixels per edge (int) or (height, width).
        dose: electron dose, e/Å².
        focal_plane_nm: height of the focal plane above the aggregate's centre of mass, nm.
        center_nm: (x, y) of the image centre, nm (default: the centre of mass).
        semiangle_mrad: β of the conical beam, mrad; σ = |z − z_focal| tan β.
        scan_noise_nm: s.d. of the per-pixel probe displacement per axis, nm (0: none).
        shot_noise: draw Poisson counts (False: counts are the rounded expectation).
        blur: apply the defocus blur.
        table_indices: (N,) tables to use per particle instead of the random choice.

    Returns:
        A `StemImage`. Metadata keys: format, pixel_size_nm, image_size [H, W],
        dose_e_per_A2, electrons_per_pixel, focal_plane_z_nm (absolute, in the aggregate's
        frame), focal_plane_offset_nm, center_nm, semiangle_mrad, scan_noise_nm, shot_noise,
        blur, seed, index, tables (source and column), particle_phase, particle_orientation,
        particles_outside (particles not wholly inside the image), thickness_extrapolated
        (particles thicker than the shortest table), saturated_pixels, aggregate (size, θ,
        seed, index).
    """
    if tables is None:
        tables = load_tables()
    height, width = (image_size, image_size) if np.isscalar(image_size) else image_size
    height, width = int(height), int(width)
    if height < 1 or width < 1 or pixel_size_nm <= 0 or dose < 0 or scan_noise_nm < 0:
        raise ValueError("image_size and pixel_size_nm must be positive, dose and scan_noise_nm >= 0")
    if seed is None and rng is None:
        seed = aggregate.seed
    if index is None:
        index = aggregate.index if aggregate.index is not None else 0
    if rng is None:
        if seed is None:
            raise ValueError("give seed (and index) or rng: the image's randomness must be reproducible")
        rng = image_rng(seed, index)
    positions, radii = aggregate.positions, aggregate.radii
    center_of_mass = aggregate.center_of_mass()
    center = center_of_mass[:2] if center_nm is None else np.asarray(center_nm, dtype=float)
    focal_z = float(center_of_mass[2] + focal_plane_nm)

    if table_indices is None:
        table_indices = tables.choose(aggregate.labels, rng)
    else:
        table_indices = np.asarray(table_indices, dtype=np.int64)
        if table_indices.shape != radii.shape:
            raise ValueError(f"table_indices must have shape {radii.shape}")
        wrong = [int(i) for i, t in enumerate(table_indices)
                 if tables.tables[t].label != aggregate.labels[i]]
        if wrong:
            raise ValueError(f"table_indices give particles {wrong[:5]} a table of the other material")

    # Pixel centres: column j ↔ x, row i ↔ y, both increasing with the index; the image
    # centre (between the two middle pixels for even sizes) is `center`.
    x0 = center[0] - 0.5 * (width - 1) * pixel_size_nm
    y0 = center[1] - 0.5 * (height - 1) * pixel_size_nm
    # Fractional pixel coordinates of the particle centres and radii in pixels.
    col_c = (positions[:, 0] - x0) / pixel_size_nm
    row_c = (positions[:, 1] - y0) / pixel_size_nm
    radius_px = radii / pixel_size_nm
    tan_beta = math.tan(semiangle_mrad * 1e-3)
    sigma_px = np.abs(positions[:, 2] - focal_z) * tan_beta / pixel_size_nm if blur else np.zeros_like(radii)
    margin = np.ceil(_BLUR_TRUNCATE * sigma_px) + 1
    # Unclipped patch bounds (the blur of a particle at the border needs its outside part).
    row_lo = np.floor(row_c - radius_px - margin).astype(np.int64)
    row_hi = np.ceil(row_c + radius_px + margin).astype(np.int64) + 1
    col_lo = np.floor(col_c - radius_px - margin).astype(np.int64)
    col_hi = np.ceil(col_c + radius_px + margin).astype(np.int64) + 1
    inside = ((row_c - radius_px >= -0.5) & (row_c + radius_px <= height - 0.5)
              & (col_c - radius_px >= -0.5) & (col_c + radius_px <= width - 0.5))

    # The aggregate's bounding box within the image: jitter and noise are drawn there only.
    box_r0, box_r1 = max(int(row_lo.min()), 0), min(int(row_hi.max()), height)
    box_c0, box_c1 = max(int(col_lo.min()), 0), min(int(col_hi.max()), width)
    box_empty = box_r0 >= box_r1 or box_c0 >= box_c1
    # Accumulate on the union of the unclipped patches (so border particles blur correctly);
    # the jitter is zero outside the image, where nothing is sampled.
    pad_r0, pad_c0 = min(int(row_lo.min()), box_r0), min(int(col_lo.min()), box_c0)
    pad_r1, pad_c1 = max(int(row_hi.max()), box_r1), max(int(col_hi.max()), box_c1)
    canvas = np.zeros((pad_r1 - pad_r0, pad_c1 - pad_c0), dtype=np.float64)
    jitter = None
    if not box_empty and scan_noise_nm > 0:
        jitter = np.zeros((2,) + canvas.shape, dtype=np.float64)
        drawn = rng.standard_normal((2, box_r1 - box_r0, box_c1 - box_c0), dtype=np.float32)
        # In pixels: [0] along rows (y), [1] along columns (x).
        jitter[:, box_r0 - pad_r0:box_r1 - pad_r0, box_c0 - pad_c0:box_c1 - pad_c0] = \
            drawn * (scan_noise_nm / pixel_size_nm)

    for k in range(radii.shape[0]):
        r0, r1, c0, c1 = int(row_lo[k]), int(row_hi[k]), int(col_lo[k]), int(col_hi[k])
        if r1 <= 0 or r0 >= height or c1 <= 0 or c0 >= width:
            continue  # wholly outside the image, blur included
        window = (slice(r0 - pad_r0, r1 - pad_r0), slice(c0 - pad_c0, c1 - pad_c0))
        drow = (np.arange(r0, r1) - row_c[k])[:, None]
        dcol = (np.arange(c0, c1) - col_c[k])[None, :]
        sharp = sigma_px[k] < _SHARP_SIGMA_PX
        if jitter is not None and sharp:
            # Exact: evaluate the thickness at the displaced probe positions.
            drow = drow + jitter[0][window]
            dcol = dcol + jitter[1][window]
        squared = radius_px[k] ** 2 - (drow * drow + dcol * dcol)
        np.maximum(squared, 0.0, out=squared)
        thickness = np.sqrt(squared, out=squared)
        thickness *= 2.0 * pixel_size_nm
        patch = tables.intensity(int(table_indices[k]), thickness)
        if blur:
            patch = _gaussian_blur(patch, sigma_px[k])
        if jitter is not None and not sharp:
            # First order in the displacement: the blurred map is smooth on the jitter scale.
            grad_row, grad_col = np.gradient(patch)
            patch += grad_row * jitter[0][window] + grad_col * jitter[1][window]
        canvas[window] += patch
    np.maximum(canvas, 0.0, out=canvas)  # first-order jitter can dip a hair below 0 at tails

    image = np.zeros((height, width), dtype=np.float32)
    per_pixel = electrons_per_pixel(dose, pixel_size_nm)
    counts = np.zeros((height, width), dtype=np.uint16)
    saturated = 0
    if not box_empty:
        visible = canvas[box_r0 - pad_r0:box_r1 - pad_r0, box_c0 - pad_c0:box_c1 - pad_c0]
        image[box_r0:box_r1, box_c0:box_c1] = visible
        expected = per_pixel * visible
        drawn = rng.poisson(expected) if shot_noise else np.rint(expected)
        saturated = int(np.count_nonzero(drawn > MAX_COUNT))
        counts[box_r0:box_r1, box_c0:box_c1] = np.minimum(drawn, MAX_COUNT)

    chosen = [tables.tables[int(t)] for t in table_indices]
    params = aggregate.params
    metadata = {
        "format": "hagg_tf.stem/1",
        "pixel_size_nm": float(pixel_size_nm),
        "image_size": [height, width],
        "dose_e_per_A2": float(dose),
        "electrons_per_pixel": float(per_pixel),
        "focal_plane_z_nm": focal_z,
        "focal_plane_offset_nm": float(focal_plane_nm),
        "center_nm": [float(center[0]), float(center[1])],
        "semiangle_mrad": float(semiangle_mrad),
        "scan_noise_nm": float(scan_noise_nm),
        "shot_noise": bool(shot_noise),
        "blur": bool(blur),
        "seed": None if seed is None else int(seed),
        "index": int(index),
        "tables": {"source": tables.source, "sha256": tables.sha256, "column": tables.column},
        "particle_phase": [table.phase for table in chosen],
        "particle_orientation": [table.orientation for table in chosen],
        "particles_outside": int(np.count_nonzero(~inside)),
        "thickness_extrapolated": int(np.count_nonzero(2 * radii > tables.max_thickness_nm)),
        "saturated_pixels": saturated,
        "aggregate": {"size": int(radii.shape[0]),
                      "params": None if params is None else params.as_dict(),
                      "seed": aggregate.seed, "index": aggregate.index},
    }
    return StemImage(counts=counts, intensity=image, metadata=metadata)
