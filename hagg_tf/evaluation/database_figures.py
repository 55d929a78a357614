"""Figures of a training database: the background statistics of its images.

The background statistics are those that ``characterize`` compares a user's images with
(`hagg_tf.estimation.domain.image_statistics`: level and noise of the image's outermost frame),
of the normalized intensity (counts − dark level) / beam level, i.e. as fractions of the
incident beam (`hagg_tf.stem.normalized_intensity` with the record's metadata). The paper's
images have level and noise exactly 0; a database with drawn imaging conditions (the
``realistic`` preset) spans the film, detector and dose ranges of `hagg_tf.data.randomization`.

Needs matplotlib (the ``plot`` extra) for `plot_background_histograms`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from hagg_tf.data.records import Sample
from hagg_tf.evaluation.figures import import_pyplot, save_png
from hagg_tf.stem import normalized_intensity

#: Keys of `background_statistics`.
BACKGROUND_KEYS = ("index", "level", "noise", "relative_noise", "film_thickness_nm")


def normalized_background(sample: Sample) -> tuple[float, float, float]:
    """(level, noise, noise relative to the aggregate's signal) of one record's background.

    Returns:
        level and noise as fractions of the incident beam (NaN where the aggregate covers the
        frame); the relative noise is the noise over (99.9th percentile of the image − level),
        the scale the networks' per-image min–max scaling puts it on (0 without signal).
    """
    from hagg_tf.estimation.domain import image_statistics

    intensity = normalized_intensity(sample.counts, sample.metadata).astype(np.float64)
    statistics = image_statistics(intensity, float(sample.metadata["pixel_size_nm"]))
    level, noise = statistics["background_level"], statistics["background_noise"]
    if level is None or noise is None:
        return math.nan, math.nan, math.nan
    signal = float(np.percentile(intensity, 99.9)) - level
    return level, noise, noise / signal if signal > 0 else 0.0


def background_statistics(dataset: str | Path, max_records: Optional[int] = 4000) -> dict:
    """The background statistics of (an evenly spaced selection of) a database's records.

    Args:
        dataset: database directory (checked against its manifest by size).
        max_records: at most this many records, every k-th of each shard in manifest order
            (None: all).

    Returns:
        ``{key: (n,) array}`` for the keys of `BACKGROUND_KEYS` (film thickness 0 for records
        without drawn conditions).
    """
    from hagg_tf.data import verify_dataset
    from hagg_tf.data.manifest import shard_paths
    from hagg_tf.data.records import decode_example, iter_tfrecord

    manifest = verify_dataset(dataset, level="size")
    step = 1 if max_records is None else max(1, -(-manifest["records"] // max_records))
    values = {key: [] for key in BACKGROUND_KEYS}
    for path in shard_paths(manifest, list(manifest["splits"])):
        for number, serialized in enumerate(iter_tfrecord(path)):
            if number % step:
                continue
            sample = decode_example(serialized, f"{path} (record {number})")
            level, noise, relative = normalized_background(sample)
            film = ((sample.conditions or {}).get("imaging") or {}).get("film_thickness_nm", 0.0)
            for key, value in zip(BACKGROUND_KEYS,
                                  (sample.index, level, noise, relative, film)):
                values[key].append(value)
    return {key: np.asarray(value) for key, value in values.items()}


def plot_background_histograms(statistics: dict, path: str | Path, title: str = "") -> Path:
    """Histograms of background level, noise and relative noise (see `background_statistics`).

    Records with and without a support film are stacked in two colours.

    Args:
        statistics: the output of `background_statistics`.
        path: PNG destination.
        title: figure title (e.g. the database and the number of records).

    Returns:
        ``path``.
    """
    plt = import_pyplot()
    film = statistics["film_thickness_nm"] > 0
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = (("level", "background level (fraction of the beam)", False),
              ("noise", "background noise, s.d. (fraction of the beam)", True),
              ("relative_noise", "noise / (aggregate signal − level)", True))
    for ax, (key, label, logarithmic) in zip(axes, panels):
        values = statistics[key]
        known = np.isfinite(values)
        values, on_film = values[known], film[known]
        positive = values[values > 0]
        if logarithmic and positive.size:
            bins = np.geomspace(positive.min(), positive.max(), 40)
            ax.set_xscale("log")
            shown = [values[~on_film & (values > 0)], values[on_film & (values > 0)]]
        else:
            bins = 40
            shown = [values[~on_film], values[on_film]]
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.hist(shown, bins=bins, stacked=True, color=["#999999", "#1f5fbf"],
                label=["no film", "carbon film"])
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel("records", fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = save_png(figure, path, dpi=80)
    plt.close(figure)
    return path
