"""Exporting trained networks: the composite characterize model and per-network SavedModels.

Used by ``hagg-export-models`` (:mod:`hagg_tf.cli.export_models`) and by
``examples/make_placeholder_models.py``. A model card (what the networks were trained on, for how
long, and, with ``evaluate_dataset``, their measured accuracy) goes into the composite's
``hagg_tf_export.json``; ``hagg-characterize`` prints it.
"""
from __future__ import annotations

import json
import pathlib
from typing import Optional

#: The five networks, in the composite's order.
NETWORK_NAMES = ("fractal_dimension", "mixing_ratio_regressor", "mixing_ratio_classifier",
                 "wo3_cluster_size", "tio2_cluster_size")


def _training_card(runs: pathlib.Path) -> tuple[dict, Optional[float]]:
    """Per network: what it was trained on and for how long (from training.json)."""
    card, pixel_sizes = {}, set()
    for name in NETWORK_NAMES:
        path = runs / name / "training.json"
        info = json.loads(path.read_text()) if path.is_file() else {}
        pixel_sizes.add(info.get("pixel_size_nm"))
        card[name] = {key: info.get(key) for key in (
            "dataset", "image_size", "pixel_size_nm", "num_images", "batch_size",
            "learning_rate", "final_epoch", "steps_per_epoch", "images_seen", "monitor",
            "best", "wall_s_last_call", "images_per_second_last_call", "status",
            "train_records")}
    pixel_sizes.discard(None)
    if len(pixel_sizes) > 1:
        raise ValueError(f"the runs were trained at different pixel sizes {sorted(pixel_sizes)}")
    return card, (pixel_sizes.pop() if pixel_sizes else None)


def export_from_runs(runs, output, *, version: int = 1, kernel_dtype: str = "float16",
                     evaluate_dataset=None, placeholder: bool = False, overwrite: bool = False,
                     which: str = "best", per_network: bool = False,
                     composite: bool = True) -> dict:
    """Exports the five networks of ``runs/<network>/`` (see the module docstring).

    Returns:
        ``{"composite": version dir, "<network>": version dir, "model_card": dict}``.
    """
    from hagg_tf.training.trainer import load_trained_network

    runs = pathlib.Path(runs)
    models = {name: load_trained_network(runs / name, which) for name in NETWORK_NAMES}
    training, pixel_size = _training_card(runs)
    return _export(models, output, version, kernel_dtype, pixel_size, training,
                   evaluate_dataset, placeholder, overwrite, per_network, composite)


def _export(models, output, version, kernel_dtype, pixel_size, training, evaluate_dataset,
            placeholder, overwrite, per_network, composite) -> dict:
    from hagg_tf.estimation.model import CharacterizeModel, METADATA_FILENAME
    from hagg_tf.export import export_network
    from hagg_tf.export.characterize import export_characterize_model

    written = {}
    card = {"status": "placeholder" if placeholder else "trained", "training": training}
    if placeholder:
        epochs = sorted({info.get("final_epoch") for info in training.values()
                         if info.get("final_epoch") is not None})
        images = sum(info.get("images_seen") or 0 for info in training.values())
        seconds = sum(info.get("wall_s_last_call") or 0 for info in training.values())
        datasets = sorted({str(info.get("dataset")) for info in training.values()})
        card["summary"] = (f"trained on CPU for {'/'.join(map(str, epochs))} epochs "
                           f"({images} image passes, {seconds / 60:.0f} min in all) on the small "
                           f"database {', '.join(datasets)} made by "
                           "examples/make_placeholder_models.py, not the paper's 32 400 images")
    if composite:
        version_dir = export_characterize_model(models, output, version,
                                                kernel_dtype=kernel_dtype,
                                                pixel_size_nm=pixel_size, model_card=card,
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
            metadata_path.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")
    if per_network:
        for name, model in models.items():
            written[name] = export_network(model, output, version, overwrite=overwrite)
    written["model_card"] = card
    return written


def export_from_composite(source, output, *, version: int = 1, overwrite: bool = False,
                          per_network: bool = True, composite: bool = False,
                          kernel_dtype: str = "float16") -> dict:
    """Rebuilds the Keras networks from a composite export and exports them again."""
    from hagg_tf import networks
    from hagg_tf.estimation.model import find_model
    from hagg_tf.export.characterize import load_network_weights, set_network_weights

    version_dir, metadata = find_model(source)
    weights = load_network_weights(version_dir)
    models = {}
    for name in NETWORK_NAMES:
        model = networks.build_network(name, int(metadata["image_size"]),
                                       int(metadata["num_images"]))
        set_network_weights(model, weights[name])
        models[name] = model
    card = dict(metadata.get("model_card") or {})
    written = _export(models, output, version, kernel_dtype, metadata.get("pixel_size_nm"),
                      card.get("training", {}), None, card.get("status") == "placeholder",
                      overwrite, per_network, composite)
    return written
