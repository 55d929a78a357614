"""Training from a pooled cache (:mod:`hagg_tf.data.pooled`): the CPU path of the paper's nets.

The networks take 512 px preprocessed images and start with an average pooling. A *pooled twin*
of a network shares every layer after that pooling (and so every weight) with it but takes the
pooled images directly; training the twin on the cache trains the network itself, without
decoding a PNG or preprocessing an image per step. The saved checkpoints (``best.keras``,
``last.keras``) are the full networks, so everything downstream (export, characterize,
evaluation) is unchanged.

:class:`PooledCacheSource` is the batch source of :func:`hagg_tf.training.train` for this path
(``TrainingConfig.pooled_cache``); the run directory, Adam and the losses, resume, early
stopping, checkpoints and logs are the trainer's, as for the TFRecord pipeline. What differs:

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
import os
import pathlib
from typing import Optional, Union

import numpy as np

from hagg_tf.data.design import disjoint_groups
from hagg_tf.data.network_specs import network_spec
from hagg_tf.data.pooled import SETTINGS_FILE, PooledSplit, load_pooled_split, square_symmetry
from hagg_tf.training import trainer
# hardware_description moved to the trainer; re-exported for existing callers.
from hagg_tf.training.trainer import (SourceBatches, TrainingConfig, TrainingError,  # noqa: F401
                                      hardware_description)

#: ``ReduceLROnPlateau`` patience of the pooled CPU recipe (docs/learning.md) unless set.
DEFAULT_REDUCE_LR_PATIENCE = 1


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

    for layer in networks.head_layers(model):
        features = layer(features)
    return features


def _pooled_chain(model):
    """Side S of the pooled images and a function applying f's layers after its pooling."""
    from hagg_tf import networks

    feature_extractor = networks.get_feature_extractor(model)
    pooling = networks.input_pooling_layer(feature_extractor)
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
    spec = network_spec(network)
    if spec.multi_image:
        samples = disjoint_groups(split.labels["theta_id"], num_images,
                                  seed=int(rng.integers(2 ** 31)))
    else:
        samples = np.arange(len(split), dtype=np.int64)
        if spec.is_classifier and training:
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


def random_symmetry(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random element of the square's symmetry group per image (uniform over all 8)."""
    # Two draws (turns, then reflections), as the recipes of the shipped networks drew them.
    turns = rng.integers(0, 4, size=len(images))
    flips = rng.integers(0, 2, size=len(images))
    out = np.empty_like(images)
    for k, image in enumerate(images):
        out[k] = square_symmetry(image[np.newaxis], int(turns[k] + 4 * flips[k]))[0]
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
                images = random_symmetry(images, rng)
            if spec.multi_image:
                images = images.reshape(rows.shape + images.shape[1:])
                targets = split.labels["theta"][rows[:, 0], spec.theta_column]
            else:
                targets = split.labels[spec.image_label][rows]
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
    return recalibrate_batch_norm_layers(layers, twin, batches, max_batches)


def recalibrate_batch_norm_layers(layers, forward, batches, max_batches: int) -> int:
    """Sets the moving averages of batch-norm ``layers`` to their mean batch statistics.

    Args:
        layers: BatchNormalization layers.
        forward: a model through which ``batches``' inputs reach those layers.
        batches: indexable batches ``(inputs, targets)``.
        max_batches: batches to average (spread evenly over ``batches``).

    Returns:
        The number of batches used.
    """
    momenta = [layer.momentum for layer in layers]
    picks = np.unique(np.linspace(0, len(batches) - 1, min(max_batches, len(batches))).astype(int))
    try:
        for count, index in enumerate(picks):
            # momentum k/(k+1) at the k-th batch makes the moving value the running mean.
            for layer in layers:
                layer.momentum = count / (count + 1)
            forward(batches[int(index)][0], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(picks)


def _validation_callback(keras, model, twin, train_batches, validation_batches, spec,
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
            if spec.loss == "binary_crossentropy":
                clipped = np.clip(output, 1e-7, 1 - 1e-7)
                logs["val_loss"] = float(-np.mean(target * np.log(clipped)
                                                  + (1 - target) * np.log(1 - clipped)))
                threshold = spec.classifier_threshold
                logs["val_accuracy"] = float(np.mean((output > threshold) == (target > threshold)))
            else:
                logs["val_loss"] = float(np.mean((output - target) ** 2))
                logs["val_mae"] = float(np.mean(np.abs(output - target)))

    return PreciseBatchNormValidation()



class PooledCacheSource:
    """Batches of a pooled cache (:mod:`hagg_tf.data.pooled`) for :func:`hagg_tf.training.train`.

    ``fit`` trains the network's pooled twin (:func:`pooled_twin`) on :func:`make_batches`; the
    validation part of T is scored, after the batch-norm re-estimation, by a callback that runs
    before the trainer's own (see the module docstring).

    Args:
        cache_dir: the cache, built from ``dataset_dir`` with the architecture's input pooling.
        dataset_dir: the database the cache was built from (checked against the cache).
        calibration_batches: training batches averaged by the batch-norm re-estimation.
    """

    description = "pooled cache"

    def __init__(self, cache_dir: Union[str, os.PathLike], dataset_dir: Union[str, os.PathLike],
                 calibration_batches: int = 64):
        self.cache_dir = pathlib.Path(cache_dir)
        self.dataset_dir = pathlib.Path(dataset_dir)
        self.calibration_batches = int(calibration_batches)
        self._validation_batches = None

    def image_size(self, config: TrainingConfig) -> int:
        """Side of the cached database's images, after checking the cache fits ``config``."""
        from hagg_tf.networks.architecture import get_architecture

        if config.strategy != "default":
            raise TrainingError(f"strategy {config.strategy!r} is not supported with a pooled "
                                "cache (the pooled path trains in one process)")
        if config.stack_strategy != "fold_batch":
            raise TrainingError("a pooled cache trains fold_batch networks only, not "
                                f"{config.stack_strategy!r}")
        settings_path = self.cache_dir / SETTINGS_FILE
        if not settings_path.is_file():
            raise TrainingError(f"{self.cache_dir}: no pooled cache")
        cache_settings = json.loads(settings_path.read_text())
        architecture = get_architecture(config.architecture)
        if int(cache_settings["pooling"]) != architecture.input_pooling:
            raise TrainingError(
                f"{self.cache_dir} pools {cache_settings['pooling']}×{cache_settings['pooling']}, "
                f"the {architecture.name} architecture "
                f"{architecture.input_pooling}×{architecture.input_pooling}")
        return int(cache_settings["image_size"])

    def open(self, config: TrainingConfig, resume_epoch: int, distribution,
             verbose: int) -> SourceBatches:
        """The run's training batches (epoch plans from (seed, epoch), so a resumed run continues
        with exactly the batches it would have seen) and validation batches."""
        import keras

        train_split = load_pooled_split(self.cache_dir, "train", self.dataset_dir)
        validation_split = load_pooled_split(self.cache_dir, "validation", self.dataset_dir)
        train_batches = make_batches(keras, train_split, config.network, config.batch_size,
                                     config.seed, True, config.num_images,
                                     first_epoch=resume_epoch,
                                     max_batches=config.steps_per_epoch)
        self._validation_batches = make_batches(keras, validation_split, config.network,
                                                config.batch_size, config.seed, False,
                                                config.num_images)
        if len(train_batches) == 0:
            raise TrainingError(f"{self.cache_dir}: the train split holds no batch of "
                                f"{config.batch_size} samples for {config.network}")
        if len(self._validation_batches):
            monitor, note = "val_loss", "validation split (part of T)"
        else:
            # As the TFRecord pipeline: without validation samples the training loss decides.
            monitor = "loss"
            note = (f"no validation samples of {config.network} in the validation split; early "
                    "stopping and the best checkpoint use the training loss")
            if verbose:
                print(f"{config.network}: {note}")
        pooling = json.loads((self.cache_dir / SETTINGS_FILE).read_text())["pooling"]
        return SourceBatches(
            train_batches, len(train_batches), monitor, note, {},
            {"input": f"pooled cache {self.cache_dir.name} ({pooling}x{pooling})",
             "augmentation": "8 symmetries of the square",
             "batch_norm": f"re-estimated on {self.calibration_batches} training batches every "
                           "epoch"})

    def model_to_fit(self, model, keras):
        """The pooled twin of ``model`` (shares all its weights)."""
        return pooled_twin(model, keras)

    def callbacks(self, keras, model, fit_model, batches: SourceBatches) -> list:
        """The batch-norm re-estimation and validation, before the trainer's callbacks (which
        read the validation loss it logs)."""
        return [_validation_callback(keras, model, fit_model, batches.train,
                                     self._validation_batches, network_spec(model.name),
                                     self.calibration_batches)]


def train_pooled_network(name: str, cache_dir: Union[str, os.PathLike],
                         output_dir: Union[str, os.PathLike], *,
                         dataset_dir: Union[str, os.PathLike], architecture: str = "compact",
                         epochs: int = 30, patience: int = 4,
                         reduce_lr_patience: Optional[int] = DEFAULT_REDUCE_LR_PATIENCE,
                         verbose: int = 2, **settings) -> trainer.TrainingResult:
    """:func:`hagg_tf.training.train` from a pooled cache, with the CPU recipe's defaults.

    Args:
        name: network name.
        cache_dir: pooled cache of the database (:func:`hagg_tf.data.pooled.build_pooled_cache`)
            whose pooling equals the architecture's input pooling.
        output_dir: run directory.
        dataset_dir: the database the cache was built from (checked against the cache).
        architecture, epochs, patience, reduce_lr_patience: :class:`TrainingConfig` fields, with
            this path's defaults (compact, 30 epochs, patience 4, learning rate ×0.3 after one
            epoch without improvement).
        verbose: Keras ``fit`` verbosity.
        **settings: further :class:`TrainingConfig` fields (``batch_size``, ``learning_rate``,
            ``num_images``, ``seed``, ``max_wall_seconds``, ``calibration_batches``,
            ``steps_per_epoch``, ``init_from``, ...).

    Returns:
        A :class:`hagg_tf.training.TrainingResult`.
    """
    config = TrainingConfig(name, dataset_dir, output_dir, epochs=epochs, patience=patience,
                            architecture=architecture, pooled_cache=cache_dir,
                            reduce_lr_patience=reduce_lr_patience, **settings)
    return trainer.train(config, verbose=verbose)
