"""Thin entry point of hagg-plot-aggregates.

The flags and the job live in hagg_tf.cli.plot_aggregates (--help lists them).
"""
from hagg_tf.cli.plot_aggregates import run

if __name__ == "__main__":
    run()
