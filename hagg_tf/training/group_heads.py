"""The ν-image head g of CNN^0 / CNN^1 fitted on frozen per-image features (Eq. 15).

f runs once per image; the head (dense 44 + ReLU, dense 1 + the network's output activation,
Table 3 layers 18–19) then sees the concatenated features of disjoint groups of ν images of one
θ, redrawn every epoch, and the epoch with the best validation MAE is kept. The shared backbone
(:mod:`hagg_tf.training.multitask`) trains its multi-image heads this way, and the evaluation
(:mod:`hagg_tf.evaluation.predict`) fits heads for the group sizes ν a network was not trained
for.
"""
from __future__ import annotations

import numpy as np

from hagg_tf.data.design import disjoint_groups

_CHUNK = 512


def predict_in_chunks(model, inputs: np.ndarray, chunk: int = _CHUNK) -> np.ndarray:
    """``model(inputs, training=False)`` over chunks of the first axis, as one numpy array."""
    return np.concatenate([np.asarray(model(inputs[start:start + chunk], training=False))
                           for start in range(0, len(inputs), chunk)])


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
        validation MAE of the kept epoch (inf without validation groups: the last epoch is
        kept).

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
    validation_groups = disjoint_groups(validation_labels["theta_id"], nu, seed=seed)
    validation_x = validation_features[validation_groups].reshape(len(validation_groups), width)
    validation_y = validation_labels["theta"][validation_groups[:, 0], column]
    best, best_weights = np.inf, head.get_weights()
    for epoch in range(epochs):
        groups = disjoint_groups(train_labels["theta_id"], nu, seed=seed * 100003 + epoch + 1)
        if not len(groups):
            raise ValueError(f"no θ of the train split has {nu} images")
        head.fit(train_features[groups].reshape(len(groups), width),
                 train_labels["theta"][groups[:, 0], column], batch_size=32, epochs=1,
                 verbose=0)
        if not len(validation_groups):
            continue  # nothing to choose by: the last epoch is kept
        mae = float(np.mean(np.abs(predict_in_chunks(head, validation_x)[:, 0] - validation_y)))
        if mae < best:
            best, best_weights = mae, head.get_weights()
    if len(validation_groups):
        head.set_weights(best_weights)
    return head, best
