"""Figures of the STEM simulation (see hagg_tf/cli/plot_stem.py)."""
from absl import app
from hagg_tf.cli.plot_stem import main

if __name__ == "__main__":
    app.run(main)
