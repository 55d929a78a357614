"""Thin entry point; the flags and the job live in hagg_tf.cli.train."""
from absl import app

from hagg_tf.cli.train import main

if __name__ == "__main__":
    app.run(main)
