"""Who draws the digital shadows: forked workers where safe, byte-identical to one process."""
import dataclasses
import multiprocessing
import os
import sys

import numpy as np
import pytest

from hagg_tf.estimation import shadows
from hagg_tf.model import GeneratorConfig, ModelParameters
from hagg_tf.model.batch import default_workers

SMALL = GeneratorConfig(min_size=12, max_size=24)


def _as_bytes(descriptors) -> bytes:
    return np.array(dataclasses.astuple(descriptors), dtype=np.float64).tobytes()


def test_default_workers_fork_above_the_fork_threshold_only_where_fork_is_safe(monkeypatch):
    monkeypatch.setattr(shadows, "fork_is_safe", lambda: True)
    assert shadows.default_shadow_workers(shadows.FORK_PARALLEL_THRESHOLD) == 1
    assert shadows.default_shadow_workers(100) == default_workers()
    monkeypatch.setattr(shadows, "fork_is_safe", lambda: False)  # e.g. TensorFlow is loaded
    assert shadows.default_shadow_workers(100) == 1
    assert shadows.default_shadow_workers(shadows.PARALLEL_THRESHOLD + 1) == default_workers()


def test_fork_is_unsafe_with_tensorflow_or_another_thread(monkeypatch):
    import threading

    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    if not sys.platform.startswith("linux"):
        assert not shadows.fork_is_safe()
        return
    others = [thread for thread in threading.enumerate()
              if thread is not threading.current_thread() and thread.name != "tqdm_monitor"]
    assert shadows.fork_is_safe() == (not others)
    if others:
        pytest.skip("another thread runs in this test process")
    monkeypatch.setitem(sys.modules, "tensorflow", sys)  # any module object stands in
    assert not shadows.fork_is_safe()
    monkeypatch.delitem(sys.modules, "tensorflow")
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=True)
    worker.start()
    try:
        assert not shadows.fork_is_safe()  # a thread that may hold a lock
    finally:
        release.set()
        worker.join()
    from tqdm import tqdm

    with open(os.devnull, "w") as sink, tqdm(total=1, file=sink):  # starts tqdm's monitor
        assert "tqdm_monitor" in [thread.name for thread in threading.enumerate()]
        assert shadows.fork_is_safe()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_processes_draw_byte_identical_shadows_to_one_process(monkeypatch, start_method):
    """Shadow k is sample_aggregate(θ_k, seed, k): the same bytes from any worker and any block
    split (30 shadows on 2 workers: blocks of 15, not SHADOW_BLOCK)."""
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} here")
    monkeypatch.setattr(shadows, "fork_is_safe", lambda: start_method == "fork")
    thetas = [ModelParameters(1.8, 0.5, 2, 2), ModelParameters(2.1, 0.3, 3, 1),
              ModelParameters(1.6, 0.7, 1, 3)]
    serial = list(shadows.iter_shadows(thetas, 30, seed=4, workers=1, config=SMALL))
    parallel = list(shadows.iter_shadows(thetas, 30, seed=4, workers=2, config=SMALL))
    assert [aggregate.index for aggregate, _ in parallel] == list(range(30))
    for (one, described_one), (other, described_other) in zip(serial, parallel):
        for field in ("positions", "radii", "labels"):
            assert getattr(one, field).tobytes() == getattr(other, field).tobytes()
        # as bytes: NaN (no TiO2 in the aggregate) equals itself there
        assert _as_bytes(described_one) == _as_bytes(described_other)
    assert len({aggregate.params for aggregate, _ in parallel}) == 3  # θ_k = thetas[k mod 3]
