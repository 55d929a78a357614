"""Putting an image on another pixel grid: the one resampling of the package.

A user's image (``hagg_tf.estimation.images.prepare_images``) and a training image rendered at
another acquisition pixel size (the ``realistic`` database preset, ``hagg_tf.data``) are brought
to the networks' pixel size by the same `resample`, so that the networks see both through the
same interpolation.

`resample` works on the intensity fraction p = counts / electrons per pixel:

1. when shrinking (zoom < 1), p is smoothed with a Gaussian of σ = (1/zoom − 1)/2 old pixels
   (anti-aliasing: a new pixel then averages about the old pixels it covers);
2. p is interpolated linearly, the pixel *areas* of the old and the new grid lined up (not the
   centres of the corner pixels): new pixel o of an axis samples old coordinate
   (o + ½)·n_old/n_new − ½, points outside the image taking its `background_level`. This is
   ``scipy.ndimage.zoom(p, zoom, order=1, grid_mode=True, mode="grid-constant")``, computed
   one axis at a time (two gathers and a weighted sum per axis: the same numbers to rounding,
   in half the time);
3. p is turned back into counts of the new pixel: electrons per pixel scale with the pixel area,
   old / zoom², so p and the dose per area are unchanged.

The new side is ``round(old side × zoom)`` (scipy's rule).
"""

from __future__ import annotations

import numpy as np

#: Width of the frame whose median is taken as the background level, pixels.
BACKGROUND_FRAME = 4


def background_level(counts: np.ndarray, frame: int = BACKGROUND_FRAME) -> float:
    """Median of the outermost ``frame`` pixels of an image: its vacuum (or film) level.

    Args:
        counts: (H, W) image, any real dtype.
        frame: frame width, pixels (at most a quarter of the shorter side is used).

    Returns:
        The median, in the image's units.
    """
    frame = max(1, min(frame, min(counts.shape) // 4))
    border = np.concatenate([counts[:frame].ravel(), counts[-frame:].ravel(),
                             counts[frame:-frame, :frame].ravel(),
                             counts[frame:-frame, -frame:].ravel()])
    return float(np.median(border))


def _linear_weights(old: int, new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower neighbour (may be −1) and the two weights of each new pixel along one axis."""
    position = (np.arange(new) + 0.5) * (old / new) - 0.5
    lower = np.floor(position).astype(np.intp)
    upper_weight = position - lower
    return lower, 1.0 - upper_weight, upper_weight


def _linear_along_rows(values: np.ndarray, new: int, outside: float) -> np.ndarray:
    """(old, W) → (new, W) by linear interpolation, ``outside`` beyond the edges."""
    old = values.shape[0]
    lower, lower_weight, upper_weight = _linear_weights(old, new)
    low = values[np.clip(lower, 0, old - 1)]
    high = values[np.clip(lower + 1, 0, old - 1)]
    low[lower < 0] = outside
    high[lower + 1 > old - 1] = outside
    low *= lower_weight[:, None]
    high *= upper_weight[:, None]
    low += high
    return low


def _linear_along_columns(values: np.ndarray, new: int, outside: float) -> np.ndarray:
    """(H, old) → (H, new), as `_linear_along_rows` along the other axis."""
    old = values.shape[1]
    lower, lower_weight, upper_weight = _linear_weights(old, new)
    # np.take keeps C order (fancy indexing along axis 1 returns a Fortran-ordered array).
    low = np.take(values, np.clip(lower, 0, old - 1), axis=1)
    high = np.take(values, np.clip(lower + 1, 0, old - 1), axis=1)
    low[:, lower < 0] = outside
    high[:, lower + 1 > old - 1] = outside
    low *= lower_weight
    high *= upper_weight
    low += high
    return low


def resample(counts: np.ndarray, electrons_per_pixel: float, zoom: float
             ) -> tuple[np.ndarray, float]:
    """Resamples counts by ``zoom`` (new pixels per old pixel), keeping the dose per area.

    Args:
        counts: (H, W) counts (any real dtype).
        electrons_per_pixel: the value of the whole incident beam in ``counts`` per old pixel.
        zoom: new pixels per old pixel along each axis (old pixel size / new pixel size).

    Returns:
        (new (round(H·zoom), round(W·zoom)) float64 counts ≥ 0, new electrons per pixel =
        old / zoom²).
    """
    from scipy import ndimage

    intensity = counts / electrons_per_pixel
    if zoom < 1.0:
        intensity = ndimage.gaussian_filter(intensity, sigma=(1.0 / zoom - 1.0) / 2.0,
                                            mode="nearest")
    outside = background_level(intensity)
    rows, columns = (int(round(side * zoom)) for side in intensity.shape)
    resampled = _linear_along_columns(_linear_along_rows(intensity, rows, outside), columns,
                                      outside)
    np.maximum(resampled, 0.0, out=resampled)
    new_electrons = electrons_per_pixel / zoom ** 2
    return resampled * new_electrons, new_electrons
