"""Builders for every network of the paper (Sec. 2.3, Table 3): the public name for scripts.

``import hagg_tf.models`` (or ``from hagg_tf import models``) gives the same names as the
internal pipeline package :mod:`hagg_tf.networks`, which the later stages import directly::

    from hagg_tf import models

    model = models.compile_network(models.build_network("fractal_dimension"))  # CNN^Df
    models.network_spec("fractal_dimension").batch_size                          # 16
    sorted(models.NETWORK_SPECS)                                                 # the five networks
    x = models.preprocess_images(counts)[..., None]                              # counts (b, 512, 512)

Needs the ``ml`` extra; TensorFlow is imported quietly (``HAGG_TF_VERBOSE=1`` shows its
start-up output).
"""
from hagg_tf.networks import *  # noqa: F401,F403  (the public surface is networks' __all__)
from hagg_tf.networks import __all__  # noqa: F401
