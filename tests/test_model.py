"""The stochastic 3D model: geometry, statistics, reproducibility, parameters (SPEC §3–4)."""

import math

import numpy as np
import pytest

from hagg_tf import (Aggregate, GeneratorConfig, ModelParameters, ParameterError, describe,
                     sample_aggregate)
from hagg_tf.evaluation.model_statistics import fig4_sample
from hagg_tf.model.batch import iter_aggregates, random_table2_params
from hagg_tf.model.descriptors import contact_graph, overlapping_pairs
from hagg_tf.model.generator import (GenerationError, eq8_distance, rng_for,
                                     sample_primary_cluster)
from hagg_tf.model.parameters import TIO2, WO3

SEED = 11


@pytest.fixture(scope="module")
def table2_draws():
    """300 aggregates with θ uniform on Table 2 (random θ per draw)."""
    indices = list(range(300))
    params = [random_table2_params(SEED, index) for index in indices]
    return list(iter_aggregates(params, SEED, indices))


def test_every_aggregate_is_connected_and_overlap_free(table2_draws):
    for aggregate in table2_draws:
        assert overlapping_pairs(aggregate.positions, aggregate.radii).shape[0] == 0
        graph = contact_graph(aggregate)
        import networkx as nx
        assert nx.is_connected(graph), f"index {aggregate.index} is not connected"


def test_draws_span_table2(table2_draws):
    fractal_dimensions = {aggregate.params.fractal_dimension for aggregate in table2_draws}
    sizes = {aggregate.params.wo3_cluster_size for aggregate in table2_draws}
    assert fractal_dimensions == {round(1.5 + 0.1 * i, 1) for i in range(11)}
    assert sizes == set(range(1, 7))


def test_particle_counts_follow_target_and_last_cluster_whole(table2_draws):
    for aggregate in table2_draws:
        params = aggregate.params
        largest = max(params.wo3_cluster_size, params.tio2_cluster_size)
        assert 20 <= aggregate.target_size <= 80
        assert aggregate.target_size <= aggregate.size < aggregate.target_size + largest
        # Without the last cluster the aggregate was still below its target.
        last = aggregate.cluster_ids == aggregate.cluster_ids.max()
        assert aggregate.size - last.sum() < aggregate.target_size


def test_primary_clusters_have_their_label_dependent_size(table2_draws):
    for aggregate in table2_draws:
        expected = {0: aggregate.params.wo3_cluster_size, 1: aggregate.params.tio2_cluster_size}
        cluster_ids = aggregate.cluster_ids
        assert np.array_equal(np.unique(cluster_ids), np.arange(cluster_ids.max() + 1))
        for cluster in np.unique(cluster_ids):
            members = cluster_ids == cluster
            labels = np.unique(aggregate.labels[members])
            assert labels.shape == (1,), "a primary cluster is homogeneous"
            assert members.sum() == expected[int(labels[0])]


def test_primary_clusters_are_connected(table2_draws):
    import networkx as nx
    for aggregate in table2_draws[:100]:
        graph = contact_graph(aggregate)
        for cluster in np.unique(aggregate.cluster_ids):
            nodes = np.flatnonzero(aggregate.cluster_ids == cluster).tolist()
            assert nx.is_connected(graph.subgraph(nodes))


def test_center_of_mass_at_origin(table2_draws):
    for aggregate in table2_draws:
        np.testing.assert_allclose(aggregate.center_of_mass(), 0.0, atol=1e-9)


def test_radii_are_lognormal_with_mean_12_and_sd_3(table2_draws):
    radii = np.concatenate([aggregate.radii for aggregate in table2_draws])
    assert radii.size > 10000
    # Standard errors: 3/√n ≈ 0.03 nm for the mean; a log-normal's log is normal.
    assert abs(radii.mean() - 12.0) < 0.15
    assert abs(radii.std() - 3.0) < 0.15
    log_radii = np.log(radii)
    skewness = ((log_radii - log_radii.mean()) ** 3).mean() / log_radii.std() ** 3
    assert abs(skewness) < 0.1


@pytest.mark.parametrize("mixing_ratio, wo3_size, tio2_size", [(0.3, 5, 2), (0.7, 2, 5)])
def test_cluster_labels_are_bernoulli_with_the_model_probability(mixing_ratio, wo3_size,
                                                                  tio2_size):
    # Paper Sec. 2.1.1: P(L = 1) = (1 − θ_ρ)θ_0 / ((1 − θ_ρ)θ_0 + θ_ρθ_1), written out here:
    # (0.7·5)/(0.7·5 + 0.3·2) = 0.854 and (0.3·2)/(0.3·2 + 0.7·5) = 0.146, far from 1/2 so that
    # labels swapped between the materials (P → 1 − P) cannot pass.
    expected = ((1 - mixing_ratio) * wo3_size
                / ((1 - mixing_ratio) * wo3_size + mixing_ratio * tio2_size))
    assert abs(expected - 0.5) > 0.35
    params = ModelParameters(1.8, mixing_ratio, wo3_size, tio2_size)
    tio2_clusters = total_clusters = 0
    for index in range(100):
        aggregate = sample_aggregate(params, seed=3, index=index)
        _, first_of_cluster, sizes = np.unique(aggregate.cluster_ids, return_index=True,
                                               return_counts=True)
        cluster_labels = aggregate.labels[first_of_cluster]
        # A cluster's size follows its label: θ_0 particles for WO3, θ_1 for TiO2.
        assert np.all(sizes[cluster_labels == TIO2] == tio2_size)
        assert np.all(sizes[cluster_labels == WO3] == wo3_size)
        tio2_clusters += int((cluster_labels == TIO2).sum())
        total_clusters += first_of_cluster.size
    share = tio2_clusters / total_clusters
    standard_error = math.sqrt(expected * (1 - expected) / total_clusters)
    assert abs(share - expected) < 4 * standard_error
    assert abs(share - (1 - expected)) > 20 * standard_error  # the swap is far out of reach


def test_homogeneous_thetas_give_homogeneous_aggregates():
    for mixing_ratio, label in ((1.0, 0), (0.0, 1)):
        aggregate = sample_aggregate(ModelParameters(2.0, mixing_ratio, 3, 4), seed=1, index=0)
        assert np.all(aggregate.labels == label)
        assert describe(aggregate).homogeneous


def test_same_seed_and_index_give_the_same_aggregate_whatever_the_workers():
    indices = [5, 0, 17, 3]
    params = [random_table2_params(7, index) for index in indices]
    serial = list(iter_aggregates(params, 7, indices, workers=1))
    parallel = list(iter_aggregates(params, 7, indices, workers=2))
    alone = sample_aggregate(params[2], seed=7, index=17)
    assert serial == parallel
    assert serial[2] == alone
    assert serial[0] != serial[1]


def test_rng_for_matches_seed_sequence_spawning():
    spawned = np.random.default_rng(np.random.SeedSequence(42).spawn(4)[3])
    assert rng_for(42, 3).random() == spawned.random()
    with pytest.raises(ValueError, match="non-negative"):
        rng_for(-1, 0)


def test_eq8_distance_reproduces_the_target_radius_of_gyration():
    # Two clusters of N_A and N_C equal spheres whose centroids are d apart have
    # R_g² = (N_A R_A² + N_C R_C²)/N + N_A N_C d²/N² — Eq. 8 inverts that for R_g of Eq. 5.
    size_a, size_b, radius, gyration_a, gyration_b = 7, 3, 12.0, 30.0, 15.0
    fractal_dimension, prefactor = 1.9, 1.3
    distance = eq8_distance(size_a, size_b, radius, gyration_a, gyration_b, fractal_dimension,
                            prefactor)
    total = size_a + size_b
    gyration_squared = ((size_a * gyration_a ** 2 + size_b * gyration_b ** 2) / total
                        + size_a * size_b * distance ** 2 / total ** 2)
    target = radius * (total / prefactor) ** (1 / fractal_dimension)
    assert math.sqrt(gyration_squared) == pytest.approx(target, rel=1e-12)
    assert eq8_distance(10, 1, 12.0, 500.0, 0.0, 2.0, 1.3) == 0.0  # negative square → 0


def test_primary_cluster_alone_is_connected_and_overlap_free():
    rng = np.random.default_rng(0)
    config = GeneratorConfig()
    for fractal_dimension in (1.5, 2.5):
        for size in (1, 2, 6):
            positions, radii, _ = sample_primary_cluster(size, fractal_dimension, config, rng)
            cluster = Aggregate(positions, radii, np.zeros(size), np.zeros(size))
            assert overlapping_pairs(positions, radii).shape[0] == 0
            assert describe(cluster).connected


@pytest.mark.parametrize("fractal_dimension", [1.5, 2.0, 2.5])
def test_mean_fractal_dimension_near_its_preset(fractal_dimension):
    sample = fig4_sample("fractal_dimension", 40, seed=5, values=[fractal_dimension])
    row = sample.table()[0]
    assert abs(row["mean"] - fractal_dimension) < 0.05, row
    assert 0.005 < row["std"] < 0.15, row  # spread around θ_Df, as in Fig. 4


@pytest.mark.slow
@pytest.mark.parametrize("parameter, tolerance", [("fractal_dimension", 0.05),
                                                  ("mixing_ratio", 0.03)])
def test_fig4_means_over_table2(parameter, tolerance):
    """Fig. 4: over 200 draws per preset value, the mean descriptor lies near the preset."""
    table = fig4_sample(parameter, 200, seed=2024, workers=2).table()
    for row in table:
        assert row["count"] >= 200
        assert abs(row["mean"] - row["preset"]) < tolerance, row


@pytest.mark.parametrize("values, message", [
    ((3.0, 0.5, 1, 1), "open interval"),
    ((1.0, 0.5, 1, 1), "open interval"),
    ((float("nan"), 0.5, 1, 1), "finite"),
    ((2.0, 1.2, 1, 1), r"\[0, 1\]"),
    ((2.0, -0.1, 1, 1), r"\[0, 1\]"),
    ((2.0, 0.5, 0, 1), "integer >= 1"),
    ((2.0, 0.5, 2.5, 1), "integer >= 1"),
    ((2.0, 0.5, 1, True), "integer >= 1"),
    ((2.0, "0.5", 1, 1), "real number"),
])
def test_invalid_theta_is_rejected_with_a_clear_message(values, message):
    with pytest.raises(ParameterError, match=message):
        ModelParameters(*values)


def test_generator_config_rejects_reversed_size_bounds():
    with pytest.raises(ParameterError, match="reversed"):
        GeneratorConfig(min_size=50, max_size=20)
    with pytest.raises(ParameterError, match="positive"):
        GeneratorConfig(radius_std=0.0)


def test_generator_config_lognormal_parameters_give_the_mean_and_sd():
    config = GeneratorConfig(radius_mean=10.0, radius_std=4.0)
    mu, sigma = config.lognormal_mu_sigma
    assert math.exp(mu + sigma ** 2 / 2) == pytest.approx(10.0)
    assert math.sqrt((math.exp(sigma ** 2) - 1) * math.exp(2 * mu + sigma ** 2)) == pytest.approx(4.0)


def test_edge_values_of_theta_work():
    for params in (ModelParameters(1.05, 0.0, 1, 1), ModelParameters(2.8, 1.0, 1, 9),
                   ModelParameters(2.5, 0.5, 6, 6), ModelParameters(1.5, 0.5, 12, 1)):
        aggregate = sample_aggregate(params, seed=2, index=0)
        assert overlapping_pairs(aggregate.positions, aggregate.radii).shape[0] == 0
        assert describe(aggregate).connected


def test_infeasible_theta_fails_with_a_clear_error_after_bounded_restarts():
    # Outside Table 2, Eq. 8 with k_f = 1.3 can ask for packings no spheres reach.
    with pytest.raises(GenerationError, match=r"Df=2.9.*within 20 restarts"):
        sample_aggregate(ModelParameters(2.9, 0.5, 6, 6), seed=2, index=0,
                         config=GeneratorConfig(max_restarts=20))
