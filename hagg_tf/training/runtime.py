"""TensorFlow runtime helpers shared by the command-line tools: a quiet import and strategies.

Kept free of a top-level TensorFlow import so that tools can check their input (and fail fast
with a clear message) before paying the few seconds TensorFlow takes to load.
"""
from __future__ import annotations

import contextlib
import os
import sys

#: Values of ``--strategy`` / ``train_network(strategy=...)``.
STRATEGIES = ("default", "mirrored", "multi_worker")


@contextlib.contextmanager
def _stderr_silenced():
    """Sends file descriptor 2 to /dev/null for the duration (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow_quietly():
    """Imports TensorFlow without its start-up chatter on stderr and returns the module.

    TensorFlow's C++ runtime prints oneDNN and CUDA notices before any Python logging setting can
    apply (``TF_CPP_MIN_LOG_LEVEL`` does not silence them in TF 2.21), which buries a command-line
    tool's own one-line messages. Python exceptions raised by the import still propagate.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_silenced():
        import tensorflow as tf  # noqa: F401  (the import is the point)
        import keras  # noqa: F401
    return tf


def make_strategy(name: str = "default"):
    """The ``tf.distribute`` strategy called ``name``.

    * ``"default"``: the default strategy (one device: the first GPU if any, else the CPU).
    * ``"mirrored"``: ``MirroredStrategy`` over all local GPUs (synchronous data parallelism; the
      batch of each step is split across them, so the global batch stays the paper's 16 or 8).
    * ``"multi_worker"``: ``MultiWorkerMirroredStrategy``; every worker runs the same command
      with its own ``TF_CONFIG`` (cluster spec and task), see docs/learning.md.

    Raises:
        ValueError: unknown name.
    """
    tf = import_tensorflow_quietly()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")


def is_chief(strategy) -> bool:
    """True on the worker that writes checkpoints, logs and exports (always, without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and \
        "chief" not in resolver.cluster_spec().as_dict()
