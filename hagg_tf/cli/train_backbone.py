"""Train the five networks as one shared feature extractor f on a hagg_tf database.

The recipe of saved_models/characterize/3 (docs/learning.md, "The shared backbone"):
  hagg-train-backbone --dataset=work/datasets/realistic \\
      --pooled_cache=work/cache/realistic_pool2 --output=work/training/shared_fine
  hagg-export-models --backbone=work/training/shared_fine --dataset=work/datasets/realistic \\
      --output=saved_models --version=3 --kernel_dtype=float32

Stages, each resumable (rerun the same command after an interruption or a spent
--max_wall_minutes): the pooled cache of --dataset (decoded, preprocessed, 2×2-pooled images),
the backbone (f and the per-image heads of D_f, ρ, homogeneous, θ_0, θ_1, trained together;
backup after every epoch), the re-estimation of its batch-norm statistics, and the ν-image heads
of CNN^0 and CNN^1 on the frozen f. The run directory gets training.json, history.csv,
best/last/calibrated.keras and stack_heads.npz.
"""
from __future__ import annotations

import os

from absl import flags

from hagg_tf.cli import (check_output_dir, define_float, define_seed, fail,
                         reject_extra_arguments, run_tool)
from hagg_tf.training.multitask import DEFAULT_BACKBONE_ARCHITECTURE

_DATASET = flags.DEFINE_string("dataset", "work/datasets/realistic",
                               "Database directory (hagg-generate-dataset) whose pooled cache "
                               "is built or completed first.")
_POOLED_CACHE = flags.DEFINE_string("pooled_cache", "work/cache/realistic_pool2",
                                    "Pooled cache of --dataset (built if missing).")
_OUTPUT = flags.DEFINE_string("output", "work/training/shared_fine", "Run directory.")
_ARCHITECTURE = flags.DEFINE_string("architecture", DEFAULT_BACKBONE_ARCHITECTURE,
                                    "Feature extractor (hagg_tf.networks.ARCHITECTURES).")
_EPOCHS = flags.DEFINE_integer("epochs", 12, "Epochs of the backbone.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per step.", lower_bound=1)
_LEARNING_RATE = define_float("learning_rate", 1e-3, "Peak Adam learning rate (cosine decay "
                              "to 5 % over --epochs), > 0.", positive=True)
_SEED = define_seed(0, "Seed of initialisation, shuffling and augmentation.")
_MAX_WALL = define_float("max_wall_minutes", None, "Stop after the first epoch that ends past "
                         "this many minutes; rerun to continue.", positive=True)
_STEPS = flags.DEFINE_integer("steps_per_epoch", None, "Cut every epoch to this many steps "
                              "(quick trials); default a full pass.", lower_bound=1)
_NUM_IMAGES = flags.DEFINE_integer("num_images", 12, "ν of the multi-image networks.",
                                   lower_bound=1)
_STACK_EPOCHS = flags.DEFINE_integer("stack_epochs", 60, "Epochs of the ν-image heads.",
                                     lower_bound=1)
_SAMPLE_HEAD_EPOCHS = flags.DEFINE_integer(
    "sample_head_epochs", 120, "Epochs of the sample heads of θ̂_Df and θ̂_ρ "
    "(hagg_tf.data.sample_heads), fitted on the finished backbone's per-image outputs; 0: "
    "none (an intermediate stage: its export keeps the plain means).", lower_bound=0)
_INITIAL = flags.DEFINE_string("initial_weights", None,
                               "A finished backbone run directory, or a shared-backbone composite "
                               "export (saved_models/characterize/3, say), whose weights start "
                               "this run (a further stage with its own cosine cycle of --epochs "
                               "at --learning_rate); an export is first rebuilt into "
                               "<output>/initial_weights_from_export. Default a random "
                               "initialisation.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes building the pooled cache.",
                                lower_bound=1)
_VERBOSE = flags.DEFINE_integer("verbose", 2, "Keras fit verbosity (0, 1 or 2).",
                                lower_bound=0, upper_bound=2)


def main(argv):
    reject_extra_arguments(argv)
    check_output_dir(_OUTPUT.value)
    check_output_dir(_POOLED_CACHE.value, "--pooled_cache")
    if not os.path.isfile(os.path.join(_DATASET.value, "manifest.json")):
        fail(f"--dataset={_DATASET.value}: no database (manifest.json) there")
    from hagg_tf.data import DatasetError
    from hagg_tf.networks.architecture import ARCHITECTURES, minimum_image_size
    from hagg_tf.data import load_manifest
    from hagg_tf.training import TrainingError
    from hagg_tf.export.from_training import REBUILT_START, train_shared_networks_from
    from hagg_tf.training.multitask import BackboneConfig, check_initial_weights

    if _ARCHITECTURE.value not in ARCHITECTURES:
        fail(f"--architecture={_ARCHITECTURE.value}: one of {', '.join(ARCHITECTURES)}")
    try:
        image_size = int(load_manifest(_DATASET.value)["image"]["height"])
        if image_size < minimum_image_size(_ARCHITECTURE.value):
            fail(f"{_DATASET.value}: images of {image_size} px are smaller than the "
                 f"architecture's minimum {minimum_image_size(_ARCHITECTURE.value)} px")
        initial, source_export = _INITIAL.value, None
        if initial is not None:  # checked before minutes of pooled cache
            try:
                check_initial_weights(initial)
            except TrainingError as error:
                if not os.path.isdir(initial):
                    raise
                from hagg_tf.estimation.model import find_model

                try:
                    find_model(initial)
                except (FileNotFoundError, ValueError):
                    raise TrainingError(f"{error}, and no composite export") from None
                source_export, initial = initial, os.path.join(_OUTPUT.value, REBUILT_START)
        config = BackboneConfig(
            _POOLED_CACHE.value, _OUTPUT.value, architecture=_ARCHITECTURE.value,
            image_size=image_size, epochs=_EPOCHS.value, batch_size=_BATCH.value,
            learning_rate=_LEARNING_RATE.value, seed=_SEED.value,
            max_wall_seconds=None if _MAX_WALL.value is None else 60 * _MAX_WALL.value,
            steps_per_epoch=_STEPS.value, num_images=_NUM_IMAGES.value,
            stack_epochs=_STACK_EPOCHS.value, sample_head_epochs=_SAMPLE_HEAD_EPOCHS.value,
            initial_weights=initial)
        summary = train_shared_networks_from(config, _DATASET.value,
                                             source_export=source_export,
                                             workers=_WORKERS.value, verbose=_VERBOSE.value)
    except (TrainingError, DatasetError, ValueError) as error:
        fail(str(error))
    if summary.get("status") != "complete":
        print(f"{_OUTPUT.value}: {summary.get('epochs_done')} of {_EPOCHS.value} epochs "
              "(wall budget spent); rerun the same command to continue")
        return
    heads = (summary.get("stack_heads") or {}).get("validation_mae") or {}
    sample_heads = (summary.get("sample_heads") or {}).get("validation_mae") or {}
    after = (summary.get("calibration") or {}).get("after") or {}
    print(f"{_OUTPUT.value}: complete, {summary.get('epochs_done')} epochs, "
          f"{(summary.get('wall_s_total') or 0) / 60:.1f} min; validation "
          + ", ".join(f"{key} {value:.3f}" for key, value in {**after, **{
              f"{name}_nu_mae": value for name, value in heads.items()
              if value is not None}, **{
              f"{name}_sample_head_mae": value for name, value in sample_heads.items()
              if value is not None}}.items()))


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
