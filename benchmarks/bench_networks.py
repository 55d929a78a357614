"""Throughput of the paper's networks on this machine, and the batch-norm check of the docs.

Prints, for CNN^Df (single image, batch 16) and CNN^0 (nu = 12 images per sample, batch 8) at
512×512 pixels: parameter counts, training images/s (one optimiser step per batch, Adam, the
paper's loss) and inference images/s (``training=False``). With ``--bn_check`` it also measures
how the first batch-norm layer's moving mean moves in one training-mode pass for the default
``fold_batch`` multi-image network and for ``keras.layers.TimeDistributed(f)``.

Usage::

    .venv/bin/python benchmarks/bench_networks.py                 # paper sizes, a few minutes
    .venv/bin/python benchmarks/bench_networks.py --bn_check --train_steps=1
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 512, "Image side in pixels.")
flags.DEFINE_integer("num_images", 12, "Images per sample nu of CNN^0.")
flags.DEFINE_integer("train_steps", 3, "Timed training steps per network (after one warm-up).")
flags.DEFINE_integer("inference_batches", 3, "Timed inference batches per network (after warm-up).")
flags.DEFINE_integer("multi_image_inference_batch", 2, "Samples per inference batch of CNN^0.")
flags.DEFINE_boolean("bn_check", False, "Also measure the batch-norm semantics (156 px, fast).")
flags.DEFINE_list("networks", ["fractal_dimension", "wo3_cluster_size"], "Networks to time.")
flags.DEFINE_enum("stack_strategy", "fold_batch", ["fold_batch", "time_distributed"],
                  "How the multi-image networks apply f to the nu images (see build_network).")


def _time_calls(function, repeats):
    function()  # warm-up: tracing and graph optimisation are not throughput
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def benchmark_network(name):
    import keras
    import tensorflow as tf

    from hagg_tf import networks

    spec = networks.network_spec(name)
    model = networks.compile_network(
        networks.build_network(name, FLAGS.image_size, FLAGS.num_images,
                               stack_strategy=FLAGS.stack_strategy))
    images_per_sample = FLAGS.num_images if spec.multi_image else 1
    sample_shape = model.input_shape[1:]
    rng = np.random.default_rng(0)

    def batch(samples):
        return rng.uniform(-0.5, 0.5, (samples,) + sample_shape).astype(np.float32)

    train_x = batch(spec.batch_size)
    train_y = rng.uniform(1.5, 2.5, (spec.batch_size, 1)).astype(np.float32)
    seconds_per_step = _time_calls(lambda: model.train_on_batch(train_x, train_y),
                                   FLAGS.train_steps)

    inference_samples = (FLAGS.multi_image_inference_batch if spec.multi_image
                         else spec.batch_size)
    infer_x = tf.constant(batch(inference_samples))
    predict = tf.function(lambda x: model(x, training=False))
    seconds_per_batch = _time_calls(lambda: predict(infer_x).numpy(), FLAGS.inference_batches)

    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    strategy = f", {FLAGS.stack_strategy}" if spec.multi_image else ""
    print(f"{name}{strategy}: input {tuple(model.input_shape)}, "
          f"params total {model.count_params():,} (trainable {trainable:,}, non-trainable {model.count_params() - trainable:,})")
    train_images = spec.batch_size * images_per_sample
    print(f"  training : batch {spec.batch_size} samples = {train_images} images, "
          f"{seconds_per_step:.2f} s/step -> {train_images / seconds_per_step:.2f} images/s "
          f"({spec.batch_size / seconds_per_step:.3f} samples/s), {FLAGS.train_steps} steps")
    infer_images = inference_samples * images_per_sample
    print(f"  inference: batch {inference_samples} samples = {infer_images} images, "
          f"{seconds_per_batch:.2f} s/batch -> {infer_images / seconds_per_batch:.2f} images/s "
          f"({inference_samples / seconds_per_batch:.3f} samples/s), "
          f"{FLAGS.inference_batches} batches")
    keras.backend.clear_session()


def batch_norm_check():
    """One training-mode pass of CNN^0 (b = 2, nu = 3, 156 px) per multi-image strategy."""
    import keras

    from hagg_tf import networks

    size, nu, b = networks.minimum_image_size(), 3, 2
    rng = np.random.default_rng(7)
    images = rng.uniform(-0.5, 0.5, (b, nu, size, size, 1)).astype(np.float32)
    images += np.arange(nu, dtype=np.float32)[None, :, None, None, None]  # slot brightness 0,1,2
    print(f"batch-norm check: CNN^0, b={b}, nu={nu}, {size} px, slot j has brightness offset j")
    outputs = {}
    for strategy in networks.STACK_STRATEGIES:
        keras.utils.set_random_seed(6)
        model = networks.build_network("wo3_cluster_size", size, num_images=nu,
                                       stack_strategy=strategy)
        f = networks.get_feature_extractor(model)
        conv = keras.Model(f.input, f.get_layer("f_conv_1").output)
        bn = f.get_layer("f_batch_norm_1")
        all_images_mean = np.asarray(conv(images.reshape(-1, size, size, 1))).mean(axis=(0, 1, 2))
        outputs[strategy] = np.asarray(model(images, training=True)).ravel()
        moved = keras.ops.convert_to_numpy(bn.moving_mean)
        ratio = np.median(moved / (0.01 * all_images_mean))
        print(f"  {strategy:16s}: moving_mean after one step / one update with all b·nu images "
              f"= {ratio:.3f} (median over 8 channels)")
    print(f"  training-mode outputs fold_batch={outputs['fold_batch']}, "
          f"time_distributed={outputs['time_distributed']} (same weights)")


def main(argv):
    del argv
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, CPU cores visible: {os.cpu_count()}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    for name in FLAGS.networks:
        benchmark_network(name)
    if FLAGS.bn_check:
        batch_norm_check()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    app.run(main)
