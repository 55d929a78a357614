"""Classical image-analysis baselines of the paper's Sec. 4, for comparison with the CNNs.

Both baselines work on the *intensity fraction* of every pixel,

    p = counts / electrons_per_pixel,

the fraction of the incident beam that reached the detector (both numbers are in every database
record, so nothing about the simulation is needed here). Everything in this module is plain
numpy; only the functions that read TFRecord shards (`iter_split_samples`,
`fit_baselines_on_split`, `baselines_for_split`, `run_baselines`) import TensorFlow (through
`hagg_tf.data.records`) when they are called.

**Threshold mixing ratio** (Sec. 4, "depending on the pixel intensity, the pixel is classified
as TiO2, WO3 or background, and then, using the a priori known particle size distributions, a
mixing ratio can be predicted"). Two thresholds ``t_bg < t_w`` classify every pixel:

* ``p ≤ t_bg``          background,
* ``t_bg < p ≤ t_w``    TiO2,
* ``p > t_w``           WO3.

The pixel areas A_W and A_T are turned into a number fraction with the mean projected area
ā = π E[r²] of one particle of each material: ρ̂ = (A_W/ā_W) / (A_W/ā_W + A_T/ā_T)
= A_W / (A_W + κ A_T) with κ = ā_W / ā_T. In this package both materials share one radius
distribution (`hagg_tf.model.parameters.GeneratorConfig`), so κ = 1 and

    ρ̂ = A_W / (A_W + A_T),

the WO3 share of the particle area. Overlaps in projection are ignored (as the paper's
baseline does): bright overlaps of TiO2 are counted as WO3, which is the method's main error
(Sec. 4). The thresholds are fitted by brute force, as in the paper: every pair of edges of a
fixed, fine grid of ``p`` values is tried and the pair with the smallest per-image mean
absolute error of ρ̂ against ρ(A) (Eq. 3) on a training subset wins (`fit_thresholds`). Each
training image is reduced once to a histogram of ``p`` over the grid, so that every grid pair
costs a few array operations over the images and no pass over pixels.

**Box-counting fractal dimension** (Sec. 4 and its ref. [2]). The image is binarised
(``p > t_box``), the binary mask is covered by square boxes of side s = 2, 4, 8, … pixels,
anchored at the top-left corner of the mask's bounding box, up to the largest power of two
not exceeding the mask's extent (the longer side of its bounding box) or a given fraction of
it, and the number N(s) of boxes holding at least one mask pixel is counted. The *raw* box
dimension is the least-squares slope of log N(s) against log(1/s) over those scales
(`box_counting_dimension`). Boxes close to the extent are few (N = 1 … 4) and their count
depends on how the grid falls on the object, which biases the slope: on 292 training images
of the paper database, stopping at a quarter or an eighth of the extent instead of the whole
extent lowered the calibrated MAE from 0.18 to 0.14.

The raw value measures the 2D projection, whose box dimension cannot exceed 2, while D_f(A) of
Eq. 5 is a 3D mass-fractal dimension that reaches 2.5 on Table 2's grid; projections of dense
aggregates are "geometrically opaque" (Sec. 4), and on the scales available here (particles of
about 20 px diameter, aggregates of a few hundred px) the small boxes mostly see the compact
particle discs. The raw value is therefore biased and compressed: on the paper database's E
(fit on 2000 images of T) it spans only 1.59–1.91 while D_f(A) spans 1.47–2.57 (1st to 99th
percentile); its error is +0.15 on average for D_f(A) < 1.7 and −0.55 for D_f(A) ≥ 2.2. The
*calibrated* box dimension a·D_box + b maps it linearly onto D_f(A), with (a, b) fitted by
least squares on the same training subset (`fit_box_calibration`). The binarisation
threshold t_box and the largest box (fraction of the extent) are chosen from a few candidates
each by the smallest training MAE of the calibrated value, the same brute force as for the
thresholds (t_box is not simply the fitted t_bg: that one is tuned for the mixing ratio, not
for the aggregate's outline).

Both the raw and the calibrated values are returned; the calibrated one is the baseline under
the key ``baseline_fractal_dimension_box`` of `hagg_tf.evaluation.predictions`, the raw one is
``baseline_fractal_dimension_box_raw``.

Example (database on disk; TensorFlow needed only for reading it)::

    from hagg_tf.evaluation import baselines

    fitted = baselines.fit_baselines_on_split("work/datasets/paper", "train", num_images=2000)
    baselines.save_fitted(fitted, "work/baselines/fitted.json")
    per_image = baselines.baselines_for_split("work/datasets/paper", "evaluation",
                                              fitted=fitted)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np

from hagg_tf.jsonsafe import json_safe
from hagg_tf.model.io import atomic_write, write_json_atomic
from hagg_tf.model.parameters import GeneratorConfig

#: Key of the threshold ρ̂ among the per-image arrays of a predictions file.
MIXING_RATIO_KEY = "baseline_mixing_ratio_threshold"
#: Key of the calibrated box-counting D̂_f (the baseline the evaluation compares with).
FRACTAL_DIMENSION_KEY = "baseline_fractal_dimension_box"
#: Key of the raw (uncalibrated) box-counting dimension of the projected image.
RAW_FRACTAL_DIMENSION_KEY = "baseline_fractal_dimension_box_raw"
BASELINE_ARRAY_KEYS = (MIXING_RATIO_KEY, FRACTAL_DIMENSION_KEY, RAW_FRACTAL_DIMENSION_KEY)

#: Candidate thresholds of the brute-force search: 0 (every positive pixel is particle) and
#: 320 values spaced by a factor 1.035 from 2e-5 (below one count at the paper's
#: 21 456 e/pixel) to 1 (the whole beam). The histograms of the fit live on this grid.
DEFAULT_THRESHOLD_GRID = np.concatenate([[0.0], np.geomspace(2e-5, 1.0, 320)])
#: Candidate binarisation thresholds of the box counting (intensity fractions).
DEFAULT_BOX_THRESHOLDS = np.concatenate([[0.0], np.geomspace(1e-4, 3e-2, 12)])
#: Candidate largest box sides of the box counting, as fractions of the aggregate's extent.
DEFAULT_BOX_MAX_FRACTIONS = np.array([1.0, 0.5, 0.25, 0.125, 0.0625])
DEFAULT_MIN_BOX = 2
DEFAULT_FIT_IMAGES = 2000
FITTED_FORMAT = "hagg_tf.baselines"
FITTED_FORMAT_VERSION = 1

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------


class LabelledImage(NamedTuple):
    """One training image with the truth the baselines are fitted against.

    Attributes:
        counts: (H, W) detector counts (non-negative, finite; any numeric dtype).
        electrons_per_pixel: incident electrons per pixel (> 0).
        mixing_ratio: ρ(A) of the imaged aggregate (Eq. 3).
        fractal_dimension: D_f(A) of the imaged aggregate (Eq. 5); NaN is skipped in the
            calibration.
    """

    counts: np.ndarray
    electrons_per_pixel: float
    mixing_ratio: float
    fractal_dimension: float


def labelled_image(sample) -> LabelledImage:
    """The `LabelledImage` of a database `hagg_tf.data.records.Sample`."""
    return LabelledImage(sample.counts, sample.electrons_per_pixel,
                         sample.descriptors.mixing_ratio, sample.descriptors.fractal_dimension)


def intensity_fraction(counts, electrons_per_pixel: float) -> np.ndarray:
    """p = counts / electrons_per_pixel, checked.

    Args:
        counts: (H, W) detector counts.
        electrons_per_pixel: incident electrons per pixel.

    Returns:
        (H, W) float64 fraction of the incident beam per pixel.

    Raises:
        ValueError: not a non-empty 2-D array, NaN/inf or negative counts, or an
            ``electrons_per_pixel`` that is not a positive finite number.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 2-D (H, W) array, got shape {counts.shape}")
    if not (np.issubdtype(counts.dtype, np.integer) or np.issubdtype(counts.dtype, np.floating)):
        raise ValueError(f"counts must be numeric, got dtype {counts.dtype}")
    electrons = float(electrons_per_pixel)
    if not math.isfinite(electrons) or electrons <= 0:
        raise ValueError(f"electrons_per_pixel must be positive and finite, got "
                         f"{electrons_per_pixel}")
    fraction = counts.astype(np.float64) / electrons
    if not np.all(np.isfinite(fraction)):
        raise ValueError("counts contain NaN or infinite values")
    if fraction.min() < 0:
        raise ValueError("counts must be non-negative")
    return fraction


# ------------------------------------------------------------------------------------------
# Threshold mixing ratio
# ------------------------------------------------------------------------------------------

BACKGROUND = -1  # pixel class next to the material labels 0 = WO3, 1 = TiO2


def mean_projected_area_nm2(radius_mean: float, radius_std: float) -> float:
    """Expected projected area π E[r²] = π (mean² + s.d.²) of a sphere, nm²."""
    return math.pi * (radius_mean ** 2 + radius_std ** 2)


def projected_area_ratio(wo3: GeneratorConfig | None = None,
                         tio2: GeneratorConfig | None = None) -> float:
    """κ = ā_WO3 / ā_TiO2 from the radius distributions of the two materials.

    The generator draws both materials from one distribution, so the default is exactly 1.
    """
    wo3 = wo3 or GeneratorConfig()
    tio2 = tio2 or wo3
    return (mean_projected_area_nm2(wo3.radius_mean, wo3.radius_std)
            / mean_projected_area_nm2(tio2.radius_mean, tio2.radius_std))


def _check_thresholds(background_threshold: float, wo3_threshold: float) -> None:
    if not (math.isfinite(background_threshold) and math.isfinite(wo3_threshold)):
        raise ValueError("thresholds must be finite")
    if not 0 <= background_threshold < wo3_threshold:
        raise ValueError(f"need 0 <= background_threshold < wo3_threshold, got "
                         f"{background_threshold}, {wo3_threshold}")


def classify_pixels(fraction: np.ndarray, background_threshold: float,
                    wo3_threshold: float) -> np.ndarray:
    """Per-pixel class from the intensity fraction.

    Args:
        fraction: (..., H, W) intensity fractions p.
        background_threshold: t_bg; ``p ≤ t_bg`` is background.
        wo3_threshold: t_w > t_bg; ``t_bg < p ≤ t_w`` is TiO2, ``p > t_w`` WO3.

    Returns:
        int8 array shaped like ``fraction``: `BACKGROUND` (−1), 0 (WO3) or 1 (TiO2).
    """
    _check_thresholds(background_threshold, wo3_threshold)
    fraction = np.asarray(fraction)
    classes = np.full(fraction.shape, BACKGROUND, dtype=np.int8)
    classes[fraction > background_threshold] = 1
    classes[fraction > wo3_threshold] = 0
    return classes


def _ratio_from_areas(wo3_area, particle_area, area_ratio: float):
    """ρ̂ = A_W / (A_W + κ A_T) for arrays of areas; NaN where no pixel is a particle."""
    wo3_area = np.asarray(wo3_area, dtype=np.float64)
    tio2_area = np.asarray(particle_area, dtype=np.float64) - wo3_area
    denominator = wo3_area + area_ratio * tio2_area
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, wo3_area / np.where(denominator > 0, denominator, 1.0),
                        np.nan)


def threshold_mixing_ratio(fraction: np.ndarray, background_threshold: float,
                           wo3_threshold: float, area_ratio: float = 1.0):
    """ρ̂ of the threshold method for one image or a stack of images.

    Args:
        fraction: (H, W) or (B, H, W) intensity fractions p (see `intensity_fraction`).
        background_threshold: t_bg.
        wo3_threshold: t_w.
        area_ratio: κ = ā_WO3 / ā_TiO2, mean projected particle areas (1: equal radius
            distributions, see the module docstring).

    Returns:
        float (one image) or (B,) float64: A_W / (A_W + κ A_T); NaN for an image without any
        particle pixel.
    """
    _check_thresholds(background_threshold, wo3_threshold)
    fraction = np.asarray(fraction, dtype=np.float64)
    if fraction.ndim not in (2, 3):
        raise ValueError(f"fraction must be (H, W) or (B, H, W), got shape {fraction.shape}")
    if not np.all(np.isfinite(fraction)):
        raise ValueError("fraction contains NaN or infinite values")
    wo3_area = np.count_nonzero(fraction > wo3_threshold, axis=(-2, -1))
    particle_area = np.count_nonzero(fraction > background_threshold, axis=(-2, -1))
    ratio = _ratio_from_areas(wo3_area, particle_area, area_ratio)
    return float(ratio) if fraction.ndim == 2 else ratio


def intensity_histogram(fraction: np.ndarray, grid: np.ndarray = DEFAULT_THRESHOLD_GRID
                        ) -> np.ndarray:
    """Pixel counts of one image between consecutive grid values.

    Args:
        fraction: (H, W) intensity fractions p ≥ 0.
        grid: (E,) strictly increasing candidate thresholds, ``grid[0] = 0`` recommended.

    Returns:
        (E + 1,) int64: entry j counts pixels with grid[j−1] < p ≤ grid[j] (entry 0: p ≤
        grid[0], entry E: p > grid[E−1]), so the number of pixels with p > grid[j] is
        ``total − cumsum[j]``, exactly as the classification of `classify_pixels` counts.
    """
    grid = np.asarray(grid, dtype=np.float64)
    positive = fraction[fraction > 0]
    # Most pixels are exactly zero (no electron outside the aggregate): bin only the rest.
    bins = np.searchsorted(grid, positive, side="left")
    histogram = np.bincount(bins, minlength=grid.size + 1).astype(np.int64)
    histogram[np.searchsorted(grid, 0.0, side="left")] += fraction.size - positive.size
    return histogram


@dataclasses.dataclass(frozen=True)
class ThresholdFit:
    """Fitted thresholds of the mixing-ratio baseline.

    Attributes:
        background_threshold: t_bg, intensity fraction; ``p ≤ t_bg`` is background.
        wo3_threshold: t_w, intensity fraction; ``p > t_w`` is WO3.
        area_ratio: κ = ā_WO3 / ā_TiO2 used in ρ̂ = A_W / (A_W + κ A_T).
        train_mae: per-image MAE of ρ̂ against ρ(A) on the fitting images.
        num_images: images the fit used.
    """

    background_threshold: float
    wo3_threshold: float
    area_ratio: float = 1.0
    train_mae: float = math.nan
    num_images: int = 0

    def __post_init__(self):
        _check_thresholds(self.background_threshold, self.wo3_threshold)

    def mixing_ratio(self, fraction: np.ndarray):
        """ρ̂ of (H, W) or (B, H, W) intensity fractions (see `threshold_mixing_ratio`)."""
        return threshold_mixing_ratio(fraction, self.background_threshold, self.wo3_threshold,
                                      self.area_ratio)


def fit_thresholds(histograms: np.ndarray, mixing_ratios: np.ndarray,
                   grid: np.ndarray = DEFAULT_THRESHOLD_GRID,
                   area_ratio: float = 1.0) -> ThresholdFit:
    """Brute-force search of (t_bg, t_w) minimising the per-image MAE of ρ̂.

    Every pair of grid values t_bg = grid[i] < t_w = grid[j] is tried. Pairs that leave any
    image without particle pixels are not admissible (ρ̂ undefined); images without a single
    positive pixel are left out of the fit. Ties go to the smallest (i, j).

    Args:
        histograms: (n, E + 1) per-image histograms from `intensity_histogram` on ``grid``.
        mixing_ratios: (n,) ρ(A) of the images.
        grid: (E,) the grid the histograms were made on.
        area_ratio: κ (see `threshold_mixing_ratio`).

    Returns:
        The best `ThresholdFit`.

    Raises:
        ValueError: inconsistent shapes, NaN, ρ outside [0, 1], no usable image.
    """
    grid = np.asarray(grid, dtype=np.float64)
    histograms = np.asarray(histograms)
    mixing_ratios = np.asarray(mixing_ratios, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0) or grid[0] < 0:
        raise ValueError("grid must be a strictly increasing 1-D array of >= 2 values >= 0")
    if histograms.ndim != 2 or histograms.shape[1] != grid.size + 1:
        raise ValueError(f"histograms must be (n, {grid.size + 1}), got {histograms.shape}")
    if mixing_ratios.shape != (histograms.shape[0],):
        raise ValueError(f"mixing_ratios must be ({histograms.shape[0]},), got "
                         f"{mixing_ratios.shape}")
    if not np.all(np.isfinite(mixing_ratios)) or np.any((mixing_ratios < 0) | (mixing_ratios > 1)):
        raise ValueError("mixing ratios must be finite and in [0, 1]")
    cumulative = np.cumsum(histograms, axis=1)
    # above[:, j]: pixels with p > grid[j] in every image.
    above = (cumulative[:, -1:] - cumulative[:, :-1]).astype(np.float64)
    usable = above[:, 0] > 0
    if not np.any(usable):
        raise ValueError("no fitting image has a pixel above the lowest threshold")
    above, truth = above[usable], mixing_ratios[usable]

    best = (math.inf, 0, 1)
    for i in range(grid.size - 1):
        particle_area = above[:, i]
        if np.any(particle_area == 0):
            break  # higher t_bg leaves even less: no admissible pair from here on
        estimate = _ratio_from_areas(above[:, i + 1:], particle_area[:, None], area_ratio)
        mae = np.abs(estimate - truth[:, None]).mean(axis=0)
        j = int(np.argmin(mae))
        if mae[j] < best[0]:
            best = (float(mae[j]), i, i + 1 + j)
    if not math.isfinite(best[0]):
        raise ValueError("no admissible threshold pair on the grid")
    return ThresholdFit(background_threshold=float(grid[best[1]]),
                        wo3_threshold=float(grid[best[2]]), area_ratio=float(area_ratio),
                        train_mae=best[0], num_images=int(usable.sum()))


# ------------------------------------------------------------------------------------------
# Box counting
# ------------------------------------------------------------------------------------------


def _box_levels(mask: np.ndarray, min_box: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Box sides, occupied-box counts up to the extent, and the extent (0: empty mask)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if min_box < 1 or min_box & (min_box - 1):
        raise ValueError(f"min_box must be a power of two >= 1, got {min_box}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    cols = np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    extent = max(crop.shape)
    largest = 1 << (extent.bit_length() - 1)  # largest power of two <= extent
    side = largest if largest == extent else 2 * largest
    level = np.zeros((side, side), dtype=bool)
    level[:crop.shape[0], :crop.shape[1]] = crop
    sizes, counts = [], []
    box = 1
    while True:
        if box >= min_box:
            sizes.append(box)
            counts.append(int(np.count_nonzero(level)))
        if box == largest:
            break
        # Boxes of side 2s are the OR of 2×2 boxes of side s.
        half = level.shape[0] // 2
        level = level.reshape(half, 2, half, 2).any(axis=(1, 3))
        box *= 2
    return np.asarray(sizes, dtype=np.int64), np.asarray(counts, dtype=np.int64), extent


def _check_fraction(max_box_fraction: float) -> None:
    if not 0 < max_box_fraction <= 1:
        raise ValueError(f"max_box_fraction must be in (0, 1], got {max_box_fraction}")


def box_counts(mask: np.ndarray, min_box: int = DEFAULT_MIN_BOX,
               max_box_fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Occupied-box counts N(s) of a binary image.

    Boxes of side s = min_box·2^k pixels tile the plane from the top-left corner of the mask's
    bounding box; the sides run up to the largest power of two not exceeding
    ``max_box_fraction`` times the extent (the longer side of the bounding box).

    Args:
        mask: (H, W) boolean image.
        min_box: smallest box side, a power of two ≥ 1.
        max_box_fraction: largest box side as a fraction of the extent, in (0, 1]. Near the
            extent N(s) is 1 to 4 and set by how the grid happens to fall on the object (a
            disc of 221 px has N(128) = 4, not π/4·(221/128)² ≈ 2.3), so smaller values
            reduce that finite-size bias.

    Returns:
        (sizes, counts): (K,) int64 box sides in pixels and (K,) int64 occupied boxes; empty
        when the mask is empty or too small for a box of ``min_box``.
    """
    _check_fraction(max_box_fraction)
    sizes, counts, extent = _box_levels(mask, min_box)
    keep = sizes <= max_box_fraction * extent
    return sizes[keep], counts[keep]


def _log_slope(sizes: np.ndarray, counts: np.ndarray) -> float:
    """Least-squares slope of log N(s) against log(1/s); NaN below two scales."""
    if sizes.size < 2:
        return math.nan
    return float(np.polyfit(-np.log(sizes), np.log(counts), 1)[0])


def box_counting_dimension(mask: np.ndarray, min_box: int = DEFAULT_MIN_BOX,
                           max_box_fraction: float = 1.0) -> float:
    """Raw box-counting dimension of a binary image.

    Args:
        mask: (H, W) boolean image (True: occupied).
        min_box: smallest box side in pixels (power of two).
        max_box_fraction: largest box side as a fraction of the extent (see `box_counts`).

    Returns:
        Least-squares slope of log N(s) against log(1/s) over the scales of `box_counts`;
        NaN when fewer than two scales exist (empty or tiny mask).
    """
    return _log_slope(*box_counts(mask, min_box, max_box_fraction))


def _box_dimensions(fraction: np.ndarray, thresholds: np.ndarray, max_box_fractions: np.ndarray,
                    min_box: int) -> np.ndarray:
    """(T, F) raw box dimensions of one image for every (threshold, max_box_fraction)."""
    dimensions = np.full((thresholds.size, max_box_fractions.size), np.nan)
    # Crop once to the lowest binarisation: every other one is a subset of it.
    occupied = fraction > thresholds.min()
    rows = np.flatnonzero(occupied.any(axis=1))
    if rows.size == 0:
        return dimensions
    cols = np.flatnonzero(occupied.any(axis=0))
    crop = fraction[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    for t, threshold in enumerate(thresholds):
        # One box count per threshold serves every scale range.
        sizes, counts, extent = _box_levels(crop > threshold, min_box)
        for f, share in enumerate(max_box_fractions):
            keep = sizes <= share * extent
            dimensions[t, f] = _log_slope(sizes[keep], counts[keep])
    return dimensions


@dataclasses.dataclass(frozen=True)
class BoxCountingFit:
    """Binarisation, scale range and linear calibration of the box-counting baseline.

    Attributes:
        threshold: t_box, intensity fraction; pixels with ``p > t_box`` are occupied.
        slope, intercept: calibrated D̂_f = slope · D_box + intercept.
        min_box: smallest box side, pixels.
        max_box_fraction: largest box side as a fraction of the mask's extent.
        train_mae_raw: per-image MAE of the raw D_box against D_f(A) on the fitting images.
        train_mae: the same for the calibrated value.
        num_images: images the fit used.
    """

    threshold: float
    slope: float
    intercept: float
    min_box: int = DEFAULT_MIN_BOX
    max_box_fraction: float = 1.0
    train_mae_raw: float = math.nan
    train_mae: float = math.nan
    num_images: int = 0

    def __post_init__(self):
        for name in ("threshold", "slope", "intercept"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        _check_fraction(self.max_box_fraction)

    def raw_dimension(self, fraction: np.ndarray) -> float:
        """Raw box dimension of one (H, W) intensity-fraction image."""
        return box_counting_dimension(np.asarray(fraction) > self.threshold, self.min_box,
                                      self.max_box_fraction)

    def calibrate(self, raw):
        """slope · raw + intercept (NaN stays NaN)."""
        return self.slope * np.asarray(raw, dtype=np.float64) + self.intercept


def fit_box_calibration(raw_dimensions: np.ndarray,
                        fractal_dimensions: np.ndarray) -> tuple[float, float]:
    """Least-squares line D_f ≈ a · D_box + b over the pairs where both are finite.

    Args:
        raw_dimensions: (n,) raw box dimensions.
        fractal_dimensions: (n,) D_f(A).

    Returns:
        (a, b).

    Raises:
        ValueError: mismatched shapes, fewer than two finite pairs, or constant D_box.
    """
    raw = np.asarray(raw_dimensions, dtype=np.float64)
    truth = np.asarray(fractal_dimensions, dtype=np.float64)
    if raw.ndim != 1 or raw.shape != truth.shape:
        raise ValueError(f"need two (n,) arrays, got {raw.shape} and {truth.shape}")
    finite = np.isfinite(raw) & np.isfinite(truth)
    if finite.sum() < 2 or np.ptp(raw[finite]) == 0:
        raise ValueError("need at least two images with distinct finite box dimensions")
    slope, intercept = np.polyfit(raw[finite], truth[finite], 1)
    return float(slope), float(intercept)


def fit_box_counting(raw_dimensions: np.ndarray, fractal_dimensions: np.ndarray,
                     thresholds: np.ndarray = DEFAULT_BOX_THRESHOLDS,
                     max_box_fractions: np.ndarray = DEFAULT_BOX_MAX_FRACTIONS,
                     min_box: int = DEFAULT_MIN_BOX) -> BoxCountingFit:
    """Chooses t_box, the scale range and the calibration line from per-image raw dimensions.

    Args:
        raw_dimensions: (n, T, F) raw box dimension of every image binarised at each of the
            ``thresholds`` and counted up to each of the ``max_box_fractions``.
        fractal_dimensions: (n,) D_f(A).
        thresholds: (T,) candidate binarisation thresholds.
        max_box_fractions: (F,) candidate largest box sides (fractions of the extent).
        min_box: the smallest box side the raw dimensions were computed with.

    Returns:
        The candidate whose calibrated values have the smallest training MAE (first on ties),
        with its line. Candidates with NaN dimensions on more than 1 % of the images are
        skipped.
    """
    raw = np.asarray(raw_dimensions, dtype=np.float64)
    truth = np.asarray(fractal_dimensions, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    max_box_fractions = np.asarray(max_box_fractions, dtype=np.float64).reshape(-1)
    expected = (truth.size, thresholds.size, max_box_fractions.size)
    if truth.ndim != 1 or raw.shape != expected:
        raise ValueError(f"raw_dimensions must be {expected}, got {raw.shape}")
    best: Optional[BoxCountingFit] = None
    for t, threshold in enumerate(thresholds):
        for f, share in enumerate(max_box_fractions):
            values = raw[:, t, f]
            finite = np.isfinite(values) & np.isfinite(truth)
            if finite.sum() < 2 or (~np.isfinite(values)).mean() > 0.01:
                continue
            try:
                slope, intercept = fit_box_calibration(values, truth)
            except ValueError:
                continue
            calibrated = slope * values[finite] + intercept
            candidate = BoxCountingFit(
                threshold=float(threshold), slope=slope, intercept=intercept,
                min_box=int(min_box), max_box_fraction=float(share),
                train_mae_raw=float(np.abs(values[finite] - truth[finite]).mean()),
                train_mae=float(np.abs(calibrated - truth[finite]).mean()),
                num_images=int(finite.sum()))
            if best is None or candidate.train_mae < best.train_mae:
                best = candidate
    if best is None:
        raise ValueError("no box-counting candidate gives finite dimensions on the fitting "
                         "images")
    return best


# ------------------------------------------------------------------------------------------
# Both baselines: fit, apply, save
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FittedBaselines:
    """Everything needed to apply both baselines (JSON-serialisable, see `save_fitted`).

    Attributes:
        threshold: the mixing-ratio thresholds.
        box_counting: the box-counting binarisation and calibration.
        info: provenance (dataset, split, images used, seed, fit time, …).
    """

    threshold: ThresholdFit
    box_counting: BoxCountingFit
    info: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": FITTED_FORMAT, "format_version": FITTED_FORMAT_VERSION,
                "threshold": dataclasses.asdict(self.threshold),
                "box_counting": dataclasses.asdict(self.box_counting), "info": self.info}

    @classmethod
    def from_dict(cls, value: dict) -> "FittedBaselines":
        if not isinstance(value, dict) or value.get("format") != FITTED_FORMAT:
            raise ValueError("not a hagg_tf baselines file")
        if value.get("format_version") != FITTED_FORMAT_VERSION:
            raise ValueError(f"baselines format version {value.get('format_version')}, this "
                             f"hagg_tf reads {FITTED_FORMAT_VERSION}")
        try:
            return cls(threshold=ThresholdFit(**value["threshold"]),
                       box_counting=BoxCountingFit(**value["box_counting"]),
                       info=dict(value.get("info", {})))
        except (KeyError, TypeError) as error:
            raise ValueError(f"incomplete baselines file ({error})") from None


def _from_json_number(value):
    if isinstance(value, dict):
        return {key: (math.nan if item is None and key.startswith("train_mae") else
                      _from_json_number(item)) for key, item in value.items()}
    return value


def save_fitted(fitted: FittedBaselines, path: PathLike) -> pathlib.Path:
    """Writes the fitted parameters as JSON (atomically)."""
    # A training MAE of NaN (no image to fit on) is stored as null, valid JSON.
    return write_json_atomic(path, json_safe(fitted.to_dict()), indent=2, sort_keys=True)


def load_fitted(path: PathLike) -> FittedBaselines:
    """Reads a file written by `save_fitted`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a baselines file.
    """
    path = pathlib.Path(path)
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    try:
        return FittedBaselines.from_dict(_from_json_number(value))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _as_labelled(item) -> LabelledImage:
    if isinstance(item, LabelledImage):
        return item
    if hasattr(item, "descriptors") and hasattr(item, "counts"):
        return labelled_image(item)
    if isinstance(item, tuple) and len(item) == 4:
        return LabelledImage(*item)
    raise TypeError(f"expected a LabelledImage or a database Sample, got {type(item).__name__}")


def fit_baselines(samples: Iterable, *, grid: np.ndarray = DEFAULT_THRESHOLD_GRID,
                  box_thresholds: np.ndarray = DEFAULT_BOX_THRESHOLDS,
                  box_max_fractions: np.ndarray = DEFAULT_BOX_MAX_FRACTIONS,
                  min_box: int = DEFAULT_MIN_BOX, area_ratio: Optional[float] = None,
                  info: Optional[dict] = None) -> FittedBaselines:
    """Fits both baselines in one pass over training images.

    Each image is reduced to its ``p`` histogram on ``grid`` and its raw box dimension for every
    candidate (box threshold, largest box), so only a few hundred numbers per image are kept
    and ``samples`` may be a generator.

    Args:
        samples: iterable of `LabelledImage` (or database `Sample`s), e.g. a subset of T.
        grid: candidate thresholds of the mixing-ratio search (intensity fractions).
        box_thresholds: candidate binarisation thresholds of the box counting.
        box_max_fractions: candidate largest box sides, fractions of the extent in (0, 1].
        min_box: smallest box side, pixels.
        area_ratio: κ = ā_WO3 / ā_TiO2 (default: from `GeneratorConfig`, i.e. 1).
        info: provenance stored with the result.

    Returns:
        The fitted parameters; ``info`` gains ``num_images`` and ``fit_seconds``.
    """
    start = time.perf_counter()
    grid = np.asarray(grid, dtype=np.float64)
    box_thresholds = np.asarray(box_thresholds, dtype=np.float64)
    if box_thresholds.ndim != 1 or box_thresholds.size == 0 or np.any(box_thresholds < 0):
        raise ValueError("box_thresholds must be a non-empty 1-D array of values >= 0")
    box_max_fractions = np.asarray(box_max_fractions, dtype=np.float64)
    if box_max_fractions.ndim != 1 or box_max_fractions.size == 0:
        raise ValueError("box_max_fractions must be a non-empty 1-D array")
    for share in box_max_fractions:
        _check_fraction(share)
    area_ratio = projected_area_ratio() if area_ratio is None else float(area_ratio)
    histograms, raw, mixing, fractal = [], [], [], []
    for item in samples:
        image = _as_labelled(item)
        fraction = intensity_fraction(image.counts, image.electrons_per_pixel)
        histograms.append(intensity_histogram(fraction, grid))
        raw.append(_box_dimensions(fraction, box_thresholds, box_max_fractions, min_box))
        mixing.append(float(image.mixing_ratio))
        fractal.append(float(image.fractal_dimension))
    if not histograms:
        raise ValueError("no training images")
    threshold = fit_thresholds(np.stack(histograms), np.asarray(mixing), grid, area_ratio)
    box = fit_box_counting(np.stack(raw), np.asarray(fractal), box_thresholds,
                           box_max_fractions, min_box)
    info = dict(info or {})
    info.update(num_images=len(histograms), fit_seconds=round(time.perf_counter() - start, 3))
    return FittedBaselines(threshold=threshold, box_counting=box, info=info)


def baseline_values(counts, electrons_per_pixel: float, fitted: FittedBaselines) -> dict:
    """Both baselines for one image.

    Args:
        counts: (H, W) detector counts.
        electrons_per_pixel: incident electrons per pixel.
        fitted: fitted parameters.

    Returns:
        {`MIXING_RATIO_KEY`: ρ̂, `FRACTAL_DIMENSION_KEY`: calibrated D̂_f,
        `RAW_FRACTAL_DIMENSION_KEY`: raw box dimension} (floats; NaN where undefined).
    """
    fraction = intensity_fraction(counts, electrons_per_pixel)
    raw = fitted.box_counting.raw_dimension(fraction)
    return {MIXING_RATIO_KEY: fitted.threshold.mixing_ratio(fraction),
            FRACTAL_DIMENSION_KEY: float(fitted.box_counting.calibrate(raw)),
            RAW_FRACTAL_DIMENSION_KEY: raw}


def apply_baselines(images, electrons_per_pixel, fitted: FittedBaselines) -> dict:
    """Both baselines for many images.

    Args:
        images: (B, H, W) counts, or an iterable of (H, W) counts (may be a generator).
        electrons_per_pixel: one value for all images or a (B,) sequence.
        fitted: fitted parameters.

    Returns:
        dict of (B,) float64 arrays under `BASELINE_ARRAY_KEYS` (the per-image baseline keys of
        `hagg_tf.evaluation.predictions`, plus the raw box dimension).
    """
    if isinstance(images, np.ndarray) and images.ndim != 3:
        raise ValueError(f"images must be (B, H, W), got shape {images.shape}")
    electrons = np.asarray(electrons_per_pixel, dtype=np.float64)
    if electrons.ndim > 1:
        raise ValueError("electrons_per_pixel must be a scalar or a (B,) sequence")
    values = {key: [] for key in BASELINE_ARRAY_KEYS}
    for number, counts in enumerate(images):
        if electrons.ndim == 0:
            per_pixel = float(electrons)
        elif number < electrons.size:
            per_pixel = float(electrons[number])
        else:
            raise ValueError(f"electrons_per_pixel has {electrons.size} values, more images")
        for key, value in baseline_values(counts, per_pixel, fitted).items():
            values[key].append(value)
    if electrons.ndim == 1 and electrons.size != len(values[MIXING_RATIO_KEY]):
        raise ValueError(f"electrons_per_pixel has {electrons.size} values for "
                         f"{len(values[MIXING_RATIO_KEY])} images")
    return {key: np.asarray(value, dtype=np.float64) for key, value in values.items()}


# ------------------------------------------------------------------------------------------
# Reading the database (TensorFlow needed to parse records)
# ------------------------------------------------------------------------------------------


def _split_shards(dataset_dir: PathLike, split: str, verify: str):
    from hagg_tf.data.manifest import shard_paths, verify_dataset

    manifest = verify_dataset(dataset_dir, level=verify, splits=split)
    return manifest, shard_paths(manifest, split)


def iter_split_samples(dataset_dir: PathLike, split: str = "evaluation", *,
                       positions: Optional[Sequence[int]] = None, verify: str = "size"
                       ) -> Iterator:
    """Streams the `Sample`s of a split in database order (manifest shard order, record order).

    Args:
        dataset_dir: database directory.
        split: split name(s), e.g. ``"evaluation"`` or ``"train+validation"``.
        positions: only these positions (0-based, in database order) of the split.
        verify: manifest check level before reading (see `verify_dataset`).

    Yields:
        `hagg_tf.data.records.Sample`, one at a time (records not asked for are skipped
        without parsing).
    """
    from hagg_tf.data.records import decode_example, iter_tfrecord

    _, paths = _split_shards(dataset_dir, split, verify)
    wanted = None if positions is None else set(int(p) for p in positions)
    last = None if wanted is None else max(wanted, default=-1)
    position = 0
    for path in paths:
        for number, serialized in enumerate(iter_tfrecord(path)):
            if last is not None and position > last:
                return
            if wanted is None or position in wanted:
                yield decode_example(serialized, f"{path} (record {number})")
            position += 1


def split_size(dataset_dir: PathLike, split: str) -> int:
    """Records in a split according to the manifest."""
    from hagg_tf.data.manifest import load_manifest, parse_splits

    manifest = load_manifest(dataset_dir)
    return int(sum(manifest["splits"][name]["records"] for name in parse_splits(split)))


def fit_baselines_on_split(dataset_dir: PathLike, split: str = "train",
                           num_images: Optional[int] = DEFAULT_FIT_IMAGES, seed: int = 0,
                           verify: str = "size", **fit_kwargs) -> FittedBaselines:
    """Fits both baselines on a random subset of a (training) split.

    Args:
        dataset_dir: database directory.
        split: the split to fit on (the paper's T: ``"train"`` or ``"train+validation"``).
        num_images: images drawn uniformly without replacement (seeded); None: all.
        seed: seed of the subset.
        verify: manifest check level.
        **fit_kwargs: passed to `fit_baselines`.

    Returns:
        The fitted parameters; ``info`` records dataset, split, seed and the record indices.
    """
    total = split_size(dataset_dir, split)
    if num_images is None or num_images >= total:
        positions = np.arange(total)
    else:
        if num_images < 2:
            raise ValueError(f"num_images must be >= 2, got {num_images}")
        positions = np.sort(np.random.default_rng(seed).choice(total, num_images, replace=False))
    record_indices: list[int] = []

    def labelled():
        for sample in iter_split_samples(dataset_dir, split, positions=positions, verify=verify):
            record_indices.append(int(sample.index))
            yield labelled_image(sample)

    info = {"dataset": os.fspath(dataset_dir), "split": split, "seed": int(seed),
            "requested_images": None if num_images is None else int(num_images)}
    fitted = fit_baselines(labelled(), info=info, **fit_kwargs)
    fitted.info["record_index"] = record_indices
    return fitted


def baselines_for_split(dataset_dir: PathLike, split: str = "evaluation", *,
                        fitted: FittedBaselines, limit: Optional[int] = None,
                        verify: str = "size") -> dict:
    """Applies fitted baselines to every image of a split, streaming (one image in memory).

    Args:
        dataset_dir: database directory.
        split: split name(s).
        fitted: fitted parameters (`fit_baselines_on_split` or `load_fitted`).
        limit: only the first ``limit`` images (database order).
        verify: manifest check level.

    Returns:
        dict of (N,) arrays in database order: ``record_index``, ``theta_id``,
        ``mixing_ratio`` (ρ(A)), ``fractal_dimension`` (D_f(A)), ``num_particles`` and the
        three `BASELINE_ARRAY_KEYS`. Aligned by ``record_index``, it can go to
        ``hagg_tf.evaluation.predict.predict_split(baselines=...)``; saved with
        `save_split_baselines`, to ``hagg_tf.evaluation.paper_evaluation.attach_baselines``.
    """
    positions = None if limit is None else range(int(limit))
    columns = {key: [] for key in ("record_index", "theta_id", "mixing_ratio",
                                   "fractal_dimension", "num_particles", *BASELINE_ARRAY_KEYS)}
    for number, sample in enumerate(iter_split_samples(dataset_dir, split, positions=positions,
                                                       verify=verify)):
        if limit is not None and number >= limit:
            break
        columns["record_index"].append(sample.index)
        columns["theta_id"].append(sample.theta_id)
        columns["mixing_ratio"].append(sample.descriptors.mixing_ratio)
        columns["fractal_dimension"].append(sample.descriptors.fractal_dimension)
        columns["num_particles"].append(sample.descriptors.size)
        for key, value in baseline_values(sample.counts, sample.electrons_per_pixel,
                                          fitted).items():
            columns[key].append(value)
    integer_keys = ("record_index", "theta_id", "num_particles")
    return {key: np.asarray(value, dtype=np.int64 if key in integer_keys else np.float64)
            for key, value in columns.items()}


def baseline_errors(arrays: dict) -> dict:
    """Per-image error summary of baseline arrays against the truth held beside them.

    Args:
        arrays: as returned by `baselines_for_split` (truth ``mixing_ratio`` and
            ``fractal_dimension`` plus the baseline keys).

    Returns:
        dict: images, NaN counts, MAE of ρ̂, and MAE, mean error (estimate − truth) and IQR of
        the error of the raw and calibrated box-counting D̂_f.
    """
    summary = {"images": int(len(arrays["record_index"]))}
    pairs = {"mixing_ratio_threshold": (MIXING_RATIO_KEY, "mixing_ratio"),
             "fractal_dimension_box": (FRACTAL_DIMENSION_KEY, "fractal_dimension"),
             "fractal_dimension_box_raw": (RAW_FRACTAL_DIMENSION_KEY, "fractal_dimension")}
    for name, (estimate_key, truth_key) in pairs.items():
        error = np.asarray(arrays[estimate_key], float) - np.asarray(arrays[truth_key], float)
        finite = error[np.isfinite(error)]
        q25, q75 = np.quantile(finite, [0.25, 0.75]) if finite.size else (math.nan, math.nan)
        summary[name] = {"mae": float(np.abs(finite).mean()) if finite.size else math.nan,
                         "mean_error": float(finite.mean()) if finite.size else math.nan,
                         "error_iqr": float(q75 - q25), "nan": int(error.size - finite.size)}
    return summary


def save_split_baselines(arrays: dict, path: PathLike) -> pathlib.Path:
    """Writes the arrays of `baselines_for_split` to a compressed ``.npz`` (atomically)."""
    return atomic_write(path, lambda stream: np.savez_compressed(
        stream, **{key: np.asarray(value) for key, value in arrays.items()}))


def run_baselines(dataset_dir: PathLike, output_dir: PathLike, *, fit_split: str = "train",
                  num_fit_images: Optional[int] = DEFAULT_FIT_IMAGES, seed: int = 0,
                  split: str = "evaluation", limit: Optional[int] = None) -> dict:
    """Fits on a subset of ``fit_split``, applies to ``split``, writes both results.

    Writes ``<output_dir>/fitted.json`` (`save_fitted`) and ``<output_dir>/<split>_baselines.npz``
    (`save_split_baselines`).

    Returns:
        A summary: the fitted parameters, `baseline_errors` of ``split`` and wall times (s).
    """
    output_dir = pathlib.Path(output_dir)
    start = time.perf_counter()
    fitted = fit_baselines_on_split(dataset_dir, fit_split, num_fit_images, seed)
    fit_seconds = time.perf_counter() - start
    save_fitted(fitted, output_dir / "fitted.json")
    start = time.perf_counter()
    arrays = baselines_for_split(dataset_dir, split, fitted=fitted, limit=limit)
    apply_seconds = time.perf_counter() - start
    save_split_baselines(arrays, output_dir / f"{split.replace('+', '_')}_baselines.npz")
    return {"threshold": dataclasses.asdict(fitted.threshold),
            "box_counting": dataclasses.asdict(fitted.box_counting),
            "errors": baseline_errors(arrays), "fit_seconds": round(fit_seconds, 1),
            "apply_seconds": round(apply_seconds, 1)}
