"""Training-step time of the shared backbone, per feature-extractor architecture.

Builds the multi-task model of ``hagg_tf.training.multitask`` for each architecture, compiles it
as ``train_backbone`` does and times ``train_on_batch`` on one fixed batch of random pooled
images (the input pipeline is left out: it runs beside the step in training). The
architectures are timed in turns, one step each per round, so that a change of the machine's
load hits them alike. Prints one JSON line per architecture: median step (s), images/s, and
the speed relative to the first architecture; then the projected wall of an epoch of the
realistic database's training split.

  python benchmarks/bench_backbone_step.py --architectures=fine,fine_s2d --steps=12
  python benchmarks/bench_backbone_step.py --architectures=fine --jit_compile   (XLA)
"""
from __future__ import annotations

import json
import time

import numpy as np
from absl import app, flags

_ARCHITECTURES = flags.DEFINE_list("architectures", ["fine", "fine_s2d"],
                                   "Feature extractors (hagg_tf.networks.ARCHITECTURES).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per step (the trainer's default).",
                              lower_bound=1)
_SIZE = flags.DEFINE_integer("image_size", 512, "Side of the database's images, pixels.")
_STEPS = flags.DEFINE_integer("steps", 12, "Timed steps per architecture.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing).", lower_bound=1)
_JIT = flags.DEFINE_boolean("jit_compile", False, "Also time each architecture with XLA.")
_TRAIN_IMAGES = flags.DEFINE_integer("train_images", 17490, "Images of one epoch, for the "
                                     "projection (the realistic preset's training split).")


def main(argv):
    del argv
    from hagg_tf.tensorflow_import import import_tensorflow_quietly
    import_tensorflow_quietly()
    import keras

    from hagg_tf.training.multitask import (NETWORK_NAMES, build_backbone_model,
                                            compile_backbone_model)

    rng = np.random.default_rng(0)
    variants = {}
    for name in _ARCHITECTURES.value:
        for jit in ((False, True) if _JIT.value else (False,)):
            keras.utils.set_random_seed(0)
            model, _ = build_backbone_model(name, _SIZE.value, keras)
            compile_backbone_model(model, 1e-3, keras, jit_compile=jit)
            variants[f"{name}{' xla' if jit else ''}"] = model
    side = int(next(iter(variants.values())).input_shape[1])
    images = rng.uniform(-0.5, 0.5, (_BATCH.value, side, side, 1)).astype(np.float32)
    targets = {name: rng.uniform(0.0, 1.0, (_BATCH.value, 1)).astype(np.float32)
               for name in NETWORK_NAMES}
    for model in variants.values():
        for _ in range(_WARMUP.value):
            model.train_on_batch(images, targets)
    times = {key: [] for key in variants}
    for _ in range(_STEPS.value):
        for key, model in variants.items():
            started = time.perf_counter()
            model.train_on_batch(images, targets)
            times[key].append(time.perf_counter() - started)
    reference = float(np.median(times[next(iter(times))]))
    for key, values in times.items():
        step = float(np.median(values))
        print(json.dumps({"architecture": key, "median_step_s": round(step, 4),
                          "images_per_s": round(_BATCH.value / step, 1),
                          "speed_vs_first": round(reference / step, 2),
                          "epoch_min": round(_TRAIN_IMAGES.value / _BATCH.value * step / 60, 2),
                          "parameters": variants[key].count_params()}), flush=True)


if __name__ == "__main__":
    app.run(main)
