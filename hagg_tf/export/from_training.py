"""Exporting trained networks: the composite characterize model and per-network SavedModels.

From training runs (``<runs>/<network>/``, :mod:`hagg_tf.training`) or from the weights of a
composite export. Used by ``hagg-export-models`` (:mod:`hagg_tf.cli.export_models`). A model card
(what the networks were trained on, for how long, and, with ``evaluate_dataset``, their measured
accuracy) goes into the composite's ``hagg_tf_export.json``; ``hagg-characterize`` prints it.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional

# The five networks, in the composite's order (re-exported: the registry's NETWORK_NAMES).
from hagg_tf.data.network_specs import (MULTI_IMAGE_NETWORKS, NETWORK_NAMES,
                                        inverse_intensity_networks)
from hagg_tf.jsonsafe import json_safe
from hagg_tf.model.io import write_json_atomic
from hagg_tf.training.trainer import SUMMARY


def _training_card(runs: pathlib.Path) -> tuple[dict, Optional[float]]:
    """Per network: what it was trained on and for how long (from training.json)."""
    card, pixel_sizes = {}, set()
    for name in NETWORK_NAMES:
        path = runs / name / SUMMARY
        info = json.loads(path.read_text()) if path.is_file() else {}
        pixel_sizes.add(info.get("pixel_size_nm"))
        card[name] = {key: info.get(key) for key in (
            "dataset", "architecture", "image_size", "pixel_size_nm", "num_images",
            "batch_size", "learning_rate", "final_epoch", "steps_per_epoch", "images_seen",
            "monitor", "best", "wall_s_last_call", "wall_s_total",
            "images_per_second_last_call", "status", "train_records", "seed", "command",
            "hardware", "batch_norm")}
    pixel_sizes.discard(None)
    if len(pixel_sizes) > 1:
        raise ValueError(f"the runs were trained at different pixel sizes {sorted(pixel_sizes)}")
    return card, (pixel_sizes.pop() if pixel_sizes else None)


#: Training log written beside the composite's SavedModel.
TRAINING_LOG = "TRAINING.md"


def training_log_markdown(runs) -> str:
    """A markdown table of the five runs: command, seed, wall time, hardware, final losses.

    Args:
        runs: directory with ``<network>/training.json`` and ``<network>/history.csv``.
    """
    from hagg_tf.training import read_history

    runs = pathlib.Path(runs)
    lines = ["# Training log of the shipped networks", "",
             "Generated from each run's `training.json` and `history.csv` by "
             "`hagg-export-models --runs=...`.", "",
             "| network | architecture | epochs | images seen | wall | best epoch | "
             "best validation loss | final validation loss / metric | seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    details = []
    for name in NETWORK_NAMES:
        path = runs / name / SUMMARY
        if not path.is_file():
            lines.append(f"| {name} | (no training.json) | | | | | | | |")
            continue
        info = json.loads(path.read_text())
        rows = read_history(runs / name)
        last = rows[-1] if rows else {}
        monitor = info.get("monitor", "val_loss")
        metric = next((key for key in ("val_mae", "val_accuracy", "mae", "accuracy")
                       if key in last), None)
        best = info.get("best") or {}
        wall = info.get("wall_s_total") or info.get("wall_s_last_call")
        final = (f"{last[monitor]:.5f}" if monitor in last else "–") + (
            f" / {metric} {last[metric]:.4f}" if metric else "")
        best_value = best.get(monitor)
        lines.append(
            f"| {name} | {info.get('architecture', 'table3')} | {info.get('final_epoch')} | "
            f"{info.get('images_seen')} | {'–' if wall is None else f'{wall / 60:.1f} min'} | "
            f"{best.get('epoch', '–')} | "
            f"{'–' if best_value is None else f'{best_value:.5f}'} | {final} | "
            f"{info.get('seed')} |")
        details += [f"## {name}", "",
                    f"- command: `{info.get('command', '(not recorded)')}`",
                    f"- hardware: {info.get('hardware', '(not recorded)')}",
                    f"- batch size {info.get('batch_size')}, learning rate "
                    f"{info.get('learning_rate')}, loss {info.get('loss')}, monitor {monitor}, "
                    f"patience {info.get('patience')}, status {info.get('status')}",
                    f"- input: {info.get('input', 'TFRecord pipeline')}; batch norm: "
                    f"{info.get('batch_norm', 'Keras moving averages')}; TensorFlow "
                    f"{info.get('tensorflow')}, Keras {info.get('keras')}",
                    *([f"- note: {info['history_note']}"] if info.get("history_note") else []),
                    *([f"- f initialised from: `{info['init_from']}`"]
                      if info.get("init_from") else []), "",
                    "| epoch | " + " | ".join(key for key in rows[0] if key != "epoch") + " |"
                    if rows else "(no history)",
                    "|---" * len(rows[0]) + "|" if rows else ""]
        for row in rows:
            details.append(f"| {int(row['epoch']) + 1} | " + " | ".join(
                f"{value:.5f}" for key, value in row.items() if key != "epoch") + " |")
        details.append("")
    return "\n".join(lines + [""] + details)


def export_from_runs(runs, output, *, version: int = 1, kernel_dtype: str = "float16",
                     evaluate_dataset=None, placeholder: bool = False, overwrite: bool = False,
                     which: str = "best", per_network: bool = False,
                     composite: bool = True, litert: bool = False,
                     test_time_symmetries: int = 1) -> dict:
    """Exports the five networks of ``runs/<network>/`` (see the module docstring).

    Args:
        litert: also write the composite's LiteRT conversion beside it
            (:func:`hagg_tf.export.litert.write_litert_model`, checked against the SavedModel;
            needs ``ai-edge-litert``), which ``hagg-characterize`` runs without TensorFlow.
        test_time_symmetries: 1, or 8: the composite averages every per-image pass over the
            square's 8 symmetries (:class:`~hagg_tf.export.characterize.CharacterizeModule`).

    Returns:
        ``{"composite": version dir, "litert": .tflite path (with ``litert``), "<network>":
        version dir, "model_card": dict}``.
    """
    from hagg_tf.training import load_trained_network

    runs = pathlib.Path(runs)
    models = {name: load_trained_network(runs / name, which) for name in NETWORK_NAMES}
    training, pixel_size = _training_card(runs)
    written = _export(models, output, version, kernel_dtype, pixel_size, training,
                      evaluate_dataset, placeholder, overwrite, per_network, composite, litert,
                      test_time_symmetries=test_time_symmetries)
    if composite:
        (written["composite"] / TRAINING_LOG).write_text(training_log_markdown(runs))
    return written


def _export(models, output, version, kernel_dtype, pixel_size, training, evaluate_dataset,
            placeholder, overwrite, per_network, composite, litert=False,
            inverse_intensity_networks=None, card_extra=None, sample_heads=None,
            test_time_symmetries=1) -> dict:
    from hagg_tf.estimation.model import CharacterizeModel, METADATA_FILENAME
    from hagg_tf.export import export_network
    from hagg_tf.export.characterize import export_characterize_model

    written = {}
    card = {"status": "placeholder" if placeholder else "trained", "training": training,
            **(card_extra or {})}
    if training:
        epochs = [info.get("final_epoch") for info in training.values()]
        images = sum(info.get("images_seen") or 0 for info in training.values())
        seconds = sum(info.get("wall_s_total") or info.get("wall_s_last_call") or 0
                      for info in training.values())
        datasets = sorted({str(info.get("dataset")) for info in training.values()})
        architectures = sorted({str(info.get("architecture") or "table3")
                                for info in training.values()})
        card["summary"] = (f"{'/'.join(architectures)} architecture, trained for "
                           f"{'/'.join(map(str, epochs))} epochs ({images} image passes, "
                           f"{seconds / 60:.0f} min in all) on {', '.join(datasets)}"
                           + (" (placeholder networks, not the paper-scale training)"
                              if placeholder else ""))
    if composite:
        version_dir = export_characterize_model(models, output, version,
                                                kernel_dtype=kernel_dtype,
                                                pixel_size_nm=pixel_size, model_card=card,
                                                inverse_intensity_networks=(
                                                    inverse_intensity_networks),
                                                sample_heads=sample_heads,
                                                test_time_symmetries=test_time_symmetries,
                                                overwrite=overwrite)
        written["composite"] = version_dir
        if evaluate_dataset:
            from hagg_tf.training.evaluate import accuracy_summary, evaluate_composite

            metrics = evaluate_composite(CharacterizeModel(version_dir), evaluate_dataset)
            card["accuracy"] = metrics
            card["accuracy_summary"] = accuracy_summary(metrics)
            metadata_path = version_dir / METADATA_FILENAME
            metadata = json.loads(metadata_path.read_text())
            metadata["model_card"] = card
            write_json_atomic(metadata_path, metadata, ensure_ascii=False)
        if litert:  # after the model card: the conversion is tied to the SavedModel's graph
            from hagg_tf.export.litert import write_litert_model

            written["litert"] = write_litert_model(version_dir)
    if per_network:
        for name, model in models.items():
            written[name] = export_network(model, output, version, overwrite=overwrite)
    written["model_card"] = card
    return written


def networks_from_composite(source=None) -> tuple[dict, dict]:
    """The five Keras networks rebuilt from a composite export, and the export's metadata.

    Args:
        source: export base, model or version directory; None: the default (shipped) models.

    Returns:
        ``({network name: keras.Model}, metadata)``.
    """
    from hagg_tf import networks
    from hagg_tf.estimation.model import find_model
    from hagg_tf.export.characterize import load_network_weights, set_network_weights

    version_dir, metadata = find_model(source)
    weights = load_network_weights(version_dir)
    models = {}
    for name in NETWORK_NAMES:
        model = networks.build_network(
            name, int(metadata["image_size"]), int(metadata["num_images"]),
            architecture=metadata.get("architecture", networks.DEFAULT_ARCHITECTURE))
        set_network_weights(model, weights[name])
        models[name] = model
    return models, metadata


def export_from_composite(source, output, *, version: int = 1, overwrite: bool = False,
                          per_network: bool = True, composite: bool = False,
                          kernel_dtype: str = "float16", litert: bool = False,
                          evaluate_dataset=None, sample_heads_cache=None,
                          sample_head_epochs: int = 120, stack_heads_cache=None,
                          stack_head_epochs: int = 60, seed: int = 0,
                          test_time_symmetries: Optional[int] = None) -> dict:
    """Rebuilds the Keras networks from a composite export and exports them again.

    The composite keeps the source's ``TRAINING.md`` (with the records of any refit appended)
    and its ``training_domain.json``: the networks' training images are the same.

    Args:
        source: export base, model or version directory of the composite.
        output, version, overwrite, per_network, composite, kernel_dtype, litert,
            evaluate_dataset: as for :func:`export_from_runs`.
        sample_heads_cache: None: keep the source's sample heads (if any). Else the pooled cache
            (``hagg-train-backbone --pooled_cache``) of the database the networks were trained
            on: new sample heads of θ̂_Df and θ̂_ρ are fitted on the rebuilt networks' per-image
            outputs (:func:`hagg_tf.training.multitask.fit_backbone_sample_heads`; the networks
            must share one f, as a shared-backbone export does) and recorded in the model card
            and in ``TRAINING.md``.
        sample_head_epochs: of that fit.
        stack_heads_cache: None: keep the ν-image heads of CNN^0 and CNN^1. Else a pooled cache
            as for ``sample_heads_cache``: their heads g are fitted again on the networks'
            frozen f (:func:`hagg_tf.training.multitask.fit_backbone_stack_heads`) and
            recorded likewise.
        stack_head_epochs: of that fit.
        seed: of both fits.
        test_time_symmetries: as for :func:`export_from_runs`; None: the source's.

    Returns:
        As :func:`export_from_runs`.

    Raises:
        ValueError: ``sample_heads_cache`` or ``stack_heads_cache`` is not a pooled cache, or
            the networks do not share one f.
    """
    from hagg_tf.estimation.domain import load_training_domain, write_training_domain
    from hagg_tf.estimation.model import averaged_symmetries, export_sample_heads, find_model

    models, metadata = networks_from_composite(source)
    source_dir = find_model(source)[0]
    # The training domain describes the images the networks were trained on, which a rebuild
    # does not change. Read before anything is written: an unreadable file fails the export.
    domain = load_training_domain(source_dir) if composite else None
    card = dict(metadata.get("model_card") or {})
    training = dict(card.get("training") or {})
    # The source's measured accuracy holds only for the same networks and estimators.
    if test_time_symmetries is None:
        test_time_symmetries = averaged_symmetries(metadata)
    stale = ("summary", "accuracy", "accuracy_summary") if (
        sample_heads_cache is not None or stack_heads_cache is not None
        or test_time_symmetries != averaged_symmetries(metadata) or evaluate_dataset) else ()
    log_lines = []
    if stack_heads_cache is not None:
        record = _refit_composite_stack_heads(models, metadata, stack_heads_cache,
                                              stack_head_epochs, seed)
        record["how"] += (f"; refitted on the networks of {source} and the pooled cache "
                          f"{stack_heads_cache}")
        training = {key: {**info, "stack_heads": record} for key, info in training.items()}
        log_lines += _stack_heads_markdown(record)
    if sample_heads_cache is None:
        sample_heads = export_sample_heads(source_dir, metadata)
    else:
        sample_heads, record = _fit_composite_sample_heads(
            models, metadata, sample_heads_cache, sample_head_epochs, seed)
        record["how"] = (f"fit_backbone_sample_heads on the networks of {source} and the "
                         f"pooled cache {sample_heads_cache}")
        training = {key: {**info, "sample_heads": record} for key, info in training.items()}
        log_lines += _sample_heads_markdown(record)
    written = _export(models, output, version, kernel_dtype, metadata.get("pixel_size_nm"),
                      training, evaluate_dataset, card.get("status") == "placeholder",
                      overwrite, per_network, composite, litert,
                      sorted(inverse_intensity_networks(metadata)),
                      {key: value for key, value in card.items()
                       if key not in ("status", "training") + stale},
                      sample_heads=sample_heads, test_time_symmetries=test_time_symmetries)
    if composite and (source_dir / TRAINING_LOG).is_file():
        text = (source_dir / TRAINING_LOG).read_text()
        if log_lines:
            text = text.rstrip("\n") + "\n\n" + "\n".join(log_lines) + "\n"
        (written["composite"] / TRAINING_LOG).write_text(text)
    if domain is not None:
        write_training_domain(domain, written["composite"])
    return written


#: The source's training log, copied into a run rebuilt by :func:`backbone_run_from_composite`.
SOURCE_TRAINING_LOG = "SOURCE_TRAINING.md"


def backbone_run_from_composite(source, run_dir, pooled_cache, *, auxiliary_epochs: int = 30,
                                seed: int = 0) -> pathlib.Path:
    """A backbone run directory holding a composite export's f and heads, to train further from.

    For :attr:`hagg_tf.training.multitask.BackboneConfig.initial_weights` when the run that made
    the export is gone (or was never here: the shipped models): writes ``calibrated.keras``
    (f and the single-image heads exactly as exported; the per-image θ_0/θ_1 heads, which an
    export does not keep, fitted on the frozen f by
    :func:`~hagg_tf.training.multitask.fit_auxiliary_heads`), a ``training.json`` of status
    :data:`~hagg_tf.training.multitask.REBUILT_STATUS` with the source's training record, and
    the source's ``TRAINING.md`` as :data:`SOURCE_TRAINING_LOG`, so that the next stage's
    training log and model card count the source's stages. A directory already rebuilt from the
    same source is returned as it is.

    Args:
        source: export base, model or version directory of a shared-backbone composite.
        run_dir: directory to write (created).
        pooled_cache: pooled cache of the database to fit the auxiliary heads on.
        auxiliary_epochs, seed: of that fit.

    Returns:
        ``run_dir`` as a path.

    Raises:
        FileNotFoundError: no export at ``source``.
        ValueError: ``run_dir`` was rebuilt from another export, ``pooled_cache`` has no train
            and validation split, or the networks do not share one f.
    """
    import shutil

    from hagg_tf.estimation.model import find_model
    from hagg_tf.networks import DEFAULT_ARCHITECTURE
    from hagg_tf.training.multitask import (CALIBRATED_MODEL, REBUILT_STATUS,
                                            backbone_from_networks, fit_auxiliary_heads,
                                            save_backbone)

    run_dir = pathlib.Path(run_dir)
    source_dir, metadata = find_model(source)
    if (run_dir / SUMMARY).is_file():
        info = json.loads((run_dir / SUMMARY).read_text())
        if info.get("status") != REBUILT_STATUS or info.get("source_export") != str(source_dir):
            raise ValueError(f"{run_dir} holds another run ({run_dir / SUMMARY}); use another "
                             "directory")
        if (run_dir / CALIBRATED_MODEL).is_file():
            return run_dir
    _require_train_and_validation(pooled_cache)
    models, metadata = networks_from_composite(source_dir)
    model = backbone_from_networks(models, metadata.get("architecture", DEFAULT_ARCHITECTURE),
                                   int(metadata["image_size"]))
    auxiliary = fit_auxiliary_heads(model, pooled_cache, epochs=auxiliary_epochs, seed=seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (source_dir / TRAINING_LOG).is_file():
        shutil.copyfile(source_dir / TRAINING_LOG, run_dir / SOURCE_TRAINING_LOG)
    source_training = ((metadata.get("model_card") or {}).get("training") or {}).get(
        "shared_backbone") or {}
    save_backbone(model, run_dir / CALIBRATED_MODEL)
    write_json_atomic(run_dir / SUMMARY, {
        "status": REBUILT_STATUS, "source_export": str(source_dir),
        "source_training": source_training,
        "auxiliary_heads": {"epochs": int(auxiliary_epochs), "seed": int(seed),
                            "pooled_cache": str(pooled_cache),
                            "validation_mae_per_image": auxiliary},
        "note": (f"Rebuilt from the export `{source_dir}`: f and the single-image heads as "
                 "exported; the per-image θ_0/θ_1 auxiliary heads, which an export does not "
                 f"keep, fitted for {auxiliary_epochs} epochs on the frozen f of "
                 f"`{pooled_cache}` (per-image validation MAE "
                 + ", ".join(f"{name} {value:.3f}" for name, value in auxiliary.items())
                 + ").")})
    return run_dir


#: Sub-directory of a run that holds the export it started from, rebuilt
#: (:func:`train_shared_networks_from`).
REBUILT_START = "initial_weights_from_export"


def train_shared_networks_from(config, dataset=None, *, source_export=None, workers: int = 2,
                               verbose: int = 2) -> dict:
    """:func:`hagg_tf.training.multitask.train_shared_networks`, optionally starting from a
    composite export instead of a run directory.

    Args:
        config: the run (:class:`~hagg_tf.training.multitask.BackboneConfig`). With
            ``source_export``, its ``initial_weights`` is where the export is rebuilt
            (:func:`backbone_run_from_composite`), once: a rerun resumes.
        dataset, workers, verbose: as for ``train_shared_networks``.
        source_export: export base, model or version directory of a shared-backbone composite
            (the shipped models, for instance) whose networks start the run; None: start as
            ``config`` says.

    Returns:
        The run's ``training.json``.
    """
    from hagg_tf.data.pooled import build_pooled_cache
    from hagg_tf.networks.architecture import get_architecture
    from hagg_tf.training.multitask import train_shared_networks

    if source_export is not None:
        if config.initial_weights is None:
            raise ValueError("starting from an export needs config.initial_weights, the "
                             "directory to rebuild it in")
        if dataset is not None:  # the auxiliary heads are fitted on the pooled cache
            build_pooled_cache(dataset, config.pooled_cache,
                               get_architecture(config.architecture).input_pooling,
                               workers=workers, progress=verbose > 0)
        backbone_run_from_composite(source_export, config.initial_weights, config.pooled_cache,
                                    seed=config.seed)
    return train_shared_networks(config, dataset, workers=workers, verbose=verbose)


def _require_train_and_validation(pooled_cache) -> None:
    """Raises ValueError unless ``pooled_cache`` holds the train and validation splits."""
    from hagg_tf.data.pooled import caches_split

    missing = [split for split in ("train", "validation") if not caches_split(pooled_cache, split)]
    if missing:
        raise ValueError(f"{pooled_cache}: no pooled cache of the {' and '.join(missing)} "
                         "split (hagg-train-backbone --pooled_cache builds it)")


def _fit_composite_sample_heads(models, metadata, pooled_cache, epochs, seed):
    from hagg_tf.networks import DEFAULT_ARCHITECTURE
    from hagg_tf.training.multitask import backbone_from_networks, fit_backbone_sample_heads

    _require_train_and_validation(pooled_cache)
    model = backbone_from_networks(models, metadata.get("architecture", DEFAULT_ARCHITECTURE),
                                   int(metadata["image_size"]))
    return fit_backbone_sample_heads(model, pooled_cache, epochs=epochs, seed=seed)


def _refit_composite_stack_heads(models, metadata, pooled_cache, epochs, seed) -> dict:
    """Fits the ν-image heads of ``models`` again on their shared f and sets them in place;
    returns the record ``training.json`` keeps of such a fit."""
    import time

    from hagg_tf.networks import DEFAULT_ARCHITECTURE
    from hagg_tf.networks.architecture import get_head
    from hagg_tf.training.multitask import (STACK_HEADS_HOW, backbone_from_networks,
                                            fit_backbone_stack_heads)

    _require_train_and_validation(pooled_cache)
    started = time.perf_counter()
    model = backbone_from_networks(models, metadata.get("architecture", DEFAULT_ARCHITECTURE),
                                   int(metadata["image_size"]))
    weights, report = fit_backbone_stack_heads(model, pooled_cache,
                                               num_images=int(metadata["num_images"]),
                                               epochs=epochs, seed=seed)
    for name in MULTI_IMAGE_NETWORKS:
        head = get_head(models[name])
        head.set_weights([weights[f"{name}/{index}"]
                          for index in range(len(head.get_weights()))])
    # json_safe: a validation split without a ν-group gives an MAE of inf (recorded as None).
    return json_safe({"validation_mae": report, "epochs": int(epochs),
                      "seconds": round(time.perf_counter() - started, 1),
                      "how": STACK_HEADS_HOW})


def _stack_heads_markdown(record: dict) -> list[str]:
    from hagg_tf.training.group_heads import VALIDATION_DRAWS

    return [f"- ν-image heads of CNN^0 and CNN^1 fitted again: {record.get('epochs')} epochs "
            f"each, {record.get('seconds')} s; validation MAE (the mean over the ν rotations of "
            f"every stack, {VALIDATION_DRAWS} draws of groups) "
            + ", ".join(f"{name} " + ("n/a" if value is None else f"{value:.3f}")
                        for name, value in (record.get("validation_mae") or {}).items())
            + (f"; {record['how']}" if record.get("how") else "")]


def _sample_heads_markdown(record: dict) -> list[str]:
    from hagg_tf.data.sample_heads import GROUP_SIZE_RANGE
    from hagg_tf.training.sample_heads import VALIDATION_GROUP_SIZES

    return [f"- sample heads of θ̂_Df and θ̂_ρ (`hagg_tf.data.sample_heads`): "
            f"{record.get('epochs')} epochs each on groups of "
            f"{GROUP_SIZE_RANGE[0]}–{GROUP_SIZE_RANGE[1]} images, {record.get('seconds')} s; "
            f"validation MAE (groups of {', '.join(map(str, VALIDATION_GROUP_SIZES))} images) "
            + ", ".join(f"{name} " + ("n/a" if value is None else f"{value:.4f}")
                        for name, value in (record.get("validation_mae") or {}).items())
            + (f"; {record['how']}" if record.get("how") else "")]


def backbone_training_log_markdown(run) -> str:
    """The training log of a shared-backbone run: its settings, per-epoch losses and the
    ν-image heads (:mod:`hagg_tf.training.multitask`), one section per stage when the run
    started from another's weights (:func:`~hagg_tf.training.multitask.backbone_stages`).

    Args:
        run: the run directory (``training.json``, ``history.csv``).
    """
    from hagg_tf.training.multitask import backbone_stages

    stages = backbone_stages(run)
    # A stage rebuilt from an export stands for the export's stages.
    counts = [len(_rebuilt_source(stage).get("epochs_per_stage") or [None]) for stage in stages]
    total = sum(counts)
    lines = ["# Training log of the shipped networks", "",
             "One feature extractor f shared by the five networks, trained on every per-image "
             "task at once, then the ν-image heads of CNN^0 and CNN^1 on the frozen f "
             "(`hagg_tf.training.multitask`). Generated from the run's `training.json` and "
             "`history.csv` by `hagg-export-models --backbone=...`.", ""]
    last = 0
    for stage, count in zip(stages, counts):
        first, last = last + 1, last + count
        if total > 1:
            started = "" if first == 1 else f", started from stage {first - 1}'s weights"
            numbers = f"Stage {first}" if count == 1 else f"Stages {first}–{last}"
            lines += [f"## {numbers} of {total}: `{stage}`{started}", ""]
        lines += _backbone_stage_markdown(stage)
    return "\n".join(lines) + "\n"


def _rebuilt_source(run: pathlib.Path) -> dict:
    """The source export's training record of a run rebuilt from it, ``{}`` for other runs."""
    from hagg_tf.training.multitask import REBUILT_STATUS

    path = pathlib.Path(run) / SUMMARY
    info = json.loads(path.read_text()) if path.is_file() else {}
    return (info.get("source_training") or {}) if info.get("status") == REBUILT_STATUS else {}


def _backbone_stage_markdown(run: pathlib.Path) -> list[str]:
    from hagg_tf.training.multitask import REBUILT_STATUS, read_backbone_history

    if not (run / SUMMARY).is_file():
        return [f"No `training.json` in `{run}`: its settings and history are not known.", ""]
    info = json.loads((run / SUMMARY).read_text())
    if info.get("status") == REBUILT_STATUS:
        return _rebuilt_stage_markdown(run, info)
    config = info.get("config", {})
    rows = read_backbone_history(run)
    columns = [key for key in (rows[0] if rows else {}) if key != "epoch"]
    heads = info.get("stack_heads") or {}
    sample_heads = info.get("sample_heads")
    calibration = info.get("calibration") or {}
    lines = ([f"{info['note']}", ""] if info.get("note") else []) + [
             f"- pooled cache: `{config.get('pooled_cache')}`; architecture "
             f"`{config.get('architecture')}`; {info.get('parameters')} parameters in the "
             "backbone model",
             f"- {info.get('train_records')} training and {info.get('validation_records')} "
             "validation images; batch size "
             f"{config.get('batch_size')}; Adam, peak learning rate {config.get('learning_rate')} "
             f"with cosine decay over {config.get('epochs')} epochs; seed {config.get('seed')}",
             f"- loss weights: {info.get('loss_weights')}",
             f"- status {info.get('status')}, {info.get('epochs_done')} epochs, "
             f"{(info.get('wall_s_total') or 0) / 60:.1f} min wall in all; hardware: "
             f"{info.get('hardware')}",
             "- batch-norm re-estimation of the final model from "
             f"{calibration.get('batches')} training batches, per-image validation "
             "metrics before → after: " + ", ".join(
                 f"{key} {before:.3f} → {(calibration.get('after') or {}).get(key, 0):.3f}"
                 for key, before in (calibration.get("before") or {}).items()),
             f"- ν-image heads: {heads.get('epochs')} epochs each, validation MAE "
             + ", ".join(f"{name} " + ("n/a" if value is None else f"{value:.3f}")
                         for name, value in (heads.get("validation_mae") or {}).items())] + (
             _sample_heads_markdown({**sample_heads, "how": None})
             if sample_heads else []) + ["",
             "| epoch | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {int(row['epoch']) + 1} | " + " | ".join(f"{row[key]:.4f}" for key in columns)
              + " |" for row in rows]
    return lines + [""]


def _rebuilt_stage_markdown(run: pathlib.Path, info: dict) -> list[str]:
    """A stage rebuilt from an export: its note, then the source's own log, one heading level
    down (its title and introduction left out)."""
    lines = [info.get("note") or f"Rebuilt from `{info.get('source_export')}`.", ""]
    path = run / SOURCE_TRAINING_LOG
    if not path.is_file():
        return lines + ["The source export has no training log.", ""]
    source = path.read_text().splitlines()
    body = next((index for index, line in enumerate(source)
                 if line.startswith("## ") or line.startswith("- ")), len(source))
    return lines + [f"#{line}" if line.startswith("#") else line
                    for line in source[body:]] + [""]


def backbone_training_record(run, dataset=None) -> dict:
    """The model card's ``training`` entry of a shared-backbone run: epochs, image passes and
    wall time summed over its stages (:func:`~hagg_tf.training.multitask.backbone_stages`
    whose ``training.json`` is known), the last stage's status and ν-image heads.

    Args:
        run: the (last stage's) run directory.
        dataset: the database it was trained on, recorded as given.
    """
    from hagg_tf.training.multitask import backbone_stages

    run = pathlib.Path(run)
    info = json.loads((run / SUMMARY).read_text())
    runs = backbone_stages(run)
    known = [stage for stage in runs if (stage / SUMMARY).is_file()]
    # A stage rebuilt from an export stands for the export's own stages (its model card).
    epochs, images, walls = [], 0, 0.0
    for path in known:
        stage, source = json.loads((path / SUMMARY).read_text()), _rebuilt_source(path)
        if source:
            epochs += list(source.get("epochs_per_stage") or [])
            images += source.get("images_seen") or 0
            walls += source.get("wall_s_total") or 0.0
        else:
            epochs.append(stage.get("epochs_done"))
            images += (stage.get("epochs_done") or 0) * (stage.get("train_records") or 0)
            walls += stage.get("wall_s_total") or 0.0
    return {"shared_backbone": {
        "dataset": None if dataset is None else str(dataset),
        "architecture": info["config"]["architecture"],
        # Totals over the stages whose training.json is known.
        "final_epoch": sum(epoch or 0 for epoch in epochs),
        "epochs_per_stage": epochs,
        "stages": len(epochs) + len(runs) - len(known),
        "images_seen": images,
        "wall_s_total": round(walls, 1),
        "status": info.get("status"), "hardware": info.get("hardware"),
        "stack_heads": info.get("stack_heads"), "sample_heads": info.get("sample_heads")}}


def export_from_backbone(run, output, *, dataset=None, version: int = 1,
                         kernel_dtype: str = "float32", evaluate_dataset=None,
                         overwrite: bool = False, per_network: bool = False,
                         composite: bool = True, litert: bool = False,
                         test_time_symmetries: int = 1) -> dict:
    """Exports the five networks of a shared-backbone run as a composite characterize model.

    Every network holds a copy of the shared f; all five take the plain preprocessing (none
    the 1/p images), which the export records per network. ``TRAINING.md`` is written beside it.

    Args:
        run: run directory of :func:`hagg_tf.training.multitask.train_backbone` whose ν-image
            heads are trained (:func:`~hagg_tf.training.multitask.train_stack_heads`).
        output: export base (``<output>/characterize/<version>``).
        dataset: the database the run was trained on (pixel size and the model card).
        version, kernel_dtype, evaluate_dataset, overwrite, per_network, composite, litert,
            test_time_symmetries: as for :func:`export_from_runs`.

    Returns:
        As :func:`export_from_runs`.
    """
    from hagg_tf.data import load_manifest
    from hagg_tf.training.multitask import load_sample_heads, networks_from_backbone
    from hagg_tf.training.trainer import pixel_size_of

    run = pathlib.Path(run)
    info = json.loads((run / SUMMARY).read_text())
    config = info["config"]
    models = networks_from_backbone(run, int(config["image_size"]), int(config["num_images"]),
                                    config["architecture"])
    pixel_size = pixel_size_of(load_manifest(dataset)) if dataset is not None else None
    training = backbone_training_record(run, dataset)
    written = _export(models, output, version, kernel_dtype, pixel_size, training,
                      evaluate_dataset, False, overwrite, per_network, composite, litert,
                      inverse_intensity_networks=[], sample_heads=load_sample_heads(run),
                      test_time_symmetries=test_time_symmetries)
    if composite:
        (written["composite"] / TRAINING_LOG).write_text(backbone_training_log_markdown(run))
    return written
