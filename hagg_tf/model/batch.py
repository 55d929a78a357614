"""Many aggregates at once: parallel, reproducible and resumable generation.

Every aggregate is a pure function of (θ, seed, index), so the result never depends on how the
work is split into processes or parts. A job writes parts of ``part_size`` aggregates, each
atomically; rerunning the same job skips the parts already on disk.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.descriptors import Descriptors, describe
from hagg_tf.model.generator import sample_aggregate
from hagg_tf.model.io import load_aggregates, save_aggregates, write_json_atomic
from hagg_tf.model.parameters import (TABLE2_CLUSTER_SIZES, TABLE2_FRACTAL_DIMENSIONS,
                                      TABLE2_MIXING_RATIOS, GeneratorConfig, ModelParameters,
                                      require_seed)
from hagg_tf.model.workers import make_process_pool

# Spawn key branch for θ draws, kept apart from the aggregate's own stream (seed, index).
_THETA_STREAM = 1


def random_table2_params(seed: int, index: int) -> ModelParameters:
    """θ drawn uniformly from the Table 2 grid for draw ``index`` (independent of the draw).

    Raises:
        ParameterError: ``seed`` or ``index`` is not an integer in [0, ``MAX_SEED``].
    """
    seed, index = require_seed(seed, "seed"), require_seed(index, "index")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, _THETA_STREAM)))
    return ModelParameters(
        TABLE2_FRACTAL_DIMENSIONS[rng.integers(len(TABLE2_FRACTAL_DIMENSIONS))],
        TABLE2_MIXING_RATIOS[rng.integers(len(TABLE2_MIXING_RATIOS))],
        TABLE2_CLUSTER_SIZES[rng.integers(len(TABLE2_CLUSTER_SIZES))],
        TABLE2_CLUSTER_SIZES[rng.integers(len(TABLE2_CLUSTER_SIZES))])


def _draw(task) -> Aggregate:
    params, seed, index, config = task
    return sample_aggregate(params, seed, index, config)


def _draw_and_describe(task) -> tuple[Aggregate, Descriptors]:
    aggregate = _draw(task)
    return aggregate, describe(aggregate)


def default_workers() -> int:
    """Worker processes to use by default: every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def iter_aggregates(params: Sequence[ModelParameters], seed: int, indices: Sequence[int],
                    config: GeneratorConfig | None = None, workers: int = 1,
                    with_descriptors: bool = False) -> Iterator:
    """Draws ``params[k]`` with (seed, indices[k]) for every k, in order.

    Args:
        params: θ of each draw.
        seed: base seed.
        indices: index of each draw (same length as ``params``).
        config: generator settings.
        workers: processes; 1 draws in this process.
        with_descriptors: also compute ``describe`` in the worker.

    Yields:
        Aggregates in input order, or (aggregate, descriptors) pairs.

    Raises:
        ParameterError: ``seed`` or an index is not an integer in [0, ``MAX_SEED``] (before
            any work starts).
    """
    if len(params) != len(indices):
        raise ValueError(f"{len(params)} parameter vectors but {len(indices)} indices")
    seed = require_seed(seed, "seed")
    indices = [require_seed(index, "index") for index in indices]
    config = config or GeneratorConfig()
    tasks = [(theta, seed, index, config) for theta, index in zip(params, indices)]
    function = _draw_and_describe if with_descriptors else _draw
    if workers <= 1:
        yield from map(function, tasks)
        return
    chunk = max(1, min(32, len(tasks) // (4 * workers)))
    # fork would copy whatever the parent holds (a TensorFlow runtime, threads); spawn is clean.
    context = multiprocessing.get_context("spawn")
    with make_process_pool(workers, mp_context=context) as pool:
        yield from pool.map(function, tasks, chunksize=chunk)


def restart_statistics(aggregates: Sequence[Aggregate]) -> dict[str, dict[str, float]]:
    """Per θ_Df: aggregates, share needing at least one restart, mean restarts per aggregate."""
    groups = collections.defaultdict(list)
    for aggregate in aggregates:
        groups[aggregate.params.fractal_dimension].append(aggregate.restarts)
    return {f"{key:g}": {"aggregates": len(values),
                         "restarted_fraction": float(np.mean(np.array(values) > 0)),
                         "mean_restarts": float(np.mean(values))}
            for key, values in sorted(groups.items())}


def generate_to_directory(output: str | os.PathLike, params_of: Callable[[int], ModelParameters],
                          count: int, seed: int, config: GeneratorConfig | None = None,
                          workers: int = 1, part_size: int = 1000, settings: dict | None = None,
                          progress: bool = True) -> dict:
    """Generates ``count`` aggregates (indices 0..count−1) into parts under ``output``.

    Parts are ``part-00000.npz``, … holding consecutive indices; existing complete parts are
    kept (resume). A ``manifest.json`` with settings, counts, restart statistics and run time is
    written last.

    Args:
        output: directory.
        params_of: θ of draw ``index``.
        count: number of aggregates.
        seed: base seed.
        config: generator settings.
        workers: processes.
        part_size: aggregates per part file.
        settings: extra entries for the manifest (the command line, say).
        progress: show a progress bar.

    Returns:
        The manifest dictionary.

    Raises:
        ParameterError: ``seed`` is not an integer in [0, ``MAX_SEED``] (before anything is
            written).
    """
    from tqdm import tqdm

    seed = require_seed(seed, "seed")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    config = config or GeneratorConfig()
    started = time.perf_counter()
    part_count = (count + part_size - 1) // part_size
    all_aggregates = []
    bar = tqdm(total=count, unit="agg", disable=not progress, desc="aggregates")
    for part in range(part_count):
        indices = list(range(part * part_size, min(count, (part + 1) * part_size)))
        path = output / f"part-{part:05d}.npz"
        existing = _complete_part(path, seed, indices)
        if existing is not None:
            all_aggregates.extend(existing)
            bar.update(len(existing))
            continue
        aggregates = []
        for aggregate in iter_aggregates([params_of(index) for index in indices], seed, indices,
                                         config, workers):
            aggregates.append(aggregate)
            bar.update(1)
        save_aggregates(path, aggregates)
        all_aggregates.extend(aggregates)
    bar.close()
    manifest = {
        "format": "hagg_tf.aggregates manifest",
        "count": count,
        "seed": seed,
        "part_size": part_size,
        "parts": [f"part-{part:05d}.npz" for part in range(part_count)],
        "generator_config": {key: getattr(config, key) for key in config.__dataclass_fields__},
        "restarts_per_fractal_dimension": restart_statistics(all_aggregates),
        "total_restarts": int(sum(item.restarts for item in all_aggregates)),
        "wall_time_s_this_run": round(time.perf_counter() - started, 3),
        "workers": workers,
        "python": platform.python_version(),
        "numpy": np.__version__,
        **(settings or {}),
    }
    write_json_atomic(output / "manifest.json", manifest, trailing_newline=False)
    return manifest


def _complete_part(path: Path, seed: int, indices: list[int]) -> list[Aggregate] | None:
    """The aggregates of an existing part if it is exactly the expected one, else None."""
    if not path.is_file():
        return None
    aggregates = load_aggregates(path)
    if [item.index for item in aggregates] != indices or any(item.seed != seed
                                                             for item in aggregates):
        raise ValueError(f"{path} holds other draws than this job asks for (different seed or "
                         f"count); use a fresh output directory")
    return aggregates


def load_directory(output: str | os.PathLike) -> list[Aggregate]:
    """All aggregates of a directory written by ``generate_to_directory``, in index order."""
    output = Path(output)
    manifest_path = output / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no manifest.json in {output}: not a finished aggregate run")
    manifest = json.loads(manifest_path.read_text())
    aggregates = []
    for name in manifest["parts"]:
        aggregates.extend(load_aggregates(output / name))
    if len(aggregates) != manifest["count"]:
        raise ValueError(f"{output}: manifest says {manifest['count']} aggregates, "
                         f"parts hold {len(aggregates)}")
    return aggregates
