"""Thin entry point of hagg-characterize.

The flags and the job live in hagg_tf.cli.characterize (--help lists them).
"""
from hagg_tf.cli.characterize import run

if __name__ == "__main__":
    run()
