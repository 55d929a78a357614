"""Benchmark of the STEM renderer at 512×512 over the paper's parameter distribution.

Prints (one JSON line per measurement):
* render-only images/s in one process (aggregates drawn beforehand), with and without PNG
  encoding, and the same for a naive full-frame renderer (every particle over all 512×512
  pixels: the "before" of the bounding-box optimisation);
* end-to-end aggregates+images/s (draw, render, PNG encode in memory) in one process and
  with all cores, and the implied time for the paper's 32 400 samples.

The θ of sample j follow the paper's database design (hagg_tf.stem.coverage
.database_parameters: per (θ_ρ, θ_0, θ_1) triple two θ_Df), cycled over the triples.

  python benchmarks/bench_stem.py --samples=400
  python benchmarks/bench_stem.py --samples=32400 --skip_single   # the full paper database
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import os
import time

import numpy as np
from absl import app, flags

_SAMPLES = flags.DEFINE_integer("samples", 300, "Aggregates per measurement.")
_NAIVE_SAMPLES = flags.DEFINE_integer("naive_samples", 20, "Images for the naive renderer.")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes for the all-core run.")
_SEED = flags.DEFINE_integer("seed", 1, "Base seed.")
_SKIP_SINGLE = flags.DEFINE_boolean("skip_single", False, "Skip the one-process measurements.")

PAPER_SAMPLES = 32_400


def _parameters(count: int, seed: int):
    from hagg_tf.stem.coverage import database_parameters
    design = database_parameters(seed)
    # Interleave so any prefix spans all triples: sample j uses design[(j * 2) % 648 + (j // 324) % 2].
    return [design[(2 * j) % len(design) + (j // (len(design) // 2)) % 2] for j in range(count)]


def _png_bytes(image) -> int:
    import imageio.v3 as iio
    buffer = io.BytesIO()
    iio.imwrite(buffer, image.counts, extension=".png")
    return buffer.tell()


def _end_to_end(job):
    """Draw one aggregate, render it, encode the PNG in memory (what a database build does)."""
    from hagg_tf.model.generator import sample_aggregate
    from hagg_tf.stem import render_stem
    params, seed, index = job
    aggregate = sample_aggregate(params, seed, index)
    image = render_stem(aggregate, seed=seed, index=index)
    return _png_bytes(image)


def _render_naive(aggregate, tables, seed, index, pixel_size_nm=1.2, size=512):
    """Reference renderer without bounding boxes: each particle over the whole frame."""
    from scipy import ndimage

    from hagg_tf.stem.render import electrons_per_pixel, image_rng
    rng = image_rng(seed, index)
    chosen = tables.choose(aggregate.labels, rng)
    center = aggregate.center_of_mass()
    coordinates = (np.arange(size) - 0.5 * (size - 1)) * pixel_size_nm
    xs, ys = coordinates + center[0], coordinates + center[1]
    jitter = rng.standard_normal((2, size, size)) * 0.01
    image = np.zeros((size, size))
    for k in range(aggregate.size):
        x, y, z = aggregate.positions[k]
        squared = aggregate.radii[k] ** 2 - ((xs[None, :] + jitter[1] - x) ** 2
                                             + (ys[:, None] + jitter[0] - y) ** 2)
        thickness = 2.0 * np.sqrt(np.clip(squared, 0.0, None))
        patch = tables.intensity(int(chosen[k]), thickness)
        sigma = abs(z - center[2]) * math.tan(21.1e-3) / pixel_size_nm
        if sigma > 0.125:
            patch = ndimage.gaussian_filter(patch, sigma, mode="constant", truncate=4.0)
        image += patch
    return rng.poisson(electrons_per_pixel(149.0, pixel_size_nm) * image).astype(np.uint16)


def _report(name, count, seconds, **extra):
    rate = count / seconds
    print(json.dumps({"measurement": name, "count": count, "seconds": round(seconds, 2),
                      "per_second": round(rate, 2), "ms_each": round(1000 / rate, 2), **extra}),
          flush=True)
    return rate


def main(argv):
    del argv
    from hagg_tf.model.generator import sample_aggregate
    from hagg_tf.stem import load_tables, render_stem
    tables = load_tables()
    count, seed = _SAMPLES.value, _SEED.value
    parameters = _parameters(count, seed)
    print(json.dumps({"cpu_count": os.cpu_count(), "workers": _WORKERS.value, "samples": count,
                      "load_average": os.getloadavg()}), flush=True)
    if not _SKIP_SINGLE.value:
        started = time.perf_counter()
        aggregates = [sample_aggregate(p, seed, j) for j, p in enumerate(parameters)]
        _report("generate aggregates, 1 process", count, time.perf_counter() - started,
                mean_particles=float(np.mean([a.size for a in aggregates])))
        render_stem(aggregates[0], seed=seed, index=0, tables=tables)  # warm caches
        started = time.perf_counter()
        images = [render_stem(a, seed=seed, index=j, tables=tables) for j, a in enumerate(aggregates)]
        _report("render 512x512, 1 process", count, time.perf_counter() - started)
        started = time.perf_counter()
        for image in images:
            _png_bytes(image)
        _report("PNG encode 512x512 uint16, 1 process", count, time.perf_counter() - started)
        naive = aggregates[: _NAIVE_SAMPLES.value]
        started = time.perf_counter()
        for j, aggregate in enumerate(naive):
            _render_naive(aggregate, tables, seed, j)
        naive_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for j, aggregate in enumerate(naive):
            render_stem(aggregate, seed=seed, index=j, tables=tables)
        _report("naive full-frame render (before), 1 process", len(naive), naive_seconds,
                speedup_of_bbox_renderer=round(naive_seconds / (time.perf_counter() - started), 1))
        started = time.perf_counter()
        for j, p in enumerate(parameters):
            _end_to_end((p, seed, j))
        rate = _report("generate + render + PNG, 1 process", count, time.perf_counter() - started)
        print(json.dumps({"paper_database_estimate_min_1_process": round(PAPER_SAMPLES / rate / 60, 1)}))
    jobs = [(p, seed, j) for j, p in enumerate(parameters)]
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=_WORKERS.value) as pool:
        for _ in pool.map(_end_to_end, jobs, chunksize=16):
            pass
    rate = _report(f"generate + render + PNG, {_WORKERS.value} processes", count,
                   time.perf_counter() - started)
    print(json.dumps({"paper_database_estimate_min_all_cores": round(PAPER_SAMPLES / rate / 60, 1),
                      "load_average_after": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    app.run(main)
