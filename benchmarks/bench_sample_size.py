"""Validation of the sample-size estimator (hagg_tf.estimation.sample_size) against the truth.

Simulated samples: per sample one θ (uniform over Table 2), one radius distribution (mean
uniform on 5–12 nm, s.d. 0.15–0.35 of it) and one particle range [lo, hi] (lo log-uniform on
10–150, hi = lo × 1.5–4, at most 300); its ``--images`` aggregates are drawn with
``sample_aggregate(θ, seed, k, GeneratorConfig(...))`` and rendered with ``render_stem``.
The estimator sees only the images (and, for the "θ_ρ given" rows, the true θ_ρ plus a
Gaussian error of the networks' size, s.d. 0.07).

Prints the errors (one JSON line per quantity and scope): bias (median of estimate / truth − 1)
and typical error (median and 90th percentile of |estimate / truth − 1|) of r̂ mean and r̂ s.d.
per sample (the truth: mean and s.d. of all the sample's particle radii) and per image (from
that image's domes alone, against its aggregate's radii), of N̂ per image and of the sample's
mean N̂ (truth: actual particle counts), over all samples and by N and by radius; images whose
aggregate is cut by the border are counted apart.

  python benchmarks/bench_sample_size.py --samples=100                  # validation
  python benchmarks/bench_sample_size.py --samples=150 --seed=5 --calibrate  # the constants
  python benchmarks/bench_sample_size.py --conditions=realistic         # noisy backgrounds

``--calibrate`` prints DOME_RADIUS_RATIO (median dome radius over the median particle radius)
and DOME_LOG_NOISE (the log spread the measurement adds) measured on the samples, with the
constants set to 1 and 0, and WO3_DOME_ODDS (how much likelier a WO3 particle shows a
round dome than a TiO2 one): the values in sample_size.py came from ``--samples=150 --seed=5``;
validate on another seed. ``--conditions=realistic`` renders each sample under imaging
conditions drawn once per sample from the realistic preset's ranges
(hagg_tf.data.randomization.REALISTIC_RANGES: support film, detector gain/offset/read noise,
focus offset, probe blur, scan distortions, dose 30–300 e/Å², pixel size 0.9–1.8 nm).
"""
from __future__ import annotations

import json
import math
import resource
import time

import numpy as np
from absl import app, flags

_SAMPLES = flags.DEFINE_integer("samples", 100, "Simulated samples.")
_IMAGES = flags.DEFINE_integer("images", 12, "Images (aggregates) per sample.")
_SEED = flags.DEFINE_integer("seed", 1, "Base seed.")
_CALIBRATE = flags.DEFINE_boolean("calibrate", False, "Print the calibration constants.")
_CONDITIONS = flags.DEFINE_enum("conditions", "clean", ["clean", "realistic"],
                                "Imaging conditions of the images.")
_FIELD_NM = 614.4  # the paper's field of view: 512 px × 1.2 nm


def _draw_sample(number: int, seed: int):
    """The settings of simulated sample ``number``."""
    from hagg_tf.model.parameters import GeneratorConfig, table2_grid

    rng = np.random.default_rng([seed, number])
    grid = list(table2_grid())
    theta = grid[int(rng.integers(len(grid)))]
    radius = float(rng.uniform(5.0, 12.0))
    spread = float(rng.uniform(0.15, 0.35))
    low = int(math.exp(rng.uniform(math.log(10), math.log(150))))
    high = int(min(300, low * rng.uniform(1.5, 4.0)))
    return theta, GeneratorConfig(radius_mean=radius, radius_std=spread * radius,
                                  min_size=low, max_size=high)


def _render_sample(number: int, seed: int, images: int, conditions_name: str):
    """(measurements, truth) of one sample."""
    from hagg_tf.estimation.sample_size import image_intensity, measure_image
    from hagg_tf.model.generator import sample_aggregate
    from hagg_tf.stem import render_stem

    theta, config = _draw_sample(number, seed)
    sample_seed = seed * 100_000 + number
    conditions = None
    if conditions_name == "realistic":
        from hagg_tf.data.randomization import REALISTIC_RANGES, draw_conditions

        conditions, _ = draw_conditions(sample_seed, 0, REALISTIC_RANGES)
    measurements, counts, radii, labels, outside = [], [], [], [], 0
    for index in range(images):
        aggregate = sample_aggregate(theta, sample_seed, index, config)
        if conditions is None:
            image = render_stem(aggregate, seed=sample_seed, index=index)
        else:
            size = max(1, int(round(_FIELD_NM / conditions.pixel_size_nm)))
            image = render_stem(aggregate, seed=sample_seed, index=index, image_size=size,
                                conditions=conditions)
        metadata = image.metadata
        intensity = image_intensity(image.counts, metadata["electrons_per_pixel"], metadata)
        measurements.append(measure_image(intensity, metadata["pixel_size_nm"], f"{index}"))
        counts.append(aggregate.size)
        radii.append(aggregate.radii)
        labels.append(aggregate.labels)
        outside += metadata["particles_outside"] > 0
    per_image_radii = radii
    radii, labels = np.concatenate(radii), np.concatenate(labels)
    truth = {"theta": theta, "config": config, "counts": np.asarray(counts),
             "per_image_radii": per_image_radii,
             "radius_mean": float(radii.mean()), "radius_sd": float(radii.std()),
             "log_radius_median": float(np.median(np.log(radii))),
             "log_radius_sd": float(np.log(radii).std()),
             "wo3_share": float(np.mean(labels == 0)),
             "conditions": None if conditions is None else conditions.to_dict()}
    return measurements, truth


def _errors(name: str, estimates, truths, extra=None) -> dict:
    relative = np.asarray(estimates, float) / np.asarray(truths, float) - 1.0
    absolute = np.abs(relative)
    line = {"quantity": name, "n": int(relative.size),
            "bias": round(float(np.median(relative)), 4),
            "median_abs_error": round(float(np.median(absolute)), 4),
            "p90_abs_error": round(float(np.percentile(absolute, 90)), 4),
            "mean_abs_error": round(float(np.mean(absolute)), 4)}
    line.update(extra or {})
    print(json.dumps(line, ensure_ascii=False), flush=True)
    return line


def _calibrate(samples) -> None:
    ratios, excess, odds = [], [], []
    for measurements, truth in samples:
        raw = np.concatenate([item.dome_radii_nm for item in measurements])
        if raw.size < 5:
            continue
        flags = np.concatenate([item.dome_wo3 for item in measurements])
        share, true_share = np.clip(flags.mean(), 0.02, 0.98), truth["wo3_share"]
        if 0 < true_share < 1:
            odds.append(math.log(share / (1 - share)) - math.log(true_share / (1 - true_share)))
        logs = np.log(raw)
        ratios.append(np.median(logs) - truth["log_radius_median"])
        spread = 1.4826 * np.median(np.abs(logs - np.median(logs)))
        excess.append(spread ** 2 - truth["log_radius_sd"] ** 2)
    print(json.dumps({"DOME_RADIUS_RATIO": round(math.exp(float(np.median(ratios))), 3),
                      "DOME_LOG_NOISE": round(math.sqrt(max(float(np.median(excess)), 0.0)), 3),
                      "WO3_DOME_ODDS": round(math.exp(float(np.median(odds))), 2),
                      "samples": len(ratios),
                      "sample_log_ratio_sd": round(float(np.std(ratios)), 4)}))


def main(argv):
    del argv
    from hagg_tf.estimation import sample_size

    if _CALIBRATE.value:
        sample_size.DOME_RADIUS_RATIO, sample_size.DOME_LOG_NOISE = 1.0, 0.0
        sample_size.WO3_DOME_ODDS = 1.0
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    samples = [_render_sample(number, _SEED.value, _IMAGES.value, _CONDITIONS.value)
               for number in range(_SAMPLES.value)]
    wall = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"samples": len(samples), "images": _IMAGES.value,
                      "conditions": _CONDITIONS.value, "seed": _SEED.value,
                      "render_and_measure_wall_s": round(wall, 1),
                      "cpu_s": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime,
                                     1)}))
    if _CALIBRATE.value:
        _calibrate(samples)
        return

    rng = np.random.default_rng(_SEED.value)
    rows = []
    for measurements, truth in samples:
        own = sample_size.estimate_sample_size(measurements)
        noisy_rho = float(np.clip(truth["theta"].mixing_ratio + rng.normal(0.0, 0.07), 0, 1))
        given_rho = sample_size.estimate_sample_size(measurements, wo3_share=noisy_rho)
        given_radius = sample_size.estimate_sample_size(
            measurements, radius_mean_nm=truth["config"].radius_mean,
            radius_sd_nm=truth["config"].radius_std, wo3_share=truth["theta"].mixing_ratio)
        cut = np.array([item.touches_border for item in measurements])
        rows.append((truth, own, given_rho, given_radius, cut,
                     sum(len(item.dome_radii_nm) for item in measurements)))

    _errors("radius mean, per sample", [row[1].radius_mean_nm for row in rows],
            [row[0]["radius_mean"] for row in rows])
    _errors("radius s.d., per sample", [row[1].radius_sd_nm for row in rows],
            [row[0]["radius_sd"] for row in rows])
    single = [(sample_size.radius_from_domes(item.dome_radii_nm), own)
              for measurements, truth in samples
              for item, own in zip(measurements, truth["per_image_radii"])
              if item.dome_radii_nm.size >= 3]
    _errors("radius mean, per image (its own domes, >= 3 of them)",
            [item[0][0] for item in single], [item[1].mean() for item in single],
            {"share_of_images": round(len(single) / (len(rows) * _IMAGES.value), 4)})
    _errors("radius s.d., per image (its own domes, >= 3 of them)",
            [item[0][1] for item in single], [item[1].std() for item in single])
    _errors("WO3 share from the domes (absolute error)",
            [1.0 + row[1].details["wo3_share"] - row[0]["wo3_share"] for row in rows],
            [1.0] * len(rows))
    for label, column in (("N, WO3 share from the domes", 1),
                          ("N, theta_rho given (±0.07)", 2),
                          ("N, radius and theta_rho exact", 3)):
        estimates, truths, whole_est, whole_true = [], [], [], []
        for row in rows:
            per_image = np.asarray(row[column].particles_per_image, float)
            inside = ~row[4]
            estimates.append(per_image[inside])
            truths.append(row[0]["counts"][inside])
            if inside.all():
                whole_est.append(per_image.mean())
                whole_true.append(row[0]["counts"].mean())
        estimates, truths = np.concatenate(estimates), np.concatenate(truths)
        _errors(f"{label}, per image (not cut)", estimates, truths)
        _errors(f"{label}, sample mean (no image cut)", whole_est, whole_true)
        for low, high in ((10, 30), (30, 100), (100, 1000)):
            chosen = (truths >= low) & (truths < high)
            if chosen.any():
                _errors(f"{label}, per image, N in [{low}, {high})", estimates[chosen],
                        truths[chosen])
    cut_images = [(row[1].particles_per_image[k], row[0]["counts"][k]) for row in rows
                  for k in np.flatnonzero(row[4])]
    if cut_images:
        _errors("N of images cut by the border (domes' WO3 share)",
                [item[0] for item in cut_images], [item[1] for item in cut_images],
                {"share_of_images": round(len(cut_images) / (len(rows) * _IMAGES.value), 4)})
    for low, high in ((5, 7.5), (7.5, 10), (10, 12.5)):
        chosen = [row for row in rows if low <= row[0]["config"].radius_mean < high]
        if chosen:
            _errors(f"radius mean, per sample, r in [{low}, {high})",
                    [row[1].radius_mean_nm for row in chosen],
                    [row[0]["radius_mean"] for row in chosen])
    print(json.dumps({"domes_per_sample_median": float(np.median([row[5] for row in rows])),
                      "samples_without_domes": int(sum(row[5] == 0 for row in rows))}))


if __name__ == "__main__":
    app.run(main)
