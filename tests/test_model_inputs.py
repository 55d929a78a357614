"""Seeds, indices and aggregate arrays entering the model API are checked, not coerced (issue 14)."""

import numpy as np
import pytest

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.batch import generate_to_directory, iter_aggregates, random_table2_params
from hagg_tf.model.generator import rng_for, sample_aggregate
from hagg_tf.model.parameters import MAX_SEED, GeneratorConfig, ModelParameters, ParameterError

THETA = ModelParameters(2.0, 0.5, 2, 2)
SMALL = GeneratorConfig(min_size=4, max_size=6)
# 1.7 used to draw seed 1's aggregate, '3' was accepted, 2**63 drew an aggregate no file could
# hold, and bools passed as 0/1.
BAD_SEEDS = [1.7, 3.0, "3", 2 ** 63, -1, True, np.float64(2.0), None]


@pytest.mark.parametrize("seed", BAD_SEEDS, ids=repr)
def test_sample_aggregate_rejects_seeds_that_are_not_storable_integers(seed):
    with pytest.raises(ParameterError, match=r"seed must be a non-negative integer below 2\*\*63"):
        sample_aggregate(THETA, seed, 0, SMALL)


@pytest.mark.parametrize("index", BAD_SEEDS, ids=repr)
def test_sample_aggregate_rejects_bad_indices(index):
    with pytest.raises(ParameterError, match=r"index must be a non-negative integer"):
        sample_aggregate(THETA, 1, index, SMALL)


@pytest.mark.parametrize("draw", [rng_for, random_table2_params,
                                  lambda seed, index: list(iter_aggregates([THETA], seed, [index],
                                                                           SMALL))])
def test_every_entry_point_of_the_model_checks_seed_and_index(draw):
    for bad in (1.7, "3", 2 ** 63, -1):
        with pytest.raises(ParameterError, match="seed"):
            draw(bad, 0)
        with pytest.raises(ParameterError, match="index"):
            draw(0, bad)


def test_generate_to_directory_checks_the_seed_before_writing(tmp_path):
    with pytest.raises(ParameterError, match="seed"):
        generate_to_directory(tmp_path / "out", lambda index: THETA, 2, 2 ** 63, SMALL,
                              progress=False)
    assert not (tmp_path / "out").exists()


def test_numpy_integer_seeds_draw_the_same_aggregate_as_python_ints():
    expected = sample_aggregate(THETA, 7, 3, SMALL)
    for seed, index in [(np.int64(7), np.int64(3)), (np.uint64(7), np.int32(3))]:
        drawn = sample_aggregate(THETA, seed, index, SMALL)
        assert drawn == expected
        assert type(drawn.seed) is int and type(drawn.index) is int
    assert sample_aggregate(THETA, MAX_SEED, 0, SMALL).seed == MAX_SEED


def _particles(**changes):
    fields = dict(positions=[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], radii=[1.0, 1.0], labels=[0, 1],
                  cluster_ids=[0, 1])
    fields.update(changes)
    return fields


@pytest.mark.parametrize("changes, message", [
    (dict(labels=[0.5, 1.5]), "labels must be whole numbers"),
    (dict(labels=[0, 257]), "labels must be whole numbers"),
    (dict(cluster_ids=[0, 0.25]), "cluster_ids must be whole numbers"),
    (dict(cluster_ids=[0, -1]), "cluster_ids must be non-negative"),
    (dict(seed=2 ** 63), "seed must be"),
    (dict(seed=1.5), "seed must be"),
    (dict(index=-2), "index must be"),
    (dict(target_size=2.5), "target_size must be an integer"),
    (dict(restarts=-1), "restarts must be an integer"),
])
def test_aggregate_refuses_values_it_would_silently_change_or_could_not_save(changes, message):
    with pytest.raises(ValueError, match=message):
        Aggregate(**_particles(**changes))


def test_aggregate_still_takes_whole_floats_and_numpy_integers():
    aggregate = Aggregate(**_particles(labels=np.array([0.0, 1.0]), cluster_ids=np.zeros(2),
                                       seed=np.int64(5), index=np.uint8(1), target_size=2))
    assert aggregate.labels.tolist() == [0, 1] and aggregate.seed == 5 and aggregate.index == 1
