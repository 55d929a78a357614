"""Training-time augmentation of STEM images (paper Sec. 2.2.2), with stateless randomness.

Only transformations that keep particle shapes and sizes are used: random 90° rotations,
reflections and small shifts, plus (optional, off by default) rotation by an arbitrary angle.

* Rotations by multiples of 90° and the reflection permute pixels: the intensity histogram and
  every particle's pixel area are preserved exactly; together they give all 8 symmetries of
  the square uniformly.
* Shifts move the image by whole pixels, at most ``max_shift_fraction`` of the image edge per
  axis, and never further than the background margin around the aggregate in that direction:
  nothing leaves the field of view and what enters is background (the image minimum, 0 counts
  for simulated images). Within that margin a cyclic roll is the same as shift-and-fill, and
  cheaper. Histogram and particle sizes are preserved exactly as well; an aggregate that
  already touches a border is not shifted towards it.
* Arbitrary-angle rotation resamples with bilinear interpolation (fill: background): sizes are
  kept, the histogram only approximately, and corners of the image can leave the field of
  view. Hence off by default.

Randomness: every draw comes from ``tf.random.stateless_*`` with a seed derived from
(base seed, epoch, position of the sample in the epoch[, image slot]), so a run repeats
exactly and every epoch sees different augmentations.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

# Added to the user's seed so that augmentation and shuffling draw from separate streams.
AUGMENT_STREAM = 0x41554720  # "AUG "


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Which augmentations the training pipelines apply.

    Attributes:
        rotate90: random rotation by k·90°, k uniform on {0, 1, 2, 3} (only k ∈ {0, 2} for
            non-square images).
        flip: reflection (left–right) with probability 1/2.
        max_shift_fraction: largest shift per axis as a fraction of the image edge (0.05 → 25
            pixels = 31 nm at 512 × 1.2 nm), further limited by the background margin.
        arbitrary_rotation: also rotate by a uniform angle in [0, 2π) (bilinear).
    """

    rotate90: bool = True
    flip: bool = True
    max_shift_fraction: float = 0.05
    arbitrary_rotation: bool = False

    def __post_init__(self):
        if not 0.0 <= self.max_shift_fraction <= 0.5:
            raise ValueError(f"max_shift_fraction must be in [0, 0.5], got "
                             f"{self.max_shift_fraction}")

    @property
    def enabled(self) -> bool:
        return (self.rotate90 or self.flip or self.max_shift_fraction > 0
                or self.arbitrary_rotation)


NO_AUGMENTATION = Augmentation(rotate90=False, flip=False, max_shift_fraction=0.0)


def sample_seed(base_seed: int, epoch, position, slot=None):
    """Stateless seed (shape [2]) of one sample (and image slot) of one epoch."""
    seed = tf.constant([int(base_seed) & 0x7FFFFFFF, AUGMENT_STREAM], dtype=tf.int64)
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(epoch, tf.int64))
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(position, tf.int64))
    if slot is not None:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(slot, tf.int64))
    return seed


def _uniform_integer(seed, low, high):
    """Uniform integer on [low, high] (inclusive) for scalar tensors low ≤ high."""
    unit = tf.random.stateless_uniform([], seed, dtype=tf.float32)
    span = tf.cast(high - low + 1, tf.float32)
    return tf.minimum(low + tf.cast(tf.floor(unit * span), tf.int32), high)


def _background_margins(image, background):
    """Background rows above/below and columns left/right of everything brighter (int32)."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    occupied = image > background
    rows = tf.cast(tf.where(tf.reduce_any(occupied, axis=1))[:, 0], tf.int32)
    cols = tf.cast(tf.where(tf.reduce_any(occupied, axis=0))[:, 0], tf.int32)
    empty = tf.equal(tf.size(rows), 0)
    # An empty image may move anywhere (it stays all background).
    top = tf.where(empty, height, tf.reduce_min(tf.concat([rows, [height]], 0)))
    bottom = tf.where(empty, height, height - 1 - tf.reduce_max(tf.concat([rows, [-1]], 0)))
    left = tf.where(empty, width, tf.reduce_min(tf.concat([cols, [width]], 0)))
    right = tf.where(empty, width, width - 1 - tf.reduce_max(tf.concat([cols, [-1]], 0)))
    return top, bottom, left, right


def _rotate(image, angle, background):
    """Rotation by ``angle`` (radians) about the image centre, bilinear, background fill."""
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    center_x, center_y = 0.5 * (width - 1.0), 0.5 * (height - 1.0)
    # Output pixel (x, y) samples input (x', y') = R(−angle)·(x − c) + c.
    transform = tf.stack([cos, sin, center_x - cos * center_x - sin * center_y,
                          -sin, cos, center_y + sin * center_x - cos * center_y, 0.0, 0.0])
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis, :, :, tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2], fill_value=background, interpolation="BILINEAR",
        fill_mode="CONSTANT")
    return rotated[0, :, :, 0]


def augment_image(image, seed, augmentation: Augmentation = Augmentation()):
    """One random augmentation of one image.

    Args:
        image: (H, W) float32 detector counts (or any intensities; background = minimum).
        seed: stateless seed, shape [2] (see `sample_seed`).
        augmentation: which transformations to use.

    Returns:
        (H, W) float32, same shape.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    static_shape = image.shape
    square = static_shape[0] is not None and static_shape[0] == static_shape[1]
    if augmentation.rotate90:
        if square:
            turns = tf.random.stateless_uniform([], seeds[0], 0, 4, dtype=tf.int32)
        else:  # a quarter turn would change the shape
            turns = 2 * tf.random.stateless_uniform([], seeds[0], 0, 2, dtype=tf.int32)
        image = tf.image.rot90(image[:, :, tf.newaxis], turns)[:, :, 0]
    if augmentation.flip:
        flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    background = tf.reduce_min(image)
    if augmentation.arbitrary_rotation:
        angle = tf.random.stateless_uniform([], seeds[2], 0.0, 2.0 * math.pi)
        image = _rotate(image, angle, background)
    if augmentation.max_shift_fraction > 0:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        limit_rows = tf.cast(tf.floor(augmentation.max_shift_fraction
                                      * tf.cast(height, tf.float32)), tf.int32)
        limit_cols = tf.cast(tf.floor(augmentation.max_shift_fraction
                                      * tf.cast(width, tf.float32)), tf.int32)
        top, bottom, left, right = _background_margins(image, background)
        # Positive shifts move content down/right; the margin on that side bounds them.
        shift_rows = _uniform_integer(seeds[3], -tf.minimum(top, limit_rows),
                                      tf.minimum(bottom, limit_rows))
        shift_cols = _uniform_integer(seeds[4], -tf.minimum(left, limit_cols),
                                      tf.minimum(right, limit_cols))
        image = tf.roll(image, shift=[shift_rows, shift_cols], axis=[0, 1])
    if static_shape.is_fully_defined():
        image = tf.ensure_shape(image, static_shape)
    return image
