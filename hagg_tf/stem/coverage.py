"""How much of the aggregate population fits in the image: the default pixel size (SPEC §6).

An aggregate lies wholly inside a square image of edge L = image_size × pixel_size centred on
its centre of mass when its projected half-extent

    h = max_i max(|x_i − c_x|, |y_i − c_y|) + r_i

is at most L / 2. The population is the paper's database design over Table 2 (paper
Sec. 2.2.2): for each of the 324 triples (θ_ρ, θ_0, θ_1) two θ_Df drawn from Table 2's
values, and a number of aggregates for each. `measure_half_extents` draws them with the real
generator; `inside_fraction` turns half-extents into the fraction inside.
"""

from __future__ import annotations

import itertools

import numpy as np

from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.workers import make_process_pool
from hagg_tf.model.parameters import (ModelParameters, TABLE2_CLUSTER_SIZES,
                                      TABLE2_FRACTAL_DIMENSIONS, TABLE2_MIXING_RATIOS)


def projected_half_extent(aggregate: Aggregate, center: np.ndarray | None = None) -> float:
    """Half the edge of the smallest centred square holding the aggregate's projection, nm."""
    center = aggregate.center_of_mass()[:2] if center is None else np.asarray(center)
    offsets = np.abs(aggregate.positions[:, :2] - center).max(axis=1)
    return float((offsets + aggregate.radii).max())


def inside_fraction(half_extents: np.ndarray, pixel_size_nm: float, image_size: int = 512) -> float:
    """Fraction of aggregates wholly inside an image of image_size × pixel_size_nm."""
    half_extents = np.asarray(half_extents, dtype=float)
    return float(np.mean(half_extents <= 0.5 * image_size * pixel_size_nm))


def database_parameters(seed: int, fractal_dimensions_per_triple: int = 2) -> list[ModelParameters]:
    """The paper's database design: per (θ_ρ, θ_0, θ_1) triple, random θ_Df from Table 2."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x434F56]))  # "COV"
    parameters = []
    for mixing, size0, size1 in itertools.product(TABLE2_MIXING_RATIOS, TABLE2_CLUSTER_SIZES,
                                                  TABLE2_CLUSTER_SIZES):
        chosen = rng.choice(TABLE2_FRACTAL_DIMENSIONS, size=fractal_dimensions_per_triple,
                            replace=False)
        parameters.extend(ModelParameters(float(df), mixing, size0, size1) for df in chosen)
    return parameters


def _half_extent_job(job: tuple) -> float:
    from hagg_tf.model.generator import sample_aggregate
    params, seed, index = job
    return projected_half_extent(sample_aggregate(params, seed, index))


def measure_half_extents(per_parameter: int = 5, seed: int = 7, workers: int = 1,
                         progress: bool = True) -> tuple[np.ndarray, list[ModelParameters]]:
    """Draw the database population and return every aggregate's projected half-extent.

    Args:
        per_parameter: aggregates per θ (the paper uses 50; 5 gives 3240 aggregates).
        seed: base seed (aggregate j is drawn with (seed, j)).
        workers: processes.
        progress: show a tqdm bar.

    Returns:
        (half-extents (M,) nm, θ of each aggregate).
    """
    parameters = database_parameters(seed)
    jobs = [(params, seed, index) for index, params in
            enumerate(p for p in parameters for _ in range(per_parameter))]
    thetas = [job[0] for job in jobs]
    if workers <= 1:
        iterator = map(_half_extent_job, jobs)
        pool = None
    else:
        pool = make_process_pool(workers)
        iterator = pool.map(_half_extent_job, jobs, chunksize=32)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, total=len(jobs), desc="aggregates", unit="agg")
    try:
        extents = np.fromiter(iterator, dtype=float, count=len(jobs))
    finally:
        if pool is not None:
            pool.shutdown()
    return extents, thetas


def smallest_pixel_size(half_extents: np.ndarray, fraction: float = 0.99, image_size: int = 512,
                        step_nm: float = 0.05) -> float:
    """Smallest pixel size on a ``step_nm`` grid keeping ``fraction`` of aggregates inside."""
    needed = np.quantile(np.asarray(half_extents), fraction) * 2.0 / image_size
    return float(np.ceil(needed / step_nm - 1e-9) * step_nm)
