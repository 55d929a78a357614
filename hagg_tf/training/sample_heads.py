"""Fitting the sample heads of θ̂_Df and θ̂_ρ (:mod:`hagg_tf.data.sample_heads`).

The heads see the summaries of groups of images of one θ, drawn afresh every epoch: each epoch
draws :data:`DRAWS_PER_EPOCH` group sizes ν uniformly from
:data:`~hagg_tf.data.sample_heads.GROUP_SIZE_RANGE` and cuts the training split into disjoint
ν-groups (:func:`~hagg_tf.data.design.disjoint_groups`), so that one head serves every number of
images a user brings. The loss is the mean absolute error against the group's θ column (the
quantity the paper reports); the epoch with the least validation MAE, averaged over groups of
:data:`VALIDATION_GROUP_SIZES`, is kept. The per-image outputs are those of the trained networks
in inference mode, so fitting costs seconds per epoch on 2 cores.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from hagg_tf.data.design import disjoint_groups
from hagg_tf.data.network_specs import THETA_COLUMNS
from hagg_tf.data.sample_heads import (GROUP_SIZE_RANGE, SAMPLE_HEAD_HIDDEN_UNITS,
                                       SAMPLE_HEAD_TARGETS, SUMMARY_FEATURES, SampleHeads,
                                       summary_features)

#: Group sizes drawn per epoch (each gives one pass over the training split in groups).
DRAWS_PER_EPOCH = 3
#: Group sizes of the validation groups the kept epoch is chosen by.
VALIDATION_GROUP_SIZES = (6, 12, 18)
#: Keys of the per-image outputs the heads take, in the argument order of
#: :func:`~hagg_tf.data.sample_heads.summary_features`.
OUTPUT_KEYS = ("fractal_dimension", "mixing_ratio_regressor", "mixing_ratio_classifier")


def group_summaries(outputs: Mapping[str, np.ndarray], groups: np.ndarray) -> np.ndarray:
    """(G, K) summaries of the groups (G, ν) of rows into the per-image ``outputs``."""
    return summary_features(*(np.asarray(outputs[key], np.float32)[groups]
                              for key in OUTPUT_KEYS))


def _validation_sets(outputs, labels, seed):
    sets = []
    for nu in VALIDATION_GROUP_SIZES:
        groups = disjoint_groups(labels["theta_id"], nu, seed=seed)
        if len(groups):
            sets.append((group_summaries(outputs, groups), groups[:, 0]))
    return sets


def fit_sample_heads(train_outputs: Mapping[str, np.ndarray], train_labels: Mapping,
                     validation_outputs: Mapping[str, np.ndarray], validation_labels: Mapping,
                     *, epochs: int = 120, seed: int = 0) -> tuple[SampleHeads, dict]:
    """Fits one head per :data:`~hagg_tf.data.sample_heads.SAMPLE_HEAD_TARGETS`.

    Args:
        train_outputs, validation_outputs: ``{key: (n,)}`` per-image outputs of the networks
            (:data:`OUTPUT_KEYS`) on the train / validation split.
        train_labels, validation_labels: their labels (``theta`` (n, 4), ``theta_id`` (n,)).
        epochs: epochs per head.
        seed: initialisation and group draws.

    Returns:
        ``(heads, {target: validation MAE of the kept epoch})``; the MAE is None when the
        validation split has no group (the last epoch is kept).

    Raises:
        ValueError: ``epochs`` < 1 or an empty train split.
    """
    import keras

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if not len(train_labels["theta_id"]):
        raise ValueError("the train split has no images to fit the sample heads on")
    train_theta = np.asarray(train_labels["theta"], np.float64)
    validation_theta = np.asarray(validation_labels["theta"], np.float64)
    validation = _validation_sets(validation_outputs, validation_labels, seed)
    # ν is drawn up to the most images any θ of the split has, so that every draw gives groups.
    largest = min(GROUP_SIZE_RANGE[1],
                  int(np.unique(train_labels["theta_id"], return_counts=True)[1].max()))
    layers, report = {}, {}
    for target in SAMPLE_HEAD_TARGETS:
        column = THETA_COLUMNS[target]
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((len(SUMMARY_FEATURES),))
        x = inputs
        for units in SAMPLE_HEAD_HIDDEN_UNITS:
            x = keras.layers.Dense(units, activation="relu")(x)
        model = keras.Model(inputs, keras.layers.Dense(1)(x))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mean_absolute_error")
        draws = np.random.default_rng([seed, column])
        best, best_weights = np.inf, model.get_weights()
        for epoch in range(epochs):
            summaries, rows = [], []
            for draw in range(DRAWS_PER_EPOCH):
                nu = int(draws.integers(GROUP_SIZE_RANGE[0], largest + 1))
                groups = disjoint_groups(train_labels["theta_id"], nu,
                                         seed=seed * 100003 + epoch * DRAWS_PER_EPOCH + draw + 1)
                summaries.append(group_summaries(train_outputs, groups))
                rows.append(groups[:, 0])
            rows = np.concatenate(rows)
            model.fit(np.concatenate(summaries), train_theta[rows, column], batch_size=32,
                      epochs=1, verbose=0, shuffle=True)
            if not validation:
                continue
            mae = float(np.mean([np.mean(np.abs(
                _apply(model, summaries_v) - validation_theta[rows_v, column]))
                for summaries_v, rows_v in validation]))
            if mae < best:
                best, best_weights = mae, model.get_weights()
        if validation:
            model.set_weights(best_weights)
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        layers[target] = tuple((np.asarray(layer.kernel.numpy(), np.float32),
                                np.asarray(layer.bias.numpy(), np.float32)) for layer in dense)
        report[target] = round(best, 5) if validation else None
    return SampleHeads(layers), report


def _apply(model, summaries: np.ndarray) -> np.ndarray:
    return np.asarray(model(summaries, training=False))[:, 0]
