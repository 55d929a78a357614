"""Aggregates per second of the stochastic model over the paper's parameter distribution.

Prints generation alone and generation with all descriptors, in one process and with every
core; --table5 also times the paper's Table 5 workload (100 θ × 800 aggregates with
descriptors) end to end.

  python benchmarks/bench_model.py --count=400
  python benchmarks/bench_model.py --count=400 --table5
  python benchmarks/bench_model.py --count=0 --size_sweep   # time per aggregate vs N and radius

--size_sweep times one aggregate (generation, then descriptors) in one process for particle
counts N ∈ --sweep_sizes and mean radii ∈ --sweep_radii (s.d. 25 % of the mean, θ uniform on
Table 2): what the wider N range of the realistic database preset costs (docs/data.md).
"""

import time

import numpy as np
from absl import app, flags

from hagg_tf.model.batch import default_workers, iter_aggregates, random_table2_params

_COUNT = flags.DEFINE_integer("count", 400, "Aggregates per measurement.")
_SEED = flags.DEFINE_integer("seed", 123, "Base seed.")
_TABLE5 = flags.DEFINE_bool("table5", False, "Also run 100 θ × 800 aggregates with descriptors.")
_SIZE_SWEEP = flags.DEFINE_bool("size_sweep", False,
                                "Time one aggregate versus particle count N and mean radius.")
_SWEEP_SIZES = flags.DEFINE_list("sweep_sizes", ["10", "30", "80", "150", "300"],
                                 "Particle counts N of --size_sweep.")
_SWEEP_RADII = flags.DEFINE_list("sweep_radii", ["5", "8", "12"],
                                 "Mean particle radii (nm) of --size_sweep.")
_SWEEP_DRAWS = flags.DEFINE_integer("sweep_draws", 20, "Aggregates per (N, radius) cell.")


def _size_sweep():
    """CPU time per aggregate (generation; descriptors) for each (N, radius)."""
    from hagg_tf.model.descriptors import describe
    from hagg_tf.model.generator import sample_aggregate
    from hagg_tf.model.parameters import GeneratorConfig

    radii = [float(value) for value in _SWEEP_RADII.value]
    print(f"CPU ms per aggregate, one process, {_SWEEP_DRAWS.value} draws per cell, θ uniform "
          "on Table 2 (generation / descriptors):")
    print("  N    " + "".join(f"r = {radius:g} nm".ljust(18) for radius in radii))
    for size in (int(value) for value in _SWEEP_SIZES.value):
        cells = []
        for radius in radii:
            config = GeneratorConfig(radius_mean=radius, radius_std=0.25 * radius,
                                     min_size=size, max_size=size)
            generate = describing = 0.0
            for index in range(_SWEEP_DRAWS.value):
                params = random_table2_params(_SEED.value, index)
                started = time.process_time()
                aggregate = sample_aggregate(params, _SEED.value, index, config)
                middle = time.process_time()
                describe(aggregate)
                generate += middle - started
                describing += time.process_time() - middle
            cells.append(f"{1e3 * generate / _SWEEP_DRAWS.value:6.1f} / "
                         f"{1e3 * describing / _SWEEP_DRAWS.value:4.1f}".ljust(18))
        print(f"  {size:<5d}" + "".join(cells))


def _rate(params, indices, workers, with_descriptors):
    started = time.perf_counter()
    results = list(iter_aggregates(params, _SEED.value, indices, workers=workers,
                                   with_descriptors=with_descriptors))
    elapsed = time.perf_counter() - started
    aggregates = [item[0] if with_descriptors else item for item in results]
    return len(results) / elapsed, elapsed, aggregates


def main(argv):
    del argv
    if _SIZE_SWEEP.value:
        _size_sweep()
    if _COUNT.value <= 0:
        return
    indices = list(range(_COUNT.value))
    params = [random_table2_params(_SEED.value, index) for index in indices]
    cores = default_workers()
    print(f"{_COUNT.value} aggregates, θ uniform on Table 2, {cores} cores")
    for workers in sorted({1, cores}):
        for with_descriptors in (False, True):
            rate, elapsed, aggregates = _rate(params, indices, workers, with_descriptors)
            what = "generation + descriptors" if with_descriptors else "generation alone"
            print(f"  {what:26s} workers={workers}: {rate:7.1f} aggregates/s "
                  f"({1000 / rate * workers:.1f} ms per aggregate per core, {elapsed:.1f} s)")
    sizes = np.array([item.size for item in aggregates])
    restarts = np.array([item.restarts for item in aggregates])
    print(f"  mean size {sizes.mean():.1f} particles; aggregates restarted: "
          f"{np.mean(restarts > 0):.1%}, mean restarts {restarts.mean():.2f}")
    if _TABLE5.value:
        thetas = [random_table2_params(_SEED.value + 1, number) for number in range(100)]
        params = [theta for theta in thetas for _ in range(800)]
        indices = list(range(len(params)))
        rate, elapsed, _ = _rate(params, indices, cores, True)
        print(f"Table 5 workload, 100 θ × 800 aggregates with descriptors, {cores} workers: "
              f"{elapsed / 60:.1f} min ({rate:.1f} aggregates/s)")


if __name__ == "__main__":
    app.run(main)
