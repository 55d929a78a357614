"""The stochastic 3D model of hetero-aggregates (paper Sec. 2.1.1–2.1.2) and its descriptors."""
from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.parameters import (GeneratorConfig, ModelParameters, ParameterError, TIO2, WO3,
                                      table2_grid)
