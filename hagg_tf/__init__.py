"""hagg_tf: 3D structure of TiO2–WO3 hetero-aggregates from 2D HAADF-STEM images.

The top-level names are the scripting API; see README.md for a runnable example.
"""

from hagg_tf.model import (Aggregate, GeneratorConfig, ModelParameters, ParameterError, TIO2, WO3,
                           table2_grid)
from hagg_tf.model.descriptors import Descriptors, describe, summarize
from hagg_tf.model.generator import GenerationError, sample_aggregate
from hagg_tf.model.io import (export_csv, export_xyz, load_aggregate, load_aggregates,
                              save_aggregate, save_aggregates)

__version__ = "0.1.0"


def __getattr__(name):
    # hagg_tf.characterize and hagg_tf.models (the network builders) need TensorFlow; load them
    # on first use only, so that the model, descriptors and I/O stay importable (and fast)
    # without it. hagg_tf.networks is the internal package behind hagg_tf.models. hagg_tf.data
    # (the database; TensorFlow only when a pipeline is used) loads on first use too: it brings
    # the STEM renderer and scipy.ndimage, a third of a second that every tool (hagg-characterize
    # included) would otherwise pay at start-up.
    if name == "characterize":
        from hagg_tf.estimation import characterize
        return characterize
    if name in ("models", "networks", "data"):
        import importlib
        return importlib.import_module(f"hagg_tf.{name}")
    raise AttributeError(f"module 'hagg_tf' has no attribute {name!r}")
