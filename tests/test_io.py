"""Aggregate files: exact round-trips, atomic writes, resumable runs, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from hagg_tf import (Aggregate, ModelParameters, load_aggregate, load_aggregates,
                     sample_aggregate, save_aggregate, save_aggregates)
from hagg_tf.model import batch, io


@pytest.fixture(scope="module")
def aggregates():
    return [sample_aggregate(ModelParameters(1.7 + 0.2 * k, 0.3, k + 1, 2), seed=4, index=k)
            for k in range(3)]


def test_native_round_trip_is_exact(tmp_path, aggregates):
    path = save_aggregates(tmp_path / "a.npz", aggregates)
    loaded = load_aggregates(path)
    assert loaded == aggregates
    for original, copy in zip(aggregates, loaded):
        assert copy.positions.tobytes() == original.positions.tobytes()
        assert copy.labels.dtype == np.int8 and copy.cluster_ids.dtype == np.int32
    assert [item.name for item in tmp_path.iterdir()] == ["a.npz"]  # no temporary left


def test_hand_made_aggregate_without_theta_round_trips(tmp_path):
    hand_made = Aggregate([[0, 0, 0], [2, 0, 0]], [1, 1], [0, 1], [0, 1])
    loaded = load_aggregate(save_aggregate(tmp_path / "one.npz", hand_made))
    assert loaded == hand_made and loaded.params is None and loaded.seed is None


def test_xyz_export_round_trips_exactly(tmp_path, aggregates):
    path = io.export_xyz(tmp_path / "a.xyz", aggregates)
    loaded = io.read_xyz(path)
    for original, copy in zip(aggregates, loaded):
        assert np.array_equal(copy.positions, original.positions)
        assert np.array_equal(copy.radii, original.radii)
        assert np.array_equal(copy.labels, original.labels)
        assert np.array_equal(copy.cluster_ids, original.cluster_ids)
        assert copy.params == original.params and copy.seed == original.seed
    first_frame = path.read_text().splitlines()
    assert int(first_frame[0]) == aggregates[0].size
    assert "units=nm" in first_frame[1] and first_frame[2].split()[0] in ("W", "Ti")


def test_csv_export_holds_every_particle_exactly(tmp_path, aggregates):
    path = io.export_csv(tmp_path / "a.csv", aggregates)
    rows = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    table = np.genfromtxt(rows, delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert table.shape[0] == sum(item.size for item in aggregates)
    first = table[table["aggregate"] == 0]
    assert np.array_equal(first["x_nm"], aggregates[0].positions[:, 0])
    assert np.array_equal(first["radius_nm"], aggregates[0].radii)
    assert set(first["material"]) <= {"WO3", "TiO2"}
    assert "theta_Df=1.7" in path.read_text().splitlines()[1]


def test_missing_and_corrupt_files_get_errors_naming_them(tmp_path, aggregates):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_aggregates(tmp_path / "nope.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip at all")
    with pytest.raises(io.AggregateFileError, match="corrupt.npz"):
        load_aggregates(corrupt)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(io.AggregateFileError, match="other.npz.*format tag"):
        load_aggregates(other)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(save_aggregates(tmp_path / "full.npz", aggregates).read_bytes()[:300])
    with pytest.raises(io.AggregateFileError, match="truncated.npz"):
        load_aggregates(truncated)


def test_interrupted_run_resumes_without_gaps_or_duplicates(tmp_path):
    theta = ModelParameters(1.8, 0.5, 2, 3)
    output = tmp_path / "run"
    manifest = batch.generate_to_directory(output, lambda index: theta, 10, seed=9,
                                           part_size=4, progress=False)
    assert manifest["parts"] == ["part-00000.npz", "part-00001.npz", "part-00002.npz"]
    complete = batch.load_directory(output)
    # Simulate an interruption: the last part never got written, a temporary was left behind.
    (output / "part-00002.npz").unlink()
    (output / ".part-00002.npz.abc.tmp").write_bytes(b"half")
    before = (output / "part-00000.npz").stat().st_mtime_ns
    batch.generate_to_directory(output, lambda index: theta, 10, seed=9, part_size=4,
                                progress=False)
    resumed = batch.load_directory(output)
    assert resumed == complete
    assert [item.index for item in resumed] == list(range(10))
    assert (output / "part-00000.npz").stat().st_mtime_ns == before  # finished part kept
    with pytest.raises(ValueError, match="other draws"):
        batch.generate_to_directory(output, lambda index: theta, 10, seed=10, part_size=4,
                                    progress=False)


def _cli(*arguments, cwd):
    return subprocess.run([sys.executable, "-m", "hagg_tf.cli.generate_aggregates", *arguments],
                          capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("arguments, message", [
    (["--theta=3.5,0.5,1,1"], "open interval (1, 3)"),
    (["--theta=2,1.5,1,1"], "[0, 1]"),
    (["--theta=2,0.5,0,1"], "integer >= 1"),
    (["--theta=2,0.5,1"], "four values"),
    (["--theta=2,a,1,1"], "four comma-separated numbers"),
    (["--min_size=60", "--max_size=30"], "size bounds reversed"),
    (["--count=0"], "--count=0: 0 is not a positive integer"),
])
def test_cli_rejects_bad_input_with_one_line_and_nonzero_exit(tmp_path, arguments, message):
    result = _cli(*arguments, f"--output={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_generates_and_exports(tmp_path):
    output = tmp_path / "out"
    result = _cli("--theta=1.9,0.4,2,3", "--count=3", "--workers=1", "--export=xyz",
                  "--noprogress", f"--output={output}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["count"] == 3 and "1.9" in manifest["restarts_per_fractal_dimension"]
    assert len(io.read_xyz(output / "aggregates.xyz")) == 3
    assert batch.load_directory(output)[1] == sample_aggregate(
        ModelParameters(1.9, 0.4, 2, 3), seed=0, index=1)


def _native_arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _labels_of_halves(arrays):
    return np.where(arrays["labels"] == 1, 1.5, 0.5)


def _one_bad_radius(arrays, value):
    radii = arrays["radii"].copy()
    radii[5] = value
    return radii


def _theta_with_cluster_size(arrays, value):
    theta = arrays["theta"].copy()
    theta[1, 2] = value
    return theta


# Each case: arrays to replace (None deletes the key) in a valid three-aggregate file, and a
# piece of the expected message.
_DAMAGED_FILES = {
    "missing_key": (lambda arrays: {"radii": None}, r"missing array\(s\) radii"),
    "missing_keys": (lambda arrays: {"seed": None, "restarts": None},
                     r"missing array\(s\) seed, restarts"),
    "theta_shape": (lambda arrays: {"theta": arrays["theta"][:, :3]},
                    r"theta has shape \(3, 3\), expected \(3, 4\)"),
    "seed_shape": (lambda arrays: {"seed": arrays["seed"][:1]},
                   r"seed has shape \(1,\), expected \(3,\)"),
    "positions_shape": (lambda arrays: {"positions": arrays["positions"][:, :2]},
                        r"positions has shape \(\d+, 2\)"),
    "sizes_sum": (lambda arrays: {"sizes": arrays["sizes"] + 1}, r"positions has shape"),
    "no_sizes": (lambda arrays: {"sizes": np.zeros(0, dtype=np.int64)}, r"M >= 1"),
    "float_labels": (lambda arrays: {"labels": _labels_of_halves(arrays)},
                     "labels has dtype float64, expected integers"),
    "label_two": (lambda arrays: {"labels": arrays["labels"] + 2}, "labels must be 0"),
    "text_radii": (lambda arrays: {"radii": arrays["radii"].astype(str)}, "radii has dtype"),
    "negative_radius": (lambda arrays: {"radii": _one_bad_radius(arrays, -1.0)}, "positive"),
    "nan_radius": (lambda arrays: {"radii": _one_bad_radius(arrays, np.nan)}, "finite"),
    "fractional_cluster_size": (lambda arrays: {"theta": _theta_with_cluster_size(arrays, 2.5)},
                                "aggregate 1: wo3_cluster_size"),
    "negative_seed": (lambda arrays: {"seed": np.array([4, -7, 4])}, "aggregate 1: seed"),
    "version_shape": (lambda arrays: {"format_version": np.array([1])}, "format_version"),
}


@pytest.mark.parametrize("case", sorted(_DAMAGED_FILES))
def test_damaged_native_files_raise_aggregate_file_error_naming_file_and_problem(
        tmp_path, aggregates, case):
    changes, message = _DAMAGED_FILES[case]
    arrays = _native_arrays(save_aggregates(tmp_path / "good.npz", aggregates))
    for key, value in changes(arrays).items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    damaged = tmp_path / f"{case}.npz"
    np.savez(damaged, **arrays)
    with pytest.raises(io.AggregateFileError, match=f"{case}.npz: .*{message}"):
        load_aggregates(damaged)


def test_largest_allowed_seed_and_index_round_trip(tmp_path):
    from hagg_tf.model.parameters import MAX_SEED, GeneratorConfig

    aggregate = sample_aggregate(ModelParameters(2.0, 0.5, 2, 2), seed=MAX_SEED, index=MAX_SEED,
                                 config=GeneratorConfig(min_size=4, max_size=6))
    loaded = load_aggregate(save_aggregate(tmp_path / "max.npz", aggregate))
    assert loaded == aggregate and loaded.seed == MAX_SEED and loaded.index == MAX_SEED
