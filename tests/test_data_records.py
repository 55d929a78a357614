"""Writing the database: exact records, determinism, resumption and the checks on bad data."""

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from hagg_tf.data import (DatasetError, build_design, generate_dataset, preset,  # noqa: E402
                          verify_dataset)
from hagg_tf.data import records, writer  # noqa: E402
from hagg_tf.model.descriptors import describe  # noqa: E402
from hagg_tf.model.generator import sample_aggregate  # noqa: E402
from hagg_tf.model.parameters import TIO2, WO3  # noqa: E402
from hagg_tf.stem import HaadfTable, HaadfTables, load_tables, render_stem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = preset("tiny")


def write_test_tables(path: Path) -> Path:
    """Synthetic HAADF tables: WO3 ten times brighter than TiO2, linear in thickness."""
    thickness = np.linspace(0.0, 80.0, 81)
    tables = HaadfTables([
        HaadfTable("WO3", WO3, "gamma", "a", thickness, 0.004 * thickness),
        HaadfTable("WO3", WO3, "delta", "a", thickness, 0.0045 * thickness),
        HaadfTable("TiO2", TIO2, "rutile", "a", thickness, 0.0004 * thickness),
        HaadfTable("TiO2", TIO2, "anatase", "b", thickness, 0.00042 * thickness),
    ], provenance={"made_by": "tests"})
    path.write_text(tables.to_text())
    return path


@pytest.fixture(scope="module")
def tables_file(tmp_path_factory):
    return write_test_tables(tmp_path_factory.mktemp("tables") / "tables.csv")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tables_file):
    """The tiny preset written with two worker processes."""
    output = tmp_path_factory.mktemp("tiny") / "db"
    report = generate_dataset(output, TINY, workers=2, tables_path=str(tables_file),
                              progress=False)
    assert report.complete and report.records_written == 48
    return output


def _digests(directory: Path) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.glob("*.tfrecord"))}


def _all_samples(directory: Path):
    return [sample for path in sorted(directory.glob("*.tfrecord"))
            for sample in records.read_samples(path)]


def test_manifest_counts_per_split_and_theta(tiny):
    manifest = verify_dataset(tiny)
    design = build_design(TINY)
    assert manifest["records"] == 48
    assert np.array_equal(manifest["thetas"], design.thetas)
    for split in ("train", "validation", "evaluation"):
        info = manifest["splits"][split]
        assert info["per_theta"] == design.counts_per_theta(split).tolist()
        assert len(info["shards"]) == TINY.num_shards
    samples = _all_samples(tiny)
    homogeneous = {split: sum(s.descriptors.homogeneous for s in samples if s.split == split)
                   for split in ("train", "validation", "evaluation")}
    assert homogeneous == {split: manifest["splits"][split]["homogeneous"]
                           for split in homogeneous}
    assert manifest["settings"]["config"]["image_size"] == 64
    assert {"hagg_tf", "numpy", "tensorflow", "zlib"} <= set(manifest["versions"])
    assert manifest["settings"]["tables"]["sha256"] == hashlib.sha256(
        Path(manifest["settings"]["tables"]["source"]).read_bytes()).hexdigest()


def test_every_sample_stored_once_in_its_split_and_shard(tiny):
    design = build_design(TINY)
    for split in ("train", "validation", "evaluation"):
        for shard, indices in enumerate(design.shards[split]):
            path = tiny / design.shard_name(split, shard)
            stored = [s.index for s in records.read_samples(path)]
            assert stored == indices.tolist()  # same samples, in design order
            assert all(s.split == split for s in records.read_samples(path))


def test_record_round_trip_is_exact(tiny, tables_file):
    """Image, metadata, labels and aggregate arrays equal a fresh draw from (seed, index)."""
    tables = load_tables(str(tables_file))
    design = build_design(TINY)
    samples = _all_samples(tiny)
    assert sorted(s.index for s in samples) == list(range(48))
    for sample in samples[::5]:
        params = design.params(sample.theta_id)
        aggregate = sample_aggregate(params, TINY.seed, sample.index, TINY.generator_config)
        assert sample.aggregate == aggregate  # positions, radii, labels, clusters, θ, seed, …
        assert sample.aggregate.positions.dtype == np.float64
        assert records.descriptors_equal(sample.descriptors, describe(aggregate))
        image = render_stem(aggregate, seed=TINY.seed, index=sample.index, tables=tables,
                            image_size=64, pixel_size_nm=TINY.effective_pixel_size_nm)
        assert sample.counts.dtype == np.uint16
        assert np.array_equal(sample.counts, image.counts)
        assert sample.metadata == json.loads(json.dumps(image.metadata))
        assert sample.metadata["pixel_size_nm"] == TINY.effective_pixel_size_nm


def test_float32_features_agree_with_exact_values(tiny):
    path = sorted(tiny.glob("train-*.tfrecord"))[0]
    spec = {"theta": tf.io.FixedLenFeature([4], tf.float32),
            "target/fractal_dimension": tf.io.FixedLenFeature([], tf.float32),
            "target/mixing_ratio": tf.io.FixedLenFeature([], tf.float32),
            "target/homogeneous": tf.io.FixedLenFeature([], tf.int64),
            "image/electrons_per_pixel": tf.io.FixedLenFeature([], tf.float32),
            "image/png": tf.io.FixedLenFeature([], tf.string)}
    for raw, sample in zip(records.iter_tfrecord(path), records.read_samples(path)):
        parsed = tf.io.parse_single_example(raw, spec)
        assert np.array_equal(parsed["theta"].numpy(),
                              np.float32(sample.aggregate.params.as_tuple()))
        assert parsed["target/fractal_dimension"] == np.float32(
            sample.descriptors.fractal_dimension)
        assert parsed["target/mixing_ratio"] == np.float32(sample.descriptors.mixing_ratio)
        assert parsed["target/homogeneous"] == int(sample.descriptors.homogeneous)
        assert parsed["image/electrons_per_pixel"] == np.float32(sample.electrons_per_pixel)
        # TensorFlow's PNG decoder sees the same 16-bit counts.
        decoded = tf.io.decode_png(parsed["image/png"], channels=1, dtype=tf.uint16)
        assert np.array_equal(decoded.numpy()[:, :, 0], sample.counts)


def test_same_seed_gives_byte_identical_shards_for_any_worker_count(tiny, tables_file,
                                                                     tmp_path):
    # One process, and the shards written in the opposite order by two runs.
    generate_dataset(tmp_path, TINY, shard_indices=[1], workers=1,
                     tables_path=str(tables_file), progress=False)
    report = generate_dataset(tmp_path, TINY, shard_indices=[0], workers=1,
                              tables_path=str(tables_file), progress=False)
    assert report.complete
    assert _digests(tmp_path) == _digests(tiny)
    first, second = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path, tiny))
    assert first["splits"] == second["splits"]


def test_other_seed_gives_other_data(tiny, tables_file, tmp_path):
    generate_dataset(tmp_path, TINY.replace(seed=1), shard_indices=[0], workers=1,
                     tables_path=str(tables_file), progress=False)
    assert not set(_digests(tmp_path).values()) & set(_digests(tiny).values())


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_duplicates_or_gaps(tiny, tables_file, tmp_path,
                                                            monkeypatch):
    generate_dataset(tmp_path, TINY, shard_indices=[0], workers=1,
                     tables_path=str(tables_file), progress=False)
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in tmp_path.glob("*-00000-of-00002.tfrecord")}
    assert len(finished) == 3

    # Kill the next run in the middle of shard 1's train part.
    real = records.compute_sample
    calls = {"n": 0}

    def dying(task):
        calls["n"] += 1
        if calls["n"] > 5:
            raise _Interrupt()
        return real(task)

    monkeypatch.setattr(writer, "compute_sample", dying)
    with pytest.raises(_Interrupt):
        generate_dataset(tmp_path, TINY, workers=1, tables_path=str(tables_file),
                         progress=False)
    monkeypatch.setattr(writer, "compute_sample", real)
    names = {p.name for p in tmp_path.iterdir()}
    assert "manifest.json" not in names
    assert not any(name.endswith(".tmp") or ".tmp-" in name for name in names)
    assert "train-00001-of-00002.tfrecord" not in names
    with pytest.raises(DatasetError, match="unfinished database"):
        verify_dataset(tmp_path)

    # Leftovers of a harder crash: a half-written shard without its sidecar, a stale temp file.
    (tmp_path / "train-00001-of-00002.tfrecord").write_bytes(b"\x00" * 100)
    (tmp_path / ".train-00001-of-00002.tfrecord.tmp-99999").write_bytes(b"\x00" * 10)

    report = generate_dataset(tmp_path, TINY, workers=1, tables_path=str(tables_file),
                              progress=False)
    assert report.complete
    assert sorted(report.skipped) == sorted(finished)
    for name, identity in finished.items():  # finished shards were not rewritten
        stat = (tmp_path / name).stat()
        assert (stat.st_ino, stat.st_mtime_ns) == identity
    indices = sorted(s.index for s in _all_samples(tmp_path))
    assert indices == list(range(48))  # no duplicates, no gaps
    assert _digests(tmp_path) == _digests(tiny)
    verify_dataset(tmp_path)


def test_resume_with_other_settings_is_refused(tiny, tables_file, tmp_path):
    shutil.copytree(tiny, tmp_path / "db")
    with pytest.raises(DatasetError, match="other settings.*image_size"):
        generate_dataset(tmp_path / "db", TINY.replace(image_size=32),
                         tables_path=str(tables_file), progress=False)
    other_tables = write_test_tables(tmp_path / "other.csv")
    other_tables.write_text("# re-computed tables\n" + other_tables.read_text())
    with pytest.raises(DatasetError, match="HAADF tables"):
        generate_dataset(tmp_path / "db", TINY, tables_path=str(other_tables), progress=False)


@pytest.fixture()
def copy(tiny, tmp_path):
    target = tmp_path / "db"
    shutil.copytree(tiny, target)
    return target


def test_corrupt_shard_is_caught_naming_the_file(copy):
    shard = copy / "train-00001-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    verify_dataset(copy, level="size")  # same size: only the checksum sees it
    with pytest.raises(DatasetError, match=f"{shard}.*sha256"):
        verify_dataset(copy)


def test_truncated_shard_is_caught_naming_the_file(copy):
    shard = copy / "evaluation-00000-of-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=f"{shard}.*bytes"):
        verify_dataset(copy, level="size")
    with pytest.raises(records.RecordError, match=f"{shard}.*truncated"):
        records.count_records(shard)


@pytest.mark.parametrize("damage, message", [
    ("missing", "listed in manifest.json but missing"),
    ("extra", "not listed in manifest.json"),
    ("records", "records, the manifest says"),
    ("total", "shards add up to"),
])
def test_manifest_that_does_not_match_the_files_is_caught(copy, damage, message):
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    shard_name = manifest["splits"]["validation"]["shards"][0]["file"]
    if damage == "missing":
        (copy / shard_name).unlink()
    elif damage == "extra":
        shutil.copy(copy / shard_name, copy / "validation-00005-of-00009.tfrecord")
    elif damage == "records":
        manifest["splits"]["validation"]["shards"][0]["records"] += 1
        manifest["splits"]["validation"]["records"] += 1
    else:
        manifest["splits"]["validation"]["records"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=message) as caught:
        verify_dataset(copy)
    assert str(copy) in str(caught.value)


def test_not_a_record_is_reported_with_its_source():
    with pytest.raises(records.RecordError, match="somefile"):
        records.decode_example(b"\x08\x01garbage", "somefile")


def test_cli_generates_and_fails_cleanly(tmp_path, tables_file):
    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "tools" / "generate_dataset.py"),
                               *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})

    result = run("--preset=tiny", "--output=db", f"--tables={tables_file}", "--workers=1",
                 "--shard_index=0", "--noprogress")
    assert result.returncode == 0, result.stderr
    assert "not complete yet" in result.stdout
    result = run("--preset=tiny", "--output=db", f"--tables={tables_file}", "--workers=1",
                 "--noprogress")
    assert result.returncode == 0, result.stderr
    assert "database complete" in result.stdout and "3 already complete" in result.stdout
    result = run("--output=db", "--verify_only")
    assert result.returncode == 0 and "every shard matches" in result.stdout

    for args, message in [
        (("--preset=tiny", "--output=db", "--seed=9", f"--tables={tables_file}"),
         "other settings"),
        (("--preset=tiny", "--shard_index=2"), "--shard_index"),
        (("--preset=tiny", "--image_size=4"), "image_size"),
        (("--preset=tiny", "--tables=nonexistent.csv"), "no such file"),
        (("--output=nowhere", "--verify_only"), "no manifest"),
        (("--preset=tiny", "--workers=0"), "--workers"),
    ]:
        result = run(*args)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error:") and message in lines[-1], result.stderr
        assert "Traceback" not in result.stderr


PAPER_DATABASE = ROOT / "work" / "datasets" / "paper"


@pytest.mark.slow
@pytest.mark.skipif(not (PAPER_DATABASE / "manifest.json").is_file(),
                    reason="the paper database has not been generated (tools/generate_dataset.py)")
def test_generated_paper_database_matches_its_manifest_and_the_split_rule():
    manifest = verify_dataset(PAPER_DATABASE, level="checksum")
    counts = {split: np.array(info["per_theta"]) for split, info in manifest["splits"].items()}
    assert manifest["records"] == 32_400 and len(manifest["thetas"]) == 648
    assert counts["train"].sum() + counts["validation"].sum() == 19_440
    assert counts["evaluation"].sum() == 12_960
    from hagg_tf.data.design import check_split_rule
    assert check_split_rule(counts, 20) == []
    design = build_design(preset("paper"))
    assert np.array_equal(manifest["thetas"], design.thetas)
    # A sample of records is exactly a fresh draw.
    path = PAPER_DATABASE / manifest["splits"]["evaluation"]["shards"][0]["file"]
    for sample in itertools.islice(records.read_samples(path), 3):
        aggregate = sample_aggregate(design.params(sample.theta_id), 0, sample.index)
        assert sample.aggregate == aggregate
