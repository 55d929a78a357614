"""Aggregates per second of the stochastic model over the paper's parameter distribution.

Prints generation alone and generation with all descriptors, in one process and with every
core; --table5 also times the paper's Table 5 workload (100 θ × 800 aggregates with
descriptors) end to end.

  python benchmarks/bench_model.py --count=400
  python benchmarks/bench_model.py --count=400 --table5
"""

import time

import numpy as np
from absl import app, flags

from hagg_tf.model.batch import default_workers, iter_aggregates, random_table2_params

_COUNT = flags.DEFINE_integer("count", 400, "Aggregates per measurement.")
_SEED = flags.DEFINE_integer("seed", 123, "Base seed.")
_TABLE5 = flags.DEFINE_bool("table5", False, "Also run 100 θ × 800 aggregates with descriptors.")


def _rate(params, indices, workers, with_descriptors):
    started = time.perf_counter()
    results = list(iter_aggregates(params, _SEED.value, indices, workers=workers,
                                   with_descriptors=with_descriptors))
    elapsed = time.perf_counter() - started
    aggregates = [item[0] if with_descriptors else item for item in results]
    return len(results) / elapsed, elapsed, aggregates


def main(argv):
    del argv
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
