"""Compute the HAADF reference tables with abTEM (see hagg_tf/cli/make_haadf_tables.py)."""
from absl import app
from hagg_tf.cli.make_haadf_tables import main

if __name__ == "__main__":
    app.run(main)
