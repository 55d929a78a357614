"""The ν-image head g of CNN^0 / CNN^1 fitted on frozen per-image features (Eq. 15).

f runs once per image; the head (dense 44 + ReLU, dense 1 + the network's output activation,
Table 3 layers 18–19) then sees the concatenated features of disjoint groups of ν images of one
θ, redrawn every epoch, and the epoch with the best validation MAE is kept. That MAE is the
estimator's own (:mod:`hagg_tf.estimation.estimators`): the head averaged over the ν rotations
of each validation group's stack, over :data:`VALIDATION_DRAWS` draws of disjoint groups: the
order of one draw alone would choose the epoch that fits that order, and its MAE would flatter
the head (docs/learning.md, "The shared backbone"). The shared backbone
(:mod:`hagg_tf.training.multitask`) trains its multi-image heads this way, and the evaluation
(:mod:`hagg_tf.evaluation.predict`) fits heads for the group sizes ν a network was not trained
for.
"""
from __future__ import annotations

import numpy as np

from hagg_tf.data.design import cyclic_subsets, disjoint_groups

_CHUNK = 512
#: Draws of disjoint validation groups the kept epoch is chosen by (their mean MAE).
VALIDATION_DRAWS = 3
# Seed offset between two validation draws (draw k uses seed + k · _DRAW_SEED_STEP).
_DRAW_SEED_STEP = 1000


def predict_in_chunks(model, inputs: np.ndarray, chunk: int = _CHUNK) -> np.ndarray:
    """``model(inputs, training=False)`` over chunks of the first axis, as one numpy array."""
    return np.concatenate([np.asarray(model(inputs[start:start + chunk], training=False))
                           for start in range(0, len(inputs), chunk)])


def rotated_stacks(group_features: np.ndarray) -> np.ndarray:
    """(G, ν, F) features of G groups → (G·ν, ν·F): every group's ν rotations
    (:func:`~hagg_tf.data.design.cyclic_subsets`), concatenated slot-major as the heads take
    them (rotation k of group g in row g·ν + k)."""
    groups, nu, width = group_features.shape
    return group_features[:, cyclic_subsets(nu, nu)].reshape(groups * nu, nu * width)


def mean_over_rotations(raw: np.ndarray, groups: int, nu: int) -> np.ndarray:
    """(G·ν,) head outputs of :func:`rotated_stacks` → (G,) float64 means per group."""
    return np.asarray(raw, np.float64).reshape(groups, nu).mean(axis=1)


def rotation_mean_outputs(head, features: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(G,) outputs of a head ``(b, ν·F) → (b, 1)`` on groups (G, ν) of rows into ``features``
    (n, F), each the mean over the ν rotations of the group's stack, as the estimators take it."""
    nu = groups.shape[1]
    return mean_over_rotations(predict_in_chunks(head, rotated_stacks(features[groups]))[:, 0],
                               len(groups), nu)


def validation_groups(theta_id: np.ndarray, nu: int, seed: int) -> list[np.ndarray]:
    """The :data:`VALIDATION_DRAWS` draws of disjoint ν-groups the kept epoch is chosen by."""
    return [disjoint_groups(theta_id, nu, seed=seed + draw * _DRAW_SEED_STEP)
            for draw in range(VALIDATION_DRAWS)]


def fit_group_head(network: str, nu: int, train_features: np.ndarray, train_labels: dict,
                   validation_features: np.ndarray, validation_labels: dict, *,
                   epochs: int = 60, seed: int = 0):
    """Fits a head g for ν-groups on frozen features (see the module docstring).

    Args:
        network: ``"wo3_cluster_size"`` or ``"tio2_cluster_size"``.
        nu: group size ν.
        train_features, validation_features: (n, F) f outputs of T's train / validation part.
        train_labels, validation_labels: their labels (``theta`` (n, 4), ``theta_id`` (n,)).
        epochs: passes, each over freshly drawn disjoint groups.
        seed: initialisation and group draws.

    Returns:
        ``(head, validation_mae)``: a Keras model (G, ν·F) → (G, 1) of raw outputs, and the
        validation MAE of the kept epoch, :func:`rotation_mean_outputs` over the draws of
        :func:`validation_groups` (inf without validation groups: the last epoch is kept).

    Raises:
        ValueError: no θ of the train split has ν images.
    """
    import keras

    from hagg_tf.networks.architecture import apply_head, network_spec

    keras.utils.set_random_seed(seed)
    column = network_spec(network).theta_column
    width = nu * train_features.shape[1]
    inputs = keras.Input((width,))
    head = keras.Model(inputs, apply_head(inputs, network_spec(network)))
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mean_squared_error")
    draws = [groups for groups in validation_groups(validation_labels["theta_id"], nu, seed)
             if len(groups)]
    best, best_weights = np.inf, head.get_weights()
    for epoch in range(epochs):
        groups = disjoint_groups(train_labels["theta_id"], nu, seed=seed * 100003 + epoch + 1)
        if not len(groups):
            raise ValueError(f"no θ of the train split has {nu} images")
        head.fit(train_features[groups].reshape(len(groups), width),
                 train_labels["theta"][groups[:, 0], column], batch_size=32, epochs=1,
                 verbose=0)
        if not draws:
            continue  # nothing to choose by: the last epoch is kept
        mae = float(np.mean([np.mean(np.abs(
            rotation_mean_outputs(head, validation_features, groups)
            - validation_labels["theta"][groups[:, 0], column])) for groups in draws]))
        if mae < best:
            best, best_weights = mae, head.get_weights()
    if draws:
        head.set_weights(best_weights)
    return head, best
