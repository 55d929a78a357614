"""Simulate HAADF-STEM images of aggregates (see hagg_tf/cli/simulate_stem.py)."""
from absl import app
from hagg_tf.cli.simulate_stem import main

if __name__ == "__main__":
    app.run(main)
