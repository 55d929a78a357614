"""Thin entry point of hagg-train.

The flags and the job live in hagg_tf.cli.train (--help lists them).
"""
from hagg_tf.cli.train import run

if __name__ == "__main__":
    run()
