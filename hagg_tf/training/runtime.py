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


#: Folder of a run directory that holds the own run folders of the non-chief workers.
WORKERS = "workers"


def is_multi_worker(strategy) -> bool:
    """True for a ``MultiWorkerMirroredStrategy`` (of any number of workers)."""
    tf = import_tensorflow_quietly()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def task_id(strategy) -> int:
    """This worker's index in its cluster (0 without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", None) or 0)


def worker_run_dir(output_dir, strategy):
    """The folder this worker writes its run into: ``output_dir`` on the chief.

    A non-chief worker of a multi-worker run writes the same files as the chief (backup,
    history, best and last model, training.json) into ``<output_dir>/workers/worker-<id>``, so
    that no two workers write one file (on a shared disk) and every worker resumes, stops early
    and reports completion from its own state: the workers must make the same decisions, or
    the synchronous all-reduce of the next step waits forever.
    """
    import pathlib

    output_dir = pathlib.Path(output_dir)
    if is_chief(strategy):
        return output_dir
    return output_dir / WORKERS / f"worker-{task_id(strategy)}"


def distribute_input(dataset, strategy):
    """``dataset`` with the auto-shard policy that a multi-worker run needs.

    The pipelines interleave a seeded shuffle of the shard files inside an endless epoch loop,
    so tf.data cannot shard them by file (and a split of the tiny preset has fewer files than a
    cluster may have workers). ``AutoShardPolicy.DATA`` lets every worker run the whole pipeline
    and keep its slice of every global batch: the global batch (the paper's 16 or 8) is rebatched
    to global / workers per worker, each worker sees different samples, and the samples of one
    step are the ones a single worker would have seen. Cost: every worker reads and decodes the
    whole stream (docs/scale.md). Other strategies get the dataset unchanged.
    """
    if not is_multi_worker(strategy):
        return dataset
    tf = import_tensorflow_quietly()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def prepare_model_for_fit(model, strategy):
    """Works around two failures of Keras 3's ``fit`` under ``MultiWorkerMirroredStrategy``.

    Keras 3 (3.15, keras-team/keras#20585) cannot ``fit`` under this strategy:

    1. Before the first step it builds the metrics and the optimiser from one batch, which it
       obtains by ``strategy.reduce("MEAN", batch)`` over the whole ``(x, y)`` tuple of
       per-replica values; the strategy cannot reduce a tuple ("Attempt to convert a value
       (PerReplica…) … to a Tensor"). The batch only provides shapes, so this replaces that
       step on ``model`` by one that takes this worker's local part of the batch and then builds
       exactly as Keras does.
    2. After every step it averages the logged metrics over the workers with
       ``strategy.reduce("MEAN", value, axis=0)``, which fails on the scalar metrics ("Invalid
       reduction dimension 0 for input with 0 dimensions"). :func:`_average_scalar_logs` makes
       that reduction average scalars over the replicas (``axis=None``), the mean Keras means.

    Other strategies: nothing changes.
    """
    if not is_multi_worker(strategy):
        return model
    tf = import_tensorflow_quietly()
    _average_scalar_logs()
    keras_build = model._maybe_symbolic_build

    def local_part(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def build_from_local_batch(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local_part, next(batches))
                break
        return keras_build(data_batch=data_batch)

    model._maybe_symbolic_build = build_from_local_batch
    return model


def _average_scalar_logs():
    """Makes Keras' per-step reduction of the logs average scalars over the workers.

    Replaces ``reduce_per_replica`` of Keras' TensorFlow trainer (looked up by the train and test
    functions when they are traced) by a wrapper that, under a multi-worker strategy and the
    ``"auto"``/``"mean"`` reduction of the training and test steps, reduces each scalar with
    ``strategy.reduce("MEAN", value, axis=None)`` and hands everything else to Keras' own
    function; where Keras' function succeeds it is called unchanged. Installed once per process.
    """
    tf = import_tensorflow_quietly()
    from keras.src.backend.tensorflow import trainer as keras_trainer

    keras_reduce = keras_trainer.reduce_per_replica
    if getattr(keras_reduce, "averages_scalar_logs", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not is_multi_worker(strategy):
            return keras_reduce(values, strategy, reduction)

        def reduce(value):
            if isinstance(value, (tf.Tensor, tf.distribute.DistributedValues)) and \
                    _scalar(strategy, value):
                return strategy.reduce("MEAN", value, axis=None)
            return keras_reduce(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    def _scalar(strategy, value):
        local = strategy.experimental_local_results(value)[0] \
            if isinstance(value, tf.distribute.DistributedValues) else value
        return local.shape.rank == 0

    reduce_per_replica.averages_scalar_logs = True
    keras_trainer.reduce_per_replica = reduce_per_replica
