"""The paper's image preprocessing (Sec. 2.2.2, 2.3.5), re-exported for the networks' users.

It is defined in :mod:`hagg_tf.data.preprocessing`: the tf.data pipelines and the pooled cache
apply it, and ``data`` comes before ``networks`` in the pipeline order.
"""
from hagg_tf.data.preprocessing import (  # noqa: F401  (re-exported names)
    INVERSION_THRESHOLD, NUM_LEVELS, ImagePreprocessing, invert_intensities, preprocess_images,
    preprocess_images_numpy, scale_and_quantize)

__all__ = ["INVERSION_THRESHOLD", "NUM_LEVELS", "ImagePreprocessing", "invert_intensities",
           "preprocess_images", "preprocess_images_numpy", "scale_and_quantize"]
