"""HAADF reference tables: the shipped abTEM tables and the loader for user tables."""

import json
import math

import numpy as np
import pytest

from hagg_tf.model.parameters import TIO2, WO3
from hagg_tf.stem import HaadfTable, HaadfTables, TableError, load_tables
from hagg_tf.stem import detector

PHASES = {"WO3": {"gamma", "delta"}, "TiO2": {"rutile", "anatase"}}

# Independent physics for the thin-sample signal (not read off the tables): in the single-
# scattering limit the HAADF fraction per nm is n·σ, n the atoms per volume and σ the cross-section
# for scattering into the 55–250 mrad annulus. Unscreened Rutherford scattering of 300 keV
# electrons, dσ/dΩ = 4γ²Z²/(a₀²q⁴) with q = kθ, gives σ = 4πγ²Z²/(a₀²k⁴)·(θ₁⁻² − θ₂⁻²).
# Densities (g/cm³) and molar masses (g/mol) from the handbooks: WO3 7.16, 231.84; rutile 4.23,
# anatase 3.89, TiO2 79.87. Screening lowers the real cross-section, heavy atoms scatter less
# than Z² (closer to Z^1.7), channelling raises it along zone axes.
ELECTRON_WAVELENGTH_ANGSTROM = 0.019687  # 300 kV, relativistic
GAMMA_300KV = 1.0 + 300.0 / 510.999
BOHR_ANGSTROM = 0.529177
AVOGADRO = 6.02214e23
COMPOSITION = {"WO3": ([74, 8, 8, 8], 231.84), "TiO2": ([22, 8, 8], 79.87)}
DENSITY = {"gamma": 7.16, "delta": 7.16, "rutile": 4.23, "anatase": 3.89}


def _formula_units_per_angstrom3(material, phase):
    return DENSITY[phase] / COMPOSITION[material][1] * AVOGADRO * 1e-24


def _rutherford_fraction_per_nm(material, phase, exponent=2.0):
    """n·σ of the flat 55–250 mrad annulus per nm of thickness (a fraction of the beam).

    exponent 2 is Rutherford's Z²; other exponents only serve in ratios between materials.
    """
    k = 2.0 * math.pi / ELECTRON_WAVELENGTH_ANGSTROM
    per_z2 = (4.0 * math.pi * GAMMA_300KV ** 2 / (BOHR_ANGSTROM ** 2 * k ** 4)
              * (0.055 ** -2 - 0.250 ** -2))  # Å² per Z²
    atoms, _ = COMPOSITION[material]
    return (_formula_units_per_angstrom3(material, phase)
            * sum(z ** exponent for z in atoms) * per_z2 * 10.0)


@pytest.fixture(scope="module")
def shipped():
    return load_tables()


def test_shipped_tables_cover_all_phases_and_orientations(shipped):
    found = {}
    for table in shipped.tables:
        found.setdefault(table.material, {}).setdefault(table.phase, set()).add(table.orientation)
    assert {material: set(phases) for material, phases in found.items()} == PHASES
    for phases in found.values():
        for orientations in phases.values():
            assert len(orientations) == 10 and "random" in orientations
    assert shipped.max_thickness_nm >= 60.0
    assert all(table.thickness_nm[0] == 0.0 for table in shipped.tables)


def test_shipped_tables_are_finite_non_negative_fractions(shipped):
    flat = load_tables(column="intensity_flat")
    for tables in (shipped, flat):
        for table in tables.tables:
            assert np.all(np.isfinite(table.intensity))
            assert np.all(table.intensity >= 0.0) and np.all(table.intensity < 1.0)
            assert table.intensity[0] < 1e-6  # no material, no HAADF signal


def test_shipped_tables_increase_with_thickness(shipped):
    # Up to 64 nm the scattered fraction stays far below 1 (about 0.1 for WO3 by the Rutherford
    # estimate above): more material must mean more signal at every step.
    for table in shipped.tables:
        assert np.all(np.diff(table.intensity) > 0), table.key


def test_shipped_thin_sample_signal_matches_rutherford_scattering():
    # The flat 55–250 mrad column is what the Rutherford estimate integrates.
    flat = load_tables(column="intensity_flat")
    per_nm = {}
    for table in flat.tables:
        slope = table(5.0) / 5.0  # single-scattering slope of the first 5 nm
        expected = _rutherford_fraction_per_nm(table.material, table.phase)
        # Per table: zone-axis channelling may raise it, screening lowers it.
        assert 0.4 * expected < slope < 1.5 * expected, (table.key, slope, expected)
        per_nm.setdefault(table.material, []).append(slope / expected)
    for material, ratios in per_nm.items():
        # Averaged over orientations: below the unscreened Z² bound, within a factor 2 of it.
        assert 0.5 < np.mean(ratios) < 1.0, (material, np.mean(ratios))
    # Z contrast: WO3/TiO2 per nm between the Z^1.5 and the Z² scaling of the cross-section.
    means = {material: np.mean([table(5.0) / 5.0 for table in flat.tables
                                if table.material == material]) for material in COMPOSITION}
    bounds = [_rutherford_fraction_per_nm("WO3", "gamma", exponent)
              / _rutherford_fraction_per_nm("TiO2", "rutile", exponent) for exponent in (1.5, 2.0)]
    assert bounds[0] < means["WO3"] / means["TiO2"] < bounds[1], (means, bounds)


def test_shipped_wo3_brighter_than_tio2_at_every_thickness(shipped):
    thickness = np.arange(1.0, 61.0)
    wo3 = np.array([table(thickness) for table in shipped.tables if table.label == WO3])
    tio2 = np.array([table(thickness) for table in shipped.tables if table.label == TIO2])
    assert np.all(wo3.min(axis=0) > tio2.max(axis=0))


def test_sensitivity_detector_sees_less_than_flat(shipped):
    flat = load_tables(column="intensity_flat")
    for weighted, plain in zip(shipped.tables, flat.tables):
        assert weighted.key == plain.key
        thick = weighted.thickness_nm > 5
        ratio = weighted.intensity[thick] / plain.intensity[thick]
        assert np.all((ratio > 0.5) & (ratio < 1.0))


def test_shipped_provenance_records_settings_versions_runtime(shipped):
    provenance = shipped.provenance
    settings = provenance["settings"]
    assert settings["energy_ev"] == 300e3 and settings["semiangle_mrad"] == 21.1
    assert settings["num_configs"] >= 2 and settings["num_positions"] >= 4
    assert settings["max_thickness_nm"] >= 60
    assert "abtem" in provenance["software"] and "ase" in provenance["software"]
    assert provenance["wall_time_s"] > 0 and len(provenance["runtime_s_per_table"]) == 40
    assert set(provenance["crystals"]) == {"WO3/gamma", "WO3/delta", "TiO2/rutile", "TiO2/anatase"}
    assert all(entry["source"] for entry in provenance["crystals"].values())


def test_round_trip_through_text(tmp_path, shipped):
    path = tmp_path / "copy.csv"
    path.write_text(shipped.to_text())
    again = load_tables(path)
    assert again.keys == shipped.keys
    for a, b in zip(again.tables, shipped.tables):
        np.testing.assert_allclose(a.intensity, b.intensity, rtol=1e-6)
    assert again.provenance == json.loads(json.dumps(shipped.provenance))


USER_TABLE = """# a STEMSIM export
material,phase,orientation,thickness_nm,intensity
WO3,gamma,zone,0,0
WO3,gamma,zone,10,0.05
WO3,gamma,zone,20,0.09
tio2,anatase,zone,0,0
tio2,anatase,zone,20,0.01
"""


def test_user_table_loads_interpolates_and_extrapolates(tmp_path):
    path = tmp_path / "stemsim.csv"
    path.write_text(USER_TABLE)
    tables = load_tables(path)
    assert tables.keys == ["WO3/gamma/zone", "TiO2/anatase/zone"]
    wo3 = tables.tables[0]
    assert wo3(5.0) == pytest.approx(0.025)
    assert wo3(30.0) == pytest.approx(0.13)  # slope of the last quarter
    assert wo3(0.0) == 0.0 and tables.provenance == {}


@pytest.mark.parametrize("content, message", [
    (USER_TABLE.replace("WO3,gamma,zone,10", "ZnO,gamma,zone,10"), "unknown material 'ZnO'"),
    (USER_TABLE.replace("0.05", "-0.05"), "0 <= intensity <= 1"),
    (USER_TABLE.replace("0.05", "nan"), "finite"),
    (USER_TABLE.replace("0.05", "abc"), "must be numbers"),
    (USER_TABLE.replace(",20,0.09", ",5,0.09"), "strictly increasing"),
    (USER_TABLE.replace("thickness_nm", "thickness"), "lacks column"),
    (USER_TABLE.replace("tio2,anatase,zone,20,0.01\n", "").replace("tio2,anatase,zone,0,0\n", ""),
     "no table for material"),
    (USER_TABLE.replace("WO3,gamma,zone,20,0.09", "WO3,gamma,zone,20"), "expected 5 fields"),
    ("# only comments\n", "no header"),
    ("# provenance: {not json\n" + USER_TABLE, "provenance"),
])
def test_bad_user_tables_raise_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad_table.csv"
    path.write_text(content)
    with pytest.raises(TableError, match=message) as error:
        load_tables(path)
    assert "bad_table.csv" in str(error.value)


def test_missing_table_file_names_it(tmp_path):
    with pytest.raises(TableError, match="not found") as error:
        load_tables(tmp_path / "nope.csv")
    assert "nope.csv" in str(error.value)


def test_unknown_column_is_reported(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(USER_TABLE)
    with pytest.raises(TableError, match="no intensity column 'intensity_flat'"):
        load_tables(path, column="intensity_flat")


def test_in_memory_tables_need_both_materials():
    thickness = np.array([0.0, 1.0])
    with pytest.raises(TableError, match="TiO2"):
        HaadfTables([HaadfTable("WO3", WO3, "g", "o", thickness, thickness * 0.01)])


def test_detector_weights():
    edges = np.arange(0.0, 301.0, 1.0)
    flat = detector.bin_weights(edges, "flat")
    assert flat.sum() == pytest.approx(195.0)
    assert flat[54] == 0.0 and flat[55] == 1.0 and flat[249] == 1.0 and flat[250] == 0.0
    measured = detector.bin_weights(edges, "sensitivity")
    # The measured curve is the 55–250 mrad annulus (paper Sec. 2.1.3) with soft edges: nothing
    # below 50 mrad or beyond 260 mrad, a substantial response all across 60–240 mrad.
    assert measured[:50].sum() == 0.0 and measured[260:].sum() < 0.01
    assert np.all(measured[60:240] > 0.3)
    assert 100.0 < measured.sum() < 195.0
    with pytest.raises(ValueError, match="unknown detector mode"):
        detector.bin_weights(edges, "round")


def test_sensitivity_file_in_radians_is_averaged_over_each_bin(tmp_path):
    # A hand-made curve, angles in rad: 0 at 50 mrad rising linearly to 1 at 100 mrad, flat to
    # 200 mrad, falling linearly to 0 at 300 mrad.
    path = tmp_path / "sensitivity.txt"
    path.write_text("0.05 0.0\n0.10 1.0\n0.20 1.0\n0.30 0.0\n")
    angles, sensitivity = detector.load_sensitivity(str(path))
    np.testing.assert_allclose(angles, [50.0, 100.0, 200.0, 300.0])
    np.testing.assert_allclose(sensitivity, [0.0, 1.0, 1.0, 0.0])
    # The curve's kinks (50, 100, 200, 300 mrad) are bin edges: linear within every bin, so
    # each bin's average is the mean of its end values, whatever quadrature is used.
    edges = np.array([0.0, 50.0, 70.0, 80.0, 100.0, 150.0, 200.0, 240.0, 260.0, 300.0, 400.0])
    weights = detector.bin_weights(edges, "sensitivity", sensitivity_path=str(path))
    expected = [0.0, 0.2, 0.5, 0.8, 1.0, 1.0, 0.8, 0.5, 0.2, 0.0]
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
