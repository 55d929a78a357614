"""Digital shadows (Sec. 3.4): new aggregates drawn from θ̂ and their structural descriptors."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.descriptors import Descriptors, summarize
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters

#: The descriptors of Sec. 3.4.1 reported for digital shadows, with their symbols.
SHADOW_DESCRIPTORS = {"tio2_cluster_size": "S_TiO2", "hetero_coordination": "Z_hetero",
                      "total_coordination": "Z_total"}
#: Shadows drawn per sample by default (the paper drew 800 per θ for its Fig. 14–16).
DEFAULT_SHADOWS = 100
#: Above this many shadows, the default is to draw them with all cores.
PARALLEL_THRESHOLD = 200


def default_shadow_workers(count: int) -> int:
    """Worker processes for ``count`` shadows: one below 200 (starting processes costs more than
    the ~20 ms per aggregate saved), else all cores."""
    from hagg_tf.model.batch import default_workers

    return 1 if count <= PARALLEL_THRESHOLD else default_workers()


def draw_shadows(params: ModelParameters, count: int = DEFAULT_SHADOWS, seed: int = 0,
                 workers: Optional[int] = None, config: Optional[GeneratorConfig] = None
                 ) -> tuple[list[Aggregate], list[Descriptors]]:
    """Draws ``count`` digital shadows from θ and describes them.

    Shadow k is ``sample_aggregate(params, seed, k)``: reproducible from (θ, seed) alone and
    independent of ``workers``.

    Args:
        params: θ of the shadows (e.g. ``ThetaEstimate.shadow_parameters()``).
        count: number of aggregates M.
        seed: base seed.
        workers: processes (None: :func:`default_shadow_workers`).
        config: generator settings (radius distribution, target sizes).

    Returns:
        (aggregates, descriptors), both of length ``count``.
    """
    from hagg_tf.model.batch import iter_aggregates

    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    workers = default_shadow_workers(count) if workers is None else int(workers)
    pairs = list(iter_aggregates([params] * count, seed, list(range(count)), config,
                                 workers=workers, with_descriptors=True))
    return [pair[0] for pair in pairs], [pair[1] for pair in pairs]


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
