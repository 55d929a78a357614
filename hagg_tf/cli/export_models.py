"""Export trained networks as SavedModels for TF Serving and for hagg-characterize.

Examples:
  # the composite "characterize" model from five training runs (work/training/<network>/),
  # evaluated on the database's evaluation split, kernels stored as float16:
  hagg-export-models --runs=work/training --output=saved_models \
      --evaluate_dataset=work/datasets/paper

  # the composite from a shared-backbone run (hagg-train-backbone), trained on the realistic
  # database, with its LiteRT conversion (the recipe of saved_models/characterize/3):
  hagg-export-models --backbone=work/training/shared_fine --dataset=work/datasets/realistic \
      --output=saved_models --version=3 --kernel_dtype=float32

  # the shipped composite again, with new sample heads of θ̂_Df and θ̂_ρ fitted on the pooled
  # cache of its training database (hagg-train-backbone --pooled_cache), evaluated:
  hagg-export-models --from_composite=saved_models/characterize/3 --output=work/saved_models \
      --version=3 --kernel_dtype=float32 --sample_heads_cache=work/cache/realistic_pool2 \
      --evaluate_dataset=work/datasets/realistic

  # the same with the ν-image heads of CNN^0 and CNN^1 fitted again on the frozen f (the
  # command that refitted the shipped heads):
  hagg-export-models --from_composite=saved_models/characterize/3 --output=work/saved_models \
      --version=3 --kernel_dtype=float32 --stack_heads_cache=work/cache/realistic_pool2 \
      --evaluate_dataset=work/datasets/realistic --litert

  # per-network SavedModels (TF Serving, one model each) recreated from a shipped composite:
  hagg-export-models --from_composite=saved_models --per_network --nocomposite \
      --output=work/saved_models

Layout: <output>/characterize/<version>/ (composite: all five networks and the estimators of
Sec. 2.3 in one graph) and, with --per_network, <output>/<network>/<version>/ for each network
(hagg_tf.export.export_network). Existing versions are kept unless --overwrite.

Beside the composite goes its LiteRT conversion, characterize.tflite and its record (the
per-image and cluster-head signatures, checked against the SavedModel), which hagg-characterize
runs without importing TensorFlow (--runtime=auto); by default when ai-edge-litert is installed.
"""
from __future__ import annotations

import pathlib

from absl import flags

from hagg_tf.cli import check_output_dir, fail, reject_extra_arguments, run_tool

from hagg_tf.data.network_specs import NETWORK_NAMES

_RUNS = flags.DEFINE_string("runs", None, "Directory with one training run per network "
                            "(<runs>/<network>/, as written by hagg-train).")
_FROM_COMPOSITE = flags.DEFINE_string(
    "from_composite", None, "Take the networks' weights from this composite export instead "
    "(export base, model or version directory).")
_BACKBONE = flags.DEFINE_string(
    "backbone", None, "Or a shared-backbone run (hagg-train-backbone: one f for the five "
    "networks, its heads and the ν-image heads trained).")
_DATASET = flags.DEFINE_string(
    "dataset", None, "With --backbone: the database it was trained on (its pixel size goes "
    "into the export; hagg-characterize resamples images to it).")
_OUTPUT = flags.DEFINE_string("output", "work/saved_models", "Export base directory.")
_VERSION = flags.DEFINE_integer("version", 1, "Version number of the exports.",
                                lower_bound=1)
_KERNEL_DTYPE = flags.DEFINE_enum("kernel_dtype", "float16", ["float16", "float32"],
                                  "Storage type of the composite's kernels.")
_COMPOSITE = flags.DEFINE_bool("composite", True, "Write the composite characterize model.")
_PER_NETWORK = flags.DEFINE_bool("per_network", False, "Write one SavedModel per network.")
_EVALUATE = flags.DEFINE_string("evaluate_dataset", None,
                                "Measure the composite's accuracy on this database's "
                                "evaluation split and store it in the model card.")
_SAMPLE_HEADS_CACHE = flags.DEFINE_string(
    "sample_heads_cache", None, "With --from_composite: fit new sample heads of θ̂_Df and θ̂_ρ "
    "(hagg_tf.data.sample_heads) on this pooled cache of the networks' training database "
    "(hagg-train-backbone --pooled_cache); default: keep the source's.")
_SAMPLE_HEAD_EPOCHS = flags.DEFINE_integer("sample_head_epochs", 120,
                                           "Epochs of that fit.", lower_bound=1)
_STACK_HEADS_CACHE = flags.DEFINE_string(
    "stack_heads_cache", None, "With --from_composite: fit the ν-image heads of CNN^0 and CNN^1 "
    "again on the networks' frozen f and this pooled cache of their training database "
    "(hagg_tf.training.group_heads); default: keep the source's.")
_STACK_HEAD_EPOCHS = flags.DEFINE_integer("stack_head_epochs", 60, "Epochs of that fit.",
                                          lower_bound=1)
_TEST_TIME_SYMMETRIES = flags.DEFINE_enum(
    "test_time_symmetries", None, ["1", "8"],
    "Passes of f per image in the composite: 8 averages every per-image output and feature "
    "over the square's 8 symmetries (the training augmentation; 8 times the networks' time), "
    "1 runs each image once. Default: the source's with --from_composite, else 1.")
_PLACEHOLDER = flags.DEFINE_bool("placeholder", False,
                                 "Mark the networks as placeholders in the model card.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "last"], "Checkpoint of each run.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing versions.")
_LITERT = flags.DEFINE_bool(
    "litert", None, "Write the composite's LiteRT conversion (characterize.tflite) beside it, "
    "for hagg-characterize without TensorFlow. Default: when ai-edge-litert is installed; "
    "--litert fails without it, --nolitert skips it.")



def main(argv):
    reject_extra_arguments(argv)
    sources = [value for value in (_RUNS.value, _FROM_COMPOSITE.value, _BACKBONE.value)
               if value is not None]
    if len(sources) != 1:
        fail("give exactly one of --runs (training runs), --from_composite and --backbone")
    if _BACKBONE.value is not None:
        from hagg_tf.training.multitask import STACK_HEADS

        if not (pathlib.Path(_BACKBONE.value) / STACK_HEADS).is_file():
            fail(f"{_BACKBONE.value}: not a finished shared-backbone run (no {STACK_HEADS}; "
                 "finish it with hagg-train-backbone)")
        if _DATASET.value is not None and not (pathlib.Path(_DATASET.value)
                                               / "manifest.json").is_file():
            fail(f"--dataset={_DATASET.value}: no database (manifest.json) there")
    elif _DATASET.value is not None:
        fail("--dataset goes with --backbone")
    for flag, heads in ((_SAMPLE_HEADS_CACHE, "sample heads"), (_STACK_HEADS_CACHE,
                                                                 "ν-image heads")):
        if flag.value is None:
            continue
        if _FROM_COMPOSITE.value is None:
            fail(f"--{flag.name} goes with --from_composite (a --backbone run fits its own "
                 f"{heads})")
        if not pathlib.Path(flag.value).is_dir():
            fail(f"--{flag.name}={flag.value}: no such directory")
    if _EVALUATE.value is not None and not (pathlib.Path(_EVALUATE.value)
                                            / "manifest.json").is_file():
        fail(f"--evaluate_dataset={_EVALUATE.value}: no database (manifest.json) there")
    if not (_COMPOSITE.value or _PER_NETWORK.value):
        fail("nothing to do: --nocomposite without --per_network")
    if _RUNS.value is not None:
        missing = [name for name in NETWORK_NAMES
                   if not (pathlib.Path(_RUNS.value) / name / "last.keras").is_file()]
        if missing:
            fail(f"{_RUNS.value}: no finished run of {', '.join(missing)} "
                  "(expected <runs>/<network>/last.keras from hagg-train)")
    from hagg_tf.estimation.litert_model import litert_installed

    litert = _LITERT.value
    if litert is None:
        litert = _COMPOSITE.value and litert_installed()
    elif litert and not litert_installed():
        fail("--litert needs ai-edge-litert (pip install ai-edge-litert); --nolitert writes "
             "the SavedModel alone")
    elif litert and not _COMPOSITE.value:
        fail("--litert converts the composite: it cannot go with --nocomposite")
    check_output_dir(_OUTPUT.value)
    symmetries = None if _TEST_TIME_SYMMETRIES.value is None else int(_TEST_TIME_SYMMETRIES.value)
    from hagg_tf.export.from_training import (export_from_backbone, export_from_composite,
                                              export_from_runs)
    from hagg_tf.tensorflow_import import import_tensorflow_quietly

    import_tensorflow_quietly()
    from hagg_tf.export.litert import LiteRTConversionError

    try:
        if _RUNS.value is not None:
            written = export_from_runs(
                _RUNS.value, _OUTPUT.value, version=_VERSION.value,
                kernel_dtype=_KERNEL_DTYPE.value, evaluate_dataset=_EVALUATE.value,
                placeholder=_PLACEHOLDER.value, overwrite=_OVERWRITE.value,
                which=_WHICH.value, per_network=_PER_NETWORK.value,
                composite=_COMPOSITE.value, litert=litert,
                test_time_symmetries=symmetries or 1)
        elif _BACKBONE.value is not None:
            written = export_from_backbone(
                _BACKBONE.value, _OUTPUT.value, dataset=_DATASET.value, version=_VERSION.value,
                kernel_dtype=_KERNEL_DTYPE.value, evaluate_dataset=_EVALUATE.value,
                overwrite=_OVERWRITE.value, per_network=_PER_NETWORK.value,
                composite=_COMPOSITE.value, litert=litert,
                test_time_symmetries=symmetries or 1)
        else:
            written = export_from_composite(
                _FROM_COMPOSITE.value, _OUTPUT.value, version=_VERSION.value,
                overwrite=_OVERWRITE.value, per_network=_PER_NETWORK.value,
                composite=_COMPOSITE.value, kernel_dtype=_KERNEL_DTYPE.value, litert=litert,
                evaluate_dataset=_EVALUATE.value, sample_heads_cache=_SAMPLE_HEADS_CACHE.value,
                sample_head_epochs=_SAMPLE_HEAD_EPOCHS.value,
                stack_heads_cache=_STACK_HEADS_CACHE.value,
                stack_head_epochs=_STACK_HEAD_EPOCHS.value, test_time_symmetries=symmetries)
    except (FileExistsError, FileNotFoundError, ValueError, LiteRTConversionError) as error:
        fail(str(error))
    for key, path in written.items():
        if key != "model_card":
            path = pathlib.Path(path)
            size = path.stat().st_size if path.is_file() else sum(
                item.stat().st_size for item in path.rglob("*") if item.is_file())
            print(f"{key}: {path} ({size / 2 ** 20:.1f} MiB)")
    summary = written["model_card"].get("accuracy_summary")
    if summary:
        print(f"accuracy {summary}")


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
