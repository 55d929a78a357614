"""Crystal structures, orientations and the abTEM driver of the HAADF table tool."""

import numpy as np
import pytest

pytest.importorskip("ase")

from hagg_tf.stem import crystals  # noqa: E402

# X-ray densities (g/cm³) of the cited refinements.
DENSITIES = {"TiO2/rutile": 4.25, "TiO2/anatase": 3.89, "WO3/gamma": 7.27, "WO3/delta": 7.30}


@pytest.mark.parametrize("key", sorted(crystals.PHASES))
def test_unit_cells_have_literature_density_and_sane_bonds(key):
    from ase.neighborlist import neighbor_list
    phase = crystals.PHASES[key]
    cell = phase.unit_cell()
    grams = cell.get_masses().sum() * 1.66053907e-24
    assert grams / (cell.get_volume() * 1e-24) == pytest.approx(DENSITIES[key], abs=0.02)
    metal = 22 if phase.material == "TiO2" else 74
    numbers = cell.get_atomic_numbers()
    assert np.count_nonzero(numbers == 8) == 2 * np.count_nonzero(numbers == metal) if metal == 22 \
        else np.count_nonzero(numbers == 8) == 3 * np.count_nonzero(numbers == metal)
    first, second, distance = neighbor_list("ijd", cell, 2.4)
    assert distance.min() > 1.6  # no colliding sites
    bonds = (numbers[first] == metal) & (numbers[second] == 8)
    coordination = np.bincount(first[bonds], minlength=len(cell))[numbers == metal]
    assert np.all(coordination == 6)  # octahedral Ti and W


def test_tilt_series_runs_from_100_to_010():
    angles = crystals.systematic_tilt_angles()
    assert len(angles) == 9 and angles[0] == 0.0 and angles[-1] == 90.0
    assert np.allclose(np.diff(angles), 11.25)
    cell = np.asarray(crystals.GAMMA_WO3.unit_cell().cell)
    start = crystals.viewing_direction(cell, 0.0)
    end = crystals.viewing_direction(cell, 90.0)
    np.testing.assert_allclose(start, cell[0] / np.linalg.norm(cell[0]), atol=1e-12)
    np.testing.assert_allclose(end, cell[1] / np.linalg.norm(cell[1]), atol=1e-12)
    steps = [np.degrees(np.arccos(np.clip(crystals.viewing_direction(cell, a) @
                                          crystals.viewing_direction(cell, b), -1, 1)))
             for a, b in zip(angles[:-1], angles[1:])]
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)


@pytest.mark.parametrize("key", ["TiO2/rutile", "WO3/gamma"])
def test_oriented_slab_keeps_the_crystal_density(key):
    phase = crystals.PHASES[key]
    cell = np.asarray(phase.unit_cell().cell)
    for direction in (crystals.viewing_direction(cell, 0.0), crystals.viewing_direction(cell, 45.0),
                      crystals.random_direction(3)):
        slab, ratio = crystals.oriented_slab(phase, direction, 1.28, 20.0)
        assert ratio == pytest.approx(1.0, abs=0.01)
        extent = np.diag(np.asarray(slab.cell))
        positions = slab.get_positions()
        assert np.all(positions >= 0) and np.all(positions < extent)
        assert 12.0 < extent[0] < 15.5 and 12.0 < extent[1] < 15.5 and extent[2] == pytest.approx(200.0)


@pytest.mark.slow
def test_tiny_multislice_run_is_a_fraction_of_the_beam():
    pytest.importorskip("abtem")
    from hagg_tf.stem import multislice
    settings = multislice.MultisliceSettings(max_thickness_nm=2.0, num_configs=2, num_positions=2)
    orientation = multislice.orientations(crystals.RUTILE)[-1]
    result = multislice.simulate_thickness_series(crystals.RUTILE, orientation, settings)
    assert result["thickness_nm"] == [0.0, 1.0, 2.0]
    assert result["total_intensity"][0] == pytest.approx(1.0, abs=1e-4)
    intensity = np.asarray(result["intensity"])
    assert intensity[0] < 1e-8 and 0 < intensity[1] < intensity[2] < 0.01
    assert np.all(np.asarray(result["intensity_flat"])[1:] > intensity[1:])
