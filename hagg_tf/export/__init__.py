"""Export of the hagg_tf networks as SavedModels for TensorFlow Serving (SPEC §10)."""
from hagg_tf.tensorflow_import import import_tensorflow_quietly

import_tensorflow_quietly()  # before the submodules import TensorFlow: without its chatter

from hagg_tf.export.saved_model import (  # noqa: E402
    DOSE_INPUT, IMAGES_INPUT, METADATA_FILENAME, UINT16_ENDPOINT, export_network,
    load_keras_network)
from hagg_tf.export.characterize import (export_characterize_model,  # noqa: F401,E402
                                         load_network_weights)

__all__ = ["DOSE_INPUT", "IMAGES_INPUT", "METADATA_FILENAME", "UINT16_ENDPOINT",
           "export_network", "load_keras_network"]
