"""Training one of the paper's networks on a hagg_tf database (Sec. 2.3.1–2.3.5).

``train_network`` builds the network (:func:`hagg_tf.networks.build_network`), compiles it with
the paper's optimiser and loss (Adam, learning rate 1e-4; MSE, binary cross-entropy for the
classifier), streams the database through the network's tf.data pipeline
(:func:`hagg_tf.data.network_dataset`: augmentation, the classifier's oversampling, ν-image
samples, the paper's batch sizes 16 and 8) and fits with these callbacks:

* ``BackupAndRestore`` into ``<output>/backup``: weights, optimiser state (Adam moments and step
  counter) and the number of finished epochs at the end of every epoch (and, with
  ``backup_every_steps``, every that many steps within an epoch). Rerunning the same call
  after an interruption restores them and continues with the next (or the unfinished)
  epoch; the CSV history, the best checkpoint and early stopping pick up their state
  from ``history.csv``. A finished run (``training.json`` status ``complete``) is not trained
  again unless ``overwrite=True``.
* ``ModelCheckpoint`` of the best epoch by the monitored loss → ``<output>/best.keras``;
  ``<output>/last.keras`` is written at the end.
* ``EarlyStopping`` on the validation loss of the ``validation`` split, which is carved out of
  the paper's T and never touches E (``patience`` epochs without improvement).
* ``TensorBoard`` logs in ``<output>/logs`` and a ``CSVLogger`` history ``<output>/history.csv``.
* A throughput meter: images per second over the training steps (the first
  ``warmup_steps`` steps, which include tracing, excluded).

The multi-image networks need ν images of one θ per validation sample; the paper preset's
validation split holds whole configurations for that reason. A validation split with fewer than
ν images of every θ (the ``tiny`` preset) cannot provide one; then the run monitors the training
loss instead (stated in ``training.json`` and printed).

Distribution: ``strategy="mirrored"`` (all local GPUs) or ``"multi_worker"`` (every worker runs
the same command with its ``TF_CONFIG``) builds and compiles the model in the strategy's scope;
Keras splits each global batch (the paper's 16 or 8) across the replicas. Under
``multi_worker`` every worker runs the whole input pipeline and keeps its slice of every global
batch (:func:`hagg_tf.training.runtime.distribute_input`). The chief writes the run folder;
every other worker writes the same files (backup, history, best and last model, training.json)
into its own ``<output>/workers/worker-<id>`` (:func:`hagg_tf.training.runtime.worker_run_dir`),
and resumes and reports completion from there; only the chief writes TensorBoard logs.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Optional, Sequence, Union

import numpy as np

from hagg_tf.tensorflow_import import import_tensorflow_quietly
from hagg_tf.training.runtime import (STRATEGIES, WORKERS, distribute_input, is_chief,
                                      make_strategy, prepare_model_for_fit, worker_run_dir)

#: Default patience (epochs without improvement of the monitored loss) of early stopping.
DEFAULT_PATIENCE = 20
#: Steps at the start of a run left out of the throughput (tracing, pipeline warm-up).
DEFAULT_WARMUP_STEPS = 2
#: File names inside the output directory.
BEST_MODEL = "best.keras"
LAST_MODEL = "last.keras"
HISTORY = "history.csv"
SUMMARY = "training.json"
BACKUP = "backup"
LOGS = "logs"


class TrainingError(RuntimeError):
    """A training run that cannot start (bad settings, unusable database, foreign output)."""


@dataclasses.dataclass
class TrainingResult:
    """What a call of :func:`train_network` did.

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


def _tensorboard_available() -> bool:
    """TensorBoard writes its logs through the ``tensorboard`` package (the ``ml`` extra)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _callbacks(keras, output_dir: pathlib.Path, monitor: str, patience: int, chief: bool,
               backup_dir: pathlib.Path, backup_every_steps: Optional[int],
               history_rows: list[dict], meter, checkpoint=None):
    """The callback list, in the order their ``on_train_begin`` must run.

    ``checkpoint`` replaces the ``ModelCheckpoint`` of the best epoch (the pooled runs of
    :mod:`hagg_tf.training.pooled` save the full network, not the model being fit).
    """

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
    callbacks.append(checkpoint or keras.callbacks.ModelCheckpoint(
        str(output_dir / BEST_MODEL), monitor=monitor, mode="min", save_best_only=True,
        initial_value_threshold=min(previous) if previous else None))
    callbacks.append(ResumableEarlyStopping(monitor=monitor, mode="min", patience=patience))
    # Last among the built-ins: its on_train_begin restores the weights and sets the initial
    # epoch, and its on_epoch_end runs after the history row has been written.
    callbacks.append(_backup_callback(keras, backup_dir, backup_every_steps))
    callbacks.append(meter)
    return callbacks


def _backup_callback(keras, backup_dir: pathlib.Path, backup_every_steps: Optional[int]):
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


def _write_json(path: pathlib.Path, value) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def train_network(name: str, dataset_dir: Union[str, os.PathLike],
                  output_dir: Union[str, os.PathLike], epochs: int = 200,
                  steps_per_epoch: Optional[int] = None, *,
                  validation_steps: Optional[int] = None, batch_size: Optional[int] = None,
                  num_images: Optional[int] = None, learning_rate: Optional[float] = None,
                  seed: int = 0, patience: int = DEFAULT_PATIENCE, strategy: str = "default",
                  backup_every_steps: Optional[int] = None, verify: str = "checksum",
                  stack_strategy: str = "fold_batch",
                  callbacks: Sequence[Any] = (), overwrite: bool = False,
                  warmup_steps: int = DEFAULT_WARMUP_STEPS, verbose: int = 2) -> TrainingResult:
    """Trains (or resumes training of) one network; see the module docstring.

    Args:
        name: network name (:data:`hagg_tf.networks.NETWORK_SPECS`).
        dataset_dir: database directory with ``manifest.json`` (:mod:`hagg_tf.data`).
        output_dir: run directory (created); holds backup, checkpoints, logs, history.
        epochs: epochs in total (a resumed run continues up to this number).
        steps_per_epoch: training steps per epoch; default: one pass over the ``train`` split
            (``hagg_tf.data.epoch_size``).
        validation_steps: validation batches per epoch; default: the whole split.
        batch_size: samples per step; default: the paper's (16 single-image, 8 multi-image).
        num_images: ν of the multi-image networks; default 12.
        learning_rate: Adam's learning rate; default the paper's 1e-4.
        seed: seed of weight initialisation, shuffling and augmentation. A resumed run draws
            its input stream with a seed derived from (seed, resume epoch), so it does not
            replay the batches of the epochs already trained.
        patience: early-stopping patience in epochs.
        strategy: ``"default"``, ``"mirrored"`` or ``"multi_worker"`` (see
            :func:`hagg_tf.training.runtime.make_strategy`).
        backup_every_steps: back up every this many steps within an epoch as well as at its
            end. A run interrupted mid-epoch resumes at the start of the unfinished epoch with
            the weights of its last step backup (Keras cannot start an epoch mid-way); the
            finished epochs and their history rows are kept.
        verify: database check before reading (``"checksum"``, ``"size"``, ``"none"``).
        stack_strategy: ``"fold_batch"`` or ``"time_distributed"`` (multi-image networks).
        callbacks: extra Keras callbacks (run after the built-in ones).
        overwrite: start from scratch even if ``output_dir`` holds a run (deletes it).
        warmup_steps: steps excluded from the throughput.
        verbose: Keras ``fit`` verbosity (0 silent, 1 progress bar, 2 one line per epoch).

    Returns:
        A :class:`TrainingResult`.

    Raises:
        TrainingError: unusable settings or database, or an output directory of another run.
    """
    tf = import_tensorflow_quietly()
    import keras

    from hagg_tf import networks
    from hagg_tf.data import DatasetError, epoch_size, load_manifest, network_dataset

    try:
        spec = networks.network_spec(name)
    except KeyError as error:
        raise TrainingError(str(error.args[0])) from None
    if epochs < 1:
        raise TrainingError(f"epochs must be at least 1, got {epochs}")
    if strategy not in STRATEGIES:
        raise TrainingError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    # First of all TensorFlow work: MultiWorkerMirroredStrategy must configure the collective
    # ops before any other op runs.
    distribution = make_strategy(strategy)
    chief = is_chief(distribution)
    requested_output = pathlib.Path(output_dir)
    # Everything below reads and writes this worker's own run folder (the requested one on the
    # chief), so that the workers of a cluster resume and finish from consistent state.
    output_dir = worker_run_dir(requested_output, distribution)
    dataset_dir = pathlib.Path(dataset_dir)
    num_images = networks.DEFAULT_NUM_IMAGES if num_images is None else int(num_images)
    batch_size = spec.batch_size if batch_size is None else int(batch_size)
    learning_rate = networks.LEARNING_RATE if learning_rate is None else float(learning_rate)

    summary_path = output_dir / SUMMARY
    if output_dir.exists() and overwrite:
        import shutil

        # Only ever delete what a training run wrote, never a directory given by mistake.
        known = {BACKUP, LOGS, BEST_MODEL, LAST_MODEL, HISTORY, SUMMARY, WORKERS}
        foreign = [child.name for child in output_dir.iterdir()
                   if child.name not in known and not child.name.startswith(".")]
        if foreign:
            raise TrainingError(f"{output_dir} holds files that no training run wrote "
                                f"({', '.join(sorted(foreign)[:3])}); not deleting it")
        if int(distribution.num_replicas_in_sync) > 1 and chief and \
                (output_dir / WORKERS).is_dir():
            # the other workers delete their own folders, perhaps at this very moment
            for child in output_dir.iterdir():
                if child.name != WORKERS:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(output_dir)
    if summary_path.is_file():
        previous = json.loads(summary_path.read_text())
        if previous.get("network") != name:
            raise TrainingError(f"{output_dir} holds a run of {previous.get('network')!r}, not "
                                f"{name!r}; use another --output")
        if previous.get("status") == "complete" and previous.get("epochs") >= epochs:
            return TrainingResult(output_dir, {}, 0, previous.get("final_epoch", 0),
                                  previous.get("final_epoch", 0),
                                  previous.get("stopped_early", False),
                                  math.nan, previous.get("monitor", "val_loss"),
                                  output_dir / BEST_MODEL if (output_dir / BEST_MODEL).exists()
                                  else None, output_dir / LAST_MODEL, already_complete=True)

    try:
        manifest = load_manifest(dataset_dir)
    except DatasetError as error:
        raise TrainingError(str(error)) from None
    image_size = int(manifest["image"]["height"])
    if int(manifest["image"]["width"]) != image_size:
        raise TrainingError(f"{dataset_dir}: images of {manifest['image']['height']}×"
                            f"{manifest['image']['width']} px; the networks take square images")
    if image_size < networks.minimum_image_size():
        raise TrainingError(f"{dataset_dir}: images of {image_size} px are smaller than the "
                            f"networks' minimum {networks.minimum_image_size()} px")

    output_dir.mkdir(parents=True, exist_ok=True)
    resume_epoch = backup_epoch(output_dir)
    _truncate_history(output_dir, resume_epoch)
    history_rows = read_history(output_dir)
    # A plain int: the pipeline mixes the seed with Python integer operations.
    data_seed = int(seed) if resume_epoch == 0 else int(
        np.random.SeedSequence([seed, resume_epoch]).generate_state(1)[0]) & 0x7FFFFFFF
    multi = {"num_images": num_images} if spec.multi_image else {}
    try:
        train_data = distribute_input(network_dataset(
            dataset_dir, name, "train", batch_size=batch_size, seed=data_seed, verify=verify,
            **multi), distribution)
        train_steps = epoch_size(dataset_dir, name, "train", batch_size=batch_size,
                                 num_images=num_images).steps
    except (DatasetError, ValueError) as error:
        raise TrainingError(f"{dataset_dir}: {error}") from None
    steps_per_epoch = train_steps if steps_per_epoch is None else int(steps_per_epoch)
    if steps_per_epoch < 1:
        raise TrainingError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    validation_note = None
    try:
        validation_data = distribute_input(network_dataset(
            dataset_dir, name, "validation", batch_size=batch_size, verify="none", **multi),
            distribution)
        monitor = "val_loss"
    except ValueError as error:
        validation_data, monitor = None, "loss"
        validation_note = (f"no validation samples ({error}); early stopping and the best "
                           "checkpoint use the training loss")
        if verbose:
            print(f"{name}: {validation_note}")

    backup_dir = output_dir / BACKUP
    keras.utils.set_random_seed(seed)
    with distribution.scope():
        model = networks.build_network(name, image_size=image_size, num_images=num_images,
                                       stack_strategy=stack_strategy)
        networks.compile_network(model, learning_rate=learning_rate)
    prepare_model_for_fit(model, distribution)
    images_per_step = batch_size * (num_images if spec.multi_image else 1)
    meter = _throughput_meter(keras, images_per_step, warmup_steps)
    callback_list = _callbacks(keras, output_dir, monitor, patience, chief, backup_dir,
                               backup_every_steps, history_rows, meter) + list(callbacks)

    settings = {
        "network": name, "dataset": str(dataset_dir), "output": str(requested_output),
        "dataset_settings": manifest.get("settings", {}).get("config",
                                                             manifest.get("settings")),
        "image_size": image_size, "pixel_size_nm": _pixel_size(manifest),
        "num_images": num_images if spec.multi_image else 1, "batch_size": batch_size,
        "learning_rate": learning_rate, "loss": spec.loss, "epochs": epochs,
        "steps_per_epoch": steps_per_epoch, "train_records": manifest["splits"]["train"]["records"],
        "validation": validation_note or "validation split (part of T)", "monitor": monitor,
        "patience": patience, "seed": seed, "strategy": strategy,
        "replicas": int(distribution.num_replicas_in_sync), "chief": chief,
        "stack_strategy": stack_strategy,
        "tensorflow": tf.__version__, "keras": keras.__version__,
    }
    _write_json(summary_path, {**settings, "status": "running",
                               "resumed_from_epoch": resume_epoch})
    if verbose and chief and not _tensorboard_available():
        print(f"{name}: no TensorBoard logs (install tensorboard: pip install -e '.[ml]')")
    if verbose and resume_epoch:
        print(f"{name}: resuming from the backup after epoch {resume_epoch}")
    started = time.perf_counter()
    history = model.fit(train_data, validation_data=validation_data, epochs=epochs,
                        steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                        callbacks=callback_list, verbose=verbose)
    wall = time.perf_counter() - started
    rows = read_history(output_dir)
    final_epoch = backup_epoch(output_dir) or len(rows)
    stopped_early = final_epoch < epochs
    epochs_run = len(next(iter(history.history.values()), []))
    model.save(output_dir / LAST_MODEL)
    best = output_dir / BEST_MODEL
    _write_json(summary_path, {
        **settings, "status": "complete", "resumed_from_epoch": resume_epoch,
        "final_epoch": final_epoch, "stopped_early": stopped_early,
        "epochs_run_last_call": epochs_run, "wall_s_last_call": round(wall, 1),
        "images_per_second_last_call": _round_or_none(meter.images_per_second),
        "images_seen": final_epoch * steps_per_epoch * images_per_step,
        "best": {"path": BEST_MODEL if best.exists() else None,
                 **_best_row(rows, monitor)},
        "history_last": rows[-1] if rows else None,
    })
    return TrainingResult(output_dir, history.history, epochs_run, resume_epoch, final_epoch,
                          stopped_early, meter.images_per_second, monitor,
                          output_dir / BEST_MODEL if (output_dir / BEST_MODEL).exists()
                          else None, output_dir / LAST_MODEL)


def _pixel_size(manifest: dict) -> Optional[float]:
    image = manifest.get("image", {})
    for key in ("pixel_size_nm", "effective_pixel_size_nm"):
        if image.get(key) is not None:
            return float(image[key])
    config = (manifest.get("settings") or {}).get("config") or {}
    value = config.get("effective_pixel_size_nm") or config.get("pixel_size_nm")
    return None if value is None else float(value)


def _round_or_none(value: float, digits: int = 3):
    return None if value is None or math.isnan(value) else round(float(value), digits)


def _best_row(rows: list[dict], monitor: str) -> dict:
    values = [(row[monitor], row) for row in rows if monitor in row]
    if not values:
        return {}
    value, row = min(values, key=lambda item: item[0])
    return {"epoch": int(row.get("epoch", -1)) + 1, monitor: value}


def load_trained_network(output_dir: Union[str, os.PathLike], which: str = "best"):
    """The best (or last) model of a run directory, as a Keras model.

    Args:
        output_dir: run directory of :func:`train_network`.
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
