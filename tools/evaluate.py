"""Thin entry point; the flags and the job live in hagg_tf.cli.evaluate."""
from absl import app

from hagg_tf.cli.evaluate import main

if __name__ == "__main__":
    app.run(main)
