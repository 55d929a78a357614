"""Thin entry point of hagg-export-models.

The flags and the job live in hagg_tf.cli.export_models (--help lists them).
"""
from hagg_tf.cli.export_models import run

if __name__ == "__main__":
    run()
