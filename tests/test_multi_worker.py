"""Multi-worker training (``hagg-train --strategy=multi_worker``) on the loopback interface.

The slow test starts two worker processes with their own ``TF_CONFIG`` on 127.0.0.1 (free
ports), trains the tiny preset in two calls (``--epochs=1``, then ``--epochs=2`` in the same run
folder: a resume under the strategy), and compares with one worker trained by the same two calls
with the same global batch and seed. The default-suite tests check the pieces that need no
cluster: who is chief, where each worker writes, and the CLI's refusal of a combination it does
not support.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import hagg_tf  # noqa: E402
from hagg_tf import networks  # noqa: E402
from hagg_tf.training import (BACKUP, LAST_MODEL, SUMMARY,  # noqa: E402
                              backup_epoch, read_history)
from hagg_tf.training.runtime import WORKERS, is_chief, worker_run_dir  # noqa: E402

NETWORK = "fractal_dimension"
#: Global batch: 4 samples per worker with two workers.
GLOBAL_BATCH = 8
STEPS = 3
#: Seconds each training call of the slow test may take (about 25 s on two shared CPU cores).
CALL_TIMEOUT = 400


def _environment(tf_config=None):
    package_root = str(pathlib.Path(hagg_tf.__file__).resolve().parents[1])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                       os.environ.get("PYTHONPATH")]))}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _free_ports(count):
    """Ports the kernel hands out for port 0 (released again just before the workers bind)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for one in sockets:
            one.bind(("127.0.0.1", 0))
        return [one.getsockname()[1] for one in sockets]
    finally:
        for one in sockets:
            one.close()


def _train_flags(database, output, epochs, strategy):
    return ["-m", "hagg_tf.cli.train", f"--network={NETWORK}", f"--dataset={database}",
            f"--output={output}", f"--epochs={epochs}", f"--steps_per_epoch={STEPS}",
            f"--batch_size={GLOBAL_BATCH}", "--verify=size", "--verbose=2", "--seed=3",
            f"--strategy={strategy}"]


def _train_two_workers(database, output, epochs, cwd):
    """Runs both workers to the end; returns their (returncode, stdout+stderr) and the wall s."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    started = time.perf_counter()
    workers = [subprocess.Popen(
        [sys.executable, *_train_flags(database, output, epochs, "multi_worker")], cwd=cwd,
        env=_environment({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for index in range(2)]
    results = []
    try:
        for worker in workers:
            output_text, _ = worker.communicate(timeout=CALL_TIMEOUT)
            results.append((worker.returncode, output_text))
    finally:
        for worker in workers:  # one worker failing leaves the other waiting for it
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    return results, time.perf_counter() - started


def _train_one_worker(database, output, epochs, cwd):
    done = subprocess.run([sys.executable, *_train_flags(database, output, epochs, "default")],
                          cwd=cwd, env=_environment(), capture_output=True, text=True,
                          timeout=CALL_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _weights(run_folder):
    """(trainable, non-trainable) weights of a run's last model, by weight path."""
    model = keras.saving.load_model(run_folder / LAST_MODEL, compile=False)
    return ({weight.path: np.asarray(weight) for weight in model.trainable_weights},
            {weight.path: np.asarray(weight) for weight in model.non_trainable_weights})


@pytest.mark.slow
def test_two_workers_train_resume_and_agree_with_one_worker(tiny_database, tmp_path):
    database = tiny_database(networks.minimum_image_size())
    run = tmp_path / "two_workers"
    worker_folder = run / WORKERS / "worker-1"

    first, first_wall = _train_two_workers(database, run, 1, tmp_path)
    for returncode, text in first:
        assert returncode == 0, text[-4000:]
    assert backup_epoch(run) == 1 and backup_epoch(worker_folder) == 1

    second, second_wall = _train_two_workers(database, run, 2, tmp_path)
    for returncode, text in second:
        assert returncode == 0, text[-4000:]
        assert f"{NETWORK}: resuming from the backup after epoch 1" in text
        assert f"{NETWORK}: epochs 1→2" in text
    print(f"two workers: {first_wall:.1f} s + {second_wall:.1f} s")

    # Only the chief writes the run folder's logs; each worker keeps its own state.
    summary = json.loads((run / SUMMARY).read_text())
    worker_summary = json.loads((worker_folder / SUMMARY).read_text())
    assert summary["status"] == worker_summary["status"] == "complete"
    assert summary["replicas"] == 2 and summary["chief"] and not worker_summary["chief"]
    assert summary["resumed_from_epoch"] == 1 and summary["final_epoch"] == 2
    assert summary["batch_size"] == GLOBAL_BATCH
    assert (run / "logs").is_dir() and not (worker_folder / "logs").exists()
    assert not (run / BACKUP / "worker-1").exists()
    rows, worker_rows = read_history(run), read_history(worker_folder)
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    # The logged losses are averaged over the workers, so both histories hold the same numbers.
    for row, worker_row in zip(rows, worker_rows):
        assert row["loss"] == pytest.approx(worker_row["loss"], rel=1e-6)
        assert row["val_loss"] == pytest.approx(worker_row["val_loss"], rel=1e-6)

    # Synchronous all-reduce: both workers apply the same gradients, so they end with the same
    # trainable weights. Batch normalisation's moving statistics are not reduced: each worker
    # averages the statistics of its own half batches (4 samples; in the deepest layers they
    # differ by up to 2x, docs/scale.md), so they only show that the workers saw different
    # samples (the DATA sharding of distribute_input).
    (chief_trainable, chief_moving), (other_trainable, other_moving) = \
        _weights(run), _weights(worker_folder)
    assert chief_trainable.keys() == other_trainable.keys() and chief_trainable
    for path, value in chief_trainable.items():
        np.testing.assert_allclose(value, other_trainable[path], rtol=1e-5, atol=1e-7,
                                   err_msg=path)
    assert chief_moving.keys() == other_moving.keys() and chief_moving
    assert all(not np.array_equal(value, other_moving[path])
               for path, value in chief_moving.items() if "moving_mean" in path)

    # One worker with the same global batch, seed and two calls.
    single = tmp_path / "one_worker"
    _train_one_worker(database, single, 1, tmp_path)
    _train_one_worker(database, single, 2, tmp_path)
    single_rows = read_history(single)
    print("loss per epoch, two workers:", [round(row["loss"], 5) for row in rows],
          "one worker:", [round(row["loss"], 5) for row in single_rows])
    print("val_loss per epoch, two workers:", [round(row["val_loss"], 5) for row in rows],
          "one worker:", [round(row["val_loss"], 5) for row in single_rows])
    # Both see the same samples in every step (DATA sharding splits each global batch) and the
    # averaged gradient is the one-worker gradient; what differs is batch normalisation, which
    # normalises each worker's half batch (4 samples) by its own statistics instead of the 8 of
    # the whole batch. The training loss (3 steps of 8 samples per epoch, in training mode)
    # moves with those statistics: measured 5 % and 19 % apart, 30 % allowed. The validation loss
    # (inference mode, the same 6 images) is measured 0.1 % apart, 2 % allowed.
    for row, single_row in zip(rows, single_rows):
        assert row["loss"] == pytest.approx(single_row["loss"], rel=0.3)
        assert row["val_loss"] == pytest.approx(single_row["val_loss"], rel=0.02)


# --- default suite: no cluster needed --------------------------------------------------------

class _Strategy:
    """Stands in for a strategy: ``is_chief`` and ``worker_run_dir`` read its resolver only.

    The resolver is the one ``MultiWorkerMirroredStrategy`` uses; it reads ``TF_CONFIG``.
    """

    cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _config(task_type, index, chief=False):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    if chief:
        cluster["chief"] = ["127.0.0.1:3"]
    return {"cluster": cluster, "task": {"type": task_type, "index": index}}


@pytest.mark.parametrize("tf_config, chief, folder", [
    (_config("worker", 0), True, "."),
    (_config("worker", 1), False, "workers/worker-1"),
    (_config("worker", 0, chief=True), False, "workers/worker-0"),
    (_config("chief", 0, chief=True), True, "."),
])
def test_only_the_chief_writes_the_run_folder(tf_config, chief, folder, tmp_path,
                                              monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    strategy = _Strategy()
    assert is_chief(strategy) is chief
    assert worker_run_dir(tmp_path / "run", strategy) == tmp_path / "run" / folder


def test_without_a_cluster_the_process_is_the_chief(tmp_path):
    strategy = tf.distribute.get_strategy()
    assert is_chief(strategy)
    assert worker_run_dir(tmp_path, strategy) == tmp_path


def test_strategy_with_pooled_cache_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hagg_tf.cli.train", f"--network={NETWORK}",
                           f"--output={tmp_path / 'run'}", f"--pooled_cache={tmp_path / 'c'}",
                           "--architecture=compact", "--strategy=multi_worker"],
                          cwd=tmp_path, env=_environment(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --strategy=multi_worker is not supported with --pooled_cache (the pooled path "
        "trains in one process); drop one of them"]
    assert not (tmp_path / "c").exists()
