"""Benchmark of the STEM renderer at 512×512 over the paper's parameter distribution.

Prints (one JSON line per measurement):
* render-only images/s (aggregates drawn beforehand) in one process, PNG encoding separately,
  and render + PNG with all cores; the same for a naive full-frame renderer (every particle
  over all 512×512 pixels: the "before" of the bounding-box optimisation);
* the size of the 0.01 nm scan noise against the shot noise;
* end-to-end aggregates+images/s (draw, render, PNG encode in memory) in one process and
  with all cores, and the implied time for the paper's 32 400 samples. Every line also gives
  the CPU time per item, which separates the cost from contention on a shared machine; the
  "if_idle" estimate assumes each worker gets a whole core.

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
    iio.imwrite(buffer, image.counts, extension=".png", compress_level=1)  # as write_stem_png
    return buffer.tell()


def _end_to_end(job):
    """Draw one aggregate, render it, encode the PNG in memory (what a database build does).

    Returns the CPU seconds this took in the worker (to separate cost from CPU contention).
    """
    from hagg_tf.model.generator import sample_aggregate
    from hagg_tf.stem import render_stem
    started = time.process_time()
    params, seed, index = job
    aggregate = sample_aggregate(params, seed, index)
    image = render_stem(aggregate, seed=seed, index=index)
    _png_bytes(image)
    return time.process_time() - started


def _render_only(job):
    """Render one pre-drawn aggregate and encode its PNG; returns the worker's CPU seconds."""
    from hagg_tf.stem import render_stem
    started = time.process_time()
    aggregate, seed, index = job
    _png_bytes(render_stem(aggregate, seed=seed, index=index))
    return time.process_time() - started


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


def _scan_noise_effect(aggregates, tables, seed):
    """Size of the 0.01 nm scan jitter against shot noise, in counts (noise-free images)."""
    from hagg_tf.stem import render_stem
    worst, rms, shot = [], [], []
    for j, aggregate in enumerate(aggregates):
        clean = render_stem(aggregate, seed=seed, index=j, tables=tables, scan_noise_nm=0.0,
                            shot_noise=False)
        jittered = render_stem(aggregate, seed=seed, index=j, tables=tables, shot_noise=False)
        per_pixel = clean.metadata["electrons_per_pixel"]
        difference = (jittered.intensity - clean.intensity).astype(np.float64) * per_pixel
        covered = clean.intensity > 0
        worst.append(np.abs(difference).max() / (clean.intensity.max() * per_pixel))
        rms.append(np.sqrt(np.mean(difference[covered] ** 2)))
        shot.append(np.sqrt(np.mean(clean.intensity[covered] * per_pixel)))
    print(json.dumps({"measurement": "scan noise effect (0.01 nm jitter)", "images": len(aggregates),
                      "rms_counts": round(float(np.mean(rms)), 2),
                      "rms_shot_noise_counts": round(float(np.mean(shot)), 1),
                      "max_change_over_brightest_pixel": round(float(max(worst)), 4)}), flush=True)


def _report(name, count, seconds, cpu_seconds=None, **extra):
    """One JSON line: wall-clock rate, and the CPU time per item where measured."""
    rate = count / seconds
    if cpu_seconds is not None:
        extra["cpu_ms_each"] = round(1000 * cpu_seconds / count, 2)
    print(json.dumps({"measurement": name, "count": count, "seconds": round(seconds, 2),
                      "per_second": round(rate, 2), "ms_each": round(1000 / rate, 2), **extra}),
          flush=True)
    return rate


class _Clock:
    """Wall and CPU time of a block (CPU time separates cost from contention on a busy host)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


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
        with _Clock() as clock:
            aggregates = [sample_aggregate(p, seed, j) for j, p in enumerate(parameters)]
        _report("generate aggregates, 1 process", count, clock.wall, clock.cpu,
                mean_particles=float(np.mean([a.size for a in aggregates])))
        render_stem(aggregates[0], seed=seed, index=0, tables=tables)  # warm caches
        with _Clock() as clock:
            images = [render_stem(a, seed=seed, index=j, tables=tables)
                      for j, a in enumerate(aggregates)]
        _report("render 512x512, 1 process", count, clock.wall, clock.cpu)
        with _Clock() as clock:
            for image in images:
                _png_bytes(image)
        _report("PNG encode 512x512 uint16, 1 process", count, clock.wall, clock.cpu)
        naive = aggregates[: _NAIVE_SAMPLES.value]
        with _Clock() as naive_clock:
            for j, aggregate in enumerate(naive):
                _render_naive(aggregate, tables, seed, j)
        with _Clock() as clock:
            for j, aggregate in enumerate(naive):
                render_stem(aggregate, seed=seed, index=j, tables=tables)
        _report("naive full-frame render (before), 1 process", len(naive), naive_clock.wall,
                naive_clock.cpu, speedup_of_bbox_renderer=round(naive_clock.cpu / clock.cpu, 1))
        _scan_noise_effect(aggregates[:30], tables, seed)
        with _Clock() as clock:
            for j, p in enumerate(parameters):
                _end_to_end((p, seed, j))
        rate = _report("generate + render + PNG, 1 process", count, clock.wall, clock.cpu)
        print(json.dumps({"paper_database_estimate_min_1_process": round(PAPER_SAMPLES / rate / 60, 1),
                          "paper_database_cpu_min": round(PAPER_SAMPLES * clock.cpu / count / 60, 1)}))
    if not _SKIP_SINGLE.value:
        render_jobs = [(a, seed, j) for j, a in enumerate(aggregates)]
        started = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(max_workers=_WORKERS.value) as pool:
            worker_cpu = sum(pool.map(_render_only, render_jobs, chunksize=16))
        _report(f"render + PNG 512x512, {_WORKERS.value} processes", count,
                time.perf_counter() - started, worker_cpu)
    jobs = [(p, seed, j) for j, p in enumerate(parameters)]
    started = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=_WORKERS.value) as pool:
        worker_cpu = sum(pool.map(_end_to_end, jobs, chunksize=16))
    rate = _report(f"generate + render + PNG, {_WORKERS.value} processes", count,
                   time.perf_counter() - started, worker_cpu)
    # On an otherwise idle machine the workers would get a whole core each.
    idle_estimate = PAPER_SAMPLES * worker_cpu / count / _WORKERS.value / 60
    print(json.dumps({"paper_database_estimate_min_all_cores": round(PAPER_SAMPLES / rate / 60, 1),
                      "paper_database_estimate_min_all_cores_if_idle": round(idle_estimate, 1),
                      "load_average_after": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    app.run(main)
