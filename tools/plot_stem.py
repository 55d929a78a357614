"""Figures of the STEM simulation.

The flags and the job live in hagg_tf.cli.plot_stem (--help lists them).
"""
from hagg_tf.cli.plot_stem import run

if __name__ == "__main__":
    run()
