"""Training the paper's networks (Sec. 2.3.1–2.3.5) with resumable, distributable Keras runs.

One trainer (:func:`train`) runs a :class:`TrainingConfig` from a batch source: the database's
TFRecord pipeline, or its pooled cache (``TrainingConfig.pooled_cache``,
:mod:`hagg_tf.training.pooled`). Example::

    from hagg_tf.training import TrainingConfig, train

    result = train(TrainingConfig("fractal_dimension", "work/datasets/paper",
                                  "work/training/df", epochs=200))  # rerun after a crash: resumes
    result.best_model, result.images_per_second

``train_network(name, dataset, output, epochs, ...)`` is the same call with keyword arguments.
TensorFlow is imported when training starts, not on import.
"""
from hagg_tf.training.runtime import STRATEGIES, is_chief, make_strategy
from hagg_tf.training.trainer import (BACKUP, BEST_MODEL, HISTORY, LAST_MODEL, LOGS, SUMMARY,
                                      TFRecordSource, TrainingConfig, TrainingError,
                                      TrainingResult, backup_epoch, batch_source,
                                      load_trained_network, read_history, train, train_network)

__all__ = ["STRATEGIES", "is_chief", "make_strategy", "BACKUP",
           "BEST_MODEL", "HISTORY", "LAST_MODEL", "LOGS", "SUMMARY", "TFRecordSource",
           "TrainingConfig", "TrainingError", "TrainingResult", "backup_epoch", "batch_source",
           "load_trained_network", "read_history", "train", "train_network"]
