"""Writes the database: deterministic, parallel, sharded and resumable.

* Deterministic: sample i depends on (seed, i) alone and a shard's record order is fixed by the
  design, so the same settings give byte-identical shards for any number of workers, any
  choice of which shards a run writes, and any machine with the same library versions (the
  PNG bytes depend on zlib; the manifest records the versions) and the same path to the HAADF
  table file (the renderer's metadata, stored in every record, names it).
* Parallel: samples are computed in ``workers`` spawned processes (TensorFlow-free); the
  parent serialises them in index order into the shard being written.
* Sharded: ``shard_indices`` selects which shards (0 … num_shards−1, each with its train,
  validation and evaluation part) this run writes, so a scheduler can spread one database over
  many machines sharing a directory; the run that completes the last shard writes the manifest
  (any run may: the manifest is a pure function of the finished shards).
* Resumable: a shard is written under a temporary name (``.<name>.tmp-<pid>``), renamed when
  complete, and only then marked finished by its ``.json`` sidecar; finished shards are
  skipped, never rewritten. A run that was killed leaves its temporary file: the next run that
  writes that shard removes it if no process of that pid is alive on its machine (so runs on
  machines sharing a directory must not write the same shard at once; they never need to).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import platform
import time
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hagg_tf.data.design import SPLITS, DatasetConfig, DatasetDesign, build_design, check_split_rule
from hagg_tf.data.manifest import (FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, SETTINGS_NAME,
                                   DatasetError, file_sha256, json_sha256)
from hagg_tf.data.records import (CONDITION_FEATURE_KEYS, DESCRIPTOR_FIELDS, FEATURE_KEYS,
                                  SampleTask, compute_sample, encode_example)
from hagg_tf.model.io import write_json_atomic
from hagg_tf.model.workers import bound_to_parent, process_alive

_SIDE_CAR_SUFFIX = ".json"
#: How the database's JSON files (settings, sidecars, manifest) are written (write_json_atomic).
_JSON_FORMAT = {"indent": 1, "trailing_newline": False}
#: Between a shard's temporary name and the pid of the process writing it.
_TEMPORARY_INFIX = ".tmp-"


@dataclasses.dataclass
class GenerationReport:
    """What one `generate_dataset` run did.

    Attributes:
        written: shard files written by this run.
        skipped: shard files that were already complete.
        records_written: records written by this run.
        wall_s: seconds this run took.
        complete: every shard of the database is finished.
        manifest: the manifest (when complete), else None.
        removed_temporaries: temporary shard files of killed runs that this run removed.
    """

    written: list[str]
    skipped: list[str]
    records_written: int
    wall_s: float
    complete: bool
    manifest: dict | None
    removed_temporaries: list[str] = dataclasses.field(default_factory=list)


def _tables_settings(tables_path: str | None) -> dict:
    """Source and sha256 of the HAADF tables, so shards rendered with other tables are caught."""
    from hagg_tf.stem import load_tables

    tables = load_tables(tables_path)  # raises TableError naming the file if unusable
    source = ("shipped:hagg_tf/stem/data/haadf_tables.csv" if tables_path is None
              else str(Path(tables_path).resolve()))
    return {"source": source, "sha256": tables.sha256, "column": tables.column,
            "tables": len(tables)}


def _film_table_settings() -> dict:
    """Source and sha256 of the shipped carbon film table (drawn conditions add a film)."""
    from hagg_tf.stem.tables import SHIPPED_FILM_TABLE, load_film_table

    table = load_film_table()
    return {"source": f"shipped:hagg_tf/stem/data/{SHIPPED_FILM_TABLE}", "sha256": table.sha256}


def dataset_settings(config: DatasetConfig, tables_path: str | None = None) -> dict:
    """The settings block (config + tables) whose hash identifies a database's content."""
    from hagg_tf.stem import DEFAULT_SCAN_NOISE_NM, DEFAULT_SEMIANGLE_MRAD

    settings = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "config": config.to_dict(), "tables": _tables_settings(tables_path),
                "renderer": {"semiangle_mrad": DEFAULT_SEMIANGLE_MRAD,
                             "scan_noise_nm": DEFAULT_SCAN_NOISE_NM, "focal_plane_nm": 0.0,
                             "shot_noise": True}}
    if config.conditions is not None:
        # Only with drawn conditions (the paper's settings stay as they were): the support
        # film's table is then part of every image.
        settings["film_table"] = _film_table_settings()
    settings["settings_sha256"] = json_sha256(settings)
    return settings


def _versions() -> dict:
    import networkx
    import PIL
    import scipy

    import hagg_tf
    versions = {"hagg_tf": hagg_tf.__version__, "python": platform.python_version(),
                "numpy": np.__version__, "scipy": scipy.__version__,
                "networkx": networkx.__version__, "pillow": PIL.__version__,
                "zlib": zlib.ZLIB_RUNTIME_VERSION}
    try:
        import tensorflow as tf
        versions["tensorflow"] = tf.__version__
    except ImportError:
        pass
    return versions


def _check_settings(output: Path, settings: dict) -> None:
    path = output / SETTINGS_NAME
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DatasetError(f"{path}: unreadable ({error})") from None
        if existing.get("settings_sha256") != settings["settings_sha256"]:
            old_config = existing.get("config", {})
            changed = sorted(key for key in set(settings["config"]) | set(old_config)
                             if old_config.get(key) != settings["config"].get(key))
            if existing.get("tables") != settings["tables"]:
                changed.append("HAADF tables")
            if existing.get("film_table") != settings.get("film_table"):
                changed.append("film table")
            raise DatasetError(f"{path}: the directory holds a database with other settings "
                               f"(differs in: {', '.join(changed) or 'format'}); use a fresh "
                               "output directory")
        return
    write_json_atomic(path, settings, **_JSON_FORMAT)


def _indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def _finished_shard(output: Path, name: str, indices: np.ndarray,
                    settings_sha256: str) -> dict | None:
    """The sidecar of a finished shard, None if unfinished; error if it is someone else's."""
    sidecar_path = output / (name + _SIDE_CAR_SUFFIX)
    shard_path = output / name
    if not sidecar_path.is_file():
        return None
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a sidecar is written atomically; an unreadable one means "redo"
    if sidecar.get("settings_sha256") != settings_sha256:
        raise DatasetError(f"{sidecar_path}: shard made with other settings; use a fresh "
                           "output directory")
    if sidecar.get("indices_sha256") != _indices_sha256(indices):
        raise DatasetError(f"{sidecar_path}: shard holds other samples than the design asks for")
    if not shard_path.is_file() or shard_path.stat().st_size != sidecar["bytes"]:
        return None  # deleted or damaged after it was finished: write it again
    return sidecar


def _write_shard(output: Path, name: str, split: str, indices: np.ndarray, payloads,
                 design: DatasetDesign, settings_sha256: str, workers: int, bar=None) -> dict:
    """Writes one shard from ``payloads`` (in index order), then its sidecar.

    ``bar`` (a tqdm bar, or None) advances by one per record.
    """
    import tensorflow as tf

    started = time.perf_counter()
    shard_path = output / name
    temporary = output / f".{name}{_TEMPORARY_INFIX}{os.getpid()}"
    homogeneous = 0
    per_theta = np.zeros(design.num_thetas, dtype=np.int64)
    try:
        with tf.io.TFRecordWriter(str(temporary)) as writer:
            for expected in indices:
                payload = next(payloads)
                if payload["index"] != expected:  # a broken worker must not shift records
                    raise RuntimeError(f"{name}: got sample {payload['index']}, "
                                       f"expected {expected}")
                writer.write(encode_example(payload, split))
                homogeneous += int(payload["descriptors"].homogeneous)
                per_theta[payload["theta_id"]] += 1
                if bar is not None:
                    bar.update(1)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        sidecar = {"file": name, "split": split, "records": int(len(indices)),
                   "bytes": temporary.stat().st_size, "sha256": file_sha256(temporary),
                   "homogeneous": homogeneous, "per_theta": per_theta.tolist(),
                   "indices_sha256": _indices_sha256(indices),
                   "settings_sha256": settings_sha256, "workers": workers,
                   "wall_s": round(time.perf_counter() - started, 3)}
        os.replace(temporary, shard_path)
    finally:
        if temporary.exists():
            temporary.unlink()
    write_json_atomic(output / (name + _SIDE_CAR_SUFFIX), sidecar, **_JSON_FORMAT)
    return sidecar


def _remove_stale_temporaries(output: Path, name: str) -> list[str]:
    """Removes the temporary files of shard ``name`` left by writers that were killed.

    Called only for shards this run is about to write, and a file is removed only when no
    process of the pid in its name is alive here: the temporary file of a live writer (on this
    machine) is never touched.

    Returns:
        The names of the removed files.
    """
    prefix = f".{name}{_TEMPORARY_INFIX}"
    removed = []
    for path in output.glob(f"{glob.escape(prefix)}*"):
        pid = path.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid() or process_alive(int(pid)):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # another resuming run removed it first
        removed.append(path.name)
    return removed


def _payload_stream(tasks: list[SampleTask], workers: int) -> Iterable[dict]:
    if workers <= 1 or len(tasks) <= 1:
        yield from map(compute_sample, tasks)
        return
    # spawn: the parent has TensorFlow loaded (its threads must not be forked); the workers
    # import only numpy/scipy/networkx and the renderer.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, **bound_to_parent()) as pool:
        yield from pool.imap(compute_sample, tasks, chunksize=4)


def prepare_output(output: str | os.PathLike, config: DatasetConfig,
                   tables_path: str | None) -> tuple[Path, DatasetDesign, dict]:
    """Creates ``output`` and checks (or records) its settings before any shard is written.

    Returns:
        (output as a Path, the design, the settings block).

    Raises:
        DatasetError: the directory holds a database with other settings.
        TableError: the HAADF tables cannot be loaded.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    design = build_design(config)
    settings = dataset_settings(config, tables_path)
    _check_settings(output, settings)
    return output, design, settings


def plan_shards(output: Path, design: DatasetDesign, settings_sha256: str,
                shard_indices: Sequence[int] | None
                ) -> tuple[list[tuple[str, str, np.ndarray]], list[str], list[str]]:
    """Which shard files of ``shard_indices`` (None: all) still need writing.

    Removes the temporary files that killed writers left for the shards to write.

    Returns:
        (to write: (name, split, indices) in design order, names already finished, names of
        the removed temporary files).

    Raises:
        ValueError: a shard index outside 0..num_shards−1.
        DatasetError: a finished shard belongs to other settings or samples.
    """
    num_shards = design.config.num_shards
    if shard_indices is None:
        shard_indices = range(num_shards)
    shard_indices = sorted(set(int(k) for k in shard_indices))
    for shard in shard_indices:
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard index {shard} outside 0..{num_shards - 1}")
    todo, skipped, removed = [], [], []
    for shard in shard_indices:
        for split in SPLITS:
            name = design.shard_name(split, shard)
            indices = design.shards[split][shard]
            if _finished_shard(output, name, indices, settings_sha256) is None:
                todo.append((name, split, indices))
                removed += _remove_stale_temporaries(output, name)
            else:
                skipped.append(name)
    return todo, skipped, removed


def sample_tasks(design: DatasetDesign, indices: Iterable[int],
                 tables_path: str | None) -> list[SampleTask]:
    """The worker tasks of samples ``indices`` (one per record, in the given order)."""
    config = design.config
    return [SampleTask(index=int(index), theta_id=int(design.sample_theta[index]),
                       theta=tuple(design.params(design.sample_theta[index]).as_tuple()),
                       seed=config.seed, image_size=config.image_size,
                       pixel_size_nm=config.effective_pixel_size_nm, dose=config.dose,
                       min_size=config.min_size, max_size=config.max_size,
                       tables_path=None if tables_path is None else str(tables_path),
                       conditions=config.conditions)
            for index in indices]


def write_one_shard(output: Path, name: str, split: str, indices: np.ndarray,
                    design: DatasetDesign, settings_sha256: str,
                    tables_path: str | None) -> dict | None:
    """Computes the samples of one shard in this process and writes the shard and its sidecar.

    The unit of work of a distributed run (``hagg_tf.data.beam``): the same records, the same
    temporary-then-rename and the same sidecar as `generate_dataset`, so the shard's bytes do
    not depend on where it was written. A shard finished meanwhile (a retried work item, a
    concurrent run) is kept, not rewritten.

    Returns:
        The new sidecar, or None when the shard was already finished.
    """
    if _finished_shard(output, name, indices, settings_sha256) is not None:
        return None
    payloads = map(compute_sample, sample_tasks(design, indices, tables_path))
    return _write_shard(output, name, split, indices, payloads, design, settings_sha256,
                        workers=1)


def generate_dataset(output: str | os.PathLike, config: DatasetConfig, *,
                     shard_indices: Sequence[int] | None = None, workers: int = 1,
                     tables_path: str | None = None, progress: bool = True,
                     command: str | None = None) -> GenerationReport:
    """Generates (or resumes) a database in ``output``.

    Args:
        output: database directory (created).
        config: the database settings (e.g. ``design.preset("paper")``).
        shard_indices: which shards k ∈ [0, num_shards) to write (each with its three split
            parts); None writes all.
        workers: processes computing samples (spawned: a script calling this with workers > 1
            needs the usual ``if __name__ == "__main__":`` guard).
        tables_path: HAADF table file; None uses the tables shipped with hagg_tf.
        progress: show a tqdm progress bar.
        command: the command line, stored in the manifest.

    Returns:
        A `GenerationReport`; ``manifest`` is set once every shard is complete.

    Raises:
        DatasetError: the directory holds a database with other settings.
        TableError: the HAADF tables cannot be loaded.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    output, design, settings = prepare_output(output, config, tables_path)
    settings_sha256 = settings["settings_sha256"]
    todo, skipped, removed = plan_shards(output, design, settings_sha256, shard_indices)
    tasks = [task for _, _, indices in todo for task in sample_tasks(design, indices, tables_path)]
    written = []
    with tqdm(total=len(tasks), unit="sample", disable=not progress, desc="samples",
              smoothing=0.05) as bar:
        payloads = iter(_payload_stream(tasks, workers))
        try:
            for name, split, indices in todo:
                _write_shard(output, name, split, indices, payloads, design, settings_sha256,
                             workers, bar)
                written.append(name)
        finally:
            close = getattr(payloads, "close", None)
            if close is not None:
                close()  # stops the worker pool if a shard failed

    manifest = write_manifest_if_complete(output, design, settings, command)
    return GenerationReport(written=written, skipped=skipped, records_written=len(tasks),
                            wall_s=time.perf_counter() - started, complete=manifest is not None,
                            manifest=manifest, removed_temporaries=removed)


def write_manifest_if_complete(output: Path, design: DatasetDesign, settings: dict,
                               command: str | None = None) -> dict | None:
    """Writes ``manifest.json`` from the sidecars when every shard is finished.

    Returns:
        The manifest, or None while shards are missing.

    Raises:
        DatasetError: the finished shards do not add up to the design (per-θ counts), or the
            design breaks the Sec. 2.3 split rule.
    """
    config = design.config
    splits = {}
    shard_seconds = 0.0
    for split in SPLITS:
        shards, homogeneous = [], 0
        per_theta = np.zeros(design.num_thetas, dtype=np.int64)
        for shard in range(config.num_shards):
            name = design.shard_name(split, shard)
            sidecar = _finished_shard(output, name, design.shards[split][shard],
                                      settings["settings_sha256"])
            if sidecar is None:
                return None
            shards.append({key: sidecar[key] for key in ("file", "records", "bytes", "sha256")})
            homogeneous += sidecar["homogeneous"]
            per_theta += np.asarray(sidecar["per_theta"], dtype=np.int64)
            shard_seconds += sidecar["wall_s"]
        expected = design.counts_per_theta(split)
        if not np.array_equal(per_theta, expected):
            raise DatasetError(f"{output}: the shards of split {split!r} hold other per-θ "
                               "counts than the design")
        splits[split] = {"records": int(per_theta.sum()), "homogeneous": homogeneous,
                         "per_theta": per_theta.tolist(), "shards": shards}
    problems = check_split_rule({name: info["per_theta"] for name, info in splits.items()},
                                config.min_per_theta)
    if problems:
        raise DatasetError(f"{output}: split rule violated: {problems[0]}")
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "settings": settings, "settings_sha256": settings["settings_sha256"],
        "versions": _versions(),
        "command": command,
        "records": int(sum(info["records"] for info in splits.values())),
        "image": {"height": config.image_size, "width": config.image_size,
                  "pixel_size_nm": config.effective_pixel_size_nm, "dose_e_per_A2": config.dose,
                  "encoding": "png16"},
        "thetas": design.thetas.tolist(),
        "theta_fields": ["fractal_dimension", "mixing_ratio", "wo3_cluster_size",
                         "tio2_cluster_size"],
        "min_per_theta": config.min_per_theta,
        "feature_keys": list(FEATURE_KEYS) + (
            [] if config.conditions is None else list(CONDITION_FEATURE_KEYS)),
        "descriptor_fields": list(DESCRIPTOR_FIELDS),
        "splits": splits,
        # Sum over shards of the wall time each took to write (with its run's workers).
        "shard_wall_seconds": round(shard_seconds, 1),
    }
    if config.conditions is not None:
        # Dose and acquisition pixel size differ per record (their ``conditions/json``); the
        # image block then describes the grid only.
        manifest["image"].update({"dose_e_per_A2": None, "conditions": config.conditions})
    write_json_atomic(output / MANIFEST_NAME, manifest, **_JSON_FORMAT)
    manifest["_directory"] = str(output)
    return manifest
