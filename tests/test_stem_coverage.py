"""Field of view: which aggregates lie wholly inside the image (default pixel size, SPEC §6)."""

import numpy as np
import pytest

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.stem import DEFAULT_PIXEL_SIZE_NM, coverage


def test_projected_half_extent_includes_radius_and_uses_chebyshev_distance():
    aggregate = Aggregate(positions=[[-30.0, 0.0, 0.0], [30.0, 0.0, 5.0], [0.0, 40.0, -90.0]],
                          radii=[10.0, 10.0, 1.0], labels=[0, 1, 1], cluster_ids=[0, 1, 2])
    half = coverage.projected_half_extent(aggregate, center=np.zeros(2))
    assert half == pytest.approx(41.0)  # max(30 + 10, 40 + 1); z does not matter
    assert coverage.inside_fraction([100.0, 200.0, 300.0], 1.0, 512) == pytest.approx(2 / 3)
    assert coverage.smallest_pixel_size(np.full(10, 256.0), 0.99, 512) == pytest.approx(1.0)


def test_database_design_spans_table2():
    parameters = coverage.database_parameters(seed=0)
    assert len(parameters) == 648
    triples = {(p.mixing_ratio, p.wo3_cluster_size, p.tio2_cluster_size) for p in parameters}
    assert len(triples) == 324
    assert {p.fractal_dimension for p in parameters} <= {round(1.5 + 0.1 * i, 1) for i in range(11)}


def test_rendered_particles_outside_agree_with_half_extent():
    from hagg_tf.model.parameters import TIO2, WO3
    from hagg_tf.stem import HaadfTable, HaadfTables, render_stem
    thickness = np.array([0.0, 100.0])
    tables = HaadfTables([HaadfTable("WO3", WO3, "g", "o", thickness, thickness * 1e-3),
                          HaadfTable("TiO2", TIO2, "r", "o", thickness, thickness * 1e-4)])
    rng = np.random.default_rng(4)
    for trial in range(20):
        positions = rng.normal(scale=30.0, size=(8, 3))
        aggregate = Aggregate(positions=positions, radii=rng.uniform(3, 9, 8),
                              labels=rng.integers(0, 2, 8), cluster_ids=np.arange(8))
        image = render_stem(aggregate, seed=trial, tables=tables, pixel_size_nm=1.0, image_size=128,
                            shot_noise=False)
        fits = coverage.projected_half_extent(aggregate) <= 64.0
        assert (image.metadata["particles_outside"] == 0) == fits


@pytest.mark.slow
def test_default_pixel_size_keeps_99_percent_of_table2_aggregates_inside():
    extents, _ = coverage.measure_half_extents(per_parameter=2, seed=11, progress=False)
    assert coverage.inside_fraction(extents, DEFAULT_PIXEL_SIZE_NM, 512) >= 0.99
