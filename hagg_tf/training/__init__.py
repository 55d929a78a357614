"""Training the paper's networks (Sec. 2.3.1–2.3.5) with resumable, distributable Keras runs.

Example::

    from hagg_tf.training import train_network

    result = train_network("fractal_dimension", "work/datasets/paper", "work/training/df",
                           epochs=200)                      # rerun after a crash: it resumes
    result.best_model, result.images_per_second

TensorFlow is imported when training starts, not on import.
"""
from hagg_tf.training.runtime import STRATEGIES, is_chief, make_strategy
from hagg_tf.training.trainer import (BACKUP, BEST_MODEL, HISTORY, LAST_MODEL, LOGS, SUMMARY,
                                      TrainingError, TrainingResult, backup_epoch,
                                      load_trained_network, read_history, train_network)

__all__ = ["STRATEGIES", "is_chief", "make_strategy", "BACKUP",
           "BEST_MODEL", "HISTORY", "LAST_MODEL", "LOGS", "SUMMARY", "TrainingError",
           "TrainingResult", "backup_epoch", "load_trained_network", "read_history",
           "train_network"]
