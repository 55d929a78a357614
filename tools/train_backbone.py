"""Thin entry point of hagg-train-backbone.

The flags and the job live in hagg_tf.cli.train_backbone (--help lists them).
"""
from hagg_tf.cli.train_backbone import run

if __name__ == "__main__":
    run()
