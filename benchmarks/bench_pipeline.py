"""Throughput of the tf.data input pipelines beside the training speed of the paper's networks.

For each sample shape — single image (CNN^Df: D_f(A)), single image with class oversampling
(CNN^ρ_class), ν = 12 images of one θ (CNN^0; and CNN^1 with inverse intensities) — it times
the training pipeline (shuffle, decode, augmentation, preprocessing, batching) at the database's
image size (512 × 512 for the paper and small presets) and prints images/s. It then measures
the training speed of CNN^Df (batch 16) and CNN^0 (batch 8 × ν) on synthetic in-memory batches,
and CNN^Df fed by the pipeline itself, and prints the ratio pipeline ÷ training: the pipeline
is not the bottleneck when that ratio is well above 1 (the goal: ≥ 10).

  python benchmarks/bench_pipeline.py --dataset=work/datasets/paper
  python benchmarks/bench_pipeline.py --dataset=work/datasets/small --train_steps=0

The database must exist (tools/generate_dataset.py). Everything runs on the CPU cores this
process may use (2 on the development machine).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", "work/datasets/paper", "Database directory.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Timed seconds per pipeline (after warm-up).")
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 3, "Untimed batches first.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 12, "ν of the multi-image samples.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 3,
                                    "Timed training steps per network (0: skip training).")
_SHAPES = flags.DEFINE_list("shapes", ["single", "classification", "multi", "multi_inverse"],
                            "Pipelines to time.")


def _pipeline(shape, path):
    from hagg_tf import data

    if shape == "single":
        return data.single_image_dataset(path, "fractal_dimension", seed=1, verify="size"), 1
    if shape == "classification":
        return data.classification_dataset(path, seed=1, verify="size"), 1
    target = "tio2_cluster_size" if shape == "multi_inverse" else "wo3_cluster_size"
    return (data.multi_image_dataset(path, target, num_images=_NUM_IMAGES.value, seed=1,
                                     verify="size"), _NUM_IMAGES.value)


def time_pipeline(shape, path):
    dataset, images_per_sample = _pipeline(shape, path)
    iterator = iter(dataset)
    batch = None
    for _ in range(_WARMUP_BATCHES.value):
        batch = next(iterator)
    per_batch = int(batch[0].shape[0]) * images_per_sample
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < _SECONDS.value:
        next(iterator)
        count += 1
    elapsed = time.perf_counter() - start
    return count * per_batch / elapsed, tuple(batch[0].shape)


def _train_step_time(model, x, y, steps):
    model.train_on_batch(x, y)  # warm-up: tracing is not throughput
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps


def time_training(name, image_size, steps):
    import numpy as np

    from hagg_tf import networks

    spec = networks.network_spec(name)
    model = networks.compile_network(networks.build_network(name, image_size,
                                                            _NUM_IMAGES.value))
    shape = (spec.batch_size,) + tuple(model.input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    y = rng.uniform(1.5, 2.5, (spec.batch_size, 1)).astype(np.float32)
    seconds = _train_step_time(model, x, y, steps)
    images = spec.batch_size * (_NUM_IMAGES.value if spec.multi_image else 1)
    return images / seconds, model


def time_fit_from_pipeline(model, path, steps):
    from hagg_tf import data

    dataset = data.single_image_dataset(path, "fractal_dimension", seed=2, verify="size")
    model.fit(dataset, epochs=1, steps_per_epoch=1, shuffle=False, verbose=0)  # warm-up
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return steps * 16 / (time.perf_counter() - start)


def main(argv):
    del argv
    import tensorflow as tf

    from hagg_tf.data import load_manifest

    manifest = load_manifest(_DATASET.value)
    size = manifest["image"]["height"]
    cores = len(os.sched_getaffinity(0))
    print(f"TensorFlow {tf.__version__}, {cores} CPU cores, load average "
          f"{os.getloadavg()[0]:.2f}; database {_DATASET.value}: {manifest['records']} records, "
          f"{size}×{size} px")
    rates = {}
    for shape in _SHAPES.value:
        rate, batch_shape = time_pipeline(shape, _DATASET.value)
        rates[shape] = rate
        print(f"pipeline {shape:<15} batch {batch_shape}: {rate:8.1f} images/s "
              f"(with augmentation)")
    if _TRAIN_STEPS.value <= 0:
        return
    train_df, model_df = time_training("fractal_dimension", size, _TRAIN_STEPS.value)
    train_0, _ = time_training("wo3_cluster_size", size, max(1, _TRAIN_STEPS.value // 2))
    fed = time_fit_from_pipeline(model_df, _DATASET.value, _TRAIN_STEPS.value)
    print(f"training CNN^Df (batch 16), synthetic input : {train_df:6.2f} images/s")
    print(f"training CNN^Df (batch 16), fed by pipeline : {fed:6.2f} images/s")
    print(f"training CNN^0  (batch 8 × ν={_NUM_IMAGES.value}), synthetic input: "
          f"{train_0:6.2f} images/s")
    for shape, rate in rates.items():
        training = train_0 if shape.startswith("multi") else train_df
        print(f"ratio pipeline/training {shape:<15}: {rate / training:6.1f}×")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    app.run(main)
