"""Simulate HAADF-STEM images of aggregates.

The flags and the job live in hagg_tf.cli.simulate_stem (--help lists them).
"""
from hagg_tf.cli.simulate_stem import run

if __name__ == "__main__":
    run()
