"""Generate virtual hetero-aggregates from the stochastic 3D model.

Examples:
  hagg-generate-aggregates --theta=2.0,0.5,3,2 --count=100 --output=work/aggregates/demo
  hagg-generate-aggregates --grid=random --count=2000 --seed=1 --workers=2
  hagg-generate-aggregates --grid=table2 --count=1 --export=xyz

Draw ``index`` of a run is fixed by (--seed, index) alone, whatever --workers is. Output parts are
written atomically; rerunning the same command resumes where it stopped.
"""

import sys
import time

from absl import flags

from hagg_tf.cli import (check_output_dir, define_float, define_seed, fail,
                         reject_extra_arguments, run_tool)

from hagg_tf.model import batch, io
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters, ParameterError, table2_grid

_THETA = flags.DEFINE_string(
    "theta", "2.0,0.5,3,2", "θ as 'D_f,rho,theta_0,theta_1' (used when --grid=none).")
_GRID = flags.DEFINE_enum(
    "grid", "none", ["none", "table2", "random"],
    "none: --count draws of --theta; table2: --count draws of each of Table 2's 3564 θ; "
    "random: --count draws, each with θ uniform on Table 2's grid.")
_COUNT = flags.DEFINE_integer("count", 20, "Aggregates (per θ for --grid=table2).",
                              lower_bound=1)
_SEED = define_seed(0, "Base seed; with the draw's index it fixes the draw.")
_OUTPUT = flags.DEFINE_string("output", "work/aggregates/default", "Output directory.")
_WORKERS = flags.DEFINE_integer("workers", batch.default_workers(), "Worker processes.",
                                lower_bound=1)
_PART_SIZE = flags.DEFINE_integer("part_size", 1000, "Aggregates per part file.",
                                  lower_bound=1)
_EXPORT = flags.DEFINE_enum("export", "none", ["none", "xyz", "csv"],
                            "Also write all aggregates as extended XYZ or CSV.")
_MIN_SIZE = flags.DEFINE_integer("min_size", 20, "Smallest target particle count N.",
                                 lower_bound=1)
_MAX_SIZE = flags.DEFINE_integer("max_size", 80, "Largest target particle count N.",
                                 lower_bound=1)
_RADIUS_MEAN = define_float("radius_mean", 12.0, "Mean particle radius, nm, > 0.", positive=True)
_RADIUS_STD = define_float("radius_std", 3.0, "Standard deviation of the radius, nm, > 0.",
                           positive=True)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")



def main(argv):
    reject_extra_arguments(argv)
    check_output_dir(_OUTPUT.value)
    try:
        config = GeneratorConfig(radius_mean=_RADIUS_MEAN.value, radius_std=_RADIUS_STD.value,
                                 min_size=_MIN_SIZE.value, max_size=_MAX_SIZE.value)
        if _GRID.value == "none":
            try:
                values = [float(value) for value in _THETA.value.split(",")]
            except ValueError:
                fail(f"--theta must be four comma-separated numbers, got {_THETA.value!r}")
            theta = ModelParameters.from_sequence(values)
            params_of, total = (lambda index: theta), _COUNT.value
        elif _GRID.value == "table2":
            grid = list(table2_grid())
            count = _COUNT.value
            params_of, total = (lambda index: grid[index // count]), len(grid) * count
        else:
            seed = _SEED.value
            params_of, total = (lambda index: batch.random_table2_params(seed, index)), _COUNT.value
    except ParameterError as error:
        fail(str(error))

    started = time.perf_counter()
    try:
        manifest = batch.generate_to_directory(
            _OUTPUT.value, params_of, total, _SEED.value, config, _WORKERS.value,
            _PART_SIZE.value, settings={"command": " ".join(sys.argv), "grid": _GRID.value},
            progress=_PROGRESS.value)
    except (ValueError, OSError) as error:
        fail(str(error))
    elapsed = time.perf_counter() - started
    print(f"{total} aggregates in {_OUTPUT.value} ({elapsed:.1f} s, {_WORKERS.value} workers)")
    print("restarts per θ_Df (share of aggregates restarted, mean restarts):")
    for fractal_dimension, stats in manifest["restarts_per_fractal_dimension"].items():
        print(f"  θ_Df={fractal_dimension}: {stats['restarted_fraction']:.1%}, "
              f"{stats['mean_restarts']:.2f} over {stats['aggregates']}")
    if _EXPORT.value != "none":
        aggregates = batch.load_directory(_OUTPUT.value)
        path = f"{_OUTPUT.value}/aggregates.{_EXPORT.value}"
        (io.export_xyz if _EXPORT.value == "xyz" else io.export_csv)(path, aggregates)
        print(f"exported to {path}")


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
