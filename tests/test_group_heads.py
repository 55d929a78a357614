"""The ν-image heads fitted on frozen features: selected on the estimator's own rotation mean."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from hagg_tf.data.design import cyclic_subsets  # noqa: E402
from hagg_tf.data.network_specs import network_spec  # noqa: E402
from hagg_tf.training.group_heads import (VALIDATION_DRAWS, fit_group_head,  # noqa: E402
                                          mean_over_rotations,
                                          rotated_stacks, rotation_mean_outputs,
                                          validation_groups)

NU, FEATURES, PER_THETA = 3, 5, 9


def _split(thetas: int, seed: int):
    """Features whose first column carries θ_0 plus noise; (features, labels)."""
    rng = np.random.default_rng(seed)
    theta_id = np.repeat(np.arange(thetas), PER_THETA)
    theta = np.zeros((len(theta_id), 4))
    theta[:, network_spec("wo3_cluster_size").theta_column] = rng.integers(1, 7, thetas)[theta_id]
    features = rng.normal(size=(len(theta_id), FEATURES)).astype(np.float32)
    features[:, 0] += theta[:, network_spec("wo3_cluster_size").theta_column]
    return features, {"theta": theta, "theta_id": theta_id}


def test_rotated_stacks_hold_every_rotation_slot_major():
    group_features = np.arange(2 * NU * 2, dtype=np.float32).reshape(2, NU, 2)
    stacks = rotated_stacks(group_features)
    assert stacks.shape == (2 * NU, NU * 2)
    for group in range(2):
        for rotation, order in enumerate(cyclic_subsets(NU, NU)):
            np.testing.assert_array_equal(stacks[group * NU + rotation],
                                          group_features[group, order].reshape(-1))
    np.testing.assert_array_equal(mean_over_rotations(np.arange(2 * NU), 2, NU), [1.0, 4.0])


def test_the_recorded_validation_mae_is_the_estimators_over_the_draws():
    # Before, the kept epoch was chosen (and its MAE recorded) on one draw of the validation
    # groups in one order, which the estimator never sees: the figure was optimistic.
    train_features, train_labels = _split(40, 0)
    validation_features, validation_labels = _split(12, 1)
    head, recorded = fit_group_head("wo3_cluster_size", NU, train_features, train_labels,
                                    validation_features, validation_labels, epochs=3, seed=0)
    column = network_spec("wo3_cluster_size").theta_column
    draws = validation_groups(validation_labels["theta_id"], NU, 0)
    assert len(draws) == VALIDATION_DRAWS
    assert not all(np.array_equal(draws[0], other) for other in draws[1:])
    expected = np.mean([np.mean(np.abs(
        rotation_mean_outputs(head, validation_features, groups)
        - validation_labels["theta"][groups[:, 0], column])) for groups in draws])
    assert recorded == pytest.approx(float(expected), rel=1e-5)
    # The rotation mean is the same for every rotation of a group's images.
    groups = draws[0]
    rotated = groups[:, cyclic_subsets(NU, NU)[1]]
    np.testing.assert_allclose(rotation_mean_outputs(head, validation_features, rotated),
                               rotation_mean_outputs(head, validation_features, groups),
                               rtol=1e-5)
