"""Thin entry point of hagg-evaluate.

The flags and the job live in hagg_tf.cli.evaluate (--help lists them).
"""
from hagg_tf.cli.evaluate import run

if __name__ == "__main__":
    run()
