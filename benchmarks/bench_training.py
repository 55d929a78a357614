"""Training throughput of each network (images per second, paper batch sizes, 512 px).

Runs ``hagg_tf.training.train_network`` for a few steps per network on a database (default: the
placeholder database of examples/make_placeholder_models.py) and prints one JSON line per
network: images/s over the timed steps (the first ``--warmup`` steps, which include tracing,
excluded; a ν-image sample counts ν images). The input pipeline runs concurrently, as in real
training.

  python benchmarks/bench_training.py --dataset=work/placeholder/dataset --steps=6
"""
from __future__ import annotations

import json
import os
import pathlib

from absl import app, flags

_DATASET = flags.DEFINE_string("dataset", "work/placeholder/dataset", "Database directory.")
_STEPS = flags.DEFINE_integer("steps", 6, "Training steps per network (warm-up included).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Steps not timed.")
_NETWORKS = flags.DEFINE_list("networks", [
    "fractal_dimension", "mixing_ratio_regressor", "mixing_ratio_classifier",
    "wo3_cluster_size", "tio2_cluster_size"], "Networks to time.")
_OUTPUT = flags.DEFINE_string("output", "work/bench/training", "Scratch run directories.")


def main(argv):
    del argv
    from hagg_tf.training import train_network

    for name in _NETWORKS.value:
        result = train_network(name, _DATASET.value, pathlib.Path(_OUTPUT.value) / name,
                               epochs=1, steps_per_epoch=_STEPS.value, validation_steps=1,
                               warmup_steps=_WARMUP.value, verify="none", overwrite=True,
                               verbose=0)
        summary = json.loads((result.output_dir / "training.json").read_text())
        print(json.dumps({"network": name, "images_per_second": round(
            result.images_per_second, 2), "timed_steps": _STEPS.value - _WARMUP.value,
            "batch_size": summary["batch_size"], "images_per_step": summary["batch_size"]
            * summary["num_images"], "image_size": summary["image_size"],
            "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    app.run(main)
