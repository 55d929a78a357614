"""hagg_tf: 3D structure of TiO2–WO3 hetero-aggregates from 2D HAADF-STEM images.

The top-level names are the scripting API; see README.md for a runnable example.
"""

from hagg_tf.model import (Aggregate, GeneratorConfig, ModelParameters, ParameterError, TIO2, WO3,
                           table2_grid)
from hagg_tf.model.descriptors import Descriptors, describe, summarize
from hagg_tf.model.generator import GenerationError, sample_aggregate
from hagg_tf.model.io import (export_csv, export_xyz, load_aggregate, load_aggregates,
                              save_aggregate, save_aggregates)

from hagg_tf import data  # noqa: F401  (TensorFlow loads only when a pipeline is used)

__version__ = "0.1.0"
