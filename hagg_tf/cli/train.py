"""Train one of the paper's networks (Sec. 2.3) on a hagg_tf database.

Examples:
  hagg-train --network=fractal_dimension --dataset=work/datasets/paper
  hagg-train --network=wo3_cluster_size --dataset=work/datasets/paper --epochs=300
  hagg-train --network=fractal_dimension --dataset=work/datasets/paper --strategy=mirrored
  # multi-worker: the same command on every worker, each with its own TF_CONFIG
  TF_CONFIG='{"cluster": {"worker": ["h0:2222", "h1:2222"]},
             "task": {"type": "worker", "index": 0}}' \
    hagg-train --network=fractal_dimension --dataset=/shared/paper --strategy=multi_worker
  (--batch_size is the global batch, split over the workers; worker 0 is the chief and writes
  the run directory, worker i its own copy in <output>/workers/worker-i; docs/scale.md)

Networks: fractal_dimension (CNN^Df), mixing_ratio_regressor (CNN^ρ_reg),
mixing_ratio_classifier (CNN^ρ_class), wo3_cluster_size (CNN^0), tio2_cluster_size (CNN^1).
Adam with learning rate 1e-4, the paper's losses and batch sizes (16; 8 samples of ν images).

CPU budget path (docs/learning.md): --architecture=compact --pooled_cache=work/cache/paper_pool4
trains the compact variant from a decoded, preprocessed, 4×4-pooled copy of the database (built
on first use, resumable), e.g.
  hagg-train --network=fractal_dimension --architecture=compact \
    --pooled_cache=work/cache/paper_pool4 --learning_rate=3e-4 --batch_size=32 --patience=4

The run directory (default work/training/<network>) gets backup/ (resume state), best.keras,
last.keras, history.csv, logs/ (TensorBoard) and training.json. After an interruption, rerun
the same command: it resumes from the last backup. A finished run is left alone (--overwrite
starts over).
"""
from __future__ import annotations

import math
import os

from absl import flags

from hagg_tf.cli import (check_output_dir, define_float, define_seed, fail,
                         reject_extra_arguments, run_tool)
from hagg_tf.data.network_specs import NETWORK_NAMES as _NETWORKS

_NETWORK = flags.DEFINE_enum("network", None, list(_NETWORKS), "Network to train.")
_DATASET = flags.DEFINE_string("dataset", "work/datasets/paper",
                               "Database directory (hagg-generate-dataset).")
_OUTPUT = flags.DEFINE_string("output", None, "Run directory (default work/training/<network>).")
_EPOCHS = flags.DEFINE_integer("epochs", 200, "Epochs in total (early stopping may end sooner).",
                               lower_bound=1)
_STEPS = flags.DEFINE_integer("steps_per_epoch", None,
                              "Training steps per epoch (default: one pass over the train split).",
                              lower_bound=1)
_VALIDATION_STEPS = flags.DEFINE_integer("validation_steps", None,
                                         "Validation batches per epoch (default: all).",
                                         lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", None, "Samples per step (default: 16 or 8).",
                              lower_bound=1)
_NUM_IMAGES = flags.DEFINE_integer("num_images", 12, "ν of the multi-image networks.",
                                   lower_bound=1)
_LEARNING_RATE = define_float("learning_rate", None, "Adam learning rate, > 0 (default 1e-4).",
                              positive=True)
_SEED = define_seed(0, "Seed of initialisation, shuffling and augmentation.")
_PATIENCE = flags.DEFINE_integer("patience", 20, "Early-stopping patience, epochs.",
                                 lower_bound=0)
_STRATEGY = flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                              "tf.distribute strategy.")
_BACKUP_STEPS = flags.DEFINE_integer("backup_every_steps", None,
                                     "Also back up every N steps within an epoch (an "
                                     "interrupted epoch is redone from its start).",
                                     lower_bound=1)
_VERIFY = flags.DEFINE_enum("verify", "checksum", ["checksum", "size", "none"],
                            "Check of the database files before training.")
_STACK = flags.DEFINE_enum("stack_strategy", "fold_batch", ["fold_batch", "time_distributed"],
                           "How multi-image networks apply f (see docs/networks.md).")
_ARCHITECTURE = flags.DEFINE_enum("architecture", "table3", ["table3", "compact"],
                                  "Feature extractor: the paper's Table 3 or the compact CPU "
                                  "variant (docs/learning.md).")
_POOLED_CACHE = flags.DEFINE_string(
    "pooled_cache", None, "Train from this pooled cache of --dataset (built if missing) instead "
    "of the TFRecord pipeline (the CPU path of --architecture=compact).")
_MAX_WALL = define_float("max_wall_minutes", None,
                         "Stop after the epoch that ends past this budget (> 0); a rerun "
                         "resumes.", positive=True)
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes building the pooled cache.",
                                lower_bound=1)
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "Start f from the best checkpoint of this run directory (another "
    "network, same architecture).")
_CALIBRATION = flags.DEFINE_integer("calibration_batches", 64,
                                    "Pooled runs: training batches averaged when batch norm is "
                                    "re-estimated at the end of every epoch.", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete an existing run and start over.")
_VERBOSE = flags.DEFINE_integer("verbose", 2, "0 silent, 1 progress bar, 2 a line per epoch.",
                                lower_bound=0, upper_bound=2)


def main(argv):
    reject_extra_arguments(argv)
    if _NETWORK.value is None:
        fail(f"--network is required: one of {', '.join(_NETWORKS)}")
    output = _OUTPUT.value or f"work/training/{_NETWORK.value}"
    if _POOLED_CACHE.value is not None and _STRATEGY.value != "default":
        fail(f"--strategy={_STRATEGY.value} is not supported with --pooled_cache (the pooled "
             "path trains in one process); drop one of them")
    check_output_dir(output)
    if _POOLED_CACHE.value is not None and not os.path.isdir(_POOLED_CACHE.value):
        # built here; an existing, finished cache may be read from a read-only share
        check_output_dir(_POOLED_CACHE.value, "--pooled_cache")
    from hagg_tf.data import DatasetError
    from hagg_tf.training import TrainingConfig, TrainingError, train
    from hagg_tf.training.pooled import DEFAULT_REDUCE_LR_PATIENCE
    from tensorflow.errors import DataLossError

    pooled = _POOLED_CACHE.value is not None
    try:
        if pooled:
            _build_pooled_cache()
        config = TrainingConfig(
            _NETWORK.value, _DATASET.value, output, epochs=_EPOCHS.value,
            steps_per_epoch=_STEPS.value, validation_steps=_VALIDATION_STEPS.value,
            batch_size=_BATCH.value, num_images=_NUM_IMAGES.value,
            learning_rate=_LEARNING_RATE.value, seed=_SEED.value, patience=_PATIENCE.value,
            architecture=_ARCHITECTURE.value, stack_strategy=_STACK.value,
            pooled_cache=_POOLED_CACHE.value, calibration_batches=_CALIBRATION.value,
            # the pooled CPU recipe's learning-rate schedule (docs/learning.md)
            reduce_lr_patience=DEFAULT_REDUCE_LR_PATIENCE if pooled else None,
            max_wall_seconds=None if _MAX_WALL.value is None else 60 * _MAX_WALL.value,
            init_from=_INIT_FROM.value, strategy=_STRATEGY.value,
            backup_every_steps=_BACKUP_STEPS.value, verify=_VERIFY.value)
        result = train(config, overwrite=_OVERWRITE.value, verbose=_VERBOSE.value)
    except (TrainingError, DatasetError, FileNotFoundError) as error:
        fail(str(error))
    except DataLossError:  # tf.data's record CRC check, whose message names no file
        from hagg_tf.data.pipeline import corrupt_shard_error
        fail(str(corrupt_shard_error(_DATASET.value)))
    if result.already_complete:
        print(f"{output}: this run finished before (epoch {result.final_epoch}); nothing to do "
              "(--overwrite starts over, a larger --epochs continues)")
        return
    throughput = ("n/a" if math.isnan(result.images_per_second)
                  else f"{result.images_per_second:.2f} images/s")
    print(f"{_NETWORK.value}: epochs {result.initial_epoch}→{result.final_epoch}"
          f"{' (stopped early)' if result.stopped_early else ''}, {throughput}; best by "
          f"{result.monitor}: {result.best_model}; last: {result.last_model}")


def _build_pooled_cache():
    """Builds (or completes) the pooled cache of --dataset at the architecture's pooling."""
    from hagg_tf import networks
    from hagg_tf.data.pooled import build_pooled_cache

    pooling = networks.get_architecture(_ARCHITECTURE.value).input_pooling
    build_pooled_cache(_DATASET.value, _POOLED_CACHE.value, pooling, workers=_WORKERS.value)


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
