"""Benchmark of the estimate θ̂ from 12 images at 512×512 px, against its FLOP floor.

The floor: every distinct feature extractor f of the export runs once per image (five in an
export of separately trained networks; one in characterize/3, where the five networks share f)
and per symmetry of the square it averages over (1 or 8, ``--test_time_symmetries``), at
:meth:`hagg_tf.networks.Architecture.flops` each (Table 3: 4.88 GFLOP at 512 px, the shared
backbone's ``fine``: 0.30; g and the preprocessing are negligible). Divided by the
machine's measured dense float32 matmul rate it gives the time no implementation can beat.

Prints one JSON line per measurement:
* ``matmul_gflops``: float32 matmul rate of this machine (TensorFlow, 2048², best of 5), the
  export's architecture, its passes of f and the floor;
* ``composite``: the composite SavedModel (one graph, all five networks, all images in one
  batch): first call (includes TensorFlow's graph optimisation) and the median of warm calls;
* ``litert``: ``LiteRTCharacterizeModel.estimate``, the runtime ``hagg-characterize`` uses by
  default (no bootstrap), first call and median of warm calls;
* ``keras``: the five Keras networks called one after another (the reference path);
* ``cli``: ``tools/characterize.py`` end to end on the shipped example (import, load, shadows,
  report, figure), if --cli.

  python benchmarks/bench_characterize.py                          # random weights, 512 px
  python benchmarks/bench_characterize.py --models=saved_models --cli
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

_MODELS = flags.DEFINE_string("models", None, "Composite export to time (default: export one "
                              "with random weights to work/bench/characterize).")
_IMAGES = flags.DEFINE_integer("images", 12, "Images of the sample (n).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Warm calls timed.")
_KERAS = flags.DEFINE_bool("keras", True, "Also time the five Keras networks one by one.")
_CLI = flags.DEFINE_bool("cli", False, "Also time tools/characterize.py on examples/sample_a.")
_COMPARE = flags.DEFINE_string(
    "compare_with", None, "Another export of the same networks (e.g. float32 kernels): report "
    "the largest output difference on the shipped example samples.")

REPO = pathlib.Path(__file__).resolve().parents[1]


def matmul_gflops(tf) -> float:
    a = tf.random.normal((2048, 2048))
    b = tf.random.normal((2048, 2048))
    tf.matmul(a, b).numpy()
    best = min(_timed(lambda: tf.matmul(a, b).numpy()) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e9


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _emit(**record):
    print(json.dumps(record), flush=True)


def main(argv):
    del argv
    from hagg_tf.tensorflow_import import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    from hagg_tf import networks
    from hagg_tf.estimation import CharacterizeModel, estimate_with_networks
    from hagg_tf.estimation.model import load_characterize_model
    from hagg_tf.export.characterize import (NETWORK_ORDER, export_characterize_model,
                                             feature_passes)
    from hagg_tf.export.from_training import networks_from_composite

    gflops = matmul_gflops(tf)
    path = _MODELS.value
    if path is None:
        path = REPO / "work" / "bench" / "characterize"
        if not (path / "characterize").is_dir():
            models = {name: networks.build_network(name) for name in NETWORK_ORDER}
            export_characterize_model(models, path, kernel_dtype="float16", pixel_size_nm=1.2)
    model = CharacterizeModel(path)
    size = model.image_size
    architecture = networks.get_architecture(
        model.metadata.get("architecture", networks.DEFAULT_ARCHITECTURE))
    passes = feature_passes(model.metadata) * _IMAGES.value
    f_gflop = architecture.flops(size) / 1e9
    floor_gflop = passes * f_gflop
    _emit(measurement="matmul_gflops", gflops=round(gflops, 1), cpus=os.cpu_count(),
          load_average=os.getloadavg()[0], architecture=architecture.name,
          f_gflop_per_pass=round(f_gflop, 3), passes=passes, floor_gflop=round(floor_gflop, 1),
          floor_s_at_measured_rate=round(floor_gflop / gflops, 3),
          floor_s_at_107_gflops=round(floor_gflop / 107, 3))

    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.uniform(0, 0.05, (_IMAGES.value, size, size)) * 21456).astype(
        np.float32)
    electrons = np.full(_IMAGES.value, 21456.0, np.float32)
    cold = _timed(lambda: model.outputs(counts, electrons))
    warm = [_timed(lambda: model.outputs(counts, electrons)) for _ in range(_REPEATS.value)]
    median = statistics.median(warm)
    _emit(measurement="composite", images=_IMAGES.value, image_size=size,
          first_call_s=round(cold, 2), warm_median_s=round(median, 2),
          warm_s=[round(value, 2) for value in warm],
          achieved_gflops=round(floor_gflop / median, 1),
          vs_floor_at_107=round(median / (floor_gflop / 107), 2),
          load_average=os.getloadavg()[0])

    try:
        litert = load_characterize_model(path, runtime="litert")
    except ValueError as reason:  # no conversion beside this export, or a stale one
        _emit(measurement="litert", skipped=str(reason))
    else:
        cold = _timed(lambda: litert.estimate(counts, electrons))
        warm = [_timed(lambda: litert.estimate(counts, electrons)) for _ in range(_REPEATS.value)]
        _emit(measurement="litert", images=_IMAGES.value, first_call_s=round(cold, 2),
              warm_median_s=round(statistics.median(warm), 2),
              warm_s=[round(value, 2) for value in warm], load_average=os.getloadavg()[0])

    if _KERAS.value:
        keras_models, _ = networks_from_composite(path)
        estimate_with_networks(keras_models, counts, electrons)  # trace
        times = [_timed(lambda: estimate_with_networks(keras_models, counts, electrons))
                 for _ in range(_REPEATS.value)]
        _emit(measurement="keras", warm_median_s=round(statistics.median(times), 2),
              load_average=os.getloadavg()[0])

    if _COMPARE.value:
        from hagg_tf.estimation import find_image_files, load_stem_images

        other = CharacterizeModel(_COMPARE.value)
        differences, changed = {}, []
        for sample in sorted((REPO / "examples").glob("sample_*")):
            paths, _ = find_image_files([sample])
            images, _ = load_stem_images(paths)
            sample_counts = np.stack([image.counts for image in images]).astype(np.float32)
            sample_electrons = np.array([image.electrons_per_pixel for image in images],
                                        np.float32)
            first = model.outputs(sample_counts, sample_electrons)
            second = other.outputs(sample_counts, sample_electrons)
            for key in first:
                difference = float(np.max(np.abs(first[key].astype(np.float64)
                                                  - second[key].astype(np.float64))))
                differences[key] = max(differences.get(key, 0.0), difference)
            if not (np.array_equal(first["wo3_cluster_size"], second["wo3_cluster_size"])
                    and np.array_equal(first["tio2_cluster_size"], second["tio2_cluster_size"])):
                changed.append(sample.name)
        _emit(measurement="compare", this=str(model.version_dir), other=str(other.version_dir),
              this_kernels=model.metadata.get("kernel_dtype"),
              other_kernels=other.metadata.get("kernel_dtype"),
              max_abs_difference=differences, rounded_sizes_changed_for=changed)

    if _CLI.value:
        output = REPO / "work" / "bench" / "characterize_cli"
        command = [sys.executable, str(REPO / "tools" / "characterize.py"),
                   str(REPO / "examples" / "sample_a"), f"--output={output}",
                   f"--models={path}"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        report = json.loads((output / "report.json").read_text()) if result.returncode == 0 \
            else {}
        _emit(measurement="cli", returncode=result.returncode, wall_s=round(wall, 2),
              stages_s=report.get("timings_s"), load_average=os.getloadavg()[0])


if __name__ == "__main__":
    app.run(main)
