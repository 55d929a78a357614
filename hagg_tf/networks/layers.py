"""Custom Keras layers of the hagg_tf networks.

All layers are registered with ``keras.saving.register_keras_serializable(package="hagg_tf")`` and
implement ``get_config`` so that ``.keras`` files written by :mod:`hagg_tf.networks` reload with a
plain ``keras.saving.load_model`` once :mod:`hagg_tf.networks` has been imported.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="hagg_tf")
class ScaledSigmoid(keras.layers.Layer):
    """Output activation ``gamma(x) = scale * sigmoid(x) + offset`` (paper Sec. 2.3.2).

    With the paper's ``scale = 1.4`` and ``offset = 1.3`` the network output lies in (1.3, 2.7): the
    fractal dimensions of Table 2 (1.5–2.5) plus a tolerance on either side, so that the targets
    D_f(A) never sit in the saturated tails of the sigmoid.

    Args:
        scale: Width of the output interval (dimensionless, same unit as the target).
        offset: Lower end of the output interval.
        **kwargs: Forwarded to ``keras.layers.Layer`` (``name``, ``dtype``, ...).

    Shapes:
        Input and output have the same, arbitrary shape.
    """

    def __init__(self, scale: float = 1.4, offset: float = 1.3, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.offset = float(offset)

    def call(self, inputs):
        return self.scale * ops.sigmoid(inputs) + self.offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "offset": self.offset})
        return config


@keras.saving.register_keras_serializable(package="hagg_tf")
class FoldImageStack(keras.layers.Layer):
    """Merges the image-stack axis into the batch axis: ``(b, nu, *image) -> (b * nu, *image)``.

    Used around the feature extractor f of the multi-image networks CNN^0 and CNN^1 so that f,
    including its batch normalisation, processes all ``b * nu`` images of a step as one batch (see
    :func:`hagg_tf.networks.build_network` for why this replaces ``TimeDistributed``). Sample ``i``,
    slot ``j`` lands in row ``i * nu + j`` (row-major order), which :class:`UnfoldImageStack`
    inverts.

    Shapes:
        Input: ``(b, nu, H, W, C)``; output: ``(b * nu, H, W, C)``.
    """

    def call(self, inputs):
        # The per-image dimensions are static (they come from keras.Input), so only the batch
        # dimension is left to be inferred; that keeps the output shape fully known downstream.
        return ops.reshape(inputs, (-1,) + tuple(inputs.shape[2:]))

    def compute_output_shape(self, input_shape):
        batch, num_images = input_shape[0], input_shape[1]
        folded_batch = None if batch is None or num_images is None else batch * num_images
        return (folded_batch,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="hagg_tf")
class UnfoldImageStack(keras.layers.Layer):
    """Inverse of :class:`FoldImageStack` for per-image feature vectors.

    Args:
        num_images: Number of images per sample, ``nu``.
        **kwargs: Forwarded to ``keras.layers.Layer``.

    Shapes:
        Input: ``(b * nu, *features)``; output: ``(b, nu, *features)``.
    """

    def __init__(self, num_images: int, **kwargs):
        super().__init__(**kwargs)
        if int(num_images) < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        self.num_images = int(num_images)

    def call(self, inputs):
        return ops.reshape(inputs, (-1, self.num_images) + tuple(inputs.shape[1:]))

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        unfolded_batch = None if batch is None else batch // self.num_images
        return (unfolded_batch, self.num_images) + tuple(input_shape[1:])

    def get_config(self):
        config = super().get_config()
        config.update({"num_images": self.num_images})
        return config
