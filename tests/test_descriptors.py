"""Descriptors against values computed by hand on small hand-made aggregates (SPEC §5)."""

import math

import numpy as np
import pytest

from hagg_tf import Aggregate, describe
from hagg_tf.model.descriptors import (contact_pairs, fractal_dimension, observable_clusters,
                                       radius_of_gyration, summarize)


def make(positions, radii, labels):
    size = len(radii)
    return Aggregate(np.array(positions, dtype=float), np.array(radii, dtype=float),
                     np.array(labels), np.arange(size))


def test_chain_of_three_equal_spheres():
    chain = make([[0, 0, 0], [2, 0, 0], [4, 0, 0]], [1, 1, 1], [1, 1, 1])
    descriptors = describe(chain)
    # Contacts 0–1 and 1–2: Z_total = 2·2/3.
    assert descriptors.total_coordination == pytest.approx(4 / 3)
    assert descriptors.hetero_coordination == 0.0
    # Centre of mass at x = 2: R_g² = (4 + 0 + 4)/3.
    assert descriptors.radius_of_gyration == pytest.approx(math.sqrt(8 / 3))
    assert descriptors.fractal_dimension == pytest.approx(
        math.log(3 / 1.3) / math.log(math.sqrt(8 / 3)))
    assert descriptors.mixing_ratio == 0.0
    assert descriptors.tio2_cluster_size == 3.0
    assert math.isnan(descriptors.wo3_cluster_size)
    assert descriptors.connected


def test_triangle_of_touching_spheres():
    height = math.sqrt(3)
    triangle = make([[0, 0, 0], [2, 0, 0], [1, height, 0]], [1, 1, 1], [0, 1, 0])
    descriptors = describe(triangle)
    assert descriptors.total_coordination == pytest.approx(2.0)  # 3 contacts, 2·3/3
    # WO3 particles 0 and 2 each touch TiO2 particle 1: 2 hetero contacts → 2·2/3.
    assert descriptors.hetero_coordination == pytest.approx(4 / 3)
    assert descriptors.mixing_ratio == pytest.approx(2 / 3)
    assert descriptors.wo3_cluster_size == 2.0  # 0 and 2 touch each other
    assert descriptors.tio2_cluster_size == 1.0
    # Equal masses: R_g is the circumradius 2/√3.
    assert descriptors.radius_of_gyration == pytest.approx(2 / math.sqrt(3))


def test_two_material_pair():
    pair = make([[0, 0, 0], [0, 0, 5]], [2, 3], [0, 1])
    descriptors = describe(pair)
    assert descriptors.hetero_coordination == 1.0
    assert descriptors.total_coordination == 1.0
    assert descriptors.mixing_ratio == 0.5
    assert descriptors.tio2_cluster_size == 1.0
    assert descriptors.wo3_cluster_size == 1.0
    assert not descriptors.homogeneous
    # Masses 8 and 27 at z = 0 and 5: centre at 135/35, R_g² = Σ m (z − c)² / M.
    center = 27 * 5 / 35
    expected = math.sqrt((8 * center ** 2 + 27 * (5 - center) ** 2) / 35)
    assert descriptors.radius_of_gyration == pytest.approx(expected)
    # R_g = 2.4 < a = 2.5: Eq. 5 is undefined there.
    assert math.isnan(descriptors.fractal_dimension)


def test_contact_tolerance_is_one_percent():
    touching = make([[0, 0, 0], [2.0199, 0, 0]], [1, 1], [0, 0])
    apart = make([[0, 0, 0], [2.0201, 0, 0]], [1, 1], [0, 0])
    assert contact_pairs(touching.positions, touching.radii).tolist() == [[0, 1]]
    assert contact_pairs(apart.positions, apart.radii).shape == (0, 2)
    assert not describe(apart).connected


def test_observable_clusters_are_maximal_connected_same_label_sets():
    # A chain W–T–T–W–T: TiO2 clusters {1, 2} and {4}; WO3 clusters {0} and {3}.
    chain = make([[2 * i, 0, 0] for i in range(5)], [1] * 5, [0, 1, 1, 0, 1])
    assert sorted(map(sorted, observable_clusters(chain, 1))) == [[1, 2], [4]]
    assert sorted(map(sorted, observable_clusters(chain, 0))) == [[0], [3]]
    descriptors = describe(chain)
    assert descriptors.tio2_cluster_size == 1.5
    assert descriptors.wo3_cluster_size == 1.0
    assert descriptors.hetero_coordination == pytest.approx(2 * 3 / 5)  # W–T, T–W, W–T
    assert descriptors.total_coordination == pytest.approx(2 * 4 / 5)


def test_tio2_cluster_size_of_an_all_wo3_aggregate_is_nan_and_skipped_in_averages():
    wo3_only = describe(make([[0, 0, 0], [2, 0, 0]], [1, 1], [0, 0]))
    mixed = describe(make([[0, 0, 0], [2, 0, 0]], [1, 1], [1, 1]))
    assert math.isnan(wo3_only.tio2_cluster_size)
    assert wo3_only.homogeneous
    summary = summarize([wo3_only, mixed])
    assert summary["tio2_cluster_size"]["mean"] == 2.0
    assert summary["tio2_cluster_size"]["count"] == 1
    assert math.isnan(summary["tio2_cluster_size"]["std"])
    assert summary["total_coordination"]["count"] == 2


def test_fractal_dimension_uses_mass_weighted_gyration():
    positions = np.array([[0.0, 0, 0], [3.0, 0, 0], [6.0, 0, 0], [6.0, 3.0, 0]])
    radii = np.array([1.0, 2.0, 1.0, 1.0])
    masses = radii ** 3
    center = masses @ positions / masses.sum()
    gyration = math.sqrt(masses @ ((positions - center) ** 2).sum(axis=1) / masses.sum())
    assert radius_of_gyration(positions, radii) == pytest.approx(gyration)
    assert fractal_dimension(positions, radii) == pytest.approx(
        math.log(4 / 1.3) / math.log(gyration / radii.mean()))
