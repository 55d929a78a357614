"""Digital shadows (Sec. 3.4): new aggregates drawn from θ̂ and their structural descriptors.

Shadows are drawn as a stream (:func:`iter_shadows`): whoever consumes them keeps what it needs
(``characterize`` keeps every shadow's descriptors but only the first :data:`SAVED_SHADOWS`
aggregates), so memory does not grow with the number of shadows beyond a few numbers each.

The shadows are drawn from one θ (θ̂ made admissible) or from one θ per shadow: shadow k from
``params[k mod len(params)]``, which is how ``characterize`` draws them over θ̂'s bootstrap
replicates (:mod:`hagg_tf.estimation.uncertainty`), so that their descriptors' spread includes
the uncertainty of θ̂.
"""
from __future__ import annotations

import collections
import math
import multiprocessing
import sys
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from hagg_tf.estimation.quantities import DESCRIPTOR_QUANTITIES
from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.descriptors import Descriptors, summarize
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters
from hagg_tf.model.workers import make_process_pool

#: The descriptors of Sec. 3.4.1 reported for digital shadows, with their symbols.
SHADOW_DESCRIPTORS = {quantity.key: quantity.symbol for quantity in DESCRIPTOR_QUANTITIES}
#: Shadows drawn per sample by default (the paper drew 800 per θ for its Fig. 14–16).
DEFAULT_SHADOWS = 100
#: Most shadows one call draws. At 10–20 ms per aggregate, 100 000 shadows take 15–30 CPU
#: minutes, and the mean of a descriptor over them is 11× more precise than over the paper's 800
#: (its standard error falls with √M); more only costs time.
MAX_SHADOWS = 100_000
#: Shadows written to shadows.npz / shadows.xyz: the first this many (every shadow enters the
#: descriptors; shadow k is ``sample_aggregate(θ, seed, k)``, so any can be drawn again). 1000
#: covers the paper's 800 and keeps the XYZ file near 5 MB.
SAVED_SHADOWS = 1000
#: With ``progress=True``, runs of more shadows than this (5–10 s and up) show a progress bar.
PROGRESS_SHADOWS = 500
#: Above this many shadows, the default is to draw them with all cores.
PARALLEL_THRESHOLD = 200
#: … and above this many where the workers can be forked (:func:`fork_is_safe`): a forked
#: worker starts in milliseconds with the package already imported, a spawned one imports it
#: anew (docs/learning.md, "Runtimes of hagg-characterize", has both measured).
FORK_PARALLEL_THRESHOLD = 20
#: Shadows per task sent to a worker process: ~0.5–1 s of work, so that messages are few and
#: the order of results costs no waiting worth mentioning.
SHADOW_BLOCK = 50
#: Blocks in flight per worker: enough to keep every worker busy, few enough that the shadows
#: waiting to be consumed stay a few hundred.
BLOCKS_IN_FLIGHT_PER_WORKER = 2


def fork_is_safe() -> bool:
    """True where worker processes may be forked from this one: Linux, TensorFlow not imported
    (its runtime's threads and locks do not survive a fork) and no other Python thread running
    (a fork copies only the calling thread, and a lock another thread holds stays locked in the
    child) but tqdm's monitor, which sleeps between checks of the progress bars every 10 s (the
    workers never touch tqdm). LiteRT's native thread pool is no obstacle either: the workers
    only draw and describe aggregates (numpy), they never run the networks."""
    import threading

    others = [thread for thread in threading.enumerate()
              if thread is not threading.current_thread()
              and not (thread.daemon and thread.name == "tqdm_monitor")]
    return (sys.platform.startswith("linux") and "tensorflow" not in sys.modules
            and not others and "fork" in multiprocessing.get_all_start_methods())


def default_shadow_workers(count: int) -> int:
    """Worker processes for ``count`` shadows: all cores above :data:`PARALLEL_THRESHOLD`, or
    above :data:`FORK_PARALLEL_THRESHOLD` where :func:`fork_is_safe`; else one (starting
    processes would cost more than the ~10–20 ms per aggregate they save)."""
    from hagg_tf.model.batch import default_workers

    if count > PARALLEL_THRESHOLD or (count > FORK_PARALLEL_THRESHOLD and fork_is_safe()):
        return default_workers()
    return 1


def check_shadow_count(count: int) -> int:
    """``count`` if it lies in [1, :data:`MAX_SHADOWS`].

    Raises:
        ValueError: it does not (the message names the allowed range).
    """
    if not 1 <= count <= MAX_SHADOWS:
        raise ValueError(f"the number of digital shadows must lie between 1 and {MAX_SHADOWS}, "
                         f"got {count}")
    return int(count)


#: θ of the shadows: one for all, or a sequence cycled over them (:func:`shadow_theta`).
ShadowParameters = Union[ModelParameters, Sequence[ModelParameters]]


def check_shadow_parameters(params: ShadowParameters) -> Union[ModelParameters, tuple]:
    """``params`` as one θ or a non-empty tuple of θ.

    Raises:
        ValueError: an empty sequence, or an entry that is not a ``ModelParameters``.
    """
    if isinstance(params, ModelParameters):
        return params
    params = tuple(params)
    if not params or not all(isinstance(theta, ModelParameters) for theta in params):
        raise ValueError("the shadows' θ must be a ModelParameters or a non-empty sequence of "
                         "them")
    return params


def shadow_theta(params: ShadowParameters, index: int) -> ModelParameters:
    """θ of shadow ``index``: ``params`` itself, or ``params[index mod len(params)]``."""
    if isinstance(params, ModelParameters):
        return params
    return params[index % len(params)]


def _draw_block(task) -> list[tuple[Aggregate, Descriptors]]:
    """Draws and describes the shadows ``indices`` (runs in a worker process); ``params`` is
    one θ for all of them or one θ per index."""
    from hagg_tf.model.batch import iter_aggregates

    params, seed, indices, config = task
    thetas = [params] * len(indices) if isinstance(params, ModelParameters) else list(params)
    return list(iter_aggregates(thetas, seed, list(indices), config, workers=1,
                                with_descriptors=True))


def _block_task(params, seed: int, indices: range, config: GeneratorConfig) -> tuple:
    """A worker's task: one θ, or the θ of each of ``indices`` (never the whole sequence,
    which may hold one θ per shadow)."""
    if not isinstance(params, ModelParameters):
        params = tuple(shadow_theta(params, index) for index in indices)
    return params, seed, indices, config


def iter_shadows(params: ShadowParameters, count: int = DEFAULT_SHADOWS, seed: int = 0,
                 workers: Optional[int] = None, config: Optional[GeneratorConfig] = None
                 ) -> Iterator[tuple[Aggregate, Descriptors]]:
    """Draws ``count`` digital shadows and describes them, one at a time, in order.

    Shadow k is ``sample_aggregate(θ_k, seed, k)`` with θ_k = :func:`shadow_theta` (params, k):
    reproducible from (θ_k, seed, k) alone and independent of ``workers``. With several workers,
    blocks of :data:`SHADOW_BLOCK` shadows are handed out, at most
    :data:`BLOCKS_IN_FLIGHT_PER_WORKER` per worker at a time, so neither the task list nor the
    finished shadows pile up in memory.

    Args:
        params: θ of the shadows (e.g. ``ThetaEstimate.shadow_parameters()``), or a sequence of
            θ cycled over the shadows (shadow k from ``params[k mod len(params)]``; e.g. θ̂'s
            bootstrap replicates, ``ThetaUncertainty.shadow_thetas``).
        count: number of aggregates M, 1 to :data:`MAX_SHADOWS`.
        seed: base seed.
        workers: processes (None: :func:`default_shadow_workers`).
        config: generator settings (radius distribution, target sizes).

    Yields:
        (aggregate, descriptors) for k = 0, 1, …, count − 1.

    Raises:
        ValueError: ``count`` outside [1, :data:`MAX_SHADOWS`], or bad ``params``.
    """
    count = check_shadow_count(count)
    params = check_shadow_parameters(params)
    workers = default_shadow_workers(count) if workers is None else int(workers)
    config = config or GeneratorConfig()
    # At least one block per worker (blocks only group the work: shadow k is the same in any).
    block_size = SHADOW_BLOCK if workers <= 1 else min(SHADOW_BLOCK, -(-count // workers))
    blocks = (_block_task(params, seed, range(start, min(count, start + block_size)), config)
              for start in range(0, count, block_size))
    if workers <= 1:
        for block in blocks:
            yield from _draw_block(block)
        return
    # fork where it is safe (fast); else spawn: the caller may hold a TensorFlow runtime and its
    # threads.
    context = multiprocessing.get_context("fork" if fork_is_safe() else "spawn")
    with make_process_pool(workers, mp_context=context) as pool:
        pending = collections.deque()
        for block in blocks:
            pending.append(pool.submit(_draw_block, block))
            if len(pending) >= BLOCKS_IN_FLIGHT_PER_WORKER * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def draw_shadows(params: ShadowParameters, count: int = DEFAULT_SHADOWS, seed: int = 0,
                 workers: Optional[int] = None, config: Optional[GeneratorConfig] = None
                 ) -> tuple[list[Aggregate], list[Descriptors]]:
    """All of :func:`iter_shadows` as two lists (for small counts; it holds every aggregate).

    Returns:
        (aggregates, descriptors), both of length ``count``.
    """
    pairs = list(iter_shadows(params, count, seed, workers, config))
    return [pair[0] for pair in pairs], [pair[1] for pair in pairs]


def collect_shadows(params: ShadowParameters, count: int = DEFAULT_SHADOWS, seed: int = 0,
                    workers: Optional[int] = None, config: Optional[GeneratorConfig] = None, *,
                    keep: int = SAVED_SHADOWS, progress: bool = False
                    ) -> tuple[list[Aggregate], list[Descriptors], int]:
    """Streams :func:`iter_shadows`, keeping every shadow's descriptors but only the first
    ``keep`` aggregates.

    Args:
        params, count, seed, workers, config: as for :func:`iter_shadows`.
        keep: aggregates kept (the ones ``characterize`` writes to disk).
        progress: show a progress bar on stderr when ``count`` exceeds :data:`PROGRESS_SHADOWS`
            (updated every 0.5 s in a terminal, every 10 s into a log file).

    Returns:
        (the first ``keep`` aggregates, all ``count`` descriptors in order, generator restarts
        summed over all shadows).
    """
    from tqdm import tqdm

    kept, descriptors, restarts = [], [], 0
    interval = 0.5 if sys.stderr.isatty() else 10.0
    with tqdm(total=count, desc="digital shadows", unit="shadow", file=sys.stderr,
              mininterval=interval, disable=not (progress and count > PROGRESS_SHADOWS)) as bar:
        for aggregate, described in iter_shadows(params, count, seed, workers, config):
            if len(kept) < keep:
                kept.append(aggregate)
            descriptors.append(described)
            restarts += aggregate.restarts
            bar.update(1)
    return kept, descriptors, restarts


def shadow_summary(descriptors: Sequence[Descriptors]) -> dict[str, dict[str, float]]:
    """Mean, s.d. (ddof = 1) and count of every descriptor over the shadows.

    NaN values are left out per descriptor (S_TiO2 of a shadow without TiO2), and ``count`` says
    how many shadows entered; a JSON-safe copy replaces NaN by None.
    """
    summary = summarize(list(descriptors))
    return {name: {key: (None if isinstance(value, float) and math.isnan(value) else value)
                   for key, value in values.items()} for name, values in summary.items()}


def descriptor_arrays(descriptors: Sequence[Descriptors]) -> dict[str, np.ndarray]:
    """The three shadow descriptors as float arrays (NaN kept), for figures."""
    return {name: np.array([getattr(item, name) for item in descriptors], dtype=np.float64)
            for name in SHADOW_DESCRIPTORS}
