"""A decoded, preprocessed and average-pooled copy of a database, for fast CPU training.

Every network of :mod:`hagg_tf.networks` starts with the paper's preprocessing (scaling to
[-0.5, 0.5] on 256 levels, for CNN^1 after the inversion p → 1/p) and an average pooling of
``input_pooling`` pixels. Both are fixed functions of the image, so they can be computed once
instead of in every epoch: this module stores, for every record, the *sum* over each pooling
window of the preprocessed grey level k ∈ {0, …, 255} (``x = -0.5 + k/255``) as uint16. The
pooled network input is then exactly ``sum / (255·p²) − 0.5`` (p = pooling side), with no
rounding: the cache is a lossless shortcut, not an approximation. Rotations by 90° and
reflections commute with the pooling (the image side is a multiple of p), so the training
augmentation can act on the pooled images.

Layout of ``<cache_dir>`` (inside an ignored folder such as ``work/``)::

    cache.json                              # settings: dataset manifest hash, pooling
    <split>-<shard number>.npz              # one per database shard, written atomically

Each part holds ``plain`` and ``inverted`` (n, S, S) uint16 sums with S = H / p, the
per-record labels ``record_index``, ``theta_id``, ``theta`` (n, 4), ``fractal_dimension``,
``mixing_ratio``, ``homogeneous``, ``num_particles``, ``electrons_per_pixel``, and
``shard_sha256``, the sha256 of the shard it was pooled from. A part is built only from a shard
that matches the manifest (`verify_shard`: size, sha256, records; the record CRCs are checked
while reading), and is used only while the manifest still lists that sha256: a part of a
database that has changed since, or of an older hagg_tf that recorded no sha256, is refused
when loading and rebuilt by the next `build_pooled_cache`. Building resumes where it stopped:
finished parts are kept.

With pooling 4 the paper database (512 px) takes 32 KiB per image and variant: 1.1 GiB for
T, the validation part and E together, against 0.8 GB of PNGs that cost ~3 ms each to decode.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time
import zipfile
from typing import Iterable, Optional, Union

import numpy as np

from hagg_tf.data.manifest import DatasetError, load_manifest, verify_shard
from hagg_tf.data.preprocessing import INVERSION_THRESHOLD, NUM_LEVELS, preprocess_images_numpy
from hagg_tf.data.records import read_samples
from hagg_tf.model.io import atomic_write, write_json_atomic
from hagg_tf.model.workers import make_process_pool

#: Version of the cache layout.
CACHE_FORMAT = 1
#: Per-record label arrays of a part.
LABEL_KEYS = ("record_index", "theta_id", "theta", "fractal_dimension", "mixing_ratio",
              "homogeneous", "num_particles", "electrons_per_pixel")
SETTINGS_FILE = "cache.json"
#: Key of a part holding the sha256 of the shard it was pooled from.
SHARD_SHA256_KEY = "shard_sha256"


def preprocess_levels(counts: np.ndarray, electrons_per_pixel: float,
                      invert: bool) -> np.ndarray:
    """The paper's preprocessing as integer grey levels k (x = −0.5 + k/255).

    :func:`hagg_tf.data.preprocessing.preprocess_images_numpy` gives x = k/255 − 0.5 in float32;
    k is recovered exactly by rounding (x + 0.5)·255, the levels being 1/255 apart.

    Args:
        counts: (H, W) detector counts.
        electrons_per_pixel: incident electrons per pixel (used only with ``invert``).
        invert: apply the CNN^1 inversion p → 1/p for p > t first.

    Returns:
        (H, W) uint8 levels.
    """
    values = preprocess_images_numpy(
        counts, np.float32(electrons_per_pixel),
        inversion_threshold=INVERSION_THRESHOLD if invert else None)
    return np.round((values + np.float32(0.5)) * np.float32(NUM_LEVELS - 1)).astype(np.uint8)


def pool_sums(levels: np.ndarray, pooling: int) -> np.ndarray:
    """Sums of ``pooling × pooling`` windows: (H, W) → (H/p, W/p) uint16."""
    height, width = levels.shape
    if height % pooling or width % pooling:
        raise ValueError(f"image {height}×{width} is not a multiple of the pooling {pooling}")
    blocks = levels.reshape(height // pooling, pooling, width // pooling, pooling)
    return blocks.sum(axis=(1, 3), dtype=np.uint32).astype(np.uint16)


def sums_to_inputs(sums: np.ndarray, pooling: int) -> np.ndarray:
    """Pooled network inputs (float32 in [−0.5, 0.5]) from stored window sums."""
    return sums.astype(np.float32) / np.float32((NUM_LEVELS - 1) * pooling * pooling) - 0.5


#: Elements of the square's symmetry group (four 90° rotations, each with and without a
#: reflection): the training augmentation of every pooled recipe, and the test-time averaging
#: of an export that asks for it (``hagg_tf.export.characterize``).
SQUARE_SYMMETRIES = 8


def square_symmetry(images: np.ndarray, index: int) -> np.ndarray:
    """Element ``index`` of the square's symmetry group applied to every image.

    Rotations by 90° and the reflection commute with the average pooling of the networks'
    inputs, so pooled and full-size images may be transformed alike.

    Args:
        images: (m, S, S, ...) images, the first two axes after the batch the image plane.
        index: 0–3: rotation by ``index``·90° (``np.rot90`` over the image axes); 4–7: the
            same rotation followed by the left–right reflection.

    Returns:
        (m, S, S, ...) transformed images (a view where numpy allows).
    """
    if not 0 <= index < SQUARE_SYMMETRIES:
        raise ValueError(f"index must be in [0, {SQUARE_SYMMETRIES}), got {index}")
    rotated = np.rot90(images, index % 4, axes=(1, 2))
    return rotated[:, :, ::-1] if index >= 4 else rotated


def pool_samples(samples, pooling: int) -> dict:
    """Pooled plain and inverse-intensity window sums and labels of database samples.

    Args:
        samples: iterable of :class:`hagg_tf.data.records.Sample`.
        pooling: window side p.

    Returns:
        ``{"plain": (n, S, S) uint16, "inverted": (n, S, S) uint16, <LABEL_KEYS>: (n, ...)}``.
    """
    plain, inverted, labels = [], [], {key: [] for key in LABEL_KEYS}
    for sample in samples:
        electrons = sample.electrons_per_pixel
        # (counts − dark) / beam as the tf.data pipeline computes it (float32, same order); the
        # paper's records have dark 0 and beam = electrons per pixel.
        counts = sample.counts
        if sample.dark_level:
            counts = counts.astype(np.float32) - np.float32(sample.dark_level)
        plain.append(pool_sums(preprocess_levels(counts, sample.beam_level, False), pooling))
        inverted.append(pool_sums(preprocess_levels(counts, sample.beam_level, True), pooling))
        descriptors = sample.descriptors
        labels["record_index"].append(sample.index)
        labels["theta_id"].append(sample.theta_id)
        params = sample.theta
        labels["theta"].append([params.fractal_dimension, params.mixing_ratio,
                                params.wo3_cluster_size, params.tio2_cluster_size])
        labels["fractal_dimension"].append(descriptors.fractal_dimension)
        labels["mixing_ratio"].append(descriptors.mixing_ratio)
        labels["homogeneous"].append(descriptors.mixing_ratio in (0.0, 1.0))
        labels["num_particles"].append(len(sample.aggregate.radii))
        labels["electrons_per_pixel"].append(electrons)
    return {"plain": np.asarray(plain), "inverted": np.asarray(inverted),
            **{key: np.asarray(value) for key, value in labels.items()}}


def _part_path(cache_dir: pathlib.Path, split: str, number: int) -> pathlib.Path:
    return cache_dir / f"{split}-{number:05d}.npz"


def _part_shard_sha256(part_path: pathlib.Path) -> Optional[str]:
    """The sha256 of the shard a part was pooled from; None for a missing or unreadable part,
    or one written before parts recorded it."""
    try:
        with np.load(part_path) as data:
            return str(data[SHARD_SHA256_KEY]) if SHARD_SHA256_KEY in data.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _build_part(task) -> tuple[str, int, float]:
    dataset_dir, shard, part_path, pooling = task
    started = time.perf_counter()
    shard_path = verify_shard(dataset_dir, shard, "checksum")
    arrays = pool_samples(read_samples(shard_path), pooling)
    arrays[SHARD_SHA256_KEY] = np.array(shard["sha256"])
    atomic_write(part_path, lambda stream: np.savez(stream, **arrays))
    return str(part_path), len(arrays["plain"]), time.perf_counter() - started


def iter_pooled_shards(dataset_dir: Union[str, os.PathLike], split: str, pooling: int):
    """Yields :func:`pool_samples` of every shard of ``split`` in turn, without a cache.

    Every shard is checked against the manifest (`verify_shard`) before it is read.
    """
    dataset_dir = pathlib.Path(dataset_dir)
    manifest = load_manifest(dataset_dir)
    if split not in manifest["splits"]:
        raise DatasetError(f"{dataset_dir} has no split {split!r}")
    for shard in manifest["splits"][split]["shards"]:
        yield pool_samples(read_samples(verify_shard(dataset_dir, shard, "checksum")), pooling)


@dataclasses.dataclass
class PooledSplit:
    """One split of a pooled cache, all parts concatenated in database order.

    Attributes:
        plain: (n, S, S) uint16 window sums of the plain preprocessing.
        inverted: (n, S, S) uint16 window sums of the inverse-intensity preprocessing.
        labels: the per-record arrays of :data:`LABEL_KEYS`.
        pooling: window side p.
    """

    plain: np.ndarray
    inverted: np.ndarray
    labels: dict
    pooling: int

    def __len__(self) -> int:
        return len(self.plain)

    def inputs(self, rows, inverted: bool = False) -> np.ndarray:
        """Pooled network inputs (len(rows), S, S, 1) float32 of the given rows."""
        source = self.inverted if inverted else self.plain
        return sums_to_inputs(source[rows], self.pooling)[..., np.newaxis]


def _settings(dataset_dir: pathlib.Path, pooling: int) -> dict:
    manifest = load_manifest(dataset_dir)
    return {"format": CACHE_FORMAT, "pooling": int(pooling),
            "dataset_settings_sha256": manifest.get("settings_sha256"),
            "image_size": int(manifest["image"]["height"]),
            "num_levels": NUM_LEVELS, "inversion_threshold": INVERSION_THRESHOLD}


def build_pooled_cache(dataset_dir: Union[str, os.PathLike],
                       cache_dir: Union[str, os.PathLike], pooling: int = 4,
                       splits: Iterable[str] = ("train", "validation", "evaluation"),
                       workers: int = 2, progress: bool = True) -> pathlib.Path:
    """Builds (or completes) the pooled cache of ``dataset_dir``; see the module docstring.

    Args:
        dataset_dir: database with ``manifest.json``.
        cache_dir: where the cache goes (created).
        pooling: window side p (the architecture's ``input_pooling``).
        splits: splits to cache.
        workers: processes decoding shards in parallel.
        progress: print one line per finished part to stderr.

    Returns:
        ``cache_dir``.

    Raises:
        DatasetError: no database, a cache of another database or pooling in ``cache_dir``, or
            a shard to pool that does not match the manifest or holds a corrupt record (names
            the shard).
    """
    dataset_dir, cache_dir = pathlib.Path(dataset_dir), pathlib.Path(cache_dir)
    settings = _settings(dataset_dir, pooling)
    manifest = load_manifest(dataset_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    settings_path = cache_dir / SETTINGS_FILE
    if settings_path.is_file():
        existing = json.loads(settings_path.read_text())
        if existing != settings:
            raise DatasetError(f"{cache_dir} caches another database or pooling ({existing}); "
                               "use another cache directory")
    else:
        write_json_atomic(settings_path, settings)
    tasks = []
    for split in splits:
        if split not in manifest["splits"]:
            raise DatasetError(f"{dataset_dir} has no split {split!r}")
        for number, shard in enumerate(manifest["splits"][split]["shards"]):
            part = _part_path(cache_dir, split, number)
            # A part of another version of the shard (or of unknown origin) is pooled again.
            if _part_shard_sha256(part) != shard["sha256"]:
                tasks.append((str(dataset_dir), shard, str(part), int(pooling)))
    if not tasks:
        return cache_dir
    started = time.perf_counter()
    done = 0
    pool = make_process_pool(max(1, int(workers)))
    try:
        for part, records, _ in pool.map(_build_part, tasks):
            done += 1
            if progress:
                print(f"pooled cache: {done}/{len(tasks)} parts ({pathlib.Path(part).name}, "
                      f"{records} records), {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)
    except BaseException:
        # A bad shard ends the build now, not after every queued part has been pooled.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return cache_dir


def iter_pooled_parts(cache_dir: Union[str, os.PathLike], split: str,
                      dataset_dir: Optional[Union[str, os.PathLike]] = None):
    """The parts of one split of a pooled cache, one at a time, in database order.

    Memory stays at one part (one database shard), whatever the size of the split: the
    evaluation streams a split through the networks this way.

    Args:
        cache_dir: directory written by :func:`build_pooled_cache`.
        split: split name.
        dataset_dir: if given, the cache must have been built from this database.

    Yields:
        ``{"plain", "inverted", <LABEL_KEYS>, "shard_sha256"}`` arrays of one part.

    Raises:
        DatasetError: no cache, a missing part, a cache of another database, or (with
            ``dataset_dir``) a part pooled from another version of its shard than the manifest
            lists (names the part; `build_pooled_cache` rebuilds it).
    """
    cache_dir = pathlib.Path(cache_dir)
    settings = _cache_settings(cache_dir)
    if dataset_dir is not None:
        expected = _settings(pathlib.Path(dataset_dir), settings["pooling"])
        if expected != settings:
            raise DatasetError(f"{cache_dir} was built from another database or settings")
    parts = _split_parts(cache_dir, split)
    if not parts:
        raise DatasetError(f"{cache_dir}: no parts of split {split!r}")
    shards = None
    if dataset_dir is not None:
        shards = load_manifest(dataset_dir)["splits"][split]["shards"]
        present = [_part_path(cache_dir, split, number) for number in range(len(shards))]
        if len(parts) != len(shards) or parts != present:
            built = sum(part.is_file() for part in present)
            raise DatasetError(f"{cache_dir}: {built} of the {len(shards)} parts of split "
                               f"{split!r}; finish it with build_pooled_cache")
    for number, part in enumerate(parts):
        with np.load(part) as data:
            loaded = {key: data[key] for key in data.files}
        if shards is not None:
            recorded = loaded.get(SHARD_SHA256_KEY)
            if recorded is None or str(recorded) != shards[number]["sha256"]:
                origin = ("records no shard sha256 (pooled by an older hagg_tf)"
                          if recorded is None else "was pooled from another version of "
                          f"{shards[number]['file']} than {dataset_dir} lists")
                raise DatasetError(f"{part}: {origin}; rebuild it with build_pooled_cache "
                                   "(hagg-train --pooled_cache rebuilds stale parts)")
        yield loaded


def _cache_settings(cache_dir: pathlib.Path) -> dict:
    settings_path = cache_dir / SETTINGS_FILE
    if not settings_path.is_file():
        raise DatasetError(f"{cache_dir}: no pooled cache (build it with build_pooled_cache)")
    return json.loads(settings_path.read_text())


def _split_parts(cache_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    return sorted(cache_dir.glob(f"{split}-*.npz"))


def caches_split(cache_dir: Union[str, os.PathLike], split: str) -> bool:
    """Whether the pooled cache at ``cache_dir`` holds parts of ``split`` (a cache may hold
    some splits only: ``build_pooled_cache(..., splits=...)``)."""
    return bool(_split_parts(pathlib.Path(cache_dir), split))


def cache_pooling(cache_dir: Union[str, os.PathLike]) -> int:
    """The input pooling a pooled cache was built with.

    Raises:
        DatasetError: no cache there.
    """
    return int(_cache_settings(pathlib.Path(cache_dir))["pooling"])


def load_pooled_split(cache_dir: Union[str, os.PathLike], split: str,
                      dataset_dir: Optional[Union[str, os.PathLike]] = None) -> PooledSplit:
    """Reads one split of a pooled cache, all parts concatenated (see :func:`iter_pooled_parts`
    for the checks and the errors)."""
    plain, inverted, labels = [], [], {key: [] for key in LABEL_KEYS}
    for part in iter_pooled_parts(cache_dir, split, dataset_dir):
        plain.append(part.pop("plain"))
        inverted.append(part.pop("inverted"))
        for key in LABEL_KEYS:
            labels[key].append(part[key])
    return PooledSplit(np.concatenate(plain), np.concatenate(inverted),
                       {key: np.concatenate(value) for key, value in labels.items()},
                       cache_pooling(cache_dir))
