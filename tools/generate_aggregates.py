"""Thin entry point of hagg-generate-aggregates.

The flags and the job live in hagg_tf.cli.generate_aggregates (--help lists them).
"""
from hagg_tf.cli.generate_aggregates import run

if __name__ == "__main__":
    run()
