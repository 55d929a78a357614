"""The training database (TFRecords) and the tf.data pipelines that feed the networks.

Paper Sec. 2.2.2 and 2.3, SPEC §7. Without TensorFlow: the database design and presets
(`DatasetConfig`, `preset`, `build_design`), generation (`generate_dataset`; TensorFlow is
imported only to serialise records) and the manifest checks (`verify_dataset`). The pipelines
(`single_image_dataset`, `classification_dataset`, `multi_image_dataset`, `network_dataset`,
`epoch_size`), the record reader (`read_samples`) and the augmentation (`Augmentation`,
`augment_image`) import TensorFlow on first use, so ``import hagg_tf.data`` stays light.

Example::

    from hagg_tf import data, networks

    ds = data.network_dataset("work/datasets/paper", "fractal_dimension", "train", seed=1)
    val = data.network_dataset("work/datasets/paper", "fractal_dimension", "validation")
    model = networks.compile_network(networks.build_network("fractal_dimension"))
    steps = data.epoch_size("work/datasets/paper", "fractal_dimension", "train").steps
    model.fit(ds, validation_data=val, epochs=100, steps_per_epoch=steps)
"""

import importlib

# name -> module, imported on first access: the database design brings the STEM renderer
# (scipy.ndimage), the pipelines bring TensorFlow, and a tool that needs one submodule
# (hagg-characterize: hagg_tf.data.beam) should not pay for the others at start-up.
_LAZY_LIGHT = {
    **dict.fromkeys(["PRESETS", "SPLITS", "DatasetConfig", "DatasetDesign", "build_design",
                     "check_split_rule", "preset"], "hagg_tf.data.design"),
    **dict.fromkeys(["DatasetError", "load_manifest", "verify_dataset"], "hagg_tf.data.manifest"),
    **dict.fromkeys(["GenerationReport", "generate_dataset"], "hagg_tf.data.writer"),
}
# ... and those that import TensorFlow.
_LAZY = {
    "single_image_dataset": "hagg_tf.data.pipeline",
    "classification_dataset": "hagg_tf.data.pipeline",
    "multi_image_dataset": "hagg_tf.data.pipeline",
    "network_dataset": "hagg_tf.data.pipeline",
    "epoch_size": "hagg_tf.data.pipeline",
    "EpochSize": "hagg_tf.data.pipeline",
    "Augmentation": "hagg_tf.data.augment",
    "augment_image": "hagg_tf.data.augment",
    "Sample": "hagg_tf.data.records",
    "read_samples": "hagg_tf.data.records",
    "RecordError": "hagg_tf.data.records",
}

__all__ = [*_LAZY_LIGHT, *_LAZY]


def __getattr__(name):
    if name in _LAZY or name in _LAZY_LIGHT:
        if name in _LAZY:
            from hagg_tf.tensorflow_import import import_tensorflow_quietly

            import_tensorflow_quietly()  # the lazy modules import TensorFlow: without its chatter
        value = getattr(importlib.import_module(_LAZY.get(name) or _LAZY_LIGHT[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hagg_tf.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_LIGHT))
