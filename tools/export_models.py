"""Thin entry point; the flags and the job live in hagg_tf.cli.export_models."""
from absl import app

from hagg_tf.cli.export_models import main

if __name__ == "__main__":
    app.run(main)
