"""Compute the HAADF reference tables with abTEM.

The flags and the job live in hagg_tf.cli.make_haadf_tables (--help lists them).
"""
from hagg_tf.cli.make_haadf_tables import run

if __name__ == "__main__":
    run()
