"""HAADF reference tables: the shipped abTEM tables and the loader for user tables."""

import json

import numpy as np
import pytest

from hagg_tf.model.parameters import TIO2, WO3
from hagg_tf.stem import HaadfTable, HaadfTables, TableError, load_tables
from hagg_tf.stem import detector

PHASES = {"WO3": {"gamma", "delta"}, "TiO2": {"rutile", "anatase"}}
# Single scattering dominates while the signal grows linearly with thickness. Defined here as
# I(t)/t within 10 % of its value at 5 nm (thinner points carry larger Monte-Carlo errors).
# On the shipped tables that regime reaches at least 12 nm for every WO3 table and the whole
# 64 nm for TiO2; the test requires at least these lengths.
MIN_SINGLE_SCATTERING_NM = {"WO3": 10.0, "TiO2": 40.0}


def _single_scattering_limit(table) -> float:
    """Largest thickness up to which I(t)/t stays within 10 % of I(5 nm)/5 nm."""
    thickness, intensity = table.thickness_nm[1:], table.intensity[1:]
    reference = table(5.0) / 5.0
    linear = np.abs(intensity / thickness / reference - 1.0) <= 0.10
    linear[thickness < 5.0] = True
    return float(thickness[np.argmin(linear) - 1]) if not linear.all() else float(thickness[-1])


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


def test_shipped_tables_increase_where_single_scattering_dominates(shipped):
    for table in shipped.tables:
        limit = _single_scattering_limit(table)
        assert limit >= MIN_SINGLE_SCATTERING_NM[table.material], table.key
        window = table.thickness_nm <= limit
        assert np.all(np.diff(table.intensity[window]) > 0), table.key
        # Beyond it the signal still grows up to 60 nm (no saturation within particle sizes).
        assert table(60.0) > table(limit) or limit >= 60.0, table.key


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
    angles, sensitivity = detector.load_sensitivity()
    assert angles[0] == pytest.approx(50.0) and sensitivity.max() == pytest.approx(1.03, abs=0.01)
    assert measured[:50].sum() == 0.0 and measured[260:].sum() < 0.01
    assert 100.0 < measured.sum() < 195.0
    with pytest.raises(ValueError, match="unknown detector mode"):
        detector.bin_weights(edges, "round")
