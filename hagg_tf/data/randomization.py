"""Domain randomization: the imaging conditions and particle sizes of each training image.

The ``realistic`` database preset (`hagg_tf.data.design`) renders every image under imaging
conditions (`hagg_tf.stem.conditions.ImagingConditions`) and a particle size distribution
(`hagg_tf.model.parameters.GeneratorConfig`) drawn at random from `REALISTIC_RANGES`, so that
the networks learn θ from images that look like a real microscope's (issue 10). Where each range
comes from (a citation or a measurement) is tabulated in docs/data.md, "The realistic preset".

Draws. `draw_conditions` takes 16 uniform numbers u_0 … u_15 on [0, 1) from its own stream,
``SeedSequence([seed, CONDITIONS_STREAM], spawn_key=(index,))`` — a function of (seed, index)
alone, independent of the aggregate's and the image's streams for the same pair — and maps one
to each quantity, in this fixed order:

====  ======================  ===============================================================
u     quantity                distribution
====  ======================  ===============================================================
0     support film present    none (aggregate over a hole) with probability
                              ``film_free_fraction``
1     film_thickness_nm       uniform on the range, when there is a film
2     gain                    log-uniform
3     dark_offset             uniform
4     read_noise              uniform
5     focal_plane_offset_nm   uniform
6     probe_blur_nm           uniform
7     line_jitter_nm          uniform
8, 9  drift_nm                magnitude uniform on the range, direction uniform on [0, 2π)
15    stable scan             no jitter and no drift with probability ``scan_stable_fraction``
10    dose                    log-uniform
11    pixel_size_nm           log-uniform, then snapped (see "Pixel size" below)
12    radius mean r           uniform (``GeneratorConfig.radius_mean``)
13    radius s.d. / r         uniform (``GeneratorConfig.radius_std`` = fraction × r)
14    particles N             log-uniform on [N_min, N_fit(r)], rounded (below)
====  ======================  ===============================================================

Particles per aggregate. Larger particles make larger aggregates: the radius of gyration grows
like r (N / k_f)^(1/θ_Df), widest at the model's smallest θ_Df = 1.5. So N is capped at
``N_fit(r) = N_max × (r_min / r)^1.5`` (N_max, r_min: the upper particle and lower radius
bounds): the aggregates of the largest N at the smallest radius are as wide as those of
N_fit(r) at radius r. With the realistic ranges (N ≤ 300, r ≥ 5 nm) N_fit(12 nm) = 80, the
paper's N_max at its 12 nm radius, whose aggregates the paper's field of view holds. The cap
depends on r only, never on θ, so N carries no information about θ_Df.

Pixel size. The networks see every image on the database's grid (the paper's 512 px of
1.2 nm). An image is rendered at its drawn acquisition pixel size over the grid's field of view
and resampled to the grid (`hagg_tf.stem.resample.resample`, the resampling a user's image gets
at inference). The ranges are given for the paper's 1.2 nm grid; on another grid (the ``tiny``
test preset: 64 px of 9.6 nm) the pixel-size range scales with the grid's pixel, so that the
zoom between acquisition and grid spans the same factors. The drawn size is snapped to
``field of view / n`` with n = round(field of view / drawn size), so that the acquisition image
holds exactly the grid's field of view.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hagg_tf.model.parameters import TABLE2_FRACTAL_DIMENSIONS, GeneratorConfig
from hagg_tf.stem.conditions import DEFAULT_PIXEL_SIZE_NM, ImagingConditions

#: Entropy of the conditions' SeedSequence ("COND"), beside the base seed: it separates this
#: stream from the aggregate's ((seed,) entropy) and the image's ((seed, "STEM")).
CONDITIONS_STREAM = 0x434F4E44
#: The smallest θ_Df of Table 2: the loosest (widest) aggregates set the particle cap.
_LOOSEST_FRACTAL_DIMENSION = min(TABLE2_FRACTAL_DIMENSIONS)
#: Number of uniforms drawn per sample: a new quantity takes a new one at the end, so that the
#: earlier quantities keep their draws.
_UNIFORMS = 16


@dataclasses.dataclass(frozen=True)
class ConditionRanges:
    """Ranges for domain randomization: one (low, high) per `ImagingConditions` field, plus the
    particle size distribution and the particles per aggregate.

    Distributions (see the module docstring): log-uniform for ``gain``, ``dose``,
    ``pixel_size_nm`` and ``particles``, uniform otherwise; equal bounds give a constant. The
    defaults are the paper's idealized images (`ImagingConditions()`, `GeneratorConfig()`),
    except that N is log-uniform on 20–80. Sources of the `REALISTIC_RANGES` values:
    docs/data.md, "The realistic preset".

    Attributes:
        film_thickness_nm: amorphous carbon support film, nm (when there is one).
        film_free_fraction: share of images without a film (over a hole of a holey or lacey
            carbon film, or on a film-free support).
        gain: detector counts per electron.
        dark_offset: detector black level, counts.
        read_noise: s.d. of the Gaussian read noise, counts.
        focal_plane_offset_nm: focal plane height above the aggregate's centre of mass, nm.
        probe_blur_nm: s.d. of the extra Gaussian probe/source blur, nm.
        line_jitter_nm: s.d. of the per-line x-offset, nm.
        drift_nm: magnitude of the drift over the frame, nm (direction uniform).
        scan_stable_fraction: share of images with neither line jitter nor drift.
        dose: electron dose, e/Å².
        pixel_size_nm: acquisition pixel size at the paper's 1.2 nm grid, nm (scaled with
            the grid's pixel on other grids).
        radius_mean_nm: mean particle radius, nm (`GeneratorConfig.radius_mean`).
        radius_sd_fraction: radius s.d. as a fraction of the mean (`GeneratorConfig.radius_std`
            / radius_mean; the paper's 3 nm / 12 nm = 0.25).
        particles: (N_min, N_max) particles per aggregate (the generator's target size);
            at mean radius r at most N_fit(r) = N_max × (r_min / r)^1.5 (module docstring).
    """

    film_thickness_nm: tuple[float, float] = (0.0, 0.0)
    film_free_fraction: float = 1.0
    gain: tuple[float, float] = (1.0, 1.0)
    dark_offset: tuple[float, float] = (0.0, 0.0)
    read_noise: tuple[float, float] = (0.0, 0.0)
    focal_plane_offset_nm: tuple[float, float] = (0.0, 0.0)
    probe_blur_nm: tuple[float, float] = (0.0, 0.0)
    line_jitter_nm: tuple[float, float] = (0.0, 0.0)
    drift_nm: tuple[float, float] = (0.0, 0.0)
    scan_stable_fraction: float = 1.0
    dose: tuple[float, float] = (149.0, 149.0)
    pixel_size_nm: tuple[float, float] = (DEFAULT_PIXEL_SIZE_NM, DEFAULT_PIXEL_SIZE_NM)
    radius_mean_nm: tuple[float, float] = (12.0, 12.0)
    radius_sd_fraction: tuple[float, float] = (0.25, 0.25)
    particles: tuple[int, int] = (20, 80)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, tuple):
                continue
            if len(value) != 2 or not all(math.isfinite(float(v)) for v in value):
                raise ValueError(f"ConditionRanges.{field.name} must be two finite numbers "
                                 f"(low, high), got {value!r}")
            low, high = (float(v) for v in value)
            if low > high:
                raise ValueError(f"ConditionRanges.{field.name}: low {low:g} > high {high:g}")
            if field.name in _LOG_UNIFORM and low <= 0:
                raise ValueError(f"ConditionRanges.{field.name} is drawn log-uniformly and "
                                 f"needs low > 0, got {low:g}")
        for name in ("film_free_fraction", "scan_stable_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ConditionRanges.{name} must be in [0, 1], got "
                                 f"{getattr(self, name)!r}")
        low, high = self.particles
        if int(low) != low or int(high) != high or low < 1:
            raise ValueError(f"ConditionRanges.particles must be integers >= 1, got "
                             f"{self.particles!r}")
        # Fails early (naming the field) instead of at the first draw.
        ImagingConditions(film_thickness_nm=self.film_thickness_nm[0], gain=self.gain[0],
                          dark_offset=self.dark_offset[0], read_noise=self.read_noise[0],
                          probe_blur_nm=self.probe_blur_nm[0],
                          line_jitter_nm=self.line_jitter_nm[0], dose=self.dose[0],
                          pixel_size_nm=self.pixel_size_nm[0])
        if self.radius_mean_nm[0] <= 0 or self.radius_sd_fraction[0] <= 0:
            raise ValueError("ConditionRanges.radius_mean_nm and radius_sd_fraction must be "
                             "positive")

    def max_particles(self, radius_mean_nm: float) -> int:
        """N_fit(r) within the particle range: the most particles drawn at mean radius r."""
        fit = self.particles[1] * (self.radius_mean_nm[0] / radius_mean_nm) ** \
            _LOOSEST_FRACTAL_DIMENSION
        return int(max(self.particles[0], min(self.particles[1], math.floor(fit))))

    def to_dict(self) -> dict:
        """JSON-safe dict (pairs as lists); part of a database's settings."""
        return {field.name: (list(getattr(self, field.name))
                             if isinstance(getattr(self, field.name), tuple)
                             else getattr(self, field.name))
                for field in dataclasses.fields(self)}


_LOG_UNIFORM = frozenset({"gain", "dose", "pixel_size_nm", "particles"})

#: The ranges of the ``realistic`` preset. Sources and reasoning: docs/data.md, "The realistic
#: preset" (one row per field).
REALISTIC_RANGES = ConditionRanges(
    film_thickness_nm=(2.0, 20.0),
    film_free_fraction=0.2,
    gain=(0.5, 2.0),
    dark_offset=(0.0, 1000.0),
    read_noise=(0.0, 10.0),
    focal_plane_offset_nm=(-50.0, 50.0),
    probe_blur_nm=(0.0, 1.2),
    line_jitter_nm=(0.0, 0.5),
    drift_nm=(0.0, 3.0),
    scan_stable_fraction=0.5,
    dose=(30.0, 300.0),
    pixel_size_nm=(0.9, 1.8),
    radius_mean_nm=(5.0, 12.0),
    radius_sd_fraction=(0.15, 0.25),
    particles=(10, 300),
)

#: Named ranges, for `hagg_tf.data.design.DatasetConfig.conditions`.
CONDITION_RANGES = {"realistic": REALISTIC_RANGES}


def condition_ranges(name: str) -> ConditionRanges:
    """The named ranges (a `DatasetConfig.conditions` value).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in CONDITION_RANGES:
        raise ValueError(f"unknown condition ranges {name!r}; choose one of "
                         f"{sorted(CONDITION_RANGES)}")
    return CONDITION_RANGES[name]


def conditions_rng(seed: int, index: int) -> np.random.Generator:
    """The conditions' random stream of sample ``index`` under base ``seed``."""
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed!r}, {index!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), CONDITIONS_STREAM],
                                                        spawn_key=(int(index),)))


def _uniform(bounds: tuple[float, float], u: float) -> float:
    low, high = bounds
    return float(low + (high - low) * u)


def _log_uniform(bounds: tuple[float, float], u: float) -> float:
    low, high = bounds
    if low == high:
        return float(low)
    return float(math.exp(math.log(low) + (math.log(high) - math.log(low)) * u))


def acquisition_pixels(field_of_view_nm: float, pixel_size_nm: float) -> int:
    """Pixels per edge of an acquisition at ``pixel_size_nm`` over ``field_of_view_nm`` (≥ 1)."""
    return max(1, int(round(field_of_view_nm / pixel_size_nm)))


def draw_conditions(seed: int, index: int, ranges: ConditionRanges = REALISTIC_RANGES, *,
                    image_size: int = 512, grid_pixel_size_nm: float = DEFAULT_PIXEL_SIZE_NM
                    ) -> tuple[ImagingConditions, GeneratorConfig]:
    """The imaging conditions and generator settings of sample ``index``.

    Args:
        seed: base seed of the database.
        index: sample index i.
        ranges: where to draw from.
        image_size: pixels per edge of the database's grid.
        grid_pixel_size_nm: pixel edge of the grid, nm; field of view = image_size × this.

    Returns:
        (conditions, generator settings). ``conditions.pixel_size_nm`` is the acquisition
        pixel size, snapped to field of view / n for a whole number n of acquisition pixels;
        the generator's ``min_size == max_size`` is the drawn particle count N. A function of
        (seed, index, ranges, grid) alone.
    """
    u = conditions_rng(seed, index).random(_UNIFORMS)
    film = 0.0 if u[0] < ranges.film_free_fraction else _uniform(ranges.film_thickness_nm, u[1])
    stable = u[15] < ranges.scan_stable_fraction
    drift = 0.0 if stable else _uniform(ranges.drift_nm, u[8])
    angle = 2.0 * math.pi * u[9]
    field_of_view = image_size * grid_pixel_size_nm
    scale = grid_pixel_size_nm / DEFAULT_PIXEL_SIZE_NM
    drawn_pixel = _log_uniform(ranges.pixel_size_nm, u[11]) * scale
    pixel = field_of_view / acquisition_pixels(field_of_view, drawn_pixel)
    conditions = ImagingConditions(
        film_thickness_nm=film,
        gain=_log_uniform(ranges.gain, u[2]),
        dark_offset=_uniform(ranges.dark_offset, u[3]),
        read_noise=_uniform(ranges.read_noise, u[4]),
        focal_plane_offset_nm=_uniform(ranges.focal_plane_offset_nm, u[5]),
        probe_blur_nm=_uniform(ranges.probe_blur_nm, u[6]),
        line_jitter_nm=0.0 if stable else _uniform(ranges.line_jitter_nm, u[7]),
        drift_nm=(drift * math.cos(angle), drift * math.sin(angle)),
        dose=_log_uniform(ranges.dose, u[10]),
        pixel_size_nm=pixel)
    radius_mean = _uniform(ranges.radius_mean_nm, u[12])
    radius_std = radius_mean * _uniform(ranges.radius_sd_fraction, u[13])
    low = ranges.particles[0]
    high = ranges.max_particles(radius_mean)
    particles = min(high, max(low, int(round(_log_uniform((low, high), u[14])))))
    generator = GeneratorConfig(radius_mean=radius_mean, radius_std=radius_std,
                                min_size=particles, max_size=particles)
    return conditions, generator


def generator_settings(config: GeneratorConfig) -> dict:
    """The drawn part of a `GeneratorConfig` as a JSON-safe dict (stored in each record)."""
    return {"radius_mean": float(config.radius_mean), "radius_std": float(config.radius_std),
            "min_size": int(config.min_size), "max_size": int(config.max_size)}
