"""The amorphous carbon support film: its random structure, its shipped abTEM table, the loader."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hagg_tf.stem import crystals
from hagg_tf.stem.tables import (FILM_LABEL, HaadfTable, TableError, load_film_table, load_tables,
                                 tables_text)

ROOT = Path(__file__).resolve().parents[1]
FILM_THICKNESS_NM = (5.0, 10.0, 20.0)


@pytest.fixture(scope="module")
def film():
    return load_film_table()


def _min_image_distances(positions, extent):
    """(N,) distance of every atom to its nearest other atom, periodic box (brute force)."""
    delta = positions[:, None, :] - positions[None, :, :]
    delta -= extent * np.round(delta / extent)
    distance = np.sqrt((delta ** 2).sum(axis=-1))
    np.fill_diagonal(distance, np.inf)
    return distance.min(axis=1)


# --- the random structure ---------------------------------------------------------------------

def test_amorphous_structure_has_the_documented_density_and_hard_core():
    phase = crystals.AMORPHOUS_CARBON
    assert phase.density_g_cm3 == 2.0
    low, high = crystals.CARBON_FILM_DENSITY_RANGE_G_CM3
    assert low <= phase.density_g_cm3 <= high
    extent = np.array([12.0, 12.0, 30.0])
    positions = crystals.amorphous_positions(extent, phase.number_density_per_A3,
                                             phase.min_distance_angstrom, seed=3)
    # Mass density from the atoms actually placed: N · M / (N_A · V), V in cm³.
    density = len(positions) * phase.molar_mass_g_mol / 6.02214076e23 / (np.prod(extent) * 1e-24)
    assert density == pytest.approx(2.0, rel=2e-3)
    assert np.all(positions >= 0) and np.all(positions < extent)
    nearest = _min_image_distances(positions, extent)
    assert nearest.min() >= phase.min_distance_angstrom
    # Random, not a lattice: nearest-neighbour distances spread over a range (a hard-core gas
    # at packing fraction 0.14 has them from d to ~2.5 d).
    assert nearest.max() > 1.5 * phase.min_distance_angstrom
    # Spatially uniform: each third of the box along z holds a third of the atoms (± 5 σ).
    thirds = np.histogram(positions[:, 2], bins=3, range=(0, extent[2]))[0]
    assert np.all(np.abs(thirds - len(positions) / 3) < 5 * math.sqrt(len(positions) / 3))


def test_amorphous_structure_is_reproducible_from_its_seed():
    args = ([10.0, 10.0, 20.0], crystals.AMORPHOUS_CARBON.number_density_per_A3, 1.4)
    first = crystals.amorphous_positions(*args, seed=11)
    again = crystals.amorphous_positions(*args, seed=11)
    other = crystals.amorphous_positions(*args, seed=12)
    assert np.array_equal(first, again)
    assert len(other) == len(first) and not np.allclose(other, first)


def test_amorphous_structure_refuses_an_impossible_density():
    # Packing fraction 0.9 of hard spheres cannot be reached by random sequential addition.
    density = 0.9 / (math.pi / 6.0 * 1.4 ** 3)
    with pytest.raises(ValueError, match="too high"):
        crystals.amorphous_positions([6.0, 6.0, 6.0], density, 1.4, seed=0, max_batches=50)


def test_amorphous_slab_is_a_periodic_carbon_box():
    pytest.importorskip("ase")
    slab = crystals.amorphous_slab(crystals.AMORPHOUS_CARBON, 1.0, 2.0, seed=5)
    assert set(slab.get_chemical_symbols()) == {"C"}
    assert np.allclose(np.diag(np.asarray(slab.cell)), [10.0, 10.0, 20.0]) and slab.pbc.all()
    mass_density = slab.get_masses().sum() / 6.02214076e23 / (slab.get_volume() * 1e-24)
    assert mass_density == pytest.approx(2.0, rel=5e-3)


# --- the shipped table ------------------------------------------------------------------------

def test_shipped_film_table_loads_with_provenance(film):
    assert (film.material, film.phase, film.label) == ("C", "amorphous", FILM_LABEL)
    assert film.source == "hagg_tf:stem/data/carbon_film_table.csv"
    assert np.array_equal(film.thickness_nm, np.arange(41.0))
    provenance = film.provenance
    settings = provenance["settings"]
    # Same microscope and detector as the particle tables.
    particle = load_tables().provenance["settings"]
    for name in ("energy_ev", "semiangle_mrad", "defocus_angstrom", "bin_step_mrad",
                 "slice_thickness_angstrom", "exit_every_nm", "parametrization", "projection"):
        assert settings[name] == particle[name], name
    # The same grid sampling (it fixes the largest scattering angle) on a larger box.
    assert settings["lateral_nm"] / settings["gpts"] == pytest.approx(
        particle["lateral_nm"] / particle["gpts"], rel=1e-9)
    assert settings["lateral_nm"] > particle["lateral_nm"]
    assert provenance["structure"]["density_g_cm3"] == 2.0
    assert len(provenance["structure"]["structure_seeds"]) == settings["num_configs"]
    assert provenance["software"]["abtem"] and provenance["wall_time_s"] > 0
    assert film.sha256 and len(film.sha256) == 64


def test_shipped_film_signal_is_zero_without_film_and_grows_with_thickness(film):
    assert film(0.0) == 0.0 and film.intensity[0] < 1e-8
    assert np.all(np.diff(film.intensity) > 0)
    # Thin films scatter single-handedly: the signal is close to linear in thickness
    # (I(t)/t within 10 % of its 5-nm value up to 40 nm).
    per_nm = film.intensity[1:] / film.thickness_nm[1:]
    assert np.all(np.abs(per_nm[4:] / per_nm[4] - 1.0) < 0.10)


def test_shipped_film_thin_signal_matches_rutherford_scattering():
    # Independent physics (as in test_stem_tables): unscreened Rutherford scattering of 300 keV
    # electrons into the flat 55–250 mrad annulus, σ = 4πγ²Z²/(a₀²k⁴)(θ₁⁻² − θ₂⁻²), times the
    # number density of 2.0 g/cm³ carbon. Screening makes the real value somewhat smaller.
    wavelength, gamma, bohr = 0.019687, 1.0 + 300.0 / 510.999, 0.529177
    k = 2.0 * math.pi / wavelength
    sigma = 4.0 * math.pi * gamma ** 2 * 6 ** 2 / (bohr ** 2 * k ** 4) * (0.055 ** -2 - 0.250 ** -2)
    atoms_per_angstrom3 = 2.0 / 12.011 * 6.02214e23 * 1e-24
    expected_per_nm = atoms_per_angstrom3 * sigma * 10.0
    flat = load_film_table(column="intensity_flat")
    ratio = flat(5.0) / 5.0 / expected_per_nm
    assert 0.6 < ratio < 1.0, ratio


def test_sensitivity_detector_sees_less_than_the_flat_annulus(film):
    flat = load_film_table(column="intensity_flat")
    assert np.all(film.intensity[1:] < flat.intensity[1:])
    assert 0.6 < film(20.0) / flat(20.0) < 0.85


def test_film_is_far_fainter_than_the_particles(film):
    # Carbon (Z = 6) against W (Z = 74) and Ti (Z = 22): measured ratios of the mean particle
    # table to the film table at 5, 10 and 20 nm (docs/stem.md).
    particles = load_tables()
    # Measured: WO3 24.4–25.0, TiO2 5.8–5.9 (the sensitivity-weighted column).
    for material, (low, high) in {"WO3": (20.0, 30.0), "TiO2": (4.8, 7.0)}.items():
        chosen = [table for table in particles.tables if table.material == material]
        for thickness in FILM_THICKNESS_NM:
            ratio = np.mean([table(thickness) for table in chosen]) / film(thickness)
            assert low < ratio < high, (material, thickness, ratio)
            # Every single phase and orientation is at least 4× brighter than the film.
            assert min(table(thickness) for table in chosen) > 4.0 * film(thickness)


# --- the loader -------------------------------------------------------------------------------

def _film_file(tmp_path, rows, header="material,phase,orientation,thickness_nm,intensity"):
    path = tmp_path / "film.csv"
    path.write_text("# a film table\n" + header + "\n" + "\n".join(rows) + "\n")
    return path


def test_user_film_table_round_trips(tmp_path):
    table = HaadfTable("C", FILM_LABEL, "amorphous", "random", np.array([0.0, 1.0, 2.0]),
                       np.array([0.0, 1e-4, 2e-4]))
    path = tmp_path / "film.csv"
    path.write_text(tables_text([table], {"made_by": "test"}))
    loaded = load_film_table(path)
    assert np.array_equal(loaded.intensity, table.intensity)
    assert loaded.provenance == {"made_by": "test"} and loaded.source == str(path)
    assert loaded(1.5) == pytest.approx(1.5e-4)


@pytest.mark.parametrize("rows, message", [
    (["WO3,gamma,a,0,0", "WO3,gamma,a,1,0.001"], "unknown material 'WO3'"),
    (["C,amorphous,a,0,0", "C,amorphous,a,1,1e-4", "C,amorphous,b,0,0", "C,amorphous,b,1,1e-4"],
     "exactly one C/amorphous table"),
    (["C,graphite,a,0,0", "C,graphite,a,1,1e-4"], "exactly one C/amorphous table"),
    (["C,amorphous,a,1,1e-4", "C,amorphous,a,2,2e-4"], "must start at thickness 0"),
    (["C,amorphous,a,0,0", "C,amorphous,a,1,x"], "must be numbers"),
    (["C,amorphous,a,0,0", "C,amorphous,a,1,1.5"], "0 <= intensity <= 1"),
    (["C,amorphous,a,0,0"], "at least two rows"),
])
def test_malformed_film_tables_raise_errors_naming_the_file(tmp_path, rows, message):
    path = _film_file(tmp_path, rows)
    with pytest.raises(TableError, match=message) as error:
        load_film_table(path)
    assert str(path) in str(error.value)


def test_missing_film_file_and_particle_loader_refusal_name_the_file(tmp_path):
    with pytest.raises(TableError, match="not found") as error:
        load_film_table(tmp_path / "none.csv")
    assert "none.csv" in str(error.value)
    path = _film_file(tmp_path, ["C,amorphous,random,0,0", "C,amorphous,random,1,1e-4"])
    # The particle tables know WO3 and TiO2 only: a film file is not a particle table.
    with pytest.raises(TableError, match="unknown material 'C'") as error:
        load_tables(path)
    assert str(path) in str(error.value)


# --- computing it (abTEM) ---------------------------------------------------------------------

@pytest.mark.slow
def test_make_tables_computes_a_loadable_film_table(tmp_path):
    pytest.importorskip("abtem")
    output = tmp_path / "film.csv"
    args = ["--phases=C/amorphous", "--lateral_nm=0.64", "--gpts=256", "--max_thickness_nm=1",
            "--num_configs=2", "--num_positions=2", f"--work_dir={tmp_path / 'work'}",
            f"--film_output={output}"]
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "make_haadf_tables.py"), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = load_film_table(output)
    assert table.thickness_nm.tolist() == [0.0, 1.0]
    assert table.intensity[0] < 1e-8 and 0 < table.intensity[1] < 1e-3
    assert table.provenance["structure"]["atoms_per_structure"] > 0
    # Resume: the finished result is reused, not recomputed.
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "make_haadf_tables.py"), *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "1 of 1 tables already" in again.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "make_haadf_tables.py"),
                          "--phases=C/amorphous", "--orientations=tilt00.00",
                          f"--work_dir={tmp_path / 'work'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown orientation" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_one_step_thickness_series_keeps_its_entrance_plane():
    # abTEM's "every n slices" exit planes leave out the entrance when the slab is n slices
    # deep; the series must still start at thickness 0 with no signal.
    pytest.importorskip("abtem")
    from hagg_tf.stem import multislice
    settings = multislice.MultisliceSettings(max_thickness_nm=1.0, num_configs=2, num_positions=2)
    assert multislice.exit_planes(settings) == (-1, 4)
    orientation = multislice.orientations(crystals.RUTILE)[0]
    result = multislice.simulate_thickness_series(crystals.RUTILE, orientation, settings)
    assert result["thickness_nm"] == [0.0, 1.0]
    assert result["intensity"][0] < 1e-8 < result["intensity"][1]
