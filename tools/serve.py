"""Thin entry point of hagg-serve.

The flags and the job live in hagg_tf.cli.serve (--help lists them).
"""
from hagg_tf.cli.serve import run

if __name__ == "__main__":
    run()
