"""The Apache Beam paths (issue 13): the database and the digital shadows on Beam's local runner
give the same bytes and the same descriptors as the local process pool."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from hagg_tf import data  # noqa: E402
from hagg_tf.data.beam import generate_dataset_beam  # noqa: E402
from hagg_tf.data.manifest import file_sha256  # noqa: E402
from hagg_tf.estimation.beam_shadows import beam_shadow_descriptors  # noqa: E402
from hagg_tf.estimation.shadows import iter_shadows  # noqa: E402
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_SIZE = 64  # the tiny preset's own image size


def _shard_hashes(directory: Path) -> dict[str, str]:
    return {path.name: file_sha256(path) for path in sorted(directory.glob("*.tfrecord"))}


def _same(first, second) -> bool:
    """Exact equality of two descriptor records, NaN equal to NaN (S_TiO2 without TiO2)."""
    return all(a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b))
               for a, b in zip(dataclasses.astuple(first), dataclasses.astuple(second)))


def test_beam_database_is_byte_identical_to_the_local_one_and_verifies(tiny_database, tmp_path):
    local = tiny_database(TINY_SIZE)
    report = generate_dataset_beam(tmp_path / "beam", data.preset("tiny"), runner="DirectRunner")
    assert report.complete and len(report.written) == 6 and report.records_written == 48
    expected = _shard_hashes(local)
    assert len(expected) == 6
    assert _shard_hashes(tmp_path / "beam") == expected
    manifest = data.verify_dataset(tmp_path / "beam", level="checksum")
    shards = {shard["file"]: shard["sha256"] for split in manifest["splits"].values()
              for shard in split["shards"]}
    assert shards == expected


def test_beam_run_resumes_keeping_the_shards_a_local_run_finished(tiny_database, tmp_path):
    output = tmp_path / "db"
    config = data.preset("tiny")
    first = data.generate_dataset(output, config, shard_indices=[0], workers=1, progress=False)
    assert not first.complete and len(first.written) == 3
    kept = {name: (output / name).stat() for name in first.written}
    report = generate_dataset_beam(output, config, runner="FnApiRunner")
    assert sorted(report.skipped) == sorted(first.written)
    assert len(report.written) == 3 and report.complete
    for name, before in kept.items():
        after = (output / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _shard_hashes(output) == _shard_hashes(tiny_database(TINY_SIZE))
    again = generate_dataset_beam(output, config, runner="DirectRunner")
    assert again.written == [] and len(again.skipped) == 6 and again.complete


def _tool(*args):
    environment = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "hagg_tf.cli.generate_dataset", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)


def test_cli_builds_the_tiny_database_on_beam_and_verify_only_accepts_it(tiny_database,
                                                                          tmp_path):
    output = tmp_path / "cli"
    built = _tool("--preset=tiny", f"--output={output}", "--runner=DirectRunner", "--",
                  "--direct_num_workers=1")
    assert built.returncode == 0, built.stderr
    assert "48 samples in 6 shard files written" in built.stdout
    assert "Beam DirectRunner" in built.stdout and "database complete" in built.stdout
    verified = _tool(f"--output={output}", "--verify_only")
    assert verified.returncode == 0, verified.stderr
    assert "every shard matches the manifest" in verified.stdout
    assert _shard_hashes(output) == _shard_hashes(tiny_database(TINY_SIZE))


@pytest.mark.parametrize("args, message", [
    (("--beam_args=--direct_num_workers=2",), "need --runner=<a Beam runner>"),
    (("--runner=NoSuchRunner",), "unknown Beam runner 'NoSuchRunner'"),
    (("stray", "--", "--direct_num_workers=2"), "unexpected arguments: stray"),
])
def test_cli_refuses_bad_runner_arguments_with_one_error_line(tmp_path, args, message):
    result = _tool("--preset=tiny", f"--output={tmp_path / 'db'}", *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "db").exists()  # refused before anything was written


THETAS = (ModelParameters(1.8, 0.5, 2, 3), ModelParameters(2.2, 0.9, 1, 6),
          ModelParameters(1.5, 0.0, 3, 1))


def test_beam_shadows_equal_the_local_worker_pool(tmp_path):
    jobs = [(theta, seed, range(10)) for theta, seed in zip(THETAS, (0, 4, 9))]
    outcomes = beam_shadow_descriptors(jobs, str(tmp_path / "blocks"), runner="DirectRunner",
                                       block=4)
    for (theta, seed, _), outcome in zip(jobs, outcomes):
        local = list(iter_shadows(theta, 10, seed, workers=1))
        assert outcome.error is None and len(outcome.descriptors) == 10
        assert all(_same(mine, theirs) for mine, (_, theirs) in zip(outcome.descriptors, local))
        assert outcome.restarts == sum(aggregate.restarts for aggregate, _ in local)
    assert len(list((tmp_path / "blocks").glob("*.npz"))) == 3 * 3
    # resume: every block is read back, none drawn again (the pipeline is not even built)
    times = {path: path.stat().st_mtime_ns for path in (tmp_path / "blocks").glob("*.npz")}
    again = beam_shadow_descriptors(jobs, str(tmp_path / "blocks"), runner="NoSuchRunner",
                                    block=4)
    assert [len(item.descriptors) for item in again] == [10, 10, 10]
    assert all(path.stat().st_mtime_ns == time for path, time in times.items())


def test_beam_shadows_report_an_undrawable_theta_like_the_local_path():
    config = GeneratorConfig(max_restarts=1)
    bad = ModelParameters(2.9, 0.5, 6, 6)  # outside Table 2: no packing reaches it
    outcomes = beam_shadow_descriptors([(bad, 2, range(3)), (THETAS[0], 2, range(3))],
                                       runner="DirectRunner", config=config)
    from hagg_tf.model.generator import GenerationError

    with pytest.raises(GenerationError) as local:
        list(iter_shadows(bad, 3, 2, workers=1, config=config))
    assert outcomes[0].error == str(local.value) and outcomes[0].descriptors == []
    assert outcomes[1].error is None and len(outcomes[1].descriptors) == 3


def test_table5_shadows_on_beam_equal_the_local_ones(tmp_path):
    from hagg_tf.evaluation import paper_evaluation as pe

    pairs = [pe.ShadowPair(theta_id=number, rows=(0,), truth=truth, estimate=estimate,
                           estimate_rounded=estimate.as_tuple(),
                           estimate_raw=estimate.as_tuple())
             for number, (truth, estimate) in enumerate([(THETAS[0], THETAS[1]),
                                                         (THETAS[2], THETAS[0])])]
    local = pe.compare_digital_shadows(pairs, 6, cache_dir=tmp_path / "local", workers=1,
                                       progress=False)
    beam = pe.compare_digital_shadows(pairs, 6, cache_dir=tmp_path / "beam", progress=False,
                                      runner="DirectRunner")
    assert pe.json_safe(beam) == pe.json_safe(local)  # every mean, MAE, R² and histogram
    assert local["failed_pairs"] == 0
    files = sorted(path.name for path in (tmp_path / "local").glob("*.npz"))
    assert len(files) == 4 and sorted(path.name for path in (tmp_path / "beam").iterdir()) == files
    for name in files:
        with np.load(tmp_path / "local" / name) as first, \
                np.load(tmp_path / "beam" / name) as second:
            for key in (*pe.SHADOW_DESCRIPTOR_NAMES, "size"):
                np.testing.assert_array_equal(first[key], second[key])


def test_characterize_shadows_on_beam_equal_the_local_ones():
    """hagg-characterize --runner: the same descriptors, restarts and kept aggregates."""
    from hagg_tf.estimation.characterize import _beam_shadows
    from hagg_tf.estimation.shadows import collect_shadows

    params = ModelParameters(2.1, 0.4, 3, 2)
    local = collect_shadows(params, 9, seed=4, workers=1, keep=5)
    beam = _beam_shadows(params, 9, 4, 1, None, "DirectRunner", (), None)
    kept, _, _ = collect_shadows(params, 9, seed=4, workers=1)
    assert len(beam[1]) == 9 and all(_same(mine, theirs)
                                     for mine, theirs in zip(beam[1], local[1]))
    assert beam[2] == local[2]
    assert len(beam[0]) == 9
    for ours, theirs in zip(beam[0], kept):
        np.testing.assert_array_equal(ours.positions, theirs.positions)
        np.testing.assert_array_equal(ours.labels, theirs.labels)
