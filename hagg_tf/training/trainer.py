"""Training one of the paper's networks (Sec. 2.3.1–2.3.5): one trainer, two batch sources.

:func:`train` runs a :class:`TrainingConfig` (what to train, on which data, for how long; written
to the run's ``training.json`` with :func:`dataclasses.asdict`). It builds the network
(:func:`hagg_tf.networks.build_network`), compiles it with the paper's optimiser and loss (Adam,
learning rate 1e-4; MSE, binary cross-entropy for the classifier), takes its batches from a
*batch source* and fits:

* :class:`TFRecordSource` (default): the database's tf.data pipeline
  (:func:`hagg_tf.data.network_dataset`: augmentation, the classifier's oversampling, ν-image
  samples, the paper's batch sizes 16 and 8), validation by ``fit`` on the ``validation`` split.
* :class:`hagg_tf.training.pooled.PooledCacheSource` (``TrainingConfig.pooled_cache``): the
  decoded, preprocessed, pooled copy of the database (:mod:`hagg_tf.data.pooled`); the network's
  *pooled twin* is fit and batch normalisation is re-estimated every epoch (see that module).

Callbacks, for either source:

* ``BackupAndRestore`` into ``<output>/backup``: weights, optimiser state (Adam moments and step
  counter) and the number of finished epochs at the end of every epoch (and, with
  ``backup_every_steps``, every that many steps within an epoch). Rerunning the same call
  after an interruption restores them and continues with the next (or the unfinished)
  epoch; the CSV history, the best checkpoint and early stopping pick up their state
  from ``history.csv``. A finished run (``training.json`` status ``complete``) is not trained
  again unless ``overwrite=True``.
* the best epoch by the monitored loss → ``<output>/best.keras`` (the full network, also when the
  pooled twin is fit); ``<output>/last.keras`` is written at the end.
* ``EarlyStopping`` on the validation loss of the ``validation`` split, which is carved out of
  the paper's T and never touches E (``patience`` epochs without improvement).
* ``TensorBoard`` logs in ``<output>/logs`` and a ``CSVLogger`` history ``<output>/history.csv``.
* optional: ``ReduceLROnPlateau`` (``reduce_lr_patience``) and a wall-clock budget
  (``max_wall_seconds``: stop after the first epoch that ends past it, status ``budget``; a
  rerun resumes).
* A throughput meter: images per second over the training steps (the first
  ``warmup_steps`` steps, which include tracing, excluded).

The multi-image networks need ν images of one θ per validation sample; the paper preset's
validation split holds whole configurations for that reason. A validation split with fewer than
ν images of every θ (the ``tiny`` preset) cannot provide one; then the run monitors the training
loss instead (stated in ``training.json`` and printed).

Distribution (TFRecord source): ``strategy="mirrored"`` (all local GPUs) or ``"multi_worker"``
(every worker runs the same command with its ``TF_CONFIG``) builds and compiles the model in the
strategy's scope; Keras splits each global batch (the paper's 16 or 8) across the replicas.
Under ``multi_worker`` every worker runs the whole input pipeline and keeps its slice of every
global batch (:func:`hagg_tf.training.runtime.distribute_input`). The chief writes the run
folder; every other worker writes the same files (backup, history, best and last model,
training.json) into its own ``<output>/workers/worker-<id>``
(:func:`hagg_tf.training.runtime.worker_run_dir`), and resumes and reports completion from
there; only the chief writes TensorBoard logs.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import platform
import shlex
import sys
import time
from typing import Any, Optional, Sequence, Union

import numpy as np

from hagg_tf.data.network_specs import DEFAULT_NUM_IMAGES, NetworkSpec, network_spec
from hagg_tf.jsonsafe import json_safe
from hagg_tf.model.io import write_json_atomic
from hagg_tf.tensorflow_import import import_tensorflow_quietly
from hagg_tf.training.runtime import (STRATEGIES, WORKERS, distribute_input, is_chief,
                                      make_strategy, prepare_model_for_fit, worker_run_dir)

#: Default patience (epochs without improvement of the monitored loss) of early stopping.
DEFAULT_PATIENCE = 20
#: Steps at the start of a run left out of the throughput (tracing, pipeline warm-up).
DEFAULT_WARMUP_STEPS = 2
#: Factor and floor of the learning rate of ``ReduceLROnPlateau`` (``reduce_lr_patience``).
REDUCE_LR_FACTOR = 0.3
MIN_LEARNING_RATE = 1e-5
#: File names inside the output directory.
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
HISTORY = "history.csv"
SUMMARY = "training.json"
BACKUP = "backup"
LOGS = "logs"
#: Key of ``training.json`` holding the run's :class:`TrainingConfig` (``dataclasses.asdict``).
CONFIG_KEY = "config"


class TrainingError(RuntimeError):
    """A training run that cannot start (bad settings, unusable database, foreign output)."""


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines one training run (see the module docstring).

    Attributes:
        network: network name (:data:`hagg_tf.networks.NETWORK_SPECS`).
        dataset: database directory with ``manifest.json`` (:mod:`hagg_tf.data`).
        output: run directory (created); holds backup, checkpoints, logs, history.
        epochs: epochs in total (a resumed run continues up to this number).
        steps_per_epoch: training steps per epoch; default: one pass over the ``train`` split
            (TFRecord: ``hagg_tf.data.epoch_size``; pooled: every epoch cut to its first this
            many batches of a fresh plan).
        validation_steps: TFRecord source: validation batches per epoch (default: all).
        batch_size: samples per step; default: the network's (16 single-image, 8 multi-image).
        num_images: ν of the multi-image networks.
        learning_rate: Adam's learning rate; default the paper's 1e-4.
        seed: seed of weight initialisation, shuffling and augmentation.
        patience: early-stopping patience in epochs.
        architecture: feature extractor (:data:`hagg_tf.networks.ARCHITECTURES`).
        stack_strategy: ``"fold_batch"`` or ``"time_distributed"`` (multi-image networks; the
            pooled source needs ``"fold_batch"``).
        pooled_cache: pooled cache of ``dataset`` to train from
            (:func:`hagg_tf.data.pooled.build_pooled_cache`, pooling = the architecture's input
            pooling); None: the TFRecord pipeline.
        calibration_batches: pooled source: training batches averaged by the batch-norm
            re-estimation at the end of every epoch.
        reduce_lr_patience: multiply the learning rate by :data:`REDUCE_LR_FACTOR` after this
            many epochs without improvement of the monitored loss (down to
            :data:`MIN_LEARNING_RATE`); None keeps it constant.
        max_wall_seconds: stop after the first epoch that ends past this many seconds of this
            call (the budget of a CPU run); a rerun resumes.
        init_from: run directory of another network of the same architecture and image size
            whose feature extractor f (best checkpoint) initialises this one's at a fresh start
            (transfer learning: f is "largely consistent across all model parameters", Sec. 2.3
            of the paper); ignored when resuming.
        strategy: ``"default"``, ``"mirrored"`` or ``"multi_worker"`` (TFRecord source; see
            :func:`hagg_tf.training.runtime.make_strategy`).
        backup_every_steps: back up every this many steps within an epoch as well as at its
            end. A run interrupted mid-epoch resumes at the start of the unfinished epoch with
            the weights of its last step backup (Keras cannot start an epoch mid-way); the
            finished epochs and their history rows are kept.
        verify: database check before reading (``"checksum"``, ``"size"``, ``"none"``).
        warmup_steps: steps excluded from the throughput.
    """

    network: str
    dataset: str
    output: str
    epochs: int = 200
    steps_per_epoch: Optional[int] = None
    validation_steps: Optional[int] = None
    batch_size: Optional[int] = None
    num_images: int = DEFAULT_NUM_IMAGES
    learning_rate: Optional[float] = None
    seed: int = 0
    patience: int = DEFAULT_PATIENCE
    architecture: str = "table3"
    stack_strategy: str = "fold_batch"
    pooled_cache: Optional[str] = None
    calibration_batches: int = 64
    reduce_lr_patience: Optional[int] = None
    max_wall_seconds: Optional[float] = None
    init_from: Optional[str] = None
    strategy: str = "default"
    backup_every_steps: Optional[int] = None
    verify: str = "checksum"
    warmup_steps: int = DEFAULT_WARMUP_STEPS

    def __post_init__(self):
        # Paths as strings, so that the config is JSON as it is (dataclasses.asdict).
        for name in ("dataset", "output", "pooled_cache", "init_from"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, os.fspath(value))

    @property
    def spec(self) -> NetworkSpec:
        """The network's :class:`hagg_tf.data.network_specs.NetworkSpec`.

        Raises:
            TrainingError: unknown network.
        """
        try:
            return network_spec(self.network)
        except KeyError as error:
            raise TrainingError(str(error.args[0])) from None

    def resolved(self) -> "TrainingConfig":
        """This config with the defaults that depend on the network filled in (batch size,
        learning rate); checked.

        Raises:
            TrainingError: unknown network or unusable numbers.
        """
        from hagg_tf.networks.architecture import LEARNING_RATE, get_architecture

        spec = self.spec
        if self.epochs < 1:
            raise TrainingError(f"epochs must be at least 1, got {self.epochs}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise TrainingError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if self.num_images < 1:
            raise TrainingError(f"num_images must be at least 1, got {self.num_images}")
        if self.strategy not in STRATEGIES:
            raise TrainingError(f"unknown strategy {self.strategy!r}; choose one of "
                                f"{STRATEGIES}")
        try:
            get_architecture(self.architecture)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        return dataclasses.replace(
            self, batch_size=spec.batch_size if self.batch_size is None else int(self.batch_size),
            learning_rate=LEARNING_RATE if self.learning_rate is None
            else float(self.learning_rate))

    @classmethod
    def from_run(cls, output_dir: Union[str, os.PathLike]) -> "TrainingConfig":
        """The config a run directory was trained with (its ``training.json``).

        Raises:
            TrainingError: no ``training.json`` with a config (a run of an older hagg_tf).
        """
        path = pathlib.Path(output_dir) / SUMMARY
        try:
            return cls(**json.loads(path.read_text())[CONFIG_KEY])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise TrainingError(f"{path}: no training config ({error})") from None


@dataclasses.dataclass
class TrainingResult:
    """What a call of :func:`train` did.

    Attributes:
        output_dir: the run directory.
        history: per epoch of this call, the logged metrics (``loss``, ``val_loss``, …).
        epochs_run: epochs trained by this call.
        initial_epoch: first epoch of this call (> 0 after a resume).
        final_epoch: epochs completed in total.
        stopped_early: early stopping ended the run.
        images_per_second: training throughput of this call (images, not samples: a ν-image
            sample counts ν), or NaN if too few steps were timed.
        monitor: the loss that chose the best checkpoint (``val_loss`` or ``loss``).
        best_model: path of the best checkpoint (None if none was written).
        last_model: path of the final model.
        already_complete: the run had finished before; nothing was trained.
    """

    output_dir: pathlib.Path
    history: dict
    epochs_run: int
    initial_epoch: int
    final_epoch: int
    stopped_early: bool
    images_per_second: float
    monitor: str
    best_model: Optional[pathlib.Path]
    last_model: Optional[pathlib.Path]
    already_complete: bool = False


# --- the run folder ----------------------------------------------------------------------------

def read_history(output_dir: Union[str, os.PathLike]) -> list[dict]:
    """Rows of ``history.csv`` (one per completed epoch) as dicts of floats; [] if none."""
    path = pathlib.Path(output_dir) / HISTORY
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        rows = []
        for row in csv.DictReader(stream):
            values = {}
            for key, value in row.items():
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):
                    continue  # "NA" (a metric not computed), or a line cut short
            if "epoch" in values:
                rows.append(values)
        return rows


def backup_epoch(output_dir: Union[str, os.PathLike]) -> int:
    """Epochs completed according to the backup (0 without one): where a rerun resumes."""
    path = pathlib.Path(output_dir) / BACKUP / "training_metadata.json"
    if not path.is_file():
        return 0
    try:
        return int(json.loads(path.read_text()).get("epoch", 0))
    except (OSError, ValueError):
        return 0


def _truncate_history(output_dir: pathlib.Path, epochs: int) -> None:
    """Drops history rows of epochs after the backup (trained, then lost by an interruption)."""
    path = output_dir / HISTORY
    if not path.is_file():
        return
    with open(path, newline="") as stream:
        lines = stream.read().splitlines(keepends=True)
    if len(lines) <= 1 + epochs:
        return
    with open(path, "w", newline="") as stream:
        stream.writelines(lines[:1 + epochs])


def _save_model(model, path: pathlib.Path) -> None:
    """``model.save(path)`` through a temporary name, so that a crash leaves no torn file."""
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    model.save(temporary)
    os.replace(temporary, path)


def _remove_run(output_dir: pathlib.Path, distribution) -> None:
    """Deletes what training runs wrote in ``output_dir`` (``overwrite=True``)."""
    import shutil

    # Only ever delete what a training run wrote, never a directory given by mistake.
    known = {BACKUP, LOGS, BEST_MODEL, LAST_MODEL, HISTORY, SUMMARY, WORKERS}
    foreign = [child.name for child in output_dir.iterdir()
               if child.name not in known and not child.name.startswith(".")]
    if foreign:
        raise TrainingError(f"{output_dir} holds files that no training run wrote "
                            f"({', '.join(sorted(foreign)[:3])}); not deleting it")
    if int(distribution.num_replicas_in_sync) > 1 and is_chief(distribution) and \
            (output_dir / WORKERS).is_dir():
        # the other workers delete their own folders, perhaps at this very moment
        for child in output_dir.iterdir():
            if child.name != WORKERS:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(output_dir)


def _completed(output_dir: pathlib.Path, config: TrainingConfig) -> Optional[TrainingResult]:
    """The result of a finished run of at least ``config.epochs`` epochs; None otherwise.

    Raises:
        TrainingError: the folder holds a run of another network.
    """
    summary_path = output_dir / SUMMARY
    if not summary_path.is_file():
        return None
    previous = json.loads(summary_path.read_text())
    if previous.get("network") != config.network:
        raise TrainingError(f"{output_dir} holds a run of {previous.get('network')!r}, not "
                            f"{config.network!r}; use another --output")
    # A run that early stopping ended is complete for the epochs it was asked for, although it
    # finished fewer.
    if previous.get("status") == "complete" and \
            previous.get("epochs", previous.get("final_epoch", 0)) >= config.epochs:
        best = output_dir / BEST_MODEL
        return TrainingResult(output_dir, {}, 0, previous.get("final_epoch", 0),
                              previous.get("final_epoch", 0),
                              previous.get("stopped_early", False), math.nan,
                              previous.get("monitor", "val_loss"),
                              best if best.exists() else None, output_dir / LAST_MODEL,
                              already_complete=True)
    return None


def pixel_size_of(manifest: dict) -> Optional[float]:
    """Pixel edge (nm) of a database's images, from its manifest; None if it records none."""
    image = manifest.get("image", {})
    for key in ("pixel_size_nm", "effective_pixel_size_nm"):
        if image.get(key) is not None:
            return float(image[key])
    config = (manifest.get("settings") or {}).get("config") or {}
    value = config.get("effective_pixel_size_nm") or config.get("pixel_size_nm")
    return None if value is None else float(value)


def hardware_description() -> str:
    """CPU model and core count of this machine, for training logs."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores used, no GPU ({platform.system()})"


def _round_or_none(value: float, digits: int = 3):
    return None if value is None or math.isnan(value) else round(float(value), digits)


def _best_row(rows: list[dict], monitor: str) -> dict:
    values = [(row[monitor], row) for row in rows if monitor in row]
    if not values:
        return {}
    value, row = min(values, key=lambda item: item[0])
    return {"epoch": int(row.get("epoch", -1)) + 1, monitor: value}


# --- callbacks ---------------------------------------------------------------------------------

def _tensorboard_available() -> bool:
    """TensorBoard writes its logs through the ``tensorboard`` package (the ``ml`` extra)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _callbacks(keras, model, output_dir: pathlib.Path, monitor: str, config: TrainingConfig,
               chief: bool, history_rows: list[dict], meter, started: float):
    """The built-in callback list, in the order their ``on_train_begin`` / ``on_epoch_end`` must
    run (the source's own callbacks go first, the caller's last)."""

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        """EarlyStopping that takes its best value and waiting count from the history."""

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            values = [row[monitor] for row in history_rows if monitor in row]
            if values:
                best_index = int(np.argmin(values))
                self.best = values[best_index]
                self.wait = len(values) - 1 - best_index

    # A non-chief worker keeps its own history and best checkpoint in its own run folder
    # (worker_run_dir): its early stopping then decides from the same rows as the chief's.
    callbacks = [keras.callbacks.CSVLogger(str(output_dir / HISTORY), append=True)]
    if chief and _tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(output_dir / LOGS),
                                                     update_freq="epoch", profile_batch=0))
    previous = [row[monitor] for row in history_rows if monitor in row]
    callbacks.append(_save_best_callback(keras, model, output_dir / BEST_MODEL, monitor,
                                         min(previous) if previous else None))
    callbacks.append(ResumableEarlyStopping(monitor=monitor, mode="min", patience=config.patience))
    # Last among the built-ins: its on_train_begin restores the weights and sets the initial
    # epoch, and its on_epoch_end runs after the history row has been written.
    callbacks.append(backup_callback(keras, output_dir / BACKUP, config.backup_every_steps))
    callbacks.append(meter)
    if config.reduce_lr_patience is not None:
        # After the built-ins: it reads the validation loss a source callback may have logged.
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=REDUCE_LR_FACTOR, patience=config.reduce_lr_patience,
            min_lr=MIN_LEARNING_RATE, verbose=0))
    budget = None
    if config.max_wall_seconds is not None:
        budget = _wall_budget_callback(keras, started, config.max_wall_seconds)
        callbacks.append(budget)
    return callbacks, budget


def _save_best_callback(keras, model, path: pathlib.Path, monitor: str,
                        initial: Optional[float]):
    class SaveBestFullNetwork(keras.callbacks.Callback):
        """Saves the full network (not a pooled twin that may be fit) when ``monitor`` improves
        (strictly, from ``initial``: the best value of the history of a resumed run)."""

        def __init__(self):
            super().__init__()
            self.best = math.inf if initial is None else float(initial)

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None or not value < self.best:
                return
            self.best = float(value)
            _save_model(model, path)

    return SaveBestFullNetwork()


def backup_callback(keras, backup_dir: pathlib.Path, backup_every_steps: Optional[int]):
    """``BackupAndRestore`` whose ``"epoch"`` entry is always the number of finished epochs.

    Keras' step backups (``save_freq=N``) write ``{"epoch": e, "batch": b}`` with e the epoch in
    progress and no backup at an epoch's end, so the backup taken at the last step of epoch e
    still says e: a finished run looked one epoch short ("stopped early"), and a resumed one
    trained epoch e again and replaced its history row. Keras also counts e from 0 again in a
    resumed run until its first epoch ends, so a step backup of that epoch said "epoch 0". This
    subclass tracks e from ``on_epoch_begin`` and backs up at every epoch's end as well.
    """

    class EpochExactBackupAndRestore(keras.callbacks.BackupAndRestore):
        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            self._current_epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)  # epoch backups (save_freq="epoch") happen here
            if self.save_freq != "epoch":
                self._batches_seen_since_last_saving = 0  # every N steps within each epoch
                self._save_model()

    return EpochExactBackupAndRestore(str(backup_dir), save_freq=backup_every_steps or "epoch",
                                      delete_checkpoint=False)


def _wall_budget_callback(keras, started: float, max_wall_seconds: float):
    class WallBudget(keras.callbacks.Callback):
        """Stops after the first epoch that ends past the budget.

        Runs after early stopping: an epoch that early stopping ended does not count as the
        budget's (``exhausted`` stays False).
        """

        exhausted = False

        def on_epoch_end(self, epoch, logs=None):
            if not self.model.stop_training and \
                    time.perf_counter() - started > max_wall_seconds:
                self.exhausted = True
                self.model.stop_training = True

    return WallBudget()


def _throughput_meter(keras, images_per_step: int, warmup_steps: int):
    class ThroughputMeter(keras.callbacks.Callback):
        """Images per second over the training steps after the first ``warmup_steps``."""

        def __init__(self):
            super().__init__()
            self.steps = 0
            self.timed_steps = 0
            self.timed_seconds = 0.0
            self._started = None

        def on_train_batch_begin(self, batch, logs=None):
            self._started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps > warmup_steps and self._started is not None:
                self.timed_steps += 1
                self.timed_seconds += time.perf_counter() - self._started

        @property
        def images_per_second(self) -> float:
            if not self.timed_steps:
                return math.nan
            return self.timed_steps * images_per_step / self.timed_seconds

    return ThroughputMeter()


# --- batch sources -----------------------------------------------------------------------------

@dataclasses.dataclass
class SourceBatches:
    """What a batch source feeds to ``fit`` for one run.

    Attributes:
        train: training batches (a ``tf.data.Dataset`` or a ``keras.utils.PyDataset``).
        steps_per_epoch: training steps per epoch.
        monitor: ``"val_loss"`` or, without validation samples, ``"loss"``.
        validation_note: how the run is validated, in words (``training.json``).
        fit_arguments: further arguments of ``fit`` (``validation_data``, ``steps_per_epoch``).
        settings: the source's entries of ``training.json`` (input, augmentation, batch norm).
    """

    train: Any
    steps_per_epoch: int
    monitor: str
    validation_note: str
    fit_arguments: dict
    settings: dict


class TFRecordSource:
    """Batches of the database's tf.data pipeline (:func:`hagg_tf.data.network_dataset`).

    Args:
        dataset_dir: database directory.
        verify: check of the files against the manifest before reading.
    """

    description = "TFRecord pipeline"

    def __init__(self, dataset_dir: Union[str, os.PathLike], verify: str = "checksum"):
        self.dataset_dir = pathlib.Path(dataset_dir)
        self.verify = verify

    def image_size(self, config: TrainingConfig) -> int:
        """Side of the database's square images, checked against the architecture."""
        from hagg_tf.data import DatasetError, load_manifest
        from hagg_tf.networks.architecture import minimum_image_size

        try:
            manifest = load_manifest(self.dataset_dir)
        except DatasetError as error:
            raise TrainingError(str(error)) from None
        image_size = int(manifest["image"]["height"])
        if int(manifest["image"]["width"]) != image_size:
            raise TrainingError(f"{self.dataset_dir}: images of {manifest['image']['height']}×"
                                f"{manifest['image']['width']} px; the networks take square "
                                "images")
        smallest = minimum_image_size(config.architecture)
        if image_size < smallest:
            raise TrainingError(f"{self.dataset_dir}: images of {image_size} px are smaller than "
                                f"the networks' minimum {smallest} px")
        return image_size

    def open(self, config: TrainingConfig, resume_epoch: int, distribution,
             verbose: int) -> SourceBatches:
        """The training and validation pipelines of the run (resumed after ``resume_epoch``).

        A resumed run draws its input stream with a seed derived from (seed, resume epoch), so
        it does not replay the batches of the epochs already trained.
        """
        from hagg_tf.data import DatasetError, epoch_size, network_dataset

        spec = config.spec
        # A plain int: the pipeline mixes the seed with Python integer operations.
        data_seed = int(config.seed) if resume_epoch == 0 else int(
            np.random.SeedSequence([config.seed, resume_epoch]).generate_state(1)[0]) & 0x7FFFFFFF
        multi = {"num_images": config.num_images} if spec.multi_image else {}
        try:
            train = distribute_input(network_dataset(
                self.dataset_dir, config.network, "train", batch_size=config.batch_size,
                seed=data_seed, verify=self.verify, **multi), distribution)
            train_steps = epoch_size(self.dataset_dir, config.network, "train",
                                     batch_size=config.batch_size,
                                     num_images=config.num_images).steps
        except (DatasetError, ValueError) as error:
            raise TrainingError(f"{self.dataset_dir}: {error}") from None
        steps = train_steps if config.steps_per_epoch is None else int(config.steps_per_epoch)
        try:
            validation = distribute_input(network_dataset(
                self.dataset_dir, config.network, "validation", batch_size=config.batch_size,
                verify="none", **multi), distribution)
            monitor, note = "val_loss", "validation split (part of T)"
        except ValueError as error:
            validation, monitor = None, "loss"
            note = (f"no validation samples ({error}); early stopping and the best "
                    "checkpoint use the training loss")
            if verbose:
                print(f"{config.network}: {note}")
        return SourceBatches(
            train, steps, monitor, note,
            {"validation_data": validation, "steps_per_epoch": steps,
             "validation_steps": config.validation_steps},
            {"input": self.description, "augmentation": "hagg_tf.data.augment (90° rotations, "
             "flips, shifts)", "batch_norm": "Keras moving averages"})

    def model_to_fit(self, model, keras):
        """The model ``fit`` trains: the network itself."""
        return model

    def callbacks(self, keras, model, fit_model, batches: SourceBatches) -> list:
        """Callbacks of this source that run before the built-in ones: none."""
        return []


def batch_source(config: TrainingConfig):
    """The batch source ``config`` asks for: the pooled cache if it names one, else the
    TFRecord pipeline."""
    if config.pooled_cache is None:
        return TFRecordSource(config.dataset, config.verify)
    from hagg_tf.training.pooled import PooledCacheSource  # pooled builds on this module

    return PooledCacheSource(config.pooled_cache, config.dataset, config.calibration_batches)


# --- the trainer -------------------------------------------------------------------------------

def train(config: TrainingConfig, source=None, *, callbacks: Sequence[Any] = (),
          overwrite: bool = False, verbose: int = 2) -> TrainingResult:
    """Trains (or resumes training of) one network; see the module docstring.

    Args:
        config: the run (:class:`TrainingConfig`; defaults that depend on the network are filled
            in and written to ``training.json``).
        source: batch source; default :func:`batch_source` of ``config``.
        callbacks: extra Keras callbacks (run after the built-in ones).
        overwrite: start from scratch even if the run directory holds a run (deletes it).
        verbose: Keras ``fit`` verbosity (0 silent, 1 progress bar, 2 one line per epoch).

    Returns:
        A :class:`TrainingResult`.

    Raises:
        TrainingError: unusable settings or database, or an output directory of another run.
    """
    tf = import_tensorflow_quietly()
    import keras

    from hagg_tf import networks
    from hagg_tf.data import load_manifest

    config = config.resolved()
    spec = config.spec
    source = batch_source(config) if source is None else source
    # First of all TensorFlow work: MultiWorkerMirroredStrategy must configure the collective
    # ops before any other op runs.
    distribution = make_strategy(config.strategy)
    chief = is_chief(distribution)
    # Everything below reads and writes this worker's own run folder (the requested one on the
    # chief), so that the workers of a cluster resume and finish from consistent state.
    output_dir = worker_run_dir(pathlib.Path(config.output), distribution)
    summary_path = output_dir / SUMMARY
    if output_dir.exists() and overwrite:
        _remove_run(output_dir, distribution)
    previous_wall = 0.0
    if summary_path.is_file():
        previous_wall = float(json.loads(summary_path.read_text()).get("wall_s_total") or 0.0)
    done = _completed(output_dir, config)
    if done is not None:
        return done

    image_size = source.image_size(config)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_epoch = backup_epoch(output_dir)
    _truncate_history(output_dir, resume_epoch)
    history_rows = read_history(output_dir)
    batches = source.open(config, resume_epoch, distribution, verbose)

    keras.utils.set_random_seed(config.seed)
    with distribution.scope():
        model = networks.build_network(config.network, image_size=image_size,
                                       num_images=config.num_images,
                                       stack_strategy=config.stack_strategy,
                                       architecture=config.architecture)
        if config.init_from is not None and resume_epoch == 0:
            _initialise_feature_extractor(model, config.init_from)
        fit_model = source.model_to_fit(model, keras)
        networks.compile_network(fit_model, config.network, learning_rate=config.learning_rate)
    prepare_model_for_fit(fit_model, distribution)
    images_per_step = config.batch_size * (config.num_images if spec.multi_image else 1)
    meter = _throughput_meter(keras, images_per_step, config.warmup_steps)
    started = time.perf_counter()
    built_in, budget = _callbacks(keras, model, output_dir, batches.monitor, config, chief,
                                  history_rows, meter, started)
    callback_list = source.callbacks(keras, model, fit_model, batches) + built_in + list(callbacks)

    manifest = load_manifest(config.dataset)
    settings = {
        "network": config.network, "architecture": config.architecture,
        "dataset": config.dataset, "output": config.output, **batches.settings,
        "dataset_settings": manifest.get("settings", {}).get("config",
                                                             manifest.get("settings")),
        "image_size": image_size, "pixel_size_nm": pixel_size_of(manifest),
        "num_images": config.num_images if spec.multi_image else 1,
        "batch_size": config.batch_size, "learning_rate": config.learning_rate,
        "loss": spec.loss, "epochs": config.epochs,
        "steps_per_epoch": batches.steps_per_epoch,
        "train_records": manifest["splits"]["train"]["records"],
        "validation_records": manifest["splits"].get("validation", {}).get("records"),
        "validation": batches.validation_note, "monitor": batches.monitor,
        "patience": config.patience, "seed": config.seed, "strategy": config.strategy,
        "replicas": int(distribution.num_replicas_in_sync), "chief": chief,
        "stack_strategy": config.stack_strategy,
        "command": shlex.join([pathlib.Path(sys.argv[0]).name if os.path.isabs(sys.argv[0])
                               else sys.argv[0], *sys.argv[1:]]),
        "hardware": hardware_description(), "max_wall_seconds": config.max_wall_seconds,
        "init_from": config.init_from,
        "learning_rate_schedule": ("constant" if config.reduce_lr_patience is None else
                                   f"x{REDUCE_LR_FACTOR} after {config.reduce_lr_patience} "
                                   f"epoch(s) without improvement of {batches.monitor}, down "
                                   f"to {MIN_LEARNING_RATE}"),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "parameters": int(model.count_params()),
        CONFIG_KEY: dataclasses.asdict(config),
    }
    write_json_atomic(summary_path, json_safe({**settings, "status": "running",
                                                  "resumed_from_epoch": resume_epoch}),
                      default=str)
    if verbose and chief and not _tensorboard_available():
        print(f"{config.network}: no TensorBoard logs (install tensorboard: pip install -e "
              "'.[ml]')")
    if verbose and resume_epoch:
        print(f"{config.network}: resuming from the backup after epoch {resume_epoch}")
    history = fit_model.fit(batches.train, epochs=config.epochs, callbacks=callback_list,
                            verbose=verbose, **batches.fit_arguments)
    wall = time.perf_counter() - started
    rows = read_history(output_dir)
    final_epoch = backup_epoch(output_dir) or len(rows)
    epochs_run = len(next(iter(history.history.values()), []))
    _save_model(model, output_dir / LAST_MODEL)
    best = output_dir / BEST_MODEL
    # Fewer epochs than asked for: the wall budget ran out (a rerun continues), or early
    # stopping ended the run (complete).
    out_of_budget = final_epoch < config.epochs and budget is not None and budget.exhausted
    stopped_early = final_epoch < config.epochs and not out_of_budget
    # A loss of NaN (a diverged run) is written as null; other objects as their str().
    write_json_atomic(summary_path, json_safe({
        **settings, "status": "budget" if out_of_budget else "complete",
        "resumed_from_epoch": resume_epoch, "final_epoch": final_epoch,
        "stopped_early": stopped_early, "epochs_run_last_call": epochs_run,
        "wall_s_last_call": round(wall, 1), "wall_s_total": round(previous_wall + wall, 1),
        "wall_s_total_note": "sum over calls, including validation",
        "images_per_second_last_call": _round_or_none(meter.images_per_second),
        "images_seen": final_epoch * batches.steps_per_epoch * images_per_step,
        "best": {"path": BEST_MODEL if best.exists() else None, **_best_row(rows, batches.monitor)},
        "history_last": rows[-1] if rows else None,
    }), default=str)
    return TrainingResult(output_dir, history.history, epochs_run, resume_epoch, final_epoch,
                          stopped_early, meter.images_per_second, batches.monitor,
                          best if best.exists() else None, output_dir / LAST_MODEL)


def _initialise_feature_extractor(model, init_from) -> None:
    """Copies f of the best checkpoint of run ``init_from`` into ``model`` (transfer learning)."""
    from hagg_tf import networks

    source = load_trained_network(init_from)
    try:
        networks.get_feature_extractor(model).set_weights(
            networks.get_feature_extractor(source).get_weights())
    except ValueError as error:
        raise TrainingError(f"--init_from={init_from}: its f does not fit this network's "
                            f"({error})") from None


def train_network(name: str, dataset_dir: Union[str, os.PathLike],
                  output_dir: Union[str, os.PathLike], epochs: int = 200,
                  steps_per_epoch: Optional[int] = None, *, callbacks: Sequence[Any] = (),
                  overwrite: bool = False, verbose: int = 2, **settings) -> TrainingResult:
    """:func:`train` from the TFRecord pipeline, with the settings as keyword arguments.

    Args:
        name, dataset_dir, output_dir, epochs, steps_per_epoch: :class:`TrainingConfig`'s
            ``network``, ``dataset``, ``output``, ``epochs``, ``steps_per_epoch``.
        callbacks, overwrite, verbose: as in :func:`train`.
        **settings: further :class:`TrainingConfig` fields (``batch_size``, ``num_images``,
            ``learning_rate``, ``seed``, ``patience``, ``strategy``, ``backup_every_steps``,
            ``verify``, ``stack_strategy``, ``warmup_steps``, ...).
    """
    config = TrainingConfig(name, dataset_dir, output_dir, epochs, steps_per_epoch, **settings)
    return train(config, callbacks=callbacks, overwrite=overwrite, verbose=verbose)


def load_trained_network(output_dir: Union[str, os.PathLike], which: str = "best"):
    """The best (or last) model of a run directory, as a Keras model.

    Args:
        output_dir: run directory of :func:`train`.
        which: ``"best"`` (falls back to last if no best checkpoint exists) or ``"last"``.
    """
    import_tensorflow_quietly()
    import keras

    import hagg_tf.networks  # noqa: F401  (registers the custom layers)

    output_dir = pathlib.Path(output_dir)
    path = output_dir / (BEST_MODEL if which == "best" else LAST_MODEL)
    if which == "best" and not path.exists():
        path = output_dir / LAST_MODEL
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model (has the run finished?)")
    return keras.saving.load_model(path, compile=False)
