"""Empirical behaviour of the stochastic 3D model (the paper's Fig. 4, Sec. 2.2.1).

For each value of θ_Df (θ_ρ), aggregates are drawn with that value and the other three
parameters uniform on Table 2's grid; the table gives mean and spread of D_f(A) (ρ(A)).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hagg_tf.model.batch import iter_aggregates, random_table2_params
from hagg_tf.model.parameters import (TABLE2_FRACTAL_DIMENSIONS, TABLE2_MIXING_RATIOS,
                                      GeneratorConfig)


@dataclasses.dataclass
class Fig4Sample:
    """Draws behind Fig. 4.

    Attributes:
        preset: (M,) the preset value θ_Df or θ_ρ of each draw.
        empirical: (M,) D_f(A) or ρ(A) of each draw.
        restarts: (M,) restarts each draw needed.
        sizes: (M,) particle counts.
    """

    preset: np.ndarray
    empirical: np.ndarray
    restarts: np.ndarray
    sizes: np.ndarray

    def table(self) -> list[dict]:
        """Per preset value: count, mean, s.d., 5 % and 95 % quantiles, mean restarts."""
        rows = []
        for value in np.unique(self.preset):
            chosen = self.preset == value
            values = self.empirical[chosen]
            values = values[np.isfinite(values)]
            rows.append({"preset": float(value), "count": int(values.size),
                         "mean": float(values.mean()), "std": float(values.std(ddof=1)),
                         "q05": float(np.quantile(values, 0.05)),
                         "q95": float(np.quantile(values, 0.95)),
                         "mean_restarts": float(self.restarts[chosen].mean())})
        return rows


def fig4_sample(parameter: str, per_value: int, seed: int = 0, workers: int = 1,
                values=None, config: GeneratorConfig | None = None) -> Fig4Sample:
    """Draws ``per_value`` aggregates for each preset value of one parameter.

    Args:
        parameter: ``"fractal_dimension"`` (θ_Df against D_f(A)) or ``"mixing_ratio"``
            (θ_ρ against ρ(A)).
        per_value: aggregates per preset value.
        seed: base seed; the other parameters are drawn uniformly from Table 2 per index.
        workers: processes.
        values: preset values (default: Table 2's).
        config: generator settings.

    Returns:
        The draws.
    """
    if parameter == "fractal_dimension":
        values = TABLE2_FRACTAL_DIMENSIONS if values is None else values
        empirical_of = lambda descriptors: descriptors.fractal_dimension
    elif parameter == "mixing_ratio":
        values = TABLE2_MIXING_RATIOS if values is None else values
        empirical_of = lambda descriptors: descriptors.mixing_ratio
    else:
        raise ValueError(f"parameter must be fractal_dimension or mixing_ratio, got {parameter!r}")
    params, indices, preset = [], [], []
    for value_number, value in enumerate(values):
        for replicate in range(per_value):
            index = value_number * per_value + replicate
            params.append(dataclasses.replace(random_table2_params(seed, index),
                                              **{parameter: value}))
            indices.append(index)
            preset.append(value)
    pairs = list(iter_aggregates(params, seed, indices, config, workers, with_descriptors=True))
    return Fig4Sample(
        preset=np.array(preset, dtype=np.float64),
        empirical=np.array([empirical_of(descriptors) for _, descriptors in pairs]),
        restarts=np.array([aggregate.restarts for aggregate, _ in pairs]),
        sizes=np.array([aggregate.size for aggregate, _ in pairs]))
