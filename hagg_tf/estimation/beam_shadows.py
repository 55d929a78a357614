"""Digital shadows at scale: their descriptors computed by an Apache Beam pipeline.

For Table 5 (θ and θ̂ of many configurations × 800 aggregates each) and for the shadows of
many characterized samples. A job is (θ, seed, indices): the aggregates
``sample_aggregate(θ, seed, index)`` for every index and their descriptors, as the local paths
draw them (`hagg_tf.estimation.shadows.iter_shadows`: indices 0 … M−1, or, for shadows with one
θ each — drawn over θ̂'s bootstrap replicates — one job per distinct θ with its shadows'
indices, :func:`shadow_jobs`; ``hagg_tf.evaluation.paper_evaluation``: its own index ranges).
The work items are blocks of :data:`~hagg_tf.estimation.shadows.SHADOW_BLOCK` indices of one
job; each is a pure function of (θ, seed, indices, generator settings) computed by the same code
as the local worker pool (`hagg_tf.model.batch.iter_aggregates`), so the descriptors are the
same numbers, bit for bit.

Each block is written as one ``.npz`` into a work folder (atomically, named by a hash of what it
holds) and read back by the driver when the pipeline is done; a block already there is not
computed again, so an interrupted run resumes. On a cluster the work folder must be a path that
the driver and every worker see (see `hagg_tf.data.beam` for the runners).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hagg_tf.data.beam import IN_PROCESS_RUNNERS, beam_pipeline
from hagg_tf.estimation.shadows import (SHADOW_BLOCK, ShadowParameters, check_shadow_count,
                                        check_shadow_parameters, shadow_theta)
from hagg_tf.model.descriptors import Descriptors
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters

_BLOCK_FORMAT = "hagg_tf.shadow_block/1"
_DESCRIPTOR_FIELDS = tuple(field.name for field in dataclasses.fields(Descriptors))
_FIELD_TYPES = {field.name: field.type for field in dataclasses.fields(Descriptors)}


@dataclasses.dataclass
class ShadowOutcome:
    """The shadows of one job.

    Attributes:
        descriptors: one per index, in the job's order (empty when ``error`` is set).
        restarts: generator restarts summed over the job's aggregates.
        error: the generator's message when θ cannot be drawn (the first failing index's,
            as the local path reports it), else None.
    """

    descriptors: list[Descriptors]
    restarts: int
    error: Optional[str] = None


def _block_key(params: tuple, seed: int, indices: Sequence[int], config_tag: str) -> str:
    digest = hashlib.sha256(json.dumps([_BLOCK_FORMAT, list(params), int(seed),
                                        [int(index) for index in indices], config_tag]).encode())
    return digest.hexdigest()[:32]


def _config_tag(config: GeneratorConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def _as_python(name: str, value):
    kind = _FIELD_TYPES[name]
    if kind in ("int", int):
        return int(value)
    if kind in ("bool", bool):
        return bool(value)
    return float(value)


def _read_block(path: Path) -> Optional[dict]:
    """A finished block, None if absent or unreadable (then it is computed again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["format"]) != _BLOCK_FORMAT:
                return None
            if "error" in data.files:
                return {"error": str(data["error"]), "descriptors": [], "restarts": 0}
            columns = {name: data[name] for name in _DESCRIPTOR_FIELDS}
            count = len(columns[_DESCRIPTOR_FIELDS[0]])
            descriptors = [Descriptors(**{name: _as_python(name, columns[name][row])
                                          for name in _DESCRIPTOR_FIELDS})
                           for row in range(count)]
            return {"error": None, "descriptors": descriptors,
                    "restarts": int(data["restarts"])}
    except (OSError, ValueError, KeyError):
        return None


class _BlockDrawer:
    """Draws and describes one block of a job into the work folder (picklable for Beam)."""

    def __init__(self, work_dir: str, config: GeneratorConfig):
        self.work_dir = work_dir
        self.config = config

    def __call__(self, item) -> str:
        from hagg_tf.model.batch import iter_aggregates
        from hagg_tf.model.generator import GenerationError
        from hagg_tf.model.io import atomic_write

        key, params, seed, indices = item
        path = Path(self.work_dir) / f"{key}.npz"
        if _read_block(path) is not None:
            return key  # a retried item, or an earlier run's
        arrays = {"format": np.asarray(_BLOCK_FORMAT)}
        try:
            pairs = list(iter_aggregates([ModelParameters(*params)] * len(indices), seed,
                                         list(indices), self.config, workers=1,
                                         with_descriptors=True))
        except GenerationError as error:
            arrays["error"] = np.asarray(str(error))
        else:
            described = [pair[1] for pair in pairs]
            arrays["restarts"] = np.asarray(sum(pair[0].restarts for pair in pairs))
            for name in _DESCRIPTOR_FIELDS:
                arrays[name] = np.asarray([getattr(item, name) for item in described])
        atomic_write(path, lambda stream: np.savez(stream, **arrays))
        return key


def beam_shadow_descriptors(jobs: Sequence[tuple[ModelParameters, int, Sequence[int]]],
                            work_dir: Optional[str] = None, *, runner: str = "DirectRunner",
                            beam_args: Sequence[str] = (),
                            config: Optional[GeneratorConfig] = None,
                            block: int = SHADOW_BLOCK) -> list[ShadowOutcome]:
    """The descriptors of every job's aggregates, computed by a Beam pipeline.

    Args:
        jobs: (θ, seed, indices) per job; aggregate k of a job is
            ``sample_aggregate(θ, seed, indices[k], config)``.
        work_dir: folder for the finished blocks (created; kept, so that a rerun resumes);
            None: a temporary folder, removed afterwards (in-process runners only).
        runner: a Beam runner (see `hagg_tf.data.beam.beam_pipeline`).
        beam_args: Beam pipeline options.
        config: generator settings.
        block: indices per work item.

    Returns:
        One `ShadowOutcome` per job, in order.

    Raises:
        ValueError: no ``work_dir`` for a runner outside this process, or ``block`` < 1.
        ImportError: apache-beam is not installed.
    """
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    if work_dir is None:
        if runner not in IN_PROCESS_RUNNERS:
            raise ValueError(f"runner {runner!r} needs a work folder that its workers share")
        with tempfile.TemporaryDirectory(prefix="hagg_tf-shadows-") as temporary:
            return beam_shadow_descriptors(jobs, temporary, runner=runner, beam_args=beam_args,
                                           config=config, block=block)
    config = config or GeneratorConfig()
    tag = _config_tag(config)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    job_blocks = []
    for params, seed, indices in jobs:
        theta = tuple(params.as_tuple())
        indices = [int(index) for index in indices]
        job_blocks.append([(_block_key(theta, seed, indices[start:start + block], tag), theta,
                            int(seed), indices[start:start + block])
                           for start in range(0, len(indices), block)])
    todo = [item for items in job_blocks for item in items
            if _read_block(work / f"{item[0]}.npz") is None]
    if todo:
        import apache_beam as beam

        pipeline = beam_pipeline(runner, beam_args)
        _ = (pipeline
             | "shadow blocks" >> beam.Create(todo)
             | "draw and describe" >> beam.Map(_BlockDrawer(str(work.resolve()), config)))
        pipeline.run().wait_until_finish()

    outcomes = []
    for items in job_blocks:
        descriptors, restarts, error = [], 0, None
        for key, *_ in items:
            finished = _read_block(work / f"{key}.npz")
            if finished is None:
                raise RuntimeError(f"{work}: block {key} missing after the pipeline finished")
            if finished["error"] is not None:
                error = finished["error"]
                break
            descriptors += finished["descriptors"]
            restarts += finished["restarts"]
        outcomes.append(ShadowOutcome([] if error else descriptors, 0 if error else restarts,
                                      error))
    return outcomes


def shadow_jobs(params: ShadowParameters, count: int, seed: int
                ) -> list[tuple[ModelParameters, int, list[int]]]:
    """The jobs that draw shadows 0 … ``count`` − 1 as ``iter_shadows(params, count, seed)``
    does: one job per distinct θ (in order of first use) with the indices of its shadows.

    Args:
        params: one θ, or a sequence cycled over the shadows (shadow k from
            ``params[k mod len(params)]``, `hagg_tf.estimation.shadows.shadow_theta`).
        count: number of shadows M.
        seed: base seed.

    Returns:
        [(θ, seed, indices)], for :func:`beam_shadow_descriptors`.
    """
    count = check_shadow_count(count)
    params = check_shadow_parameters(params)
    groups: dict[ModelParameters, list[int]] = {}
    for index in range(count):
        groups.setdefault(shadow_theta(params, index), []).append(index)
    return [(theta, int(seed), indices) for theta, indices in groups.items()]


def merge_jobs(jobs: Sequence[tuple[ModelParameters, int, Sequence[int]]],
               outcomes: Sequence[ShadowOutcome], count: int) -> tuple[list[Descriptors], int]:
    """The descriptors of shadows 0 … ``count`` − 1 in index order, from the outcomes of
    :func:`shadow_jobs`' jobs, and the restarts summed over them.

    Raises:
        ValueError: an outcome failed or the jobs do not cover every index once.
    """
    ordered: list[Optional[Descriptors]] = [None] * count
    restarts = 0
    for (_, _, indices), outcome in zip(jobs, outcomes, strict=True):
        if outcome.error:
            raise ValueError(f"a job failed: {outcome.error}")
        for index, described in zip(indices, outcome.descriptors, strict=True):
            if ordered[index] is not None:
                raise ValueError(f"shadow {index} is in two jobs")
            ordered[index] = described
        restarts += outcome.restarts
    missing = [index for index, described in enumerate(ordered) if described is None]
    if missing:
        raise ValueError(f"{len(missing)} shadows in no job (first: {missing[0]})")
    return ordered, restarts
