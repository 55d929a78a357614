"""The paper's evaluation (Sec. 3: Figs. 9–15, Tables 4–5) of the networks on a database split.

Examples:
  hagg-evaluate --dataset=work/datasets/paper                  # shipped models, split E
  hagg-evaluate --dataset=work/datasets/paper --model=work/saved_models --output=work/eval7
  hagg-evaluate --predictions=work/eval7/predictions.npz --shadow_thetas=0   # no shadows
  hagg-evaluate --predictions=p.npz --shadow_thetas=2 --shadow_aggregates=5 --workers=1
  hagg-evaluate --predictions=p.npz --shadow_thetas=100 --runner=DirectRunner   # shadows on Beam
  hagg-evaluate --robustness --output=work/robustness        # robustness benchmark only
  hagg-evaluate --predictions=p.npz --robustness --robustness_conditions=clean,film_5nm

Input: a predictions file (``--predictions``, see hagg_tf/evaluation/predictions.py), or, without
one, the predictions are computed from ``--dataset`` with ``--model`` (needs TensorFlow) and
saved as <output>/predictions.npz, which a rerun reuses. ``--baselines`` (Sec. 4's classical
methods, hagg_tf/evaluation/baselines.py): an ``.npz`` of per-image results (``record_index``
plus ``baseline_mixing_ratio_threshold`` and/or ``baseline_fractal_dimension_box``, as
``baselines.save_split_baselines`` writes) merged by record index, or a fitted-baselines
``.json`` (``baselines.save_fitted``) applied to the split's images of ``--dataset`` when the
predictions have no baseline outputs yet.

Output (default work/evaluation): metrics.json (every number), the figures fig09_… to
fig15_….png, report.md (the paper's value beside ours for every quantity of SPEC §9), and
shadows/ (descriptor arrays per θ of the digital shadows: an interrupted run resumes there). The
digital shadows draw 2 × shadow_thetas × shadow_aggregates aggregates (the paper's 50 × 800:
80 000; 10–25 min on 2 cores); --runner=<a Beam runner> draws them with Apache Beam instead
(the same descriptors; on a cluster --output must be a folder every worker sees). Bad input:
one 'error:' line, exit status 2.

--robustness (hagg_tf/evaluation/robustness.py) renders --robustness_thetas θ of the paper
design's split E × --robustness_images images under named imaging conditions (support film,
read noise, focus, blur, dose, pixel size, particle radii, …; docs/networks.md), runs the
networks of --model on them as hagg-characterize does on a user's images, and adds the table
conditions × metrics to metrics.json ("robustness") and report.md; each condition is cached
under --robustness_work, where a rerun resumes. Without predictions (no --predictions, no
--dataset, no <output>/predictions.npz) only the benchmark runs: robustness.json and report.md.
The full benchmark (150 θ × 12 images, 12 conditions) renders and characterizes 21 600
images (about 40 min on 2 shared cores).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import flags

from hagg_tf.cli import (check_output_dir, define_runner_flags, define_seed, fail,
                         run_tool, runner_and_beam_args)
from hagg_tf.model import batch

_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "Predictions file (.npz); default: <output>/predictions.npz, computed "
    "from --dataset and --model if absent.")
_DATASET = flags.DEFINE_string("dataset", None,
                               "Database directory (hagg-generate-dataset), to compute the "
                               "predictions.")
_MODEL = flags.DEFINE_string("model", None, "Networks to compute the predictions with: a "
                             "composite SavedModel (export base, model or version directory) "
                             "or a folder of training runs (<folder>/<network>/best.keras); "
                             "default: the shipped saved_models/.")
_POOLED_CACHE = flags.DEFINE_string(
    "pooled_cache", None, "Pooled cache of --dataset (hagg-train --pooled_cache) to read the "
    "images from when its pooling matches the networks'; default: decode the TFRecords.")
_SPLIT = flags.DEFINE_string("split", "evaluation", "Database split to evaluate (the paper's E).")
_OUTPUT = flags.DEFINE_string("output", "work/evaluation", "Output directory.")
_NU = flags.DEFINE_integer("nu", 12, "Images per group for every θ-level result.",
                           lower_bound=1)
_SHADOW_THETAS = flags.DEFINE_integer("shadow_thetas", 50,
                                      "(θ, θ̂) pairs of Table 5; 0 skips the digital shadows.",
                                      lower_bound=0)
_SHADOW_AGGREGATES = flags.DEFINE_integer("shadow_aggregates", 800,
                                          "Aggregates drawn per θ and per θ̂.", lower_bound=1)
_WORKERS = flags.DEFINE_integer("workers", batch.default_workers(),
                                "Processes drawing the digital shadows (--runner=local).",
                                lower_bound=1)
_RUNNER, _BEAM_ARGS = define_runner_flags("the digital shadows")
_SEED = define_seed(0, "Seed of groups, shadow configurations and shadows.")
_BASELINES = flags.DEFINE_string(
    "baselines", None, "Baseline results (.npz, per image, merged by record_index) or fitted "
    "baselines (.json, applied to the images of --dataset).")

_ROBUSTNESS = flags.DEFINE_boolean(
    "robustness", False, "Run the robustness benchmark (held-out aggregates under named "
    "imaging conditions) with the networks of --model and add its table to the report.")
_ROBUSTNESS_THETAS = flags.DEFINE_integer("robustness_thetas", 150,
                                          "Held-out configurations θ of split E.",
                                          lower_bound=1)
_ROBUSTNESS_IMAGES = flags.DEFINE_integer(
    "robustness_images", 12, "Images per θ (at least the networks' ν).", lower_bound=1)
_ROBUSTNESS_CONDITIONS = flags.DEFINE_list(
    "robustness_conditions", None, "Comma-separated condition names (docs/networks.md, "
    "'Robustness'); default: all, in the benchmark's order.")
_ROBUSTNESS_WORK = flags.DEFINE_string(
    "robustness_work", None, "Folder of the per-condition results, where a rerun resumes; "
    "default <output>/robustness.")

#: Group sizes the multi-image networks are run with when predictions are computed here.
_PREDICTED_NUS = (4, 8, 12, 16)


def _require_dataset(purpose: str) -> str:
    if _DATASET.value is None:
        fail(f"{purpose} needs --dataset=DIR (the database)")
    if not Path(_DATASET.value).is_dir():
        fail(f"--dataset={_DATASET.value}: no such directory")
    # TensorFlow's C++ runtime logs harmless notices at error level; real failures still
    # arrive as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return _DATASET.value


def _compute_predictions():
    """Runs the networks over the split (TensorFlow)."""
    dataset = _require_dataset("computing the predictions (no --predictions file given)")
    try:
        from hagg_tf.evaluation.predict import predict_split
    except ImportError as error:
        fail(f"computing predictions needs TensorFlow ({error}); or give --predictions=FILE")
    nus = tuple(sorted(set(_PREDICTED_NUS) | {_NU.value}))
    print(f"computing predictions on split {_SPLIT.value!r} of {dataset} (groups of "
          f"{', '.join(map(str, nus))} images) …")
    try:
        return predict_split(dataset, _SPLIT.value, model=_MODEL.value, nus=nus,
                             seed=_SEED.value, cache_dir=_POOLED_CACHE.value)
    except (FileNotFoundError, ValueError, OSError) as error:
        fail(str(error))


def _fitted_baseline_outputs(fitted_path: Path) -> dict:
    """Per-image outputs of fitted baselines (``hagg_tf.evaluation.baselines``) on the split."""
    dataset = _require_dataset(f"--baselines={fitted_path} (fitted baselines)")
    try:
        from hagg_tf.evaluation import baselines
    except ImportError as error:
        fail(f"the baselines need TensorFlow to read the database ({error})")
    print(f"applying the fitted baselines {fitted_path} to split {_SPLIT.value!r} …")
    try:
        return baselines.baselines_for_split(dataset, _SPLIT.value,
                                             fitted=baselines.load_fitted(fitted_path))
    except (FileNotFoundError, ValueError, OSError) as error:
        fail(str(error))


def _model_card(predictions, ran_networks: bool):
    """The evaluated model's card: from --model (or the shipped default when the networks ran
    here), else from the predictions' info if it holds one; None for training runs, which
    have no card."""
    if _MODEL.value is not None or ran_networks:
        from hagg_tf.estimation.model import find_model

        try:
            return dict(find_model(_MODEL.value)[1].get("model_card") or {})
        except (FileNotFoundError, ValueError):
            return None
    card = predictions.info.get("model_card")
    return card if isinstance(card, dict) else None


def _run_robustness(output: Path) -> dict:
    """The robustness benchmark's result (TensorFlow); also written to robustness.json."""
    from hagg_tf.model.io import write_json_atomic

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from hagg_tf.evaluation import robustness
    except ImportError as error:
        fail(f"the robustness benchmark needs the renderer and TensorFlow ({error})")
    names = (_ROBUSTNESS_CONDITIONS.value if _ROBUSTNESS_CONDITIONS.value
             else list(robustness.ROBUSTNESS_CONDITIONS))
    work = Path(_ROBUSTNESS_WORK.value) if _ROBUSTNESS_WORK.value else output / "robustness"
    try:
        names = robustness.check_condition_names(names)
        print(f"robustness benchmark: {_ROBUSTNESS_THETAS.value} θ × "
              f"{_ROBUSTNESS_IMAGES.value} images under {len(names)} conditions "
              f"({', '.join(names)}); results under {work}/ …")
        result = robustness.run_robustness(
            _MODEL.value, conditions=names, thetas=_ROBUSTNESS_THETAS.value,
            images_per_theta=_ROBUSTNESS_IMAGES.value, seed=_SEED.value, work_dir=work)
    except FileNotFoundError as error:
        fail(f"{error} (the robustness benchmark runs the networks as hagg-characterize "
             "does: --model must be a composite export of hagg-export-models)")
    except (robustness.RobustnessError, ValueError, OSError) as error:
        fail(str(error))
    write_json_atomic(output / "robustness.json", result, indent=1, trailing_newline=False)
    for row in robustness.robustness_table(result):
        print(" | ".join(row))
    return result


def main(argv):
    runner, beam_args = runner_and_beam_args(argv, _RUNNER, _BEAM_ARGS)
    output = check_output_dir(_OUTPUT.value)
    from hagg_tf.evaluation import paper_evaluation, report
    from hagg_tf.evaluation.predictions import (PredictionsError, load_predictions,
                                                save_predictions)
    from hagg_tf.model.io import write_json_atomic

    baselines = Path(_BASELINES.value) if _BASELINES.value else None
    if baselines is not None:
        if baselines.suffix not in (".npz", ".json"):
            fail(f"--baselines={baselines}: expected a results .npz or a fitted-baselines .json")
        if not baselines.is_file():
            fail(f"--baselines={baselines}: no such file")

    ran_networks = changed = False
    own_file = output / "predictions.npz"
    path = Path(_PREDICTIONS.value) if _PREDICTIONS.value is not None else own_file
    if _PREDICTIONS.value is not None and not path.is_file():
        fail(f"--predictions={path}: no such file")
    if _ROBUSTNESS.value and _DATASET.value is None and not path.is_file():
        # nothing to evaluate the paper's way: the benchmark alone
        result = _run_robustness(output)
        report_path = report.write_robustness_report(output / "report.md", result)
        print(f"wrote {output / 'robustness.json'} and {report_path}")
        return
    try:
        if path.is_file():
            if path == own_file and _PREDICTIONS.value is None:
                print(f"reusing {path} (delete it to recompute)")
            predictions = load_predictions(path)
        else:
            predictions = _compute_predictions()
            ran_networks = changed = True
        has_baselines = any(key in predictions.arrays for key in paper_evaluation.BASELINES)
        if baselines is not None and baselines.suffix == ".npz":
            predictions = paper_evaluation.attach_baselines(predictions, baselines)
        elif baselines is not None and has_baselines:
            print(f"note: {path} already holds baseline outputs; --baselines={baselines} is "
                  "not applied again")
        elif baselines is not None:
            predictions = paper_evaluation.attach_baselines(
                predictions, _fitted_baseline_outputs(baselines))
            changed = True
        if changed and path == own_file:
            # saved with the baselines, so that a rerun needs neither TensorFlow nor the images
            save_predictions(predictions, path)
            print(f"saved {path}")
        paper_evaluation.require_group_outputs(predictions, _NU.value)
    except (FileNotFoundError, PredictionsError) as error:
        fail(f"{error}")

    try:
        metrics = paper_evaluation.evaluate_predictions(
            predictions, nu=_NU.value, seed=_SEED.value, shadow_thetas=_SHADOW_THETAS.value,
            shadow_aggregates=_SHADOW_AGGREGATES.value, shadow_cache_dir=output / "shadows",
            workers=_WORKERS.value, progress=True, runner=runner, beam_args=beam_args)
    except (PredictionsError, ValueError, ImportError) as error:
        fail(str(error))
    metrics["settings"]["predictions"] = str(path)
    if _ROBUSTNESS.value:
        metrics["robustness"] = _run_robustness(output)
    metrics_path = write_json_atomic(output / "metrics.json", metrics, indent=1,
                                     trailing_newline=False)
    try:
        from hagg_tf.evaluation.paper_figures import plot_paper_figures

        figures = plot_paper_figures(predictions, metrics, output)
    except ImportError as error:
        print(f"warning: no figures ({error})", file=sys.stderr)
        figures = {}
    report_path = report.write_report(output / "report.md", metrics, figures,
                                      _model_card(predictions, ran_networks))

    for quantity, paper, ours, baseline in report.main_table_rows(metrics):
        print(f"{quantity}: paper {paper} | ours {ours}"
              + (f" | {baseline}" if baseline != "—" else ""))
    print(f"wrote {metrics_path}, {report_path} and {len(figures)} figures in {output}/")


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
