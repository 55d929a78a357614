"""The sample's primary-particle size distribution and particles per aggregate, from its images.

Digital shadows should look like the user's sample, not like the paper's model (radius
12 ± 3 nm, 20–80 particles): :func:`measure_image` measures one image,
:func:`estimate_sample_size` turns the measurements of a sample's images into the particle
radius distribution (mean and s.d. of a log-normal, as the generator draws it) and the number of
particles of each imaged aggregate, keeping what the user gives (``--radius_mean_nm``,
``--radius_sd_nm``, ``--particles``); :func:`size_for_shadows` is that for ``characterize``,
and :meth:`SampleSize.generator_config` turns the result into the
:class:`~hagg_tf.model.parameters.GeneratorConfig` the shadows are drawn with.

Method, per image (work on the intensity as a fraction of the beam, minus the image's own
background level, the median of its outer frame):

1. **Particle radii from convex domes.** A projected sphere is a dome, intensity ∝ its chord
   2√(r² − s²), concave up to its rim. The sign of the Laplacian of Gaussian (σ =
   :data:`DOME_SIGMA_NM`) splits the image into concave domes and the convex valleys between
   touching particles; it does not depend on the particle's material (WO3 and TiO2 differ four
   times in brightness) and little on its defocus blur (the zero crossing of a blurred edge stays
   on the edge). Domes that are round (second-moment axes within :data:`MAX_DOME_ELONGATION`),
   big enough (:data:`MIN_DOME_AREA_NM2`) and away from the image border are single, visible
   particles; their equivalent radius √(area/π) divided by :data:`DOME_RADIUS_RATIO` (the dome
   of a sphere ends a little inside its rim; measured on simulated aggregates) is a radius
   sample. Over the sample's images these samples are pooled: the radius mean and s.d. of the
   log-normal follow from their median and their robust log spread, less the spread the
   measurement itself adds (:data:`DOME_LOG_NOISE`).
2. **Particles per aggregate from the projected volume.** HAADF intensity adds up along the beam
   whatever overlaps: the image's integrated intensity is Σ_k F_m(r_k), F_m(r) = (π/2)∫₀^{2r}
   t·I_m(t) dt the integrated intensity of a sphere of material m (the HAADF tables I_m, mean
   over phases and orientations). Divided by its expectation per particle under the radius
   distribution and the share of WO3 particles, it gives N̂ for that image; blur and overlap
   do not change it. The WO3 share comes from the domes too (not from the networks, whose θ̂_ρ
   fails on images unlike their training images): the share of domes whose peak intensity is
   nearer a WO3 sphere's than a TiO2 sphere's, corrected for WO3 domes being likelier to show
   (:data:`WO3_DOME_ODDS`).
3. **The sample.** Radius mean and s.d. from the pooled domes of all images; the particle
   range from the smallest to the largest N̂ of the images.

Where this breaks (measured in docs/learning.md, benchmarks/bench_sample_size.py): aggregates cut
by the image border (N̂ is then a lower bound, and a warning says so); dense aggregates whose
particles all overlap in projection (few round domes, radius from few samples); wrong intensity
calibration (N̂ scales with 1/electrons per pixel); and N̂ inherits three times the relative
error of r̂ (a particle's intensity grows as r³).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Optional, Sequence

import numpy as np

from hagg_tf.model.parameters import GeneratorConfig, TIO2, WO3

#: σ of the Laplacian of Gaussian that splits the image into convex domes, nm. Smaller (1.2 nm)
#: lets shot noise break TiO2 domes apart; larger (3.6 nm) merges neighbours and overestimates
#: 5-nm particles (measured with benchmarks/bench_sample_size.py).
DOME_SIGMA_NM = 1.8
#: Smallest dome taken for a particle, nm² (equivalent radius 2.5 nm): smaller ones are bits
#: of larger particles cut off by their neighbours' convex tails.
MIN_DOME_AREA_NM2 = 20.0
#: Largest ratio of a dome's second-moment axes (variances) taken for a single particle.
MAX_DOME_ELONGATION = 1.4
#: Equivalent radius of a particle's dome over its radius (the dome ends inside the rim by
#: about the Laplacian's σ; touching neighbours eat into it). Calibrated on simulated samples
#: (``bench_sample_size.py --calibrate``): the median over the calibration samples.
DOME_RADIUS_RATIO = 0.97
#: s.d. of log(dome radius / particle radius) that the measurement adds to the radius spread
#: (calibrated like :data:`DOME_RADIUS_RATIO`).
DOME_LOG_NOISE = 0.11
#: How much likelier a WO3 particle shows a round dome than a TiO2 one (odds ratio): a TiO2
#: dome beside a four times brighter WO3 particle is eaten by its convex tail. The share of
#: WO3 domes is corrected by it (odds / this); calibrated like :data:`DOME_RADIUS_RATIO`.
WO3_DOME_ODDS = 2.8
#: Smoothing of the intensity for the aggregate's outline, nm.
OUTLINE_SIGMA_NM = 1.2
#: Lowest outline level, as a fraction of the beam (≈ 0.3 nm of TiO2 or 0.1 nm of WO3); on a
#: noisy background the outline lies at :data:`OUTLINE_NOISE_LEVELS` × its noise instead.
OUTLINE_FLOOR = 2.0e-4
OUTLINE_NOISE_LEVELS = 4.0
#: The integrated intensity is summed over the outline grown by this, nm: the defocus blur of a
#: particle 150 nm from the focal plane has σ ≈ 3 nm.
INTEGRATION_MARGIN_NM = 10.0

#: Images with finer pixels are block-averaged to at least this pixel size, nm, before they are
#: measured: a 5-nm particle's dome is then 16 px across, and a 2048² image at 0.3 nm takes
#: under 1 s instead of 4 (four aggregates imaged at 0.2–1.2 nm gave the same integrated
#: intensity within 0.5 % and dome radii without a trend).
FINEST_PIXEL_NM = 0.6

#: Bounds of the size-distribution settings the tools accept (given or estimated): a radius
#: mean of 1–50 nm (the HAADF tables reach 64 nm thickness), a s.d. up to the mean, and 1 to
#: :data:`MAX_PARTICLES` particles per aggregate.
RADIUS_MEAN_RANGE_NM = (1.0, 50.0)
MAX_RADIUS_CV = 1.0
#: Most particles per aggregate of a digital shadow. The Bremen study's largest real aggregate
#: had 657; drawing and describing an aggregate grows with N (about 0.1 s at N = 300).
MAX_PARTICLES = 1000


class SampleSizeError(ValueError):
    """A bad size-distribution setting (radius, s.d., particle count); the message names it."""


@dataclasses.dataclass
class ImageSizeMeasurement:
    """What one image says about its aggregate's particles.

    Attributes:
        name: the image (file name).
        pixel_size_nm: its pixel edge, nm.
        dome_radii_nm: (K,) radii of the round, single-particle domes, nm (already divided by
            :data:`DOME_RADIUS_RATIO`).
        dome_wo3: (K,) True where the dome's peak is nearer the WO3 table's than TiO2's.
        integrated_intensity_nm2: Σ over the aggregate of (intensity − background) × pixel
            area: beam fraction × nm².
        projected_area_nm2: area of the aggregate's outline, nm².
        background: the background level (fraction of the beam) and ``background_noise`` its
            robust s.d. per pixel.
        touches_border: the outline reaches the image border (the aggregate is cut; N̂ is then
            a lower bound).
    """

    name: str
    pixel_size_nm: float
    dome_radii_nm: np.ndarray
    dome_wo3: np.ndarray
    integrated_intensity_nm2: float
    projected_area_nm2: float
    background: float
    background_noise: float
    touches_border: bool


@dataclasses.dataclass(frozen=True)
class SampleSize:
    """The size distribution and particle counts the digital shadows are drawn with.

    Attributes:
        radius_mean_nm, radius_sd_nm: mean and s.d. of the log-normal particle radius, nm.
        particles: (min, max) target particles per aggregate (uniform, as the generator draws).
        sources: per setting (``radius_mean_nm``, ``radius_sd_nm``, ``particles``) where it came
            from: ``"given"``, ``"estimated from 12 images"`` or ``"model default"``.
        particles_per_image: N̂ per image (None where not estimated).
        details: the estimate's numbers for the report (domes used, WO3 share, cut images, …).
        warnings: what the user should know about the estimate.
    """

    radius_mean_nm: float
    radius_sd_nm: float
    particles: tuple[int, int]
    sources: dict
    particles_per_image: Optional[tuple] = None
    details: dict = dataclasses.field(default_factory=dict)
    warnings: tuple = ()

    def generator_config(self, base: Optional[GeneratorConfig] = None) -> GeneratorConfig:
        """``base`` (default: the paper's settings) with this radius distribution and size range."""
        return dataclasses.replace(base or GeneratorConfig(), radius_mean=self.radius_mean_nm,
                                   radius_std=self.radius_sd_nm, min_size=self.particles[0],
                                   max_size=self.particles[1])

    def as_dict(self) -> dict:
        """JSON-able record for report.json."""
        return {"radius_mean_nm": round(self.radius_mean_nm, 3),
                "radius_sd_nm": round(self.radius_sd_nm, 3),
                "particles": list(self.particles), "sources": dict(self.sources),
                "particles_per_image": (None if self.particles_per_image is None
                                        else list(self.particles_per_image)),
                "estimate": dict(self.details), "warnings": list(self.warnings)}

    def describe(self) -> str:
        """One console line: ``radius 6.1 ± 1.5 nm (s.d.), 25–140 particles per aggregate
        (estimated from 12 images)``; mixed origins are named per setting (``radius mean:
        given; radius sd: estimated from 12 images; particles: given``)."""
        low, high = self.particles
        count = f"{low}" if low == high else f"{low}–{high}"
        origins = list(dict.fromkeys(self.sources.values()))
        if len(origins) == 1:
            origin = origins[0]
        else:
            origin = "; ".join(f"{name.removesuffix('_nm').replace('_', ' ')}: {source}"
                               for name, source in self.sources.items())
        return (f"radius {self.radius_mean_nm:.1f} ± {self.radius_sd_nm:.1f} nm (s.d.), "
                f"{count} particles per aggregate ({origin})")


# ------------------------------------------------------------------------------ user settings

def check_radius(mean_nm: Optional[float], sd_nm: Optional[float]) -> None:
    """Refuses a radius mean outside :data:`RADIUS_MEAN_RANGE_NM` or a s.d. outside
    (0, :data:`MAX_RADIUS_CV` × mean] (None: not given, not checked).

    Raises:
        SampleSizeError: naming the setting and the allowed range.
    """
    low, high = RADIUS_MEAN_RANGE_NM
    if mean_nm is not None and not (math.isfinite(mean_nm) and low <= mean_nm <= high):
        raise SampleSizeError(f"--radius_mean_nm must lie in [{low:g}, {high:g}] nm, got "
                              f"{mean_nm:g}")
    if sd_nm is not None:
        limit = MAX_RADIUS_CV * (mean_nm if mean_nm is not None else high)
        if not (math.isfinite(sd_nm) and 0 < sd_nm <= limit):
            raise SampleSizeError(f"--radius_sd_nm must be > 0 and at most {limit:g} nm "
                                  f"(s.d./mean at most {MAX_RADIUS_CV:g}), got {sd_nm:g}")


def parse_particles(text) -> tuple[int, int]:
    """``--particles``: one count (``"40"``: every shadow has 40) or a range ``"20-80"``
    (uniform on 20…80, as the paper's model), each in [1, :data:`MAX_PARTICLES`].

    Raises:
        SampleSizeError: not one of these forms, out of range, or a reversed range.
    """
    if isinstance(text, (tuple, list)) and len(text) == 2:
        text = f"{text[0]}-{text[1]}"
    match = re.fullmatch(r"\s*(\d+)\s*(?:[-–:]\s*(\d+)\s*)?", str(text))
    if not match:
        raise SampleSizeError(f"--particles must be a count (40) or a range (20-80), got "
                              f"{text!r}")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else low
    if not 1 <= low <= MAX_PARTICLES or not 1 <= high <= MAX_PARTICLES:
        raise SampleSizeError(f"--particles must lie between 1 and {MAX_PARTICLES}, got {text}")
    if low > high:
        raise SampleSizeError(f"--particles range reversed: {low} > {high}")
    return low, high


# --------------------------------------------------------------------------- one image

def image_intensity(counts: np.ndarray, electrons_per_pixel: float,
                    metadata: Optional[dict] = None) -> np.ndarray:
    """The image as a fraction of the incident beam (before background subtraction).

    Images rendered with imaging conditions carry their dark and beam levels
    (``metadata["beam_level"]``): `hagg_tf.stem.normalized_intensity` undoes gain and offset;
    otherwise counts are divided by the electrons per pixel. A constant offset (dark level,
    support film) does not matter here: the background is measured on the image and subtracted.
    """
    if metadata and metadata.get("beam_level") is not None:
        from hagg_tf.stem import normalized_intensity

        return np.asarray(normalized_intensity(counts, metadata), dtype=np.float64)
    return np.asarray(counts, dtype=np.float64) / float(electrons_per_pixel)


@functools.lru_cache(maxsize=8)
def _smoothing_noise_gain(sigma_px: float) -> float:
    """√Σ k² of the smoothing kernel of σ px: the s.d. of smoothed white noise of unit s.d."""
    from scipy import ndimage

    size = 2 * int(4 * sigma_px + 1) + 1
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return float(np.sqrt((ndimage.gaussian_filter(delta, sigma_px) ** 2).sum()))


def measure_image(intensity: np.ndarray, pixel_size_nm: float, name: str = "image",
                  tables=None) -> ImageSizeMeasurement:
    """Domes, integrated intensity and outline of one image (see the module docstring).

    Args:
        intensity: (H, W) intensity as a fraction of the beam (:func:`image_intensity`).
        pixel_size_nm: pixel edge, nm (images finer than :data:`FINEST_PIXEL_NM` are
            block-averaged first).
        name: for messages.
        tables: HAADF tables for the domes' material (default: the shipped ones).

    Returns:
        The measurement.
    """
    from scipy import ndimage

    from hagg_tf.estimation.images import background_level

    factor = int(FINEST_PIXEL_NM // pixel_size_nm)
    if factor >= 2:
        # The mean over a block keeps the intensity a fraction of the beam (and its integral).
        height, width = (side // factor * factor for side in intensity.shape)
        intensity = intensity[:height, :width].reshape(
            height // factor, factor, width // factor, factor).mean(axis=(1, 3))
        pixel_size_nm = pixel_size_nm * factor
    background = background_level(intensity)
    signal = intensity - background
    # Robust s.d. of the frame: 1.4826 × the median absolute deviation (also a frame median).
    noise = 1.4826 * background_level(np.abs(signal))

    outline_px = max(OUTLINE_SIGMA_NM / pixel_size_nm, 0.5)
    smooth = ndimage.gaussian_filter(signal, outline_px)
    level = max(OUTLINE_FLOOR, OUTLINE_NOISE_LEVELS * noise * _smoothing_noise_gain(outline_px))
    outline = ndimage.binary_fill_holes(smooth > level)
    # Specks of noise above the level are not the aggregate: keep components of at least the
    # area of a 2-nm disc.
    labels, count = ndimage.label(outline)
    if count:
        sizes = np.bincount(labels.ravel())
        big = sizes * pixel_size_nm ** 2 >= math.pi * 4.0
        big[0] = False
        outline = big[labels]
    touches = bool(outline[0].any() or outline[-1].any() or outline[:, 0].any()
                   or outline[:, -1].any())
    grown = ndimage.binary_dilation(
        outline, iterations=max(1, int(round(INTEGRATION_MARGIN_NM / pixel_size_nm))))
    integrated = float(signal[grown].sum()) * pixel_size_nm ** 2

    radii, wo3 = _domes(signal, smooth, level, pixel_size_nm, tables)
    return ImageSizeMeasurement(
        name=name, pixel_size_nm=float(pixel_size_nm), dome_radii_nm=radii, dome_wo3=wo3,
        integrated_intensity_nm2=integrated,
        projected_area_nm2=float(outline.sum()) * pixel_size_nm ** 2, background=background,
        background_noise=noise, touches_border=touches)


def _domes(signal: np.ndarray, smooth: np.ndarray, level: float, pixel_size_nm: float,
           tables) -> tuple[np.ndarray, np.ndarray]:
    """Radii (nm) and WO3 flags of the round single-particle domes of one image."""
    from scipy import ndimage

    sigma_px = max(DOME_SIGMA_NM / pixel_size_nm, 1.0)
    concave = (ndimage.gaussian_laplace(signal, sigma_px) < 0) & (smooth > level)
    concave = ndimage.binary_fill_holes(concave)
    labels, count = ndimage.label(concave)
    if count == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    index = np.arange(1, count + 1)
    # Per-dome sums over the labelled pixels only (a few % of the frame): the same additions in
    # the same order as sums over the whole frame, whose other pixels add to label 0 only.
    inside = np.flatnonzero(labels)
    dome = labels.ravel()[inside]
    rows, cols = (coordinate.astype(np.float64)
                  for coordinate in np.unravel_index(inside, signal.shape))

    def sums(weights):
        return np.bincount(dome, weights, minlength=count + 1)[1:]

    area_px = sums(np.ones(inside.size))
    mean_r = sums(rows) / area_px
    mean_c = sums(cols) / area_px
    # Second moments of the pixel squares (+1/12: a pixel's own variance).
    var_r = sums(rows * rows) / area_px - mean_r ** 2 + 1 / 12
    var_c = sums(cols * cols) / area_px - mean_c ** 2 + 1 / 12
    cov = sums(rows * cols) / area_px - mean_r * mean_c
    half_trace = 0.5 * (var_r + var_c)
    spread = np.sqrt(np.maximum(half_trace ** 2 - (var_r * var_c - cov ** 2), 0.0))
    elongation = (half_trace + spread) / np.maximum(half_trace - spread, 1e-9)
    peak = np.asarray(ndimage.maximum(smooth.ravel()[inside], dome, index))
    # Domes cut by the border are not whole particles.
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    whole = ~np.isin(index, edge)
    area = area_px * pixel_size_nm ** 2
    keep = whole & (area >= MIN_DOME_AREA_NM2) & (elongation <= MAX_DOME_ELONGATION)
    radii = np.sqrt(area[keep] / math.pi) / DOME_RADIUS_RATIO
    return radii, _is_wo3(peak[keep], radii, tables)


def _is_wo3(peaks: np.ndarray, radii_nm: np.ndarray, tables) -> np.ndarray:
    """True where a dome's peak intensity is nearer (in log) to a WO3 sphere's central
    intensity I_WO3(2r) than to a TiO2 sphere's."""
    if peaks.size == 0:
        return np.zeros(0, dtype=bool)
    wo3 = _central_intensity(WO3, radii_nm, tables)
    tio2 = _central_intensity(TIO2, radii_nm, tables)
    return np.log(np.maximum(peaks, 1e-12)) > 0.5 * (np.log(wo3) + np.log(tio2))


def _table_weights(tables, label: int) -> list[tuple[float, object]]:
    """(weight, table) of one material as the renderer draws them: a uniform phase, then a
    uniform orientation of it."""
    phases: dict[str, list] = {}
    for table in tables.tables:
        if table.label == label:
            phases.setdefault(table.phase, []).append(table)
    return [(1.0 / (len(phases) * len(group)), table)
            for group in phases.values() for table in group]


def _tables(tables):
    if tables is None:
        from hagg_tf.stem.tables import load_tables

        tables = load_tables()
    return tables


def _central_intensity(label: int, radii_nm: np.ndarray, tables) -> np.ndarray:
    """I_m(2r), the intensity through a sphere's centre, averaged over the material's tables."""
    tables = _tables(tables)
    thickness = 2.0 * np.asarray(radii_nm)
    return np.maximum(sum(weight * table(thickness)
                          for weight, table in _table_weights(tables, label)), 1e-12)


def sphere_integrated_intensity(label: int, radii_nm, tables=None) -> np.ndarray:
    """F_m(r) = ∫ I_m(2√(r² − s²)) dA = (π/2) ∫₀^{2r} t I_m(t) dt: the integrated intensity of
    a sphere of material ``label`` (beam fraction × nm²), averaged over its tables as the
    renderer draws them.

    Args:
        label: 0 (WO3) or 1 (TiO2).
        radii_nm: radii, nm (any shape).
        tables: HAADF tables (default: the shipped ones).
    """
    tables = _tables(tables)
    radii_nm = np.asarray(radii_nm, dtype=np.float64)
    grid = np.linspace(0.0, 2.0 * max(float(np.max(radii_nm)), 1.0), 2001)
    total = np.zeros_like(grid)
    for weight, table in _table_weights(tables, label):
        integrand = grid * table(grid)
        cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1])
                                                      * np.diff(grid))])
        total += weight * cumulative
    return 0.5 * math.pi * np.interp(2.0 * radii_nm, grid, total)


def expected_particle_intensity(radius_mean_nm: float, radius_sd_nm: float,
                                wo3_share: float, tables=None) -> float:
    """E[F] per particle: F_WO3 and F_TiO2 mixed by ``wo3_share`` and averaged over the
    log-normal radius distribution (Gauss–Hermite quadrature, 40 nodes)."""
    mu, sigma = GeneratorConfig(radius_mean=radius_mean_nm,
                                radius_std=radius_sd_nm).lognormal_mu_sigma
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    radii = np.exp(mu + sigma * nodes)
    weights = weights / weights.sum()
    mixed = (wo3_share * sphere_integrated_intensity(WO3, radii, tables)
             + (1.0 - wo3_share) * sphere_integrated_intensity(TIO2, radii, tables))
    return float(weights @ mixed)


# ----------------------------------------------------------------------------- the sample

def radius_from_domes(radii_nm: np.ndarray) -> Optional[tuple[float, float]]:
    """(mean, s.d.) of the log-normal radius from pooled dome radii, or None without any.

    log r is taken as normal: its centre is the median of the log dome radii and its s.d.
    the robust one (1.4826 × MAD) less the measurement's :data:`DOME_LOG_NOISE` in quadrature,
    at least 0.05 (a near-monodisperse sample).
    """
    radii_nm = np.asarray(radii_nm, dtype=np.float64)
    if radii_nm.size == 0:
        return None
    logs = np.log(radii_nm)
    centre = float(np.median(logs))
    spread = 1.4826 * float(np.median(np.abs(logs - centre)))
    sigma = math.sqrt(max(spread ** 2 - DOME_LOG_NOISE ** 2, 0.05 ** 2))
    mean = math.exp(centre + 0.5 * sigma ** 2)
    return mean, mean * math.sqrt(math.expm1(sigma ** 2))


def wo3_share_from_domes(wo3_flags: np.ndarray) -> float:
    """The share of WO3 particles from the domes' materials (0.5 without any domes).

    The share of WO3 domes is biased up (:data:`WO3_DOME_ODDS`); its odds are divided by it.
    Kept within [0.5, n − 0.5] / n of n domes, so that a few domes of one material do not make a
    pure sample.
    """
    wo3_flags = np.asarray(wo3_flags, dtype=bool)
    count = wo3_flags.size
    if count == 0:
        return 0.5
    share = min(max(float(wo3_flags.mean()), 0.5 / count), 1.0 - 0.5 / count)
    odds = share / (1.0 - share) / WO3_DOME_ODDS
    return odds / (1.0 + odds)


def estimate_sample_size(measurements: Sequence[ImageSizeMeasurement], *,
                         radius_mean_nm: Optional[float] = None,
                         radius_sd_nm: Optional[float] = None,
                         particles: Optional[tuple[int, int]] = None,
                         wo3_share: Optional[float] = None,
                         default: Optional[GeneratorConfig] = None, tables=None) -> SampleSize:
    """The shadows' size distribution: what the user gave, the rest estimated from the images.

    Args:
        measurements: :func:`measure_image` of every image of the sample.
        radius_mean_nm, radius_sd_nm, particles: given settings (None: estimate it). A given
            radius is used for N̂ too.
        wo3_share: the share of WO3 particles for N̂ (e.g. a known composition); None: from the
            domes' brightness (:func:`wo3_share_from_domes`).
        default: settings used where nothing can be estimated (default: the paper's model).
        tables: HAADF tables (default: the shipped ones).

    Returns:
        The :class:`SampleSize`, its sources and the estimate's details.

    Raises:
        SampleSizeError: a given setting is out of range.
    """
    check_radius(radius_mean_nm, radius_sd_nm)
    if particles is not None:
        particles = parse_particles(particles)
    default = default or GeneratorConfig()
    count = len(measurements)
    origin = f"estimated from {count} image{'s' if count != 1 else ''}"
    sources, warnings, details = {}, [], {}

    pooled = (np.concatenate([item.dome_radii_nm for item in measurements]) if measurements
              else np.zeros(0))
    details["domes"] = int(pooled.size)
    estimated = radius_from_domes(pooled) if radius_mean_nm is None or radius_sd_nm is None \
        else None
    if estimated is not None:
        details["radius_mean_nm"], details["radius_sd_nm"] = (round(estimated[0], 3),
                                                              round(estimated[1], 3))
    low, high = RADIUS_MEAN_RANGE_NM
    if radius_mean_nm is not None:
        mean, sources["radius_mean_nm"] = float(radius_mean_nm), "given"
    elif estimated is not None:
        mean, sources["radius_mean_nm"] = min(max(estimated[0], low), high), origin
    else:
        mean, sources["radius_mean_nm"] = default.radius_mean, "model default"
        warnings.append("no single particle visible in the images: the shadows keep the "
                        f"model's particle radius {default.radius_mean:g} nm")
    if radius_sd_nm is not None:
        sd, sources["radius_sd_nm"] = float(radius_sd_nm), "given"
    elif estimated is not None:
        sd, sources["radius_sd_nm"] = min(estimated[1], MAX_RADIUS_CV * mean), origin
    else:
        sd = default.radius_std * mean / default.radius_mean
        sources["radius_sd_nm"] = "model default"
    check_radius(mean, sd)

    per_image = None
    if particles is not None:
        sources["particles"] = "given"
    else:
        if wo3_share is None:
            flags = (np.concatenate([item.dome_wo3 for item in measurements]) if measurements
                     else np.zeros(0, dtype=bool))
            wo3_share = wo3_share_from_domes(flags)
            details["wo3_share_source"] = ("round domes, by peak brightness" if flags.size else
                                           "no domes: assumed 0.5")
        else:
            details["wo3_share_source"] = "given"
        wo3_share = min(max(float(wo3_share), 0.0), 1.0)
        details["wo3_share"] = round(wo3_share, 3)
        per_particle = expected_particle_intensity(mean, sd, wo3_share, tables)
        per_image = tuple(int(min(max(round(item.integrated_intensity_nm2 / per_particle), 1),
                                  MAX_PARTICLES)) for item in measurements)
        if per_image:
            particles, sources["particles"] = (min(per_image), max(per_image)), origin
        else:
            particles = (default.min_size, default.max_size)
            sources["particles"] = "model default"
        cut = [item.name for item in measurements if item.touches_border]
        details["cut_by_border"] = len(cut)
        if cut:
            warnings.append(f"{len(cut)} of {count} images show an aggregate cut by the image "
                            f"border ({', '.join(cut[:3])}{' …' if len(cut) > 3 else ''}): "
                            "their particle counts are lower bounds")
    return SampleSize(radius_mean_nm=mean, radius_sd_nm=sd, particles=tuple(particles),
                      sources=sources, particles_per_image=per_image, details=details,
                      warnings=tuple(warnings))


def measure_images(images, tables=None) -> list[ImageSizeMeasurement]:
    """:func:`measure_image` for a list of :class:`~hagg_tf.estimation.images.StemInput`.

    The images' own dark and beam levels are used where their metadata gave the electrons per
    pixel; a value given by the user (a flag) is taken as is.
    """
    import pathlib

    measured = []
    for image in images:
        from_metadata = (image.sources or {}).get("electrons_per_pixel") == "metadata"
        intensity = image_intensity(image.counts, image.electrons_per_pixel,
                                    image.metadata if from_metadata else None)
        measured.append(measure_image(intensity, image.pixel_size_nm,
                                      pathlib.Path(image.path).name, tables))
    return measured


def size_for_shadows(images, *, generator_config: Optional[GeneratorConfig] = None,
                     radius_mean_nm: Optional[float] = None,
                     radius_sd_nm: Optional[float] = None,
                     particles=None, tables=None) -> SampleSize:
    """The size distribution ``characterize`` draws the shadows with.

    Precedence, per setting: the given value (``radius_mean_nm``, ``radius_sd_nm``,
    ``particles``), then an explicit ``generator_config`` (a library caller that fixed the
    model: nothing is estimated from the images), then the estimate from ``images``.

    Args:
        images: the sample's :class:`~hagg_tf.estimation.images.StemInput`.
        generator_config: fixed generator settings, or None.
        radius_mean_nm, radius_sd_nm: given radius mean and s.d., nm.
        particles: a count, ``(min, max)`` or ``"min-max"``.
        tables: HAADF tables (default: the shipped ones).

    Raises:
        SampleSizeError: a given setting is out of range.
    """
    check_radius(radius_mean_nm, radius_sd_nm)
    if particles is not None:
        particles = parse_particles(particles)
    if generator_config is not None:
        given = "given (generator settings)"
        mean = generator_config.radius_mean if radius_mean_nm is None else radius_mean_nm
        sd = generator_config.radius_std if radius_sd_nm is None else radius_sd_nm
        sources = {"radius_mean_nm": given if radius_mean_nm is None else "given",
                   "radius_sd_nm": given if radius_sd_nm is None else "given",
                   "particles": given if particles is None else "given"}
        return SampleSize(float(mean), float(sd),
                          particles or (generator_config.min_size, generator_config.max_size),
                          sources)
    if radius_mean_nm is not None and radius_sd_nm is not None and particles is not None:
        return SampleSize(float(radius_mean_nm), float(radius_sd_nm), particles,
                          dict.fromkeys(("radius_mean_nm", "radius_sd_nm", "particles"),
                                        "given"))
    size = estimate_sample_size(measure_images(images, tables), radius_mean_nm=radius_mean_nm,
                                radius_sd_nm=radius_sd_nm, particles=particles, tables=tables)
    simulated = [((image.metadata or {}).get("aggregate") or {}).get("size") for image in images]
    if simulated and all(isinstance(value, int) for value in simulated):
        # The package's own simulated images: the truth beside the estimate, in the report.
        size.details["simulated_particles_per_image"] = simulated
    return size
