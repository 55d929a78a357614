"""TensorFlow runtime helpers of training: ``tf.distribute`` strategies and the chief worker.

Kept free of a top-level TensorFlow import so that tools can check their input (and fail fast
with a clear message) before paying the few seconds TensorFlow takes to load; TensorFlow itself
is imported through :func:`hagg_tf.tensorflow_import.import_tensorflow_quietly`.
"""
from __future__ import annotations

from hagg_tf.tensorflow_import import import_tensorflow_quietly

#: Values of ``--strategy`` / ``train_network(strategy=...)``.
STRATEGIES = ("default", "mirrored", "multi_worker")


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
