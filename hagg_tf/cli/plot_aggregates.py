"""Figures of the stochastic model: Fig. 2 (aggregates in 3D) and Fig. 4 (D_f(A), ρ(A) vs θ).

Examples:
  hagg-plot-aggregates                          # both figures from fresh draws
  hagg-plot-aggregates --figure=fig2 --input=work/aggregates/default
  hagg-plot-aggregates --figure=fig4 --per_value=200 --workers=2
"""

from pathlib import Path

from absl import flags

from hagg_tf.cli import check_output_dir, define_seed, fail, reject_extra_arguments, run_tool

from hagg_tf.jsonsafe import json_safe
from hagg_tf.model import batch, io
from hagg_tf.model.generator import sample_aggregate
from hagg_tf.model.parameters import ModelParameters

_FIGURE = flags.DEFINE_enum("figure", "both", ["fig2", "fig4", "both"], "Which figure.")
_INPUT = flags.DEFINE_string(
    "input", None, "For fig2: an aggregate file or a generate_aggregates directory; "
    "default: six fresh draws at the paper's Fig. 2-like θ.")
_COUNT = flags.DEFINE_integer("count", 6, "Aggregates shown in fig2.", lower_bound=1)
_PER_VALUE = flags.DEFINE_integer("per_value", 100, "Fig. 4 draws per preset value.",
                                  lower_bound=2)
_SEED = define_seed(0, "Base seed of the draws.")
_WORKERS = flags.DEFINE_integer("workers", batch.default_workers(), "Worker processes.",
                                lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", "work/figures", "Output directory for the PNGs.")

_FIG2_THETAS = [(1.5, 0.3, 3, 1), (1.8, 0.5, 2, 2), (2.0, 0.7, 1, 4), (2.2, 0.2, 5, 3),
                (2.4, 0.6, 4, 6), (2.5, 0.9, 6, 1)]



def _fig2_aggregates():
    if _INPUT.value is None:
        thetas = [_FIG2_THETAS[number % len(_FIG2_THETAS)] for number in range(_COUNT.value)]
        return [sample_aggregate(ModelParameters(*theta), _SEED.value, number)
                for number, theta in enumerate(thetas)]
    path = Path(_INPUT.value)
    if path.is_dir():
        return batch.load_directory(path)[:_COUNT.value]
    return io.load_aggregates(path)[:_COUNT.value]


def main(argv):
    reject_extra_arguments(argv)
    output = check_output_dir(_OUTPUT.value)
    from hagg_tf.evaluation import figures, model_statistics

    try:
        if _FIGURE.value in ("fig2", "both"):
            path = figures.plot_aggregates_3d(_fig2_aggregates(), output / "fig2_aggregates.png")
            print(f"Fig. 2: {path}")
        if _FIGURE.value in ("fig4", "both"):
            samples = {parameter: model_statistics.fig4_sample(
                parameter, _PER_VALUE.value, _SEED.value, _WORKERS.value)
                for parameter in ("fractal_dimension", "mixing_ratio")}
            path = figures.plot_fig4(samples["fractal_dimension"], samples["mixing_ratio"],
                                     output / "fig4_descriptors.png")
            tables = {parameter: sample.table() for parameter, sample in samples.items()}
            # An s.d. of one aggregate per value (--per_value=1) is NaN: written as null.
            io.write_json_atomic(output / "fig4_table.json", json_safe(tables),
                                 trailing_newline=False)
            print(f"Fig. 4: {path}")
            for parameter, rows in tables.items():
                print(f"{parameter}: preset  mean  s.d.  (n)")
                for row in rows:
                    print(f"  {row['preset']:.1f}  {row['mean']:.3f}  {row['std']:.3f}  "
                          f"({row['count']})")
    except (OSError, ValueError, ImportError) as error:
        fail(str(error))


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
