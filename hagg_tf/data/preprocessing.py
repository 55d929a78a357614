"""Image preprocessing of the paper (Sec. 2.2.2 and Sec. 2.3.5, Fig. 8), in TensorFlow and numpy.

It lives in ``data`` (the pipelines and the pooled cache apply it; :mod:`hagg_tf.networks`
re-exports it for the networks' users). Importing it does not import TensorFlow: the
TensorFlow functions import it on their first call, so the numpy reference and the constants
serve light runtimes and the cache-building worker processes as well.

Every image that enters a network is

1. (CNN^1 only) converted from detector counts to the HAADF intensity ``p`` as a fraction of the
   incident beam, ``p = counts / electrons_per_pixel``, and every pixel with ``p > t``
   (``t = 0.001``) replaced by ``1 / p``; background pixels (``p <= t``) keep ``p``. This makes
   the weakly scattering TiO2 particles the brightest structures (Fig. 8). The paper applies it
   "before the preprocessing steps described in Section 2.2.2".
2. scaled linearly, per image, so that its minimum maps to -0.5 and its maximum to +0.5;
3. rounded to 256 equidistant values ``-0.5 + k / 255``, ``k = 0..255``.

Steps 2–3 are invariant to a positive factor on the input, so the single-image networks and CNN^0
can be fed counts or intensities alike; only step 1 needs the dose (electrons per pixel) to know
where the threshold ``t`` lies.

:func:`preprocess_images` is written with TensorFlow ops only, so the very same function runs
inside ``tf.data`` pipelines (``dataset.map``) and inside the exported serving graphs of
:mod:`hagg_tf.export`. :func:`preprocess_images_numpy` is an independent numpy implementation used
as the reference in tests. Both compute in float32 in the same order and round half to even, so
they agree exactly.

An image whose pixels are all equal (e.g. an empty field of view) has no range to scale; it maps
to -0.5 everywhere, the level of the background.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from hagg_tf.data.network_specs import network_spec
from hagg_tf.tensorflow_import import import_tensorflow_quietly

#: Number of grey levels after preprocessing (Sec. 2.2.2).
NUM_LEVELS = 256
#: Threshold t on the intensity fraction p above which p is replaced by 1/p (Sec. 2.3.5).
INVERSION_THRESHOLD = 1e-3


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """Configuration of the preprocessing of one network's input images.

    Attributes:
        num_levels: Number of equidistant grey levels in [-0.5, 0.5] (256 in the paper).
        inversion_threshold: ``None`` for no inversion; otherwise the threshold ``t`` on the
            intensity fraction ``p`` above which ``p`` is replaced by ``1 / p`` (0.001 for CNN^1).
    """

    num_levels: int = NUM_LEVELS
    inversion_threshold: Optional[float] = None

    def __post_init__(self):
        if int(self.num_levels) < 2:
            raise ValueError(f"num_levels must be >= 2, got {self.num_levels}")
        if self.inversion_threshold is not None and not self.inversion_threshold > 0:
            raise ValueError(f"inversion_threshold must be > 0, got {self.inversion_threshold}")

    @property
    def needs_dose(self) -> bool:
        """True if the images must come with their electrons per pixel (inversion on)."""
        return self.inversion_threshold is not None

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable form, e.g. for export metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def for_network(cls, name: str) -> "ImagePreprocessing":
        """The paper's preprocessing for network ``name`` (see :data:`NETWORK_SPECS`)."""
        spec = network_spec(name)
        return cls(inversion_threshold=INVERSION_THRESHOLD if spec.invert_intensities else None)

    def __call__(self, images, electrons_per_pixel=None):
        """Applies :func:`preprocess_images` with this configuration (TensorFlow)."""
        return preprocess_images(images, electrons_per_pixel,
                                 inversion_threshold=self.inversion_threshold,
                                 num_levels=self.num_levels)


def invert_intensities(intensity, threshold: float = INVERSION_THRESHOLD):
    """Replaces every intensity fraction ``p > threshold`` by ``1 / p`` (Sec. 2.3.5), TensorFlow.

    Args:
        intensity: Float tensor of HAADF intensities as fractions of the incident beam, any shape.
        threshold: The paper's ``t``.

    Returns:
        float32 tensor of the same shape.
    """
    tf = import_tensorflow_quietly()
    intensity = tf.cast(intensity, tf.float32)
    # The max() keeps the unused branch finite (1/0 for background pixels), so that gradients or
    # debugging checks for inf never trip on values tf.where discards anyway.
    # divide_no_nan(1, ·), not 1.0 / ·: inside a tf.function (tf.data, the serving graphs)
    # Grappler turns 1/x into Reciprocal, which on CPU is off by one ulp for about half of
    # all values, enough to move pixels to the next grey level; this division is exact, as
    # numpy's and LiteRT's are (the divisor is at least the threshold, never 0).
    inverted = tf.math.divide_no_nan(tf.ones_like(intensity),
                                     tf.maximum(intensity, threshold))
    return tf.where(intensity > threshold, inverted, intensity)


def scale_and_quantize(images, num_levels: int = NUM_LEVELS):
    """Per-image linear scaling to [-0.5, 0.5] and rounding to ``num_levels`` levels, TensorFlow.

    Args:
        images: Tensor ``(..., H, W)`` of any real dtype; the last two axes form one image.
        num_levels: Number of equidistant output values.

    Returns:
        float32 tensor ``(..., H, W)`` with values ``-0.5 + k / (num_levels - 1)``.
    """
    tf = import_tensorflow_quietly()
    images = tf.cast(images, tf.float32)
    lowest = tf.reduce_min(images, axis=[-2, -1], keepdims=True)
    highest = tf.reduce_max(images, axis=[-2, -1], keepdims=True)
    unit_range = tf.math.divide_no_nan(images - lowest, highest - lowest)
    steps = float(num_levels - 1)
    return tf.round(unit_range * steps) / steps - 0.5


def preprocess_images(images, electrons_per_pixel=None, *, inversion_threshold=None,
                      num_levels: int = NUM_LEVELS):
    """The paper's preprocessing of STEM images, as TensorFlow ops (tf.data and serving graphs).

    Args:
        images: Tensor ``(..., H, W)`` of detector counts (uint16, int or float) or of intensity
            fractions; the last two axes form one image.
        electrons_per_pixel: Incident electrons per pixel of each image, broadcastable to the
            leading shape ``(...)`` (a scalar for a whole batch is fine). Used only with
            inversion, to turn counts into intensity fractions ``p``; ``None`` means the images
            already are intensity fractions.
        inversion_threshold: ``None`` (no inversion) or the threshold ``t`` of Sec. 2.3.5.
        num_levels: Number of grey levels.

    Returns:
        float32 tensor ``(..., H, W)`` with values on the ``num_levels`` levels in [-0.5, 0.5].
        Add a trailing channel axis (``[..., None]``) before feeding a network.
    """
    tf = import_tensorflow_quietly()
    images = tf.cast(images, tf.float32)
    if inversion_threshold is not None:
        if electrons_per_pixel is not None:
            electrons = tf.cast(electrons_per_pixel, tf.float32)
            # expand_dims, not [..., newaxis, newaxis]: that strided slice has no LiteRT
            # builtin, and the serving graphs are converted to LiteRT (export/litert.py).
            images = images / tf.expand_dims(tf.expand_dims(electrons, -1), -1)
        images = invert_intensities(images, inversion_threshold)
    return scale_and_quantize(images, num_levels)


def preprocess_images_numpy(images, electrons_per_pixel=None, *, inversion_threshold=None,
                            num_levels: int = NUM_LEVELS) -> np.ndarray:
    """Reference numpy implementation of :func:`preprocess_images` (same arguments, same result).

    Returns:
        float32 array ``(..., H, W)``.
    """
    images = np.asarray(images).astype(np.float32)
    if inversion_threshold is not None:
        if electrons_per_pixel is not None:
            electrons = np.asarray(electrons_per_pixel, dtype=np.float32)
            images = images / electrons[..., np.newaxis, np.newaxis]
        threshold = np.float32(inversion_threshold)
        with np.errstate(divide="ignore"):
            inverted = np.float32(1.0) / np.maximum(images, threshold)
        images = np.where(images > threshold, inverted, images)
    lowest = images.min(axis=(-2, -1), keepdims=True)
    highest = images.max(axis=(-2, -1), keepdims=True)
    span = highest - lowest
    unit_range = np.divide(images - lowest, span, out=np.zeros_like(images), where=span > 0)
    steps = np.float32(num_levels - 1)
    return (np.round(unit_range * steps) / steps - np.float32(0.5)).astype(np.float32)
