"""One shared feature extractor f for all five networks, trained on every per-image task at once.

The paper trains five networks with five feature extractors (Sec. 2.3.2–2.3.5). On 2 CPU cores
that leaves each one a fifth of the budget, and CNN^1, trained alone on inverse-intensity images,
learned a constant (docs/learning.md). This module trains **one** f on pooled images with five
per-image heads g (dense 44 + dense 1 + the network's output activation, Table 3 layers 18–19):

* CNN^Df: D_f(A) of the imaged aggregate, MSE (Eq. 12);
* CNN^ρ_reg: ρ(A), MSE;
* CNN^ρ_class: ρ(A) ∈ {0, 1}, binary cross-entropy;
* auxiliary θ_0 and θ_1: the sample's primary cluster sizes, regressed from one image (MSE).
  They make f carry what the ν-image heads need; their per-image outputs are not used.

The multi-image networks CNN^0 and CNN^1 then get their ν-image head (Eq. 15: the ν feature
vectors concatenated, dense 44, dense 1, ReLU) trained on the *frozen* features f(I) of the
training images (:func:`train_stack_heads`): f runs once per image, so the heads see tens of
thousands of random ν-subsets per second.

Every image enters as the plain preprocessing (scaling to [-0.5, 0.5], 256 levels) after the
detector's dark level is subtracted, CNN^1's included: the paper's 1/p transform needs a zero
background and breaks on a carbon film or a dark offset (README, "Robustness"), while a network
trained on the realistic database learns the TiO2 contrast from the plain image.

θ̂_Df and θ̂_ρ then get their *sample heads* (:mod:`hagg_tf.data.sample_heads`), small dense
networks on summaries of the per-image outputs of a group of images, fitted on the frozen
network outputs of the training images (:func:`train_sample_heads`); they replace the plain
means of Eqs. 13–14, which keep every per-image output's pull towards the middle of the range.

:func:`networks_from_backbone` turns the trained backbone and heads into the five ordinary Keras
networks of :func:`hagg_tf.networks.build_network` (each holding a copy of f), which
:func:`hagg_tf.export.characterize.export_characterize_model` exports unchanged.

Runs are resumable: ``BackupAndRestore`` at every epoch end, the history in ``history.csv``; a
rerun of the same :class:`BackboneConfig` continues, a finished one returns at once.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Optional, Union

import numpy as np

from hagg_tf.data.network_specs import (DEFAULT_NUM_IMAGES, MULTI_IMAGE_NETWORKS, NETWORK_NAMES,
                                        SINGLE_IMAGE_NETWORKS, network_spec)
from hagg_tf.data.sample_heads import SAMPLE_HEADS_FILE, SampleHeads
from hagg_tf.jsonsafe import json_safe
from hagg_tf.model.io import write_json_atomic
from hagg_tf.tensorflow_import import import_tensorflow_quietly
from hagg_tf.training.trainer import (BACKUP, BEST_MODEL, HISTORY, LAST_MODEL, SUMMARY,
                                      TrainingError, backup_callback, hardware_description)

#: Weight of every task's loss in the backbone's total loss. The regressors' MSEs are scaled up
#: by about the inverse variance of their targets (D_f and ρ span ~1, the cluster sizes 1–6),
#: so that no task dominates the shared features.
LOSS_WEIGHTS = {"fractal_dimension": 10.0, "mixing_ratio_regressor": 10.0,
                "mixing_ratio_classifier": 1.0, "wo3_cluster_size": 0.3,
                "tio2_cluster_size": 0.3}
#: Name of the backbone model's stored feature extractor.
BACKBONE_F = "shared_f"
#: The final backbone with re-estimated batch-norm statistics (:func:`calibrate_backbone`).
CALIBRATED_MODEL = "calibrated.keras"
#: Training batches averaged by the batch-norm re-estimation.
CALIBRATION_BATCHES = 64
#: Feature extractor of the shared backbone unless a run names another
#: (:data:`hagg_tf.networks.ARCHITECTURES`): the one the shipped networks use.
DEFAULT_BACKBONE_ARCHITECTURE = "fine"
#: File of the ν-image heads' weights in a run directory.
STACK_HEADS = "stack_heads.npz"
#: How the ν-image heads are fitted, as ``training.json`` and the model card record it.
STACK_HEADS_HOW = ("fit_group_head on the frozen shared f, the kept epoch chosen on the mean "
                   "over the ν rotations of every validation stack")
#: File of the sample heads' weights in a run directory (:mod:`hagg_tf.data.sample_heads`).
SAMPLE_HEADS = SAMPLE_HEADS_FILE


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """One shared-backbone run (written to ``training.json`` with :func:`dataclasses.asdict`).

    Attributes:
        pooled_cache: pooled cache (:mod:`hagg_tf.data.pooled`) whose pooling is the
            architecture's input pooling.
        output: run directory.
        architecture: feature extractor (:data:`hagg_tf.networks.ARCHITECTURES`).
        image_size: side of the database's images, pixels.
        epochs: epochs of the backbone.
        batch_size: images per step.
        learning_rate: peak Adam learning rate; cosine decay to 5 % over ``epochs``.
        seed: seed of initialisation, shuffling and augmentation.
        max_wall_seconds: stop after the first epoch that ends past this many seconds of this
            call; a rerun resumes.
        steps_per_epoch: cut every epoch to this many steps (tests); default a full pass.
        num_images: ν of the multi-image networks.
        stack_epochs: epochs of the ν-image heads on frozen features (each over freshly drawn
            disjoint ν-groups).
        sample_head_epochs: epochs of the sample heads of θ̂_Df and θ̂_ρ on the per-image
            outputs (:mod:`hagg_tf.training.sample_heads`); 0: none (an intermediate stage
            whose export keeps the plain means of Eqs. 13–14).
        initial_weights: a finished backbone run (its ``calibrated.keras``) whose weights,
            batch-norm statistics included, start this run: a second training stage with its
            own cosine cycle (a warm restart). It must have the same architecture and image
            size. None: random initialisation.
    """

    pooled_cache: str
    output: str
    architecture: str = DEFAULT_BACKBONE_ARCHITECTURE
    image_size: int = 512
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    max_wall_seconds: Optional[float] = None
    steps_per_epoch: Optional[int] = None
    num_images: int = DEFAULT_NUM_IMAGES
    stack_epochs: int = 60
    initial_weights: Optional[str] = None
    sample_head_epochs: int = 120

    def __post_init__(self):
        for name in ("pooled_cache", "output"):
            object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if self.initial_weights is not None:
            object.__setattr__(self, "initial_weights", os.fspath(self.initial_weights))
        if self.epochs < 1 or self.batch_size < 1 or self.num_images < 1:
            raise TrainingError("epochs, batch_size and num_images must be at least 1")
        if self.sample_head_epochs < 0:
            raise TrainingError("sample_head_epochs must be 0 (no sample heads) or more")


def _with_defaults(stored: dict) -> dict:
    """A stored config with the fields added since it was written set to their defaults (so
    that a run written before a field existed still resumes)."""
    defaults = {field.name: field.default for field in dataclasses.fields(BackboneConfig)
                if field.default is not dataclasses.MISSING}
    return {**defaults, **stored}


def per_image_targets(labels: dict) -> dict[str, np.ndarray]:
    """The per-image target of every task, ``{network name: (n,) float32}``.

    Single-image networks: their image label (a descriptor of the imaged aggregate); multi-image
    networks: their θ column of the image's configuration (the auxiliary tasks).
    """
    targets = {}
    for name in NETWORK_NAMES:
        spec = network_spec(name)
        values = (labels["theta"][:, spec.theta_column] if spec.multi_image
                  else labels[spec.image_label])
        targets[name] = np.asarray(values, dtype=np.float32)
    return targets


def build_head(name: str, input_dim: int, keras):
    """The head g of network ``name`` as a model ``(m, input_dim) → (m, 1)`` (Table 3, 18–19)."""
    from hagg_tf.networks.architecture import apply_head

    features = keras.Input((int(input_dim),), name=f"{name}_features")
    return keras.Model(features, apply_head(features, network_spec(name)), name=f"g_{name}")


def build_backbone_model(architecture: str, image_size: int, keras):
    """The multi-task model: pooled images ``(S, S, 1)`` → ``{network name: (b, 1)}``.

    Returns:
        ``(model, donor)``: ``donor`` is a network of :func:`hagg_tf.networks.build_network`
        whose f (pooling included) shares every weight with the model's f.
    """
    from hagg_tf import networks
    from hagg_tf.training.pooled import pooled_feature_extractor

    donor = networks.build_network(NETWORK_NAMES[0], image_size, architecture=architecture)
    features_of = pooled_feature_extractor(donor, keras)
    side = int(features_of.input_shape[1])
    inputs = keras.Input((side, side, 1), name="pooled_images")
    features = features_of(inputs)
    dim = int(features_of.output_shape[-1])
    outputs = {name: build_head(name, dim, keras)(features) for name in NETWORK_NAMES}
    return keras.Model(inputs, outputs, name="shared_backbone"), donor


def compile_backbone_model(model, learning_rate: float, keras, jit_compile="auto") -> None:
    """Compiles a model of :func:`build_backbone_model` as :func:`train_backbone` trains it.

    Adam, every network's loss weighted by :data:`LOSS_WEIGHTS`, MAE (accuracy for the
    classifier) as metrics. ``jit_compile``: Keras' XLA switch; its ``"auto"`` leaves XLA off
    on a CPU, where it makes the step slower (benchmarks/bench_backbone_step.py measures it).
    """
    losses = {name: network_spec(name).loss for name in NETWORK_NAMES}
    metrics = {name: ["accuracy" if network_spec(name).is_classifier else "mae"]
               for name in NETWORK_NAMES}
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=losses,
                  loss_weights=LOSS_WEIGHTS, metrics=metrics, jit_compile=jit_compile)


def _cosine_rate(config: BackboneConfig, epoch: int) -> float:
    progress = min(1.0, epoch / max(1, config.epochs - 1))
    return float(config.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))))


def _batches(keras, split, config: BackboneConfig, training: bool):
    from hagg_tf.training.pooled import random_symmetry

    targets = per_image_targets(split.labels)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0
            self.order = self._order()

        def _order(self):
            if not training:
                return np.arange(len(split))
            return np.random.default_rng([config.seed, self.epoch, 0x5348]).permutation(len(split))

        def set_epoch(self, epoch: int):
            self.epoch = int(epoch)
            self.order = self._order()

        def __len__(self):
            steps = math.ceil(len(split) / config.batch_size)
            return min(steps, config.steps_per_epoch) if training and config.steps_per_epoch \
                else steps

        def __getitem__(self, index):
            rows = np.sort(self.order[index * config.batch_size:(index + 1) * config.batch_size])
            images = split.inputs(rows)
            if training:
                rng = np.random.default_rng([config.seed, self.epoch, int(index), 0x41554720])
                images = random_symmetry(images, rng)
            return images, {name: values[rows, np.newaxis] for name, values in targets.items()}

    return Batches()


def read_backbone_history(output: Union[str, os.PathLike]) -> list[dict]:
    """The rows of a backbone run's ``history.csv`` (floats), oldest first."""
    path = pathlib.Path(output) / HISTORY
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def train_backbone(config: BackboneConfig, verbose: int = 2) -> dict:
    """Trains (or resumes) the shared backbone and its per-image heads; see the module docstring.

    Returns:
        The run summary (also ``<output>/training.json``).

    Raises:
        TrainingError: a missing cache or an output directory of another run.
    """
    import_tensorflow_quietly()
    import keras

    from hagg_tf.data import DatasetError
    from hagg_tf.data.pooled import load_pooled_split

    output = pathlib.Path(config.output)
    summary_path = output / SUMMARY
    settings = dataclasses.asdict(config)
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if _with_defaults(summary.get("config") or {}) != settings:
            raise TrainingError(f"{output} holds another run ({summary_path}); use another "
                                "output directory")
        if summary.get("status") == "complete":
            return summary
    try:
        train_split = load_pooled_split(config.pooled_cache, "train")
        validation_split = load_pooled_split(config.pooled_cache, "validation")
    except DatasetError as error:
        raise TrainingError(str(error)) from None
    output.mkdir(parents=True, exist_ok=True)
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    keras.utils.set_random_seed(config.seed)
    model, donor = build_backbone_model(config.architecture, config.image_size, keras)
    if config.initial_weights is not None:
        # A backup of this run (restored by fit) takes precedence over the starting weights.
        _start_from(model, config.initial_weights)
    compile_backbone_model(model, config.learning_rate, keras)
    train_batches = _batches(keras, train_split, config, training=True)
    validation_batches = _batches(keras, validation_split, config, training=False)
    started = time.perf_counter()

    class EpochState(keras.callbacks.Callback):
        """Shuffles by epoch number (so a resumed run draws the same batches) and stops when
        the wall budget is spent."""

        exhausted = False

        def on_epoch_begin(self, epoch, logs=None):
            train_batches.set_epoch(epoch)

        def on_epoch_end(self, epoch, logs=None):
            if config.max_wall_seconds is not None and \
                    time.perf_counter() - started > config.max_wall_seconds:
                self.exhausted = True
                self.model.stop_training = True

    state = EpochState()
    history_rows = read_backbone_history(output)
    best_loss = min((row["val_loss"] for row in history_rows), default=math.inf)

    class SaveBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            nonlocal best_loss
            if logs and logs.get("val_loss", math.inf) < best_loss:
                best_loss = float(logs["val_loss"])
                save_backbone(model, output / BEST_MODEL)

    write_json_atomic(summary_path, json_safe({
        "config": settings, "status": "running", "hardware": hardware_description(),
        "train_records": len(train_split), "validation_records": len(validation_split),
        "parameters": int(model.count_params()), "loss_weights": LOSS_WEIGHTS,
        "wall_s_total": previous.get("wall_s_total", 0.0)}))
    # The backup survives a budget stop (fit ends normally then), so that a rerun resumes.
    callbacks = [backup_callback(keras, output / BACKUP, None), state,
                 keras.callbacks.LearningRateScheduler(lambda epoch: _cosine_rate(config, epoch)),
                 keras.callbacks.CSVLogger(str(output / HISTORY), append=True), SaveBest()]
    model.fit(train_batches, validation_data=validation_batches, epochs=config.epochs,
              callbacks=callbacks, verbose=verbose)
    wall = time.perf_counter() - started
    save_backbone(model, output / LAST_MODEL)
    rows = read_backbone_history(output)
    summary = {
        "config": settings, "status": "budget" if state.exhausted and len(rows) < config.epochs
        else "complete", "hardware": hardware_description(),
        "train_records": len(train_split), "validation_records": len(validation_split),
        "parameters": int(model.count_params()), "loss_weights": LOSS_WEIGHTS,
        "epochs_done": len(rows), "wall_s_last_call": round(wall, 1),
        "wall_s_total": round(float(previous.get("wall_s_total") or 0.0) + wall, 1),
        "best_val_loss": best_loss, "history_last": rows[-1] if rows else None}
    write_json_atomic(summary_path, json_safe(summary))
    return summary


def check_initial_weights(run: Union[str, os.PathLike]) -> None:
    """Raises :class:`TrainingError` unless ``run`` is a backbone run with a calibrated model
    (what :attr:`BackboneConfig.initial_weights` needs)."""
    if not (pathlib.Path(run) / CALIBRATED_MODEL).is_file():
        raise TrainingError(f"initial_weights={os.fspath(run)}: no finished backbone run there "
                            f"({CALIBRATED_MODEL} missing)")


def backbone_stages(run: Union[str, os.PathLike]) -> list[pathlib.Path]:
    """The runs that made the backbone of ``run``, oldest first: ``run`` and, through their
    :attr:`BackboneConfig.initial_weights`, the runs it started from (stops at a run without
    ``training.json``, which is listed too)."""
    stages = [pathlib.Path(run)]
    while (stages[0] / SUMMARY).is_file():
        earlier = (json.loads((stages[0] / SUMMARY).read_text()).get("config") or {}).get(
            "initial_weights")
        if earlier is None or pathlib.Path(earlier) in stages:
            break
        stages.insert(0, pathlib.Path(earlier))
    return stages


def _start_from(model, run: str) -> None:
    """Sets ``model``'s weights to those of the calibrated backbone of ``run``.

    Raises:
        TrainingError: ``run`` has no calibrated backbone or one of another architecture.
    """
    check_initial_weights(run)
    source = load_backbone(run, "calibrated")
    expected = [tuple(weight.shape) for weight in model.weights]
    found = [tuple(weight.shape) for weight in source.weights]
    if expected != found:
        raise TrainingError(f"{run}: its backbone has another architecture or image size "
                            f"({len(found)} weights, this run needs {len(expected)} of other "
                            "shapes); start from a run of the same architecture")
    model.set_weights(source.get_weights())


def save_backbone(model, path: pathlib.Path) -> None:
    """Saves a multi-task model as ``.keras`` under a temporary name, then renames it."""
    partial = path.with_name(f".{path.stem}.partial.keras")
    model.save(partial)
    os.replace(partial, path)


def load_backbone(output: Union[str, os.PathLike], which: str = "calibrated"):
    """The trained multi-task model of a run: ``"calibrated"`` (default, see
    :func:`calibrate_backbone`), ``"best"`` (by validation loss) or ``"last"``."""
    import_tensorflow_quietly()
    import keras

    from hagg_tf.networks import layers  # noqa: F401  (registers the custom layers)

    files = {"calibrated": CALIBRATED_MODEL, "best": BEST_MODEL, "last": LAST_MODEL}
    if which not in files:
        raise ValueError(f"which must be one of {sorted(files)}, got {which!r}")
    path = pathlib.Path(output) / files[which]
    if not path.is_file():
        raise TrainingError(f"{path}: no trained backbone")
    return keras.saving.load_model(path, compile=False)


def validation_metrics(model, split, batch_size: int = 64) -> dict[str, float]:
    """Per-image MAE of every regression head and accuracy of the classifier on ``split``."""
    targets = per_image_targets(split.labels)
    outputs = {name: [] for name in NETWORK_NAMES}
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(len(split), start + batch_size))
        for name, value in model(split.inputs(rows), training=False).items():
            outputs[name].append(np.asarray(value)[:, 0])
    metrics = {}
    for name in NETWORK_NAMES:
        values = np.concatenate(outputs[name])
        spec = network_spec(name)
        if spec.is_classifier:
            metrics[f"{name}_accuracy"] = float(np.mean(
                (values > spec.classifier_threshold) == (targets[name] > 0.5)))
        else:
            metrics[f"{name}_mae"] = float(np.mean(np.abs(values - targets[name])))
    return metrics


def calibrate_backbone(config: BackboneConfig) -> dict:
    """Re-estimates the shared f's batch-norm statistics of the final epoch's model.

    Keras' moving averages (momentum 0.99) lag behind weights trained at a learning rate of
    1e-3; the final model's moving statistics are replaced by the mean batch statistics of
    :data:`CALIBRATION_BATCHES` training batches under its final weights
    (:func:`hagg_tf.training.pooled.recalibrate_batch_norm_layers`). Writes
    ``calibrated.keras`` and the validation metrics before and after into ``training.json``.

    Returns:
        ``{"before": metrics, "after": metrics}`` (:func:`validation_metrics`).
    """
    import_tensorflow_quietly()
    import keras

    from hagg_tf.data.pooled import load_pooled_split
    from hagg_tf.training.pooled import recalibrate_batch_norm_layers

    output = pathlib.Path(config.output)
    model = load_backbone(output, "last")
    feature_extractor, _ = backbone_parts(model)
    validation = load_pooled_split(config.pooled_cache, "validation")
    before = validation_metrics(model, validation)
    batches = _batches(keras, load_pooled_split(config.pooled_cache, "train"), config,
                       training=True)
    batches.set_epoch(config.epochs)  # batches of no training epoch
    layers = [layer for layer in feature_extractor.layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    used = recalibrate_batch_norm_layers(layers, feature_extractor, batches, CALIBRATION_BATCHES)
    after = validation_metrics(model, validation)
    save_backbone(model, output / CALIBRATED_MODEL)
    report = {"batches": used, "before": before, "after": after}
    summary_path = output / SUMMARY
    summary = json.loads(summary_path.read_text())
    summary["calibration"] = report
    write_json_atomic(summary_path, json_safe(summary))
    return report


def backbone_parts(model):
    """``(f, {network name: head})`` of a multi-task model of :func:`build_backbone_model`."""
    heads = {name: model.get_layer(f"g_{name}") for name in NETWORK_NAMES}
    feature_extractor = next(layer for layer in model.layers
                             if layer.name.endswith("_pooled_f"))
    return feature_extractor, heads


def pooled_features(feature_extractor, split, batch_size: int = 64) -> np.ndarray:
    """f(I) of every image of a pooled split, ``(n, F)`` float32 (inference mode)."""
    parts = []
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(len(split), start + batch_size))
        parts.append(np.asarray(feature_extractor(split.inputs(rows), training=False)))
    return np.concatenate(parts).astype(np.float32)


def _split_features(model, pooled_cache) -> tuple[dict, dict, dict]:
    """The train and validation splits of a pooled cache, f(I) of their images and the heads of
    a multi-task ``model`` (:func:`build_backbone_model`)."""
    from hagg_tf.data.pooled import load_pooled_split

    feature_extractor, heads = backbone_parts(model)
    splits = {name: load_pooled_split(pooled_cache, name) for name in ("train", "validation")}
    features = {name: pooled_features(feature_extractor, split) for name, split in splits.items()}
    return splits, features, heads


def backbone_from_networks(networks_by_name: dict, architecture: str, image_size: int):
    """The multi-task model carrying the f and the single-image heads of five Keras networks.

    The inverse of :func:`networks_from_backbone` for what the single-image networks hold (a
    composite export rebuilt by ``hagg_tf.export.from_training.networks_from_composite``); the
    auxiliary θ_0 and θ_1 heads keep their initial weights.

    Raises:
        ValueError: the single-image networks do not share one f (networks trained apart).
    """
    import keras

    from hagg_tf import networks
    from hagg_tf.networks.architecture import get_head

    model, _ = build_backbone_model(architecture, image_size, keras)
    feature_extractor, heads = backbone_parts(model)
    shared = [networks.get_feature_extractor(networks_by_name[name]).get_weights()
              for name in SINGLE_IMAGE_NETWORKS]
    if any(len(weights) != len(shared[0])
           or not all(np.array_equal(a, b) for a, b in zip(weights, shared[0]))
           for weights in shared[1:]):
        raise ValueError(f"the networks {', '.join(SINGLE_IMAGE_NETWORKS)} do not share one "
                         "feature extractor f: their outputs cannot be recomputed from one "
                         "backbone")
    feature_extractor.set_weights(shared[0])
    for name in SINGLE_IMAGE_NETWORKS:
        heads[name].set_weights(get_head(networks_by_name[name]).get_weights())
    return model


#: ``training.json`` status of a run directory rebuilt from an export
#: (``hagg_tf.export.from_training.backbone_run_from_composite``): it has a calibrated model to
#: start a further stage from, but no history of its own.
REBUILT_STATUS = "rebuilt"


def fit_auxiliary_heads(model, pooled_cache, *, epochs: int = 30, seed: int = 0
                        ) -> dict[str, float]:
    """Fits the per-image θ_0 and θ_1 heads of ``model`` on its frozen f (in place).

    A backbone rebuilt from exported networks (:func:`backbone_from_networks`) has these
    auxiliary heads at their initial weights: an export keeps only the ν-image heads. Left so,
    their loss (weighted :data:`LOSS_WEIGHTS`) would push large, meaningless gradients into f in
    the first steps of a further stage. Each head is fitted alone (its network's loss, Adam
    1e-3, batch 64) on f(I) of the train split in inference mode; f is not changed.

    Args:
        model: multi-task model (:func:`build_backbone_model`).
        pooled_cache: pooled cache with the train and validation splits.
        epochs: passes over the train split.
        seed: initialisation of the optimiser's shuffling.

    Returns:
        ``{network name: per-image validation MAE after the fit}``.
    """
    import keras

    splits, features, heads = _split_features(model, pooled_cache)
    targets = {split: per_image_targets(splits[split].labels) for split in splits}
    report = {}
    for name in MULTI_IMAGE_NETWORKS:
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((features["train"].shape[1],))
        fitted = keras.Model(inputs, heads[name](inputs))  # the model's own head layer
        fitted.compile(optimizer=keras.optimizers.Adam(1e-3), loss=network_spec(name).loss)
        fitted.fit(features["train"], targets["train"][name], batch_size=64, epochs=epochs,
                   verbose=0)
        predicted = np.asarray(fitted(features["validation"], training=False))[:, 0]
        report[name] = round(float(np.mean(np.abs(predicted - targets["validation"][name]))), 4)
    return report


def _record_summary(output: pathlib.Path, key: str, record: dict) -> None:
    summary_path = output / SUMMARY
    summary = json.loads(summary_path.read_text())
    summary[key] = record
    write_json_atomic(summary_path, json_safe(summary))


def fit_backbone_stack_heads(model, pooled_cache, *, num_images: int = DEFAULT_NUM_IMAGES,
                             epochs: int = 60, seed: int = 0, split_features=None
                             ) -> tuple[dict, dict]:
    """Fits the ν-image heads of CNN^0 and CNN^1 on a backbone's frozen f.

    Uses :func:`hagg_tf.training.group_heads.fit_group_head` on f(I) of the train and
    validation splits of ``pooled_cache``.

    Args:
        model: multi-task model (:func:`build_backbone_model`, inference mode is used).
        pooled_cache: pooled cache of the database the backbone was trained on.
        num_images: ν of the heads.
        epochs: epochs of each head.
        seed: initialisation and group draws.
        split_features: ``_split_features(model, pooled_cache)``, when already computed.

    Returns:
        ``(weights, report)``: ``{f"{network}/{index}": array}`` (the heads' weights in
        ``get_head(network).get_weights()`` order, as ``stack_heads.npz`` stores them) and
        ``{network name: validation MAE of the kept epoch}``.
    """
    import_tensorflow_quietly()

    from hagg_tf.training.group_heads import fit_group_head

    splits, features, _ = split_features or _split_features(model, pooled_cache)
    weights, report = {}, {}
    for name in MULTI_IMAGE_NETWORKS:
        head, mae = fit_group_head(name, num_images, features["train"], splits["train"].labels,
                                   features["validation"], splits["validation"].labels,
                                   epochs=epochs, seed=seed)
        weights.update({f"{name}/{index}": value
                        for index, value in enumerate(head.get_weights())})
        report[name] = mae
    return weights, report


def train_stack_heads(config: BackboneConfig, split_features=None) -> dict:
    """Trains the ν-image heads of CNN^0 and CNN^1 on the frozen shared f (module docstring).

    Uses :func:`fit_backbone_stack_heads`; writes ``<output>/stack_heads.npz`` (the heads'
    weights, atomically) and records the validation MAEs in ``training.json``.

    Args:
        config: the finished run.
        split_features: ``_split_features`` of its calibrated backbone, when already computed.

    Returns:
        ``{network name: validation MAE of the kept epoch}``.
    """
    output = pathlib.Path(config.output)
    weights, report = fit_backbone_stack_heads(
        None if split_features else load_backbone(output), config.pooled_cache,
        num_images=config.num_images, epochs=config.stack_epochs, seed=config.seed,
        split_features=split_features)
    partial = output / f".{STACK_HEADS}.partial.npz"
    np.savez(partial, **weights)
    os.replace(partial, output / STACK_HEADS)
    _record_summary(output, "stack_heads", {"validation_mae": report,
                                            "epochs": config.stack_epochs,
                                            "how": STACK_HEADS_HOW})
    return report


def fit_backbone_sample_heads(model, pooled_cache, *, epochs: int = 120, seed: int = 0,
                              split_features=None) -> tuple[SampleHeads, dict]:
    """Fits the sample heads of θ̂_Df and θ̂_ρ on a backbone's per-image outputs.

    Uses :func:`hagg_tf.training.sample_heads.fit_sample_heads` on the outputs of ``model``'s
    single-image heads for the train and validation splits of ``pooled_cache``.

    Args:
        model: multi-task model (:func:`build_backbone_model`, inference mode is used).
        pooled_cache: pooled cache of the database the backbone was trained on.
        epochs: the heads' training epochs.
        seed: seed of the heads' initialisation and of the groups drawn.
        split_features: ``_split_features(model, pooled_cache)``, when already computed.

    Returns:
        ``(sample heads, record)``: the record holds the validation MAE of each target at the
        kept epoch, the epochs and the wall seconds, as ``training.json`` stores it.
    """
    import_tensorflow_quietly()

    from hagg_tf.training.group_heads import predict_in_chunks
    from hagg_tf.training.sample_heads import fit_sample_heads

    started = time.perf_counter()
    splits, features, heads = split_features or _split_features(model, pooled_cache)
    outputs = {split: {name: predict_in_chunks(heads[name], features[split])[:, 0]
                       for name in SINGLE_IMAGE_NETWORKS} for split in splits}
    sample_heads, report = fit_sample_heads(
        outputs["train"], splits["train"].labels, outputs["validation"],
        splits["validation"].labels, epochs=epochs, seed=seed)
    return sample_heads, {
        "validation_mae": report, "epochs": int(epochs),
        "seconds": round(time.perf_counter() - started, 1),
        "how": "fit_sample_heads on the calibrated backbone's per-image outputs"}


def train_sample_heads(config: BackboneConfig, split_features=None) -> dict:
    """Fits the sample heads of a finished run (:func:`fit_backbone_sample_heads`).

    Writes ``<output>/sample_heads.npz`` atomically and records the fit in ``training.json``.
    ``split_features``: as for :func:`train_stack_heads`.

    Returns:
        ``{target: validation MAE of the kept epoch}``.
    """
    output = pathlib.Path(config.output)
    sample_heads, record = fit_backbone_sample_heads(
        load_backbone(output), config.pooled_cache, epochs=config.sample_head_epochs,
        seed=config.seed, split_features=split_features)
    sample_heads.save(output / SAMPLE_HEADS)
    _record_summary(output, "sample_heads", record)
    return record["validation_mae"]


def load_sample_heads(output: Union[str, os.PathLike]) -> Optional[SampleHeads]:
    """The sample heads of a run directory, None if it has none (runs written before them)."""
    path = pathlib.Path(output) / SAMPLE_HEADS
    return SampleHeads.load(path) if path.is_file() else None


def networks_from_backbone(output: Union[str, os.PathLike], image_size: int = 512,
                           num_images: int = DEFAULT_NUM_IMAGES,
                           architecture: str = DEFAULT_BACKBONE_ARCHITECTURE):
    """The five Keras networks (:func:`hagg_tf.networks.build_network`) of a finished run.

    Every network gets a copy of the shared f; the single-image networks the backbone's
    heads, the multi-image networks the ν-image heads of :func:`train_stack_heads`.

    Returns:
        ``{network name: keras.Model}`` in :data:`NETWORK_NAMES` order.
    """
    import_tensorflow_quietly()
    from hagg_tf import networks
    from hagg_tf.networks.architecture import get_head

    output = pathlib.Path(output)
    model = load_backbone(output)
    feature_extractor, heads = backbone_parts(model)
    path = output / STACK_HEADS
    if not path.is_file():
        raise TrainingError(f"{path}: the ν-image heads are not trained (train_stack_heads)")
    with np.load(path) as data:
        stack_weights = {key: data[key] for key in data.files}
    result = {}
    for name in NETWORK_NAMES:
        network = networks.build_network(name, image_size, num_images,
                                         architecture=architecture)
        networks.get_feature_extractor(network).set_weights(feature_extractor.get_weights())
        head = get_head(network)
        if name in SINGLE_IMAGE_NETWORKS:
            head.set_weights(heads[name].get_weights())
        else:
            count = len(head.get_weights())
            head.set_weights([stack_weights[f"{name}/{index}"] for index in range(count)])
        result[name] = network
    return result


def train_shared_networks(config: BackboneConfig, dataset: Optional[Union[str, os.PathLike]]
                          = None, *, workers: int = 2, verbose: int = 2) -> dict:
    """The whole recipe, resumable at every stage: pooled cache, backbone, batch-norm
    calibration, ν-image heads, sample heads.

    Args:
        config: the run.
        dataset: database to build (or complete) ``config.pooled_cache`` from; None: the cache
            must exist.
        workers: processes decoding the database's shards.
        verbose: Keras verbosity of the backbone's ``fit``.

    Returns:
        The run's ``training.json``. Its ``status`` is ``"budget"`` when the wall budget ended
        the call before the last epoch (rerun to continue), else ``"complete"``, with the
        calibration and the heads' validation MAE.
    """
    from hagg_tf.data.pooled import build_pooled_cache
    from hagg_tf.networks.architecture import get_architecture

    if dataset is not None:
        build_pooled_cache(dataset, config.pooled_cache,
                           get_architecture(config.architecture).input_pooling,
                           workers=workers, progress=verbose > 0)
    summary = train_backbone(config, verbose=verbose)
    if summary.get("status") != "complete":
        return summary
    output = pathlib.Path(config.output)
    if not (output / CALIBRATED_MODEL).is_file():
        calibrate_backbone(config)
    stack_missing = not (output / STACK_HEADS).is_file()
    sample_missing = config.sample_head_epochs > 0 and not (output / SAMPLE_HEADS).is_file()
    if stack_missing or sample_missing:
        # One pass of f over the train and validation images serves both kinds of heads.
        shared = _split_features(load_backbone(output), config.pooled_cache)
        if stack_missing:
            train_stack_heads(config, shared)
        if sample_missing:
            train_sample_heads(config, shared)
    return json.loads((output / SUMMARY).read_text())
