"""Keras 3 models of the paper's CNNs (Sec. 2.3, Table 3, Fig. 6) and their input preprocessing.

Needs the ``ml`` extra (tensorflow, keras). Typical use::

    from hagg_tf import networks

    model = networks.build_network("fractal_dimension")            # CNN^Df, 512×512 inputs
    networks.compile_network(model)                                # Adam 1e-4, MSE
    batch = networks.network_spec("fractal_dimension").batch_size  # 16

    x = networks.preprocess_images(counts)[..., None]              # counts: (b, 512, 512)
    d_f = model(x, training=False)                                 # (b, 1)

The public name of these builders is :mod:`hagg_tf.models`. Importing this package imports
TensorFlow through :func:`hagg_tf.tensorflow_import.import_tensorflow_quietly` (no start-up
chatter on stderr unless ``HAGG_TF_VERBOSE=1``).
"""
from hagg_tf.tensorflow_import import import_tensorflow_quietly

# Before the submodules import TensorFlow and Keras themselves, so that they find them loaded.
import_tensorflow_quietly()

from hagg_tf.networks.architecture import (  # noqa: E402  (after the quiet import)
    ARCHITECTURES, CLASSIFIER_NETWORK, CLASSIFIER_THRESHOLD, DEFAULT_ARCHITECTURE,
    DEFAULT_IMAGE_SIZE, Architecture, architecture_of, get_architecture, DEFAULT_NUM_IMAGES,
    FEATURE_DIM, LEARNING_RATE, MULTI_IMAGE_BATCH_SIZE, MULTI_IMAGE_NETWORKS, NETWORK_NAMES,
    NETWORK_SPECS, SINGLE_IMAGE_BATCH_SIZE, SINGLE_IMAGE_NETWORKS, STACK_STRATEGIES,
    THETA_COLUMNS, THETA_NAMES, NetworkSpec, build_feature_extractor, build_network,
    compile_network, feature_map_sizes, get_feature_extractor, head_layers,
    input_pooling_layer, minimum_image_size, network_spec)
from hagg_tf.networks.layers import (  # noqa: E402
    FoldImageStack, ScaledSigmoid, UnfoldImageStack)
from hagg_tf.networks.preprocessing import (  # noqa: E402
    INVERSION_THRESHOLD, NUM_LEVELS, ImagePreprocessing, invert_intensities, preprocess_images,
    preprocess_images_numpy, scale_and_quantize)

__all__ = [
    "ARCHITECTURES", "DEFAULT_ARCHITECTURE", "Architecture", "architecture_of",
    "get_architecture",
    "DEFAULT_IMAGE_SIZE", "DEFAULT_NUM_IMAGES", "FEATURE_DIM", "LEARNING_RATE",
    "MULTI_IMAGE_BATCH_SIZE", "NETWORK_SPECS", "SINGLE_IMAGE_BATCH_SIZE", "STACK_STRATEGIES",
    "CLASSIFIER_NETWORK", "CLASSIFIER_THRESHOLD", "MULTI_IMAGE_NETWORKS", "NETWORK_NAMES",
    "SINGLE_IMAGE_NETWORKS", "THETA_COLUMNS", "THETA_NAMES",
    "NetworkSpec", "build_feature_extractor", "build_network", "compile_network",
    "feature_map_sizes", "get_feature_extractor", "head_layers", "input_pooling_layer",
    "minimum_image_size", "network_spec",
    "FoldImageStack", "ScaledSigmoid", "UnfoldImageStack",
    "INVERSION_THRESHOLD", "NUM_LEVELS", "ImagePreprocessing", "invert_intensities",
    "preprocess_images", "preprocess_images_numpy", "scale_and_quantize",
]
