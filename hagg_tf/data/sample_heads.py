"""Sample heads: θ̂_Df and θ̂_ρ of a sample learned from its per-image network outputs.

The paper estimates θ_Df and θ_ρ as plain means over the sample's n images (Eqs. 13, 14). Each
per-image output is close to the posterior mean of its own image's D_f(A) or ρ(A), which is
pulled towards the middle of the training range; the mean of n such outputs keeps that pull,
and Eq. 14 cannot correct it by rounding a few homogeneous images. A *sample head* h is a small
dense network on permutation-invariant summaries of the n outputs,

    θ̂ = h(s(D̂_f(I_1..n), CNN^ρ_reg(I_1..n), CNN^ρ_class(I_1..n))),

fitted on groups of 1–24 images of one θ of the training split
(:mod:`hagg_tf.training.sample_heads`), so that it is defined for any n ≥ 1 and undoes the pull
at the θ level. The summary s (:data:`SUMMARY_FEATURES` values, all continuous in the outputs,
so that float rounding between runtimes moves θ̂ by rounding only) is, over the n images:

* mean and standard deviation (1/n) of CNN^ρ_reg, CNN^ρ_class and CNN^Df (6 values);
* soft histograms of the three outputs: the mean over images of triangular weights
  max(0, 1 − |x − c| / w) at centres c spaced w apart — CNN^ρ_reg at 0, 0.1, …, 1 (11),
  CNN^ρ_class at 0, 0.5, 1 (3), CNN^Df at 1.3, 1.5, …, 2.7 (8), the range of its output.

h is dense 64 (ReLU), dense 32 (ReLU), dense 1; θ̂_ρ is clipped into [0, 1]. The weights are
stored as ``sample_heads.npz`` in a training run and beside a composite export's
``hagg_tf_export.json``. :class:`SampleHeads` applies them in numpy (the reference, used by the
bootstrap and the light runtimes); :func:`apply_sample_heads_tf` computes the same with
TensorFlow ops inside the composite SavedModel. Importing this module does not import
TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Mapping, Optional, Union

import numpy as np

from hagg_tf.model.io import atomic_write

#: File of the sample heads' weights (run directory, export version directory).
SAMPLE_HEADS_FILE = "sample_heads.npz"
#: The θ components the sample heads estimate, by :data:`~hagg_tf.data.network_specs.THETA_NAMES`.
SAMPLE_HEAD_TARGETS = ("fractal_dimension", "mixing_ratio")
#: Hidden layer widths of every sample head (ReLU), before its linear output.
SAMPLE_HEAD_HIDDEN_UNITS = (64, 32)
#: Range every estimate of a target is clipped into (None: not clipped).
TARGET_RANGES = {"fractal_dimension": None, "mixing_ratio": (0.0, 1.0)}
#: Smallest and largest group size the heads are fitted on (the ν of every drawn group).
GROUP_SIZE_RANGE = (1, 24)
# Soft-histogram centres of the per-image outputs (CNN^Df's output lies in (1.3, 2.7)).
_HISTOGRAM_CENTRES = {
    "mixing_ratio_regressor": np.linspace(0.0, 1.0, 11, dtype=np.float32),
    "homogeneous_probability": np.linspace(0.0, 1.0, 3, dtype=np.float32),
    "fractal_dimension": np.linspace(1.3, 2.7, 8, dtype=np.float32),
}
_OUTPUTS = tuple(_HISTOGRAM_CENTRES)
#: Names of the summary values, in the order of :func:`summary_features`.
SUMMARY_FEATURES = tuple(
    [f"{statistic}({output})" for output in _OUTPUTS for statistic in ("mean", "sd")]
    + [f"histogram({output}, {centre:.2f})" for output in _OUTPUTS
       for centre in _HISTOGRAM_CENTRES[output]])


class SampleHeadsError(ValueError):
    """A sample-heads file that is missing weights or has inconsistent shapes."""


def summary_features(fractal_dimension, regressor, probability) -> np.ndarray:
    """The summary s of the module docstring, numpy (float32 throughout).

    Args:
        fractal_dimension: (..., n) CNN^Df outputs of the images of each sample.
        regressor: (..., n) CNN^ρ_reg outputs.
        probability: (..., n) CNN^ρ_class outputs.

    Returns:
        (..., :data:`SUMMARY_FEATURES` length) float32.
    """
    values = {"mixing_ratio_regressor": regressor, "homogeneous_probability": probability,
              "fractal_dimension": fractal_dimension}
    parts = []
    for output in _OUTPUTS:
        x = np.asarray(values[output], np.float32)
        mean = x.mean(axis=-1, keepdims=True)
        parts += [mean, np.sqrt(np.square(x - mean).mean(axis=-1, keepdims=True))]
    for output in _OUTPUTS:
        x = np.asarray(values[output], np.float32)[..., np.newaxis]
        centres = _HISTOGRAM_CENTRES[output]
        width = centres[1] - centres[0]
        parts.append(np.maximum(np.float32(0), np.float32(1) - np.abs(x - centres) / width)
                     .mean(axis=-2))
    return np.concatenate(parts, axis=-1).astype(np.float32)


def summary_features_tf(fractal_dimension, regressor, probability):
    """:func:`summary_features` with TensorFlow ops (the composite SavedModel's graph)."""
    from hagg_tf.tensorflow_import import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    values = {"mixing_ratio_regressor": regressor, "homogeneous_probability": probability,
              "fractal_dimension": fractal_dimension}
    parts = []
    for output in _OUTPUTS:
        x = tf.cast(values[output], tf.float32)
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        parts += [mean, tf.sqrt(tf.reduce_mean(tf.square(x - mean), axis=-1, keepdims=True))]
    for output in _OUTPUTS:
        x = tf.expand_dims(tf.cast(values[output], tf.float32), -1)
        centres = _HISTOGRAM_CENTRES[output]
        width = float(centres[1] - centres[0])
        parts.append(tf.reduce_mean(
            tf.maximum(0.0, 1.0 - tf.abs(x - tf.constant(centres)) / width), axis=-2))
    return tf.concat(parts, axis=-1)


@dataclasses.dataclass(frozen=True)
class SampleHeads:
    """The weights of the sample heads (see the module docstring).

    Attributes:
        layers: ``{target: ((kernel (in, out), bias (out,)), ...)}`` float32, input first; every
            layer but the last is followed by a ReLU.
    """

    layers: Mapping[str, tuple]

    def __post_init__(self):
        width = len(SUMMARY_FEATURES)
        for target in SAMPLE_HEAD_TARGETS:
            if target not in self.layers:
                raise SampleHeadsError(f"sample heads: no head for {target}")
            for kernel, bias in self.layers[target]:
                if kernel.ndim != 2 or kernel.shape[0] != width or bias.shape != kernel.shape[1:]:
                    raise SampleHeadsError(
                        f"sample head {target}: a layer of shape {kernel.shape} / {bias.shape} "
                        f"does not take {width} inputs")
                width = kernel.shape[1]
            if width != 1:
                raise SampleHeadsError(f"sample head {target} has {width} outputs, not 1")
            width = len(SUMMARY_FEATURES)

    def apply(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """``{target: (...,) float32}`` from summaries (..., K) (:func:`summary_features`)."""
        result = {}
        for target in SAMPLE_HEAD_TARGETS:
            x = np.asarray(features, np.float32)
            layers = self.layers[target]
            for number, (kernel, bias) in enumerate(layers):
                x = x @ kernel + bias
                if number < len(layers) - 1:
                    x = np.maximum(x, np.float32(0))
            result[target] = _clip(target, x[..., 0])
        return result

    def __call__(self, fractal_dimension, regressor, probability) -> dict[str, np.ndarray]:
        """``{target: (...,)}`` θ̂ from the per-image outputs (..., n) of each sample."""
        return self.apply(summary_features(fractal_dimension, regressor, probability))

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Flat ``{f"{prefix}{target}/{layer}/kernel" | …/bias: array}`` for an ``.npz``."""
        arrays = {}
        for target in SAMPLE_HEAD_TARGETS:
            for number, (kernel, bias) in enumerate(self.layers[target]):
                arrays[f"{prefix}{target}/{number}/kernel"] = kernel
                arrays[f"{prefix}{target}/{number}/bias"] = bias
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = ""
                    ) -> Optional["SampleHeads"]:
        """The heads stored by :meth:`to_arrays` under ``prefix``; None if there are none.

        Raises:
            SampleHeadsError: some but not all weights, or inconsistent shapes.
        """
        keys = [key for key in arrays if key.startswith(prefix)]
        if not keys:
            return None
        layers, used = {}, set()
        for target in SAMPLE_HEAD_TARGETS:
            target_layers, number = [], 0
            while f"{prefix}{target}/{number}/kernel" in arrays:
                key = f"{prefix}{target}/{number}"
                if f"{key}/bias" not in arrays:
                    raise SampleHeadsError(f"sample heads: {key}/bias missing")
                target_layers.append((np.asarray(arrays[f"{key}/kernel"], np.float32),
                                      np.asarray(arrays[f"{key}/bias"], np.float32)))
                used.update((f"{key}/kernel", f"{key}/bias"))
                number += 1
            if not target_layers:
                raise SampleHeadsError(f"sample heads: no layers for {target} "
                                       f"({prefix}{target}/0/kernel missing)")
            layers[target] = tuple(target_layers)
        unused = sorted(set(keys) - used)
        if unused:
            raise SampleHeadsError(f"sample heads: unexpected weights {', '.join(unused[:3])}")
        return cls(layers)

    def save(self, path: Union[str, os.PathLike]) -> pathlib.Path:
        """Writes the weights to ``path`` (``.npz``) atomically."""
        path = pathlib.Path(path)
        atomic_write(path, lambda stream: np.savez(stream, **self.to_arrays()))
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "SampleHeads":
        """Reads a file written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            SampleHeadsError: not a sample-heads file.
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no sample heads")
        try:
            with np.load(path, allow_pickle=False) as data:
                heads = cls.from_arrays({key: data[key] for key in data.files})
        except (ValueError, OSError) as error:
            if isinstance(error, SampleHeadsError):
                raise SampleHeadsError(f"{path}: {error}") from None
            raise SampleHeadsError(f"{path}: not a sample-heads file ({error})") from None
        if heads is None:
            raise SampleHeadsError(f"{path}: holds no sample heads")
        return heads


def _clip(target: str, values):
    limits = TARGET_RANGES[target]
    return values if limits is None else np.clip(values, *limits).astype(np.float32)


def apply_sample_heads_tf(heads: SampleHeads, fractal_dimension, regressor, probability):
    """:meth:`SampleHeads.__call__` with TensorFlow ops: ``{target: (b,)}`` from (b, n)."""
    from hagg_tf.tensorflow_import import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    features = summary_features_tf(fractal_dimension, regressor, probability)
    result = {}
    for target in SAMPLE_HEAD_TARGETS:
        x = features
        layers = heads.layers[target]
        for number, (kernel, bias) in enumerate(layers):
            x = tf.matmul(x, tf.constant(kernel)) + tf.constant(bias)
            if number < len(layers) - 1:
                x = tf.nn.relu(x)
        x = tf.reshape(x, [-1])
        limits = TARGET_RANGES[target]
        result[target] = x if limits is None else tf.clip_by_value(x, *limits)
    return result
