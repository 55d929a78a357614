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

Imaging conditions (`hagg_tf.stem.conditions.ImagingConditions`, ``conditions=``); each
enters at the step named, and the defaults leave every step as above, byte for byte:

* step 3, focus: the focal plane lies ``focal_plane_offset_nm`` above the centre of mass, so
  σ_k = |z_k − z_focal| tan β grows with it. The extra probe/source blur (Gaussian, s.d.
  ``probe_blur_nm``) is a blur of the whole noiseless image; convolving Gaussians adds their
  variances, so it is applied per particle as σ_k² + σ_probe², in the specimen plane before
  the scan: the same image where nothing moves, and right where the scan displaces the probe
  (the blur travels with the probe) and at the border (the outside parts of cut particles
  are blurred in). The film is uniform, so the blur leaves it unchanged.
* step 5, scan: line jitter and drift displace the probe positions of whole scan lines.
  Row r (of H) sees the specimen shifted by d_r = drift × r / (H − 1) + (j_r, 0), j_r ~
  N(0, line_jitter²) (x only: the fast scan direction), i.e. the probe at pixel (r, c) samples
  the specimen at pixel coordinates (r, c) − d_r / pixel. Drift within a line (< drift / H) is
  neglected. Sharp particles (σ_k < 1/8 px, where the blur kernel is the identity) are
  evaluated at the displaced positions exactly, with the per-pixel scan noise added to them.
  Blurred ones are not interpolated from their blurred map: the renderer's discrete blur is
  evaluated on the pixel lattice through each displaced probe position (thickness at the
  lattice rows r − d_r + a, a = −4σ…4σ, then the 1-D kernel along the row and the sum over a
  across rows), so zero displacement gives back the undisplaced blur exactly, any shift is
  exact for the blur model itself (a row shifted by d_r equals the row of the undisplaced
  renderer's image of the aggregate translated by d_r), and no interpolation error enters
  (docs/stem.md measures what a cubic spline of the blurred map would be off by at the
  rims); the per-pixel scan noise then enters to first order through the gradient of that
  map, as in step 5. Particles count as outside the image (metadata ``particles_outside``)
  by their undisplaced positions.
* after step 4, support film: an amorphous carbon film of thickness t_film under the aggregate
  adds its intensity I_film(t_film) (abTEM table, `hagg_tf.stem.tables.load_film_table`) to
  every pixel (see the comment in `render_stem` for why it adds and what that neglects);
  uniform, it is unchanged by blur and scan displacement.
* step 6, detector: counts = clip(round(gain × Poisson(electrons_per_pixel × I) + dark_offset
  + N(0, read_noise²)), 0, 65535) (round half to even); pixels beyond 65535 are counted in
  ``saturated_pixels``, below 0 in ``clipped_low_pixels``. Shot noise is drawn over the whole
  field when there is a film; read noise and offset are added to every pixel. Metadata
  ``dark_level`` (= dark_offset) and ``beam_level`` (= gain × electrons_per_pixel, the counts
  of the whole unscattered beam above dark) give the quantitative-STEM normalization
  (counts − dark) / (beam − dark) = `hagg_tf.stem.normalized_intensity`.
* dose and pixel size are those of the conditions.

Randomness: one `numpy.random.Generator` per image from ``SeedSequence((seed, STEM_STREAM),
spawn_key=(index,))`` — a function of (seed, index) alone, independent of the aggregate
generator's stream for the same pair and of how work is split over processes. Draw order:
table choice (2 uniforms per particle), [line jitter: H normals, only with line_jitter_nm > 0],
scan jitter (2 normals per pixel of the aggregate's bounding box), Poisson counts over the
same box (over the whole field with a film, in the order of
`hagg_tf.stem.shot_noise.poisson_counts`), [read noise: H × W normals, only with
read_noise > 0]. A condition draws only when it is on, so default conditions consume the
stream exactly as before; the line jitter comes before the scan jitter because the bounding
box of the displaced aggregate, where the scan jitter is drawn, depends on it. Without a film
the counts outside the box are exactly zero before the detector adds offset and read noise,
so a Poisson draw there would return zeros and consume nothing: read noise, gain and offset
change the counts, not the shot noise.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import ndimage

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.stem.conditions import DEFAULT_DOSE, DEFAULT_PIXEL_SIZE_NM, ImagingConditions
from hagg_tf.stem.shot_noise import poisson_counts
from hagg_tf.stem.tables import HaadfTable, HaadfTables, load_tables

DEFAULT_IMAGE_SIZE = 512
DEFAULT_SEMIANGLE_MRAD = 21.1   # probe semi-convergence angle β
DEFAULT_SCAN_NOISE_NM = 0.01    # s.d. of the probe displacement per axis (ref. [17])
STEM_STREAM = 0x5354454D        # "STEM": separates this stream from the generator's
MAX_COUNT = np.iinfo(np.uint16).max
_BLUR_TRUNCATE = 4.0            # Gaussian support, in σ
_SHARP_SIGMA_PX = 1.0           # below: evaluate at displaced positions; above: first order
_IDENTITY_SIGMA_KEY = 125       # σ below 0.125 px (in 0.001 px): the 4σ kernel is one tap
_FILM_COLUMNS = ("intensity", "intensity_flat")  # detector columns of the shipped film table

__all__ = ["DEFAULT_DOSE", "DEFAULT_IMAGE_SIZE", "DEFAULT_PIXEL_SIZE_NM", "DEFAULT_SCAN_NOISE_NM",
           "DEFAULT_SEMIANGLE_MRAD", "MAX_COUNT", "STEM_STREAM", "StemImage",
           "electrons_per_pixel", "image_rng", "render_stem"]


@dataclasses.dataclass
class StemImage:
    """A simulated HAADF-STEM image.

    Attributes:
        counts: (H, W) uint16 detector counts (electrons on the detector per pixel, times the
            gain, plus the dark offset and read noise of the conditions).
        intensity: (H, W) float32 noise-free (shot-noise-free, scan noise included) intensity as
            fraction of the incident beam, support film included; counts ~ gain ×
            Poisson(electrons_per_pixel × intensity) + dark offset.
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


def _sigma_key(sigma_px: float) -> int:
    """σ rounded to 0.001 px (≈ 1 pm), so that kernels can be cached."""
    return int(round(sigma_px * 1000.0))


def _gaussian_blur(patch: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur, zero outside the patch (the patch holds the whole support).

    σ is rounded to 0.001 px (≈ 1 pm) so that kernels can be cached; below 0.125 px the 4σ
    kernel has a single tap and the blur is the identity.
    """
    sigma_key = _sigma_key(sigma_px)
    if sigma_key < _IDENTITY_SIGMA_KEY:
        return patch
    kernel = _gaussian_kernel(sigma_key)
    patch = ndimage.correlate1d(patch, kernel, axis=0, mode="constant")
    return ndimage.correlate1d(patch, kernel, axis=1, mode="constant")


def _resolve_conditions(conditions: ImagingConditions, pixel_size_nm: float, dose: float,
                        focal_plane_nm: float) -> tuple[float, float, float]:
    """(pixel size, dose, focal offset) of the conditions; refuses a conflicting argument."""
    if not isinstance(conditions, ImagingConditions):
        raise TypeError(f"conditions must be an ImagingConditions, got {type(conditions).__name__}")
    for name, given, default, field in (
            ("pixel_size_nm", pixel_size_nm, DEFAULT_PIXEL_SIZE_NM, "pixel_size_nm"),
            ("dose", dose, DEFAULT_DOSE, "dose"),
            ("focal_plane_nm", focal_plane_nm, 0.0, "focal_plane_offset_nm")):
        wanted = getattr(conditions, field)
        if given != default and given != wanted:
            raise ValueError(f"render_stem: {name}={given!r} conflicts with conditions.{field}="
                             f"{wanted!r}; give it in the conditions only")
    return conditions.pixel_size_nm, conditions.dose, conditions.focal_plane_offset_nm


def _scan_displacements(height: int, pixel_size_nm: float, conditions: ImagingConditions,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per scan line, the specimen's apparent shift in pixels: (rows (H,), columns (H,)).

    Row r is shifted by drift × r / (H − 1) plus, along x (columns), its line jitter.
    """
    fraction = np.arange(height, dtype=np.float64) / max(height - 1, 1)
    drift_x, drift_y = conditions.drift_nm
    row_shift = fraction * (drift_y / pixel_size_nm)
    col_shift = fraction * (drift_x / pixel_size_nm)
    if conditions.line_jitter_nm > 0:
        col_shift = col_shift + rng.standard_normal(height) * (conditions.line_jitter_nm
                                                               / pixel_size_nm)
    return row_shift, col_shift


def _render_displaced(geometry: dict, tables: HaadfTables, table_indices: np.ndarray,
                      row_shift: np.ndarray, col_shift: np.ndarray, scan_noise_px: float,
                      rng: np.random.Generator, height: int, width: int):
    """Noise-free intensity with scan lines displaced (module docstring, scan).

    Returns:
        (box (r0, r1, c0, c1) in the image or None when nothing is visible, the intensity in
        the box (float64)).
    """
    row_c, col_c, radius_px, sigma_px = (geometry[key] for key in
                                         ("row_c", "col_c", "radius_px", "sigma_px"))
    row_lo, row_hi, col_lo, col_hi = (geometry[key] for key in
                                      ("row_lo", "row_hi", "col_lo", "col_hi"))
    pixel_size_nm = geometry["pixel_size_nm"]
    # Specimen-frame row sampled by each image row; a particle's patch spans the image rows
    # whose sampled row falls inside its (blur-padded) specimen patch.
    sampled_row = np.arange(height) - row_shift
    count = radius_px.shape[0]
    spans = []
    for k in range(count):
        hit = np.flatnonzero((sampled_row >= row_lo[k]) & (sampled_row <= row_hi[k] - 1))
        if hit.size == 0:
            spans.append(None)
            continue
        r0, r1 = int(hit[0]), int(hit[-1]) + 1
        shifts = col_shift[r0:r1]
        c0 = max(int(math.floor(col_lo[k] + shifts.min())), 0)
        c1 = min(int(math.ceil(col_hi[k] - 1 + shifts.max())) + 1, width)
        spans.append((r0, r1, c0, c1) if c0 < c1 else None)
    visible = [span for span in spans if span is not None]
    if not visible:
        return None, None
    box = (min(s[0] for s in visible), max(s[1] for s in visible),
           min(s[2] for s in visible), max(s[3] for s in visible))
    box_r0, box_r1, box_c0, box_c1 = box
    canvas = np.zeros((box_r1 - box_r0, box_c1 - box_c0), dtype=np.float64)
    jitter = None
    if scan_noise_px > 0:
        jitter = rng.standard_normal((2,) + canvas.shape, dtype=np.float32) * scan_noise_px
    for k in range(count):
        if spans[k] is None:
            continue
        r0, r1, c0, c1 = spans[k]
        window = (slice(r0 - box_r0, r1 - box_r0), slice(c0 - box_c0, c1 - box_c0))
        lines = np.arange(r0, r1)
        # Offsets from the particle centre of the specimen points the probes sample, px.
        drow = (lines - row_shift[lines] - row_c[k])[:, None]             # (h, 1)
        dcol = np.arange(c0, c1)[None, :] - col_shift[lines][:, None] - col_c[k]  # (h, w)
        sigma_key = _sigma_key(sigma_px[k])
        if sigma_key < _IDENTITY_SIGMA_KEY:
            # No blur: the thickness at the displaced (and scan-jittered) positions, exactly.
            if jitter is not None:
                drow = drow + jitter[0][window]
                dcol = dcol + jitter[1][window]
            squared = radius_px[k] ** 2 - (drow * drow + dcol * dcol)
            patch = _sphere_intensity(squared, tables, int(table_indices[k]), pixel_size_nm)
        else:
            patch, grad_row, grad_col = _blur_through(drow, dcol, radius_px[k], sigma_key,
                                                      tables, int(table_indices[k]),
                                                      pixel_size_nm, jitter is not None)
            if jitter is not None:
                patch += grad_row * jitter[0][window] + grad_col * jitter[1][window]
        canvas[window] += patch
    np.maximum(canvas, 0.0, out=canvas)
    return box, canvas


def _sphere_intensity(squared: np.ndarray, tables: HaadfTables, table_index: int,
                      pixel_size_nm: float) -> np.ndarray:
    """Table intensity of a sphere's thickness 2√(r² − s²) (nm) given r² − s² in px².

    Only points inside the sphere are looked up (most of a patch lies outside it).
    """
    inside = squared > 0
    result = np.zeros(squared.shape, dtype=np.float64)
    thickness = np.sqrt(squared[inside])
    thickness *= 2.0 * pixel_size_nm
    result[inside] = tables.intensity(table_index, thickness)
    return result


def _blur_through(drow: np.ndarray, dcol: np.ndarray, radius_px: float, sigma_key: int,
                  tables: HaadfTables, table_index: int, pixel_size_nm: float, gradient: bool):
    """The blurred intensity of one sphere at displaced probe positions, on its pixel lattice.

    Args:
        drow: (h, 1) row offset from the centre of the point each image row samples, px.
        dcol: (h, w) column offsets likewise (each row shifted as a whole).
        radius_px, sigma_key: sphere radius (px) and blur σ in 0.001 px (≥ 125).
        gradient: also return the map's derivatives along rows and columns.

    Returns:
        (value (h, w), d/drow (h, w) or None, d/dcol (h, w) or None): the discrete blur
        Σ_a Σ_b g_a g_b I(drow + a, dcol + b) that `_gaussian_blur` applies on the undisplaced
        grid, evaluated on the lattice through each sampled point; the derivatives are its
        central differences, as `numpy.gradient` gives them on the undisplaced grid.
    """
    kernel = _gaussian_kernel(sigma_key)
    taps = (kernel.size - 1) // 2
    height, width = dcol.shape
    # The lattice through each sampled point: rows r + a, a = −taps−1 … taps+1, and columns
    # c + b over the row's patch widened by taps + 1 (one more each side for the derivatives).
    # Each image row is shifted as a whole, so dcol[:, j] = dcol[:, 0] + j.
    a = np.arange(-taps - 1, taps + 2, dtype=np.float64)
    rows = drow + a[None, :]                                               # (h, A)
    cols = dcol[:, :1] + np.arange(-taps - 1, width + taps + 1, dtype=np.float64)[None, :]
    squared = radius_px ** 2 - (rows[:, :, None] ** 2 + cols[:, None, :] ** 2)  # (h, A, W')
    lattice = _sphere_intensity(squared, tables, table_index, pixel_size_nm)
    # Blur across rows (sum over the taps a), then along the row (1-D correlation).
    across = np.einsum("haw,a->hw", lattice[:, 1:-1, :], kernel)           # (h, W')
    blurred = ndimage.correlate1d(across, kernel, axis=1, mode="constant")
    value = blurred[:, taps + 1:taps + 1 + width]
    if not gradient:
        return value, None, None
    # Central differences: d/dcol = [B(c + 1) − B(c − 1)] / 2, and across rows
    # d/drow = Σ_a (g_{a−1} − g_{a+1}) / 2 · I(r + a) blurred along the row.
    grad_col = 0.5 * (blurred[:, taps + 2:taps + 2 + width] - blurred[:, taps:taps + width])
    padded = np.concatenate([[0.0, 0.0], kernel, [0.0, 0.0]])
    difference = 0.5 * (padded[:-2] - padded[2:])                          # (A,)
    across_difference = np.einsum("haw,a->hw", lattice, difference)
    grad_row = ndimage.correlate1d(across_difference, kernel, axis=1,
                                   mode="constant")[:, taps + 1:taps + 1 + width]
    return value, grad_row, grad_col


def _detector_counts(expected: np.ndarray, region: tuple[slice, slice], height: int, width: int,
                     conditions: ImagingConditions, shot_noise: bool,
                     rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """counts = clip(round(gain × Poisson(expected) + dark + N(0, read²)), 0, 65535).

    Args:
        expected: expected electrons on the detector in ``region`` of the (H, W) field; zero
            elsewhere (where a Poisson draw would give zeros).

    Returns:
        (counts (H, W) uint16, pixels above 65535, pixels below 0).
    """
    # poisson_counts: numpy's sampler where the expectation varies, a faster exact one for
    # the constant film background around it (hagg_tf.stem.shot_noise).
    electrons = poisson_counts(rng, expected) if shot_noise else expected
    signal = np.full((height, width), conditions.dark_offset, dtype=np.float64)
    signal[region] += conditions.gain * electrons
    if conditions.read_noise > 0:
        # float32 normals: twice as fast, and far finer than the rounding to whole counts.
        signal += conditions.read_noise * rng.standard_normal((height, width), dtype=np.float32)
    np.rint(signal, out=signal)
    saturated = int(np.count_nonzero(signal > MAX_COUNT))
    clipped_low = int(np.count_nonzero(signal < 0))
    np.clip(signal, 0, MAX_COUNT, out=signal)
    return signal.astype(np.uint16), saturated, clipped_low


def render_stem(aggregate: Aggregate, *, seed: int | None = None, index: int | None = None,
                rng: np.random.Generator | None = None, tables: HaadfTables | None = None,
                pixel_size_nm: float = DEFAULT_PIXEL_SIZE_NM,
                image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
                dose: float = DEFAULT_DOSE, focal_plane_nm: float = 0.0,
                center_nm: tuple[float, float] | None = None,
                semiangle_mrad: float = DEFAULT_SEMIANGLE_MRAD,
                scan_noise_nm: float = DEFAULT_SCAN_NOISE_NM, shot_noise: bool = True,
                blur: bool = True, table_indices: np.ndarray | None = None,
                conditions: ImagingConditions | None = None,
                film_table: HaadfTable | None = None) -> StemImage:
    """Render the HAADF-STEM image of an aggregate.

    Args:
        aggregate: the aggregate (positions and radii in nm, labels 0 = WO3, 1 = TiO2).
        seed: base seed; with ``index`` it fixes all randomness (see `image_rng`). Defaults to
            the aggregate's own ``seed``/``index`` when it has them.
        index: index of the image under ``seed`` (default: ``aggregate.index`` or 0).
        rng: a generator to use instead of (seed, index).
        tables: HAADF tables (default: the shipped abTEM tables).
        pixel_size_nm: pixel edge, nm (with ``conditions``: theirs).
        image_size: pixels per edge (int) or (height, width).
        dose: electron dose, e/Å² (with ``conditions``: theirs).
        focal_plane_nm: height of the focal plane above the aggregate's centre of mass, nm
            (with ``conditions``: their ``focal_plane_offset_nm``).
        center_nm: (x, y) of the image centre, nm (default: the centre of mass).
        semiangle_mrad: β of the conical beam, mrad; σ = |z − z_focal| tan β.
        scan_noise_nm: s.d. of the per-pixel probe displacement per axis, nm (0: none).
        shot_noise: draw Poisson counts (False: counts are the rounded expectation).
        blur: apply the defocus blur (the conditions' probe blur applies regardless).
        table_indices: (N,) tables to use per particle instead of the random choice.
        conditions: imaging conditions (support film, detector, focus, probe blur, scan
            distortions, dose, pixel size); None or the defaults give today's images byte for
            byte. A ``pixel_size_nm``, ``dose`` or ``focal_plane_nm`` argument that differs
            both from its default and from the conditions is refused.
        film_table: intensity-versus-thickness table of the support film (default: the
            shipped amorphous-carbon table, `hagg_tf.stem.tables.load_film_table`, in the
            particle tables' detector column where it has it, else ``intensity``; loaded only
            when the conditions have a film).

    Returns:
        A `StemImage`. Metadata keys: format, pixel_size_nm, image_size [H, W],
        dose_e_per_A2, electrons_per_pixel, focal_plane_z_nm (absolute, in the aggregate's
        frame), focal_plane_offset_nm, center_nm, semiangle_mrad, scan_noise_nm, shot_noise,
        blur, seed, index, tables (source and column), particle_phase, particle_orientation,
        particles_outside (particles not wholly inside the image), thickness_extrapolated
        (particles thicker than the shortest table), saturated_pixels, aggregate (size, θ,
        seed, index). With non-default conditions also: conditions (their ``to_dict()``),
        dark_level and beam_level (counts; see `hagg_tf.stem.normalized_intensity`),
        film_intensity (fraction of the beam), film_table (key, source, sha256; None without a
        film), and
        clipped_low_pixels (pixels clipped at 0).

    Raises:
        ValueError: bad sizes, seeds, table indices, or arguments that conflict with the
            conditions; `hagg_tf.stem.tables.TableError` for a missing film table.
    """
    if conditions is not None:
        pixel_size_nm, dose, focal_plane_nm = _resolve_conditions(conditions, pixel_size_nm,
                                                                  dose, focal_plane_nm)
        if conditions.is_default():
            conditions = None  # today's renderer, metadata included
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
    if conditions is not None and conditions.probe_blur_nm > 0:
        # Gaussian probe blur of the whole image = its variance added to every particle's.
        sigma_px = np.hypot(sigma_px, conditions.probe_blur_nm / pixel_size_nm)
    blurred = blur or (conditions is not None and conditions.probe_blur_nm > 0)
    margin = np.ceil(_BLUR_TRUNCATE * sigma_px) + 1
    # Unclipped patch bounds (the blur of a particle at the border needs its outside part).
    row_lo = np.floor(row_c - radius_px - margin).astype(np.int64)
    row_hi = np.ceil(row_c + radius_px + margin).astype(np.int64) + 1
    col_lo = np.floor(col_c - radius_px - margin).astype(np.int64)
    col_hi = np.ceil(col_c + radius_px + margin).astype(np.int64) + 1
    inside = ((row_c - radius_px >= -0.5) & (row_c + radius_px <= height - 0.5)
              & (col_c - radius_px >= -0.5) & (col_c + radius_px <= width - 0.5))

    if conditions is not None and conditions.scan_displaced:
        row_shift, col_shift = _scan_displacements(height, pixel_size_nm, conditions, rng)
        geometry = dict(row_c=row_c, col_c=col_c, radius_px=radius_px, sigma_px=sigma_px,
                        row_lo=row_lo, row_hi=row_hi, col_lo=col_lo, col_hi=col_hi,
                        pixel_size_nm=pixel_size_nm)
        box, visible = _render_displaced(geometry, tables, table_indices, row_shift, col_shift,
                                         scan_noise_nm / pixel_size_nm, rng, height, width)
        box_empty = box is None
        if not box_empty:
            box_r0, box_r1, box_c0, box_c1 = box
    else:
        box_r0, box_r1, box_c0, box_c1, visible = _render_undisplaced(
            row_c, col_c, radius_px, sigma_px, row_lo, row_hi, col_lo, col_hi, height, width,
            scan_noise_nm, pixel_size_nm, blurred, rng, tables, table_indices)
        box_empty = visible is None

    image = np.zeros((height, width), dtype=np.float32)
    per_pixel = electrons_per_pixel(dose, pixel_size_nm)
    counts = np.zeros((height, width), dtype=np.uint16)
    saturated = 0
    if conditions is None or conditions.detector_default:
        if not box_empty:
            image[box_r0:box_r1, box_c0:box_c1] = visible
            expected = per_pixel * visible
            drawn = rng.poisson(expected) if shot_noise else np.rint(expected)
            saturated = int(np.count_nonzero(drawn > MAX_COUNT))
            counts[box_r0:box_r1, box_c0:box_c1] = np.minimum(drawn, MAX_COUNT)
        film_intensity, clipped_low, film_key = 0.0, 0, None
    else:
        film_intensity, film_key = 0.0, None
        if conditions.film_thickness_nm > 0:
            if film_table is None:
                from hagg_tf.stem.tables import load_film_table
                # The film seen by the same detector as the particles' tables where the shipped
                # film table has that column.
                column = tables.column if tables.column in _FILM_COLUMNS else "intensity"
                film_table = load_film_table(column=column)
            film_key = {"key": film_table.key,
                        "source": getattr(film_table, "source", "<memory>"),
                        "sha256": getattr(film_table, "sha256", None)}
            film_intensity = float(film_table(conditions.film_thickness_nm))
        if film_intensity > 0:
            # The support film lies under the aggregate: the beam crosses the particles, then
            # the film. Both are weak scatterers (at most ~12 % of the beam reaches the
            # detector from the thickest WO3 particle of the shipped tables, far less from a
            # few nm of carbon), so the fraction of the beam the detector sees is, to first
            # order, the sum of the two
            # layers' fractions: I = I_aggregate + I_film(t_film), everywhere in the field.
            # Neglected (second order, relative size ≈ the other layer's scattering
            # probability): the beam the particles scatter away before it reaches the film
            # (under a particle the film is lit by 1 − (scattered fraction) of the beam), and
            # the film's re-scattering of the particles' high-angle electrons into or out of
            # the detector's angular range.
            region = (slice(0, height), slice(0, width))
            field = np.full((height, width), film_intensity, dtype=np.float64)
            if not box_empty:
                field[box_r0:box_r1, box_c0:box_c1] += visible
        elif not box_empty:
            region = (slice(box_r0, box_r1), slice(box_c0, box_c1))
            field = visible
        else:
            region, field = (slice(0, 0), slice(0, 0)), np.zeros((0, 0))
        image[region] = field
        counts, saturated, clipped_low = _detector_counts(per_pixel * field, region, height,
                                                          width, conditions, shot_noise, rng)

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
    if conditions is not None:
        metadata.update({
            "conditions": conditions.to_dict(),
            "dark_level": float(conditions.dark_offset),
            "beam_level": float(conditions.gain * per_pixel),
            "film_intensity": film_intensity,
            "film_table": film_key,
            "clipped_low_pixels": clipped_low,
        })
    return StemImage(counts=counts, intensity=image, metadata=metadata)


def _render_undisplaced(row_c, col_c, radius_px, sigma_px, row_lo, row_hi, col_lo, col_hi,
                        height, width, scan_noise_nm, pixel_size_nm, blur, rng, tables,
                        table_indices):
    """Noise-free intensity on the regular scan grid (module docstring, steps 1–5).

    Returns:
        (box_r0, box_r1, box_c0, box_c1, intensity in the box (float64) or None if empty).
    """
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

    for k in range(radius_px.shape[0]):
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
    if box_empty:
        return box_r0, box_r1, box_c0, box_c1, None
    visible = canvas[box_r0 - pad_r0:box_r1 - pad_r0, box_c0 - pad_c0:box_c1 - pad_c0]
    return box_r0, box_r1, box_c0, box_c1, visible
