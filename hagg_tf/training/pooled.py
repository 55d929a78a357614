"""Training from a pooled cache (:mod:`hagg_tf.data.pooled`): the CPU path of the paper's nets.

The networks take 512 px preprocessed images and start with an average pooling. A *pooled twin*
of a network shares every layer after that pooling (and so every weight) with it but takes the
pooled images directly; training the twin on the cache trains the network itself, without
decoding a PNG or preprocessing an image per step. The saved checkpoints (``best.keras``,
``last.keras``) are the full networks, so everything downstream (export, characterize,
evaluation) is unchanged.

What stays as in :func:`hagg_tf.training.train_network`: the run directory layout, Adam and the
losses of :func:`hagg_tf.networks.compile_network`, ``BackupAndRestore`` (resume after an
interruption), early stopping on the validation part of T, best checkpoint, CSV history,
TensorBoard, ``training.json``. What differs:

* augmentation is the 8 symmetries of the square (random 90° rotation and reflection, which
  commute with the pooling), without the shifts of :mod:`hagg_tf.data.augment`;
* the epoch plan (order, classifier oversampling, ν-groups) is drawn from (seed, epoch), so a
  resumed run continues with exactly the batches it would have seen;
* a ν-sample is a group of ν images of one θ: each epoch cuts every θ's shuffled images into
  ⌊n/ν⌋ groups (two per θ of T for ν = 12), as the TFRecord pipeline does;
* batch normalisation is re-estimated at the end of every epoch ("precise BN"): its moving
  averages are replaced by the average batch statistics of ``calibration_batches`` training
  batches under the final weights, then the validation loss is computed. Measured on the compact
  CNN^Df after 3 epochs at learning rate 5e-4: the moving averages lag the weights so much that
  inference-mode validation MAE was 0.132 (bias +0.119) against 0.069 (bias +0.009) with batch
  statistics. The validation part is scored by this callback, not by ``fit``.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import shlex
import sys
import time
from typing import Optional, Union

import numpy as np

from hagg_tf.data.pooled import PooledSplit, load_pooled_split
from hagg_tf.data.design import disjoint_groups
from hagg_tf.training import trainer
from hagg_tf.tensorflow_import import import_tensorflow_quietly

#: Per-image label of each single-image network in a pooled split.
SINGLE_IMAGE_LABELS = {"fractal_dimension": "fractal_dimension",
                       "mixing_ratio_regressor": "mixing_ratio",
                       "mixing_ratio_classifier": "homogeneous"}
#: Column of ``theta`` each multi-image network estimates.
MULTI_IMAGE_THETA_COLUMNS = {"wo3_cluster_size": 2, "tio2_cluster_size": 3}


def pooled_twin(model, keras):
    """A model sharing all weights of ``model`` that takes pooled images.

    Args:
        model: a network of :func:`hagg_tf.networks.build_network` (fold-batch for ν-stacks).
        keras: the keras module.

    Returns:
        ``keras.Model`` with input ``(S, S, 1)`` or ``(ν, S, S, 1)``, S = H / input pooling,
        and the same output as ``model``.
    """
    from hagg_tf import networks

    spec = networks.network_spec(model.name)
    side, features_of = _pooled_chain(model)

    if spec.multi_image:
        num_images = int(model.input_shape[1])
        inputs = keras.Input((num_images, side, side, 1), name="pooled_images")
        folded = networks.FoldImageStack(name="fold_pooled_stack")(inputs)
        features = networks.UnfoldImageStack(num_images, name="unfold_pooled_stack")(
            features_of(folded))
        features = keras.layers.Flatten(name="concatenate_pooled_features")(features)
    else:
        inputs = keras.Input((side, side, 1), name="pooled_images")
        features = features_of(inputs)
    return keras.Model(inputs, apply_trained_head(model, features), name=f"{model.name}_pooled")


def apply_trained_head(model, features):
    """The head g (and output activation) of ``model`` applied to ``features`` (b, ν·112)."""
    from hagg_tf import networks

    for name in ("g_dense_44", "g_dense_1", networks.network_spec(model.name).output_name):
        features = model.get_layer(name)(features)
    return features


def _pooled_chain(model):
    """Side S of the pooled images and a function applying f's layers after its pooling."""
    from hagg_tf import networks

    feature_extractor = networks.get_feature_extractor(model)
    pooling = feature_extractor.get_layer("f_average_pooling")
    side = int(model.input_shape[-2]) // int(pooling.pool_size[0])
    chain = feature_extractor.layers[feature_extractor.layers.index(pooling) + 1:]

    def features_of(images):
        for layer in chain:
            images = layer(images)
        return images

    return side, features_of


def pooled_feature_extractor(model, keras):
    """f of ``model`` without its input pooling: ``(m, S, S, 1)`` pooled images → ``(m, 112)``.

    Shares the weights of ``model``.
    """
    side, features_of = _pooled_chain(model)
    inputs = keras.Input((side, side, 1), name="pooled_images")
    return keras.Model(inputs, features_of(inputs), name=f"{model.name}_pooled_f")


def epoch_plan(split: PooledSplit, network: str, batch_size: int, seed: int, epoch: int,
               training: bool, num_images: int = 12) -> list[np.ndarray]:
    """Rows of every batch of one epoch.

    Args:
        split: the pooled split.
        network: network name.
        batch_size: samples per batch.
        seed, epoch: what the plan is drawn from (a validation plan ignores ``epoch``).
        training: shuffle, oversample the classifier's minority class, drop a last partial
            batch; otherwise a fixed plan over the whole split.
        num_images: ν of the multi-image networks.

    Returns:
        Batches of rows: (b,) arrays for single-image networks, (b, ν) for multi-image ones.
    """
    rng = np.random.default_rng([int(seed), int(epoch) if training else 0, 0x504F4F4C])
    if network in MULTI_IMAGE_THETA_COLUMNS:
        samples = disjoint_groups(split.labels["theta_id"], num_images,
                                  seed=int(rng.integers(2 ** 31)))
    else:
        samples = np.arange(len(split), dtype=np.int64)
        if network == "mixing_ratio_classifier" and training:
            homogeneous = split.labels["homogeneous"].astype(bool)
            minority, majority = samples[homogeneous], samples[~homogeneous]
            if len(minority) > len(majority):
                minority, majority = majority, minority
            if len(minority) == 0:
                raise ValueError("cannot balance classes: one class is absent")
            # Every minority image is used ⌊n/m⌋ or ⌈n/m⌉ times, n in total.
            repeats = np.resize(rng.permutation(minority), len(majority))
            samples = np.concatenate([majority, repeats])
    if training:
        samples = samples[rng.permutation(len(samples))]
        count = (len(samples) // batch_size) * batch_size
        samples = samples[:count]
    return [samples[start:start + batch_size] for start in range(0, len(samples), batch_size)]


def _augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random element of the square's symmetry group per image (uniform over all 8)."""
    out = np.empty_like(images)
    turns = rng.integers(0, 4, size=len(images))
    flips = rng.integers(0, 2, size=len(images))
    for k, image in enumerate(images):
        image = np.rot90(image, turns[k], axes=(0, 1))
        out[k] = image[:, ::-1] if flips[k] else image
    return out


def make_batches(keras, split: PooledSplit, network: str, batch_size: int, seed: int,
                 training: bool, num_images: int = 12, first_epoch: int = 0,
                 max_batches: Optional[int] = None):
    """A ``keras.utils.PyDataset`` over the pooled split for ``network``.

    ``max_batches`` cuts every epoch to its first batches (an "epoch" of that many steps drawn
    from a fresh plan each time).
    """
    from hagg_tf import networks

    spec = networks.network_spec(network)
    inverted = spec.invert_intensities

    class PooledBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = int(first_epoch)
            self.plan = self._plan()

        def _plan(self):
            plan = epoch_plan(split, network, batch_size, seed, self.epoch, training,
                              num_images)
            return plan[:max_batches] if max_batches else plan

        def __len__(self):
            return len(self.plan)

        def __getitem__(self, index):
            rows = self.plan[index]
            flat = rows.reshape(-1)
            images = split.inputs(flat, inverted=inverted)
            if training:
                rng = np.random.default_rng([int(seed), self.epoch, int(index), 0x41554720])
                images = _augment(images, rng)
            if spec.multi_image:
                images = images.reshape(rows.shape + images.shape[1:])
                column = MULTI_IMAGE_THETA_COLUMNS[network]
                targets = split.labels["theta"][rows[:, 0], column]
            else:
                targets = split.labels[SINGLE_IMAGE_LABELS[network]][rows]
            return images, np.asarray(targets, np.float32)[:, np.newaxis]

        def on_epoch_end(self):
            if training:
                self.epoch += 1
                self.plan = self._plan()

    return PooledBatches()


def recalibrate_batch_norm(model, twin, batches, max_batches: int) -> int:
    """Sets f's batch-norm moving averages to the mean batch statistics under current weights.

    Args:
        model: the network (its feature extractor's BatchNormalization layers are updated).
        twin: a model sharing those layers that takes the batches' inputs.
        batches: indexable batches ``(inputs, targets)`` (e.g. :func:`make_batches`).
        max_batches: batches to average (spread evenly over ``batches``).

    Returns:
        The number of batches used.
    """
    import keras

    from hagg_tf.networks import get_feature_extractor

    layers = [layer for layer in get_feature_extractor(model).layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    picks = np.unique(np.linspace(0, len(batches) - 1, min(max_batches, len(batches))).astype(int))
    try:
        for count, index in enumerate(picks):
            # momentum k/(k+1) at the k-th batch makes the moving value the running mean.
            for layer in layers:
                layer.momentum = count / (count + 1)
            twin(batches[int(index)][0], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(picks)


def _validation_callback(keras, model, twin, train_batches, validation_batches, loss: str,
                         calibration_batches: int):
    class PreciseBatchNormValidation(keras.callbacks.Callback):
        """Re-estimates batch norm, then writes val_loss and the metric into the epoch logs."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            recalibrate_batch_norm(model, twin, train_batches, calibration_batches)
            if not len(validation_batches):
                return
            outputs, targets = [], []
            for index in range(len(validation_batches)):
                inputs, target = validation_batches[index]
                outputs.append(np.asarray(twin(inputs, training=False))[:, 0])
                targets.append(target[:, 0])
            output, target = np.concatenate(outputs), np.concatenate(targets)
            if loss == "binary_crossentropy":
                clipped = np.clip(output, 1e-7, 1 - 1e-7)
                logs["val_loss"] = float(-np.mean(target * np.log(clipped)
                                                  + (1 - target) * np.log(1 - clipped)))
                logs["val_accuracy"] = float(np.mean((output > 0.5) == (target > 0.5)))
            else:
                logs["val_loss"] = float(np.mean((output - target) ** 2))
                logs["val_mae"] = float(np.mean(np.abs(output - target)))

    return PreciseBatchNormValidation()


def _save_best_callback(keras, model, path: pathlib.Path, monitor: str,
                        initial: Optional[float]):
    class SaveBestFullNetwork(keras.callbacks.Callback):
        """Saves the full network (not the pooled twin) when ``monitor`` improves."""

        def __init__(self):
            super().__init__()
            self.best = math.inf if initial is None else float(initial)

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None or not value < self.best:
                return
            self.best = float(value)
            temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")
            model.save(temporary)
            os.replace(temporary, path)

    return SaveBestFullNetwork()


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


def train_pooled_network(name: str, cache_dir: Union[str, os.PathLike],
                         output_dir: Union[str, os.PathLike], *, architecture: str = "compact",
                         epochs: int = 30, batch_size: Optional[int] = None,
                         learning_rate: Optional[float] = None, num_images: int = 12,
                         seed: int = 0, patience: int = 4,
                         dataset_dir: Union[str, os.PathLike],
                         max_wall_seconds: Optional[float] = None,
                         calibration_batches: int = 64,
                         steps_per_epoch: Optional[int] = None,
                         reduce_lr_patience: Optional[int] = 1,
                         init_from: Optional[Union[str, os.PathLike]] = None,
                         verbose: int = 2) -> trainer.TrainingResult:
    """Trains (or resumes) one network from a pooled cache; see the module docstring.

    Args:
        name: network name.
        cache_dir: pooled cache of the database (:func:`hagg_tf.data.pooled.build_pooled_cache`)
            whose pooling equals the architecture's input pooling.
        output_dir: run directory (as :func:`hagg_tf.training.train_network`'s).
        architecture: feature extractor (:data:`hagg_tf.networks.ARCHITECTURES`).
        epochs: epochs in total (a resumed run continues up to this number).
        batch_size: samples per step (default: the paper's 16 / 8).
        learning_rate: Adam's (default: the paper's 1e-4).
        num_images: ν of the multi-image networks.
        seed: weights, epoch plans and augmentation.
        patience: early stopping on the validation loss, epochs.
        dataset_dir: the database the cache was built from (checked against the cache).
        max_wall_seconds: stop after the first epoch that ends past this many seconds of this
            call (the budget of a CPU run); a rerun resumes.
        calibration_batches: training batches averaged by the batch-norm re-estimation.
        steps_per_epoch: cut every epoch to this many steps (default: one pass over T).
        reduce_lr_patience: multiply the learning rate by 0.3 after this many epochs without
            improvement of the monitored loss (down to 1e-5); None keeps it constant.
        init_from: run directory of another network of the same architecture and image size
            whose feature extractor f (best checkpoint) initialises this one's at a fresh start
            (transfer learning: f is "largely consistent across all model parameters", Sec.
            2.3 of the paper); ignored when resuming.
        verbose: Keras ``fit`` verbosity.

    Returns:
        A :class:`hagg_tf.training.TrainingResult`.
    """
    tf = import_tensorflow_quietly()
    import keras

    from hagg_tf import networks

    spec = networks.network_spec(name)
    arch = networks.get_architecture(architecture)
    output_dir = pathlib.Path(output_dir)
    cache_dir = pathlib.Path(cache_dir)
    settings_path = cache_dir / "cache.json"
    if not settings_path.is_file():
        raise trainer.TrainingError(f"{cache_dir}: no pooled cache")
    cache_settings = json.loads(settings_path.read_text())
    if int(cache_settings["pooling"]) != arch.input_pooling:
        raise trainer.TrainingError(
            f"{cache_dir} pools {cache_settings['pooling']}×{cache_settings['pooling']}, the "
            f"{arch.name} architecture {arch.input_pooling}×{arch.input_pooling}")
    image_size = int(cache_settings["image_size"])
    batch_size = spec.batch_size if batch_size is None else int(batch_size)
    learning_rate = networks.LEARNING_RATE if learning_rate is None else float(learning_rate)
    summary_path = output_dir / trainer.SUMMARY
    previous_wall = 0.0
    if summary_path.is_file():
        previous = json.loads(summary_path.read_text())
        previous_wall = float(previous.get("wall_s_total") or 0.0)
        if previous.get("network") != name:
            raise trainer.TrainingError(f"{output_dir} holds a run of "
                                        f"{previous.get('network')!r}, not {name!r}")
        # As train_network: a run that early stopping ended is complete for the epochs it was
        # asked for, although it finished fewer.
        if previous.get("status") == "complete" and \
                previous.get("epochs", previous.get("final_epoch", 0)) >= epochs:
            return trainer.TrainingResult(output_dir, {}, 0, previous["final_epoch"],
                                          previous["final_epoch"],
                                          previous.get("stopped_early", False), math.nan,
                                          previous.get("monitor", "val_loss"),
                                          output_dir / trainer.BEST_MODEL,
                                          output_dir / trainer.LAST_MODEL, already_complete=True)

    from hagg_tf.data import load_manifest

    pixel_size_nm = trainer._pixel_size(load_manifest(dataset_dir))
    train = load_pooled_split(cache_dir, "train", dataset_dir)
    validation = load_pooled_split(cache_dir, "validation", dataset_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_epoch = trainer.backup_epoch(output_dir)
    trainer._truncate_history(output_dir, resume_epoch)
    history_rows = trainer.read_history(output_dir)

    keras.utils.set_random_seed(seed)
    model = networks.build_network(name, image_size=image_size, num_images=num_images,
                                   architecture=arch.name)
    if init_from is not None and resume_epoch == 0:
        source = trainer.load_trained_network(init_from)
        try:
            networks.get_feature_extractor(model).set_weights(
                networks.get_feature_extractor(source).get_weights())
        except ValueError as error:
            raise trainer.TrainingError(f"--init_from={init_from}: its f does not fit this "
                                        f"network's ({error})") from None
    twin = pooled_twin(model, keras)
    networks.compile_network(twin, name, learning_rate=learning_rate)
    train_batches = make_batches(keras, train, name, batch_size, seed, True, num_images,
                                 first_epoch=resume_epoch, max_batches=steps_per_epoch)
    validation_batches = make_batches(keras, validation, name, batch_size, seed, False,
                                      num_images)
    if len(train_batches) == 0:
        raise trainer.TrainingError(f"{cache_dir}: the train split holds no batch of "
                                    f"{batch_size} samples for {name}")
    images_per_step = batch_size * (num_images if spec.multi_image else 1)
    meter = trainer._throughput_meter(keras, images_per_step, trainer.DEFAULT_WARMUP_STEPS)
    if len(validation_batches):
        monitor, validation_note = "val_loss", "validation split (part of T)"
    else:
        # As train_network: without validation samples the training loss decides.
        monitor = "loss"
        validation_note = (f"no validation samples of {name} in the validation split; early "
                           "stopping and the best checkpoint use the training loss")
        if verbose:
            print(f"{name}: {validation_note}")
    previous = [row[monitor] for row in history_rows if monitor in row]
    callbacks = [_validation_callback(keras, model, twin, train_batches, validation_batches,
                                      spec.loss, calibration_batches)]
    callbacks += trainer._callbacks(keras, output_dir, monitor, patience, True,
                                   output_dir / trainer.BACKUP, None, history_rows, meter,
                                   checkpoint=_save_best_callback(
                                       keras, model, output_dir / trainer.BEST_MODEL, monitor,
                                       min(previous) if previous else None))
    if reduce_lr_patience is not None:
        # After the built-ins: it reads the validation loss the first callback put in the logs.
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.3, patience=reduce_lr_patience, min_lr=1e-5, verbose=0))
    started = time.perf_counter()
    budget = None
    if max_wall_seconds is not None:
        class WallBudget(keras.callbacks.Callback):
            """Stops after the first epoch that ends past the budget.

            Runs after early stopping: an epoch that early stopping ended does not count as
            the budget's (``exhausted`` stays False).
            """

            exhausted = False

            def on_epoch_end(self, epoch, logs=None):
                if not self.model.stop_training and \
                        time.perf_counter() - started > max_wall_seconds:
                    self.exhausted = True
                    self.model.stop_training = True

        budget = WallBudget()
        callbacks.append(budget)
    settings = {
        "network": name, "architecture": arch.name, "dataset": str(dataset_dir),
        "input": f"pooled cache {cache_dir.name} ({arch.input_pooling}x{arch.input_pooling})",
        "image_size": image_size, "pixel_size_nm": pixel_size_nm,
        "num_images": num_images if spec.multi_image else 1, "batch_size": batch_size,
        "learning_rate": learning_rate, "loss": spec.loss, "epochs": epochs,
        "steps_per_epoch": len(train_batches), "train_records": len(train),
        "validation_records": len(validation), "validation": validation_note,
        "monitor": monitor, "patience": patience, "seed": seed,
        "command": shlex.join([pathlib.Path(sys.argv[0]).name if os.path.isabs(sys.argv[0])
                               else sys.argv[0], *sys.argv[1:]]),
        "hardware": hardware_description(), "max_wall_seconds": max_wall_seconds,
        "init_from": None if init_from is None else str(init_from),
        "augmentation": "8 symmetries of the square",
        "batch_norm": f"re-estimated on {calibration_batches} training batches every epoch",
        "learning_rate_schedule": ("constant" if reduce_lr_patience is None else
                                   f"x0.3 after {reduce_lr_patience} epoch(s) without "
                                   f"improvement of {monitor}, down to 1e-5"),
        "tensorflow": tf.__version__,
        "keras": keras.__version__, "parameters": int(model.count_params()),
    }
    trainer._write_json(summary_path, {**settings, "status": "running",
                                       "resumed_from_epoch": resume_epoch})
    history = twin.fit(train_batches, epochs=epochs, callbacks=callbacks, verbose=verbose)
    wall = time.perf_counter() - started
    rows = trainer.read_history(output_dir)
    final_epoch = trainer.backup_epoch(output_dir) or len(rows)
    epochs_run = len(next(iter(history.history.values()), []))
    temporary = output_dir / f".last.tmp-{os.getpid()}.keras"
    model.save(temporary)
    os.replace(temporary, output_dir / trainer.LAST_MODEL)
    best = output_dir / trainer.BEST_MODEL
    # Fewer epochs than asked for: the wall budget ran out (a rerun continues), or early
    # stopping ended the run (complete).
    out_of_budget = final_epoch < epochs and budget is not None and budget.exhausted
    stopped_early = final_epoch < epochs and not out_of_budget
    trainer._write_json(summary_path, {
        **settings, "status": "budget" if out_of_budget else "complete",
        "resumed_from_epoch": resume_epoch, "final_epoch": final_epoch,
        "stopped_early": stopped_early, "epochs_run_last_call": epochs_run,
        "wall_s_last_call": round(wall, 1), "wall_s_total": round(previous_wall + wall, 1),
        "images_per_second_last_call": trainer._round_or_none(meter.images_per_second),
        "wall_s_total_note": "sum over calls, including validation",
        "images_seen": final_epoch * len(train_batches) * images_per_step,
        "best": {"path": trainer.BEST_MODEL if best.exists() else None,
                 **trainer._best_row(rows, monitor)},
        "history_last": rows[-1] if rows else None,
    })
    return trainer.TrainingResult(output_dir, history.history, epochs_run, resume_epoch,
                                  final_epoch, stopped_early, meter.images_per_second, monitor,
                                  best if best.exists() else None,
                                  output_dir / trainer.LAST_MODEL)
