"""Thin entry point of hagg-generate-dataset.

The flags and the job live in hagg_tf.cli.generate_dataset (--help lists them).
"""
from hagg_tf.cli.generate_dataset import run

if __name__ == "__main__":
    run()
