"""The files of a database directory, and the checks that keep bad data out of training.

A database directory holds

* ``settings.json`` — the `DatasetConfig`, the HAADF tables used (source and sha256) and their
  hash ``settings_sha256``; written before the first shard and compared on every resume, so
  shards made with other settings (or other tables) are never mixed in;
* ``<split>-<k>-of-<n>.tfrecord`` — the shards (see `hagg_tf.data.design`), each written under
  a temporary name (``.<name>.tmp-…``) and renamed when complete;
* ``<shard>.json`` — written after its shard is renamed into place: records, bytes, sha256,
  per-θ counts. A shard without it is unfinished and is rewritten by the next run;
* ``manifest.json`` — written when every shard is complete: settings, versions, the θ table,
  and per split the record counts (total, homogeneous, per θ) and every shard's size and
  sha256. The pipelines read nothing but what the manifest lists, after `verify_dataset`.

Every check raises `DatasetError` with a message that names the offending file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from hagg_tf.model.io import read_json_record

MANIFEST_NAME = "manifest.json"
SETTINGS_NAME = "settings.json"
FORMAT_NAME = "hagg_tf.dataset"
FORMAT_VERSION = 1
VERIFY_LEVELS = ("none", "size", "checksum")
_SHARD_PATTERN = re.compile(r"^(train|validation|evaluation)-\d{5}-of-\d{5}\.tfrecord$")


class DatasetError(ValueError):
    """A database directory that is incomplete, corrupt or inconsistent; names the file."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(value) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def load_manifest(path: str | os.PathLike) -> dict:
    """Reads ``manifest.json`` of a database directory (or the file itself).

    Raises:
        DatasetError: no manifest (the database is unfinished) or not a hagg_tf manifest.
    """
    path = Path(path)
    manifest_path = path if path.is_file() else path / MANIFEST_NAME
    if not manifest_path.is_file():
        hint = ""
        if (path / SETTINGS_NAME).is_file():
            hint = ("; the directory holds an unfinished database: rerun the generator "
                    "(it resumes) until every shard is done")
        raise DatasetError(f"{manifest_path}: no manifest{hint}")
    manifest = read_json_record(manifest_path, FORMAT_NAME, "hagg_tf dataset manifest",
                                error=DatasetError)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{manifest_path}: format version {manifest.get('format_version')}, "
                           f"this hagg_tf reads {FORMAT_VERSION}")
    manifest["_directory"] = str(manifest_path.parent)
    return manifest


def parse_splits(splits: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"train+validation"`` or a sequence of split names → list of names (validated)."""
    from hagg_tf.data.design import SPLITS

    names = splits.split("+") if isinstance(splits, str) else list(splits)
    if not names:
        raise ValueError("no split given")
    for name in names:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose from {SPLITS} "
                             f"(join with '+', e.g. 'train+validation' for T)")
    if len(set(names)) != len(names):
        raise ValueError(f"split listed twice: {splits!r}")
    return names


def shard_paths(manifest: dict, splits) -> list[Path]:
    """Paths of the shards of ``splits`` (in manifest order)."""
    directory = Path(manifest["_directory"])
    return [directory / shard["file"] for split in parse_splits(splits)
            for shard in manifest["splits"][split]["shards"]]


def verify_dataset(path: str | os.PathLike, level: str = "checksum", splits=None) -> dict:
    """Checks that the files on disk are exactly the ones the manifest describes.

    Args:
        path: database directory.
        level: ``"none"`` (manifest only), ``"size"`` (every listed shard exists with the
            listed byte size — catches truncation, cheap), ``"checksum"`` (also sha256 and the
            record count of every listed shard — catches any corruption; about 2 s per GB).
        splits: restrict the shard checks to these splits (default: all).

    Returns:
        The manifest.

    Raises:
        DatasetError: naming the file that is missing, unlisted, of the wrong size, corrupt or
            holding the wrong number of records.
    """
    if level not in VERIFY_LEVELS:
        raise ValueError(f"verify level must be one of {VERIFY_LEVELS}, got {level!r}")
    manifest = load_manifest(path)
    directory = Path(manifest["_directory"])
    listed = {shard["file"] for split in manifest["splits"].values() for shard in split["shards"]}
    for entry in sorted(os.listdir(directory)):
        if _SHARD_PATTERN.match(entry) and entry not in listed:
            raise DatasetError(f"{directory / entry}: shard not listed in {MANIFEST_NAME} "
                               "(left from another run?); remove it or regenerate the manifest")
    for split, info in manifest["splits"].items():
        shards = info["shards"]
        if sum(shard["records"] for shard in shards) != info["records"]:
            raise DatasetError(f"{directory / MANIFEST_NAME}: split {split!r} lists "
                               f"{info['records']} records but its shards add up to "
                               f"{sum(shard['records'] for shard in shards)}")
    if level == "none":
        return manifest
    for split in parse_splits(splits or list(manifest["splits"])):
        for shard in manifest["splits"][split]["shards"]:
            verify_shard(directory, shard, level)
    return manifest


def verify_shard(directory: str | os.PathLike, shard: dict, level: str = "checksum") -> Path:
    """Checks one shard file against its manifest entry (the levels of `verify_dataset`).

    Args:
        directory: the database directory.
        shard: the shard's entry of the manifest (``file``, ``bytes``, ``sha256``, ``records``).
        level: ``"none"``, ``"size"`` or ``"checksum"``.

    Returns:
        The shard's path.

    Raises:
        DatasetError: naming the shard that is missing, of the wrong size, corrupt or holding
            the wrong number of records.
    """
    from hagg_tf.data.records import count_records

    if level not in VERIFY_LEVELS:
        raise ValueError(f"verify level must be one of {VERIFY_LEVELS}, got {level!r}")
    shard_path = Path(directory) / shard["file"]
    if level == "none":
        return shard_path
    if not shard_path.is_file():
        raise DatasetError(f"{shard_path}: listed in {MANIFEST_NAME} but missing")
    size = shard_path.stat().st_size
    if size != shard["bytes"]:
        raise DatasetError(f"{shard_path}: {size} bytes, the manifest says "
                           f"{shard['bytes']} (truncated or replaced)")
    if level == "checksum":
        if file_sha256(shard_path) != shard["sha256"]:
            raise DatasetError(f"{shard_path}: sha256 differs from the manifest "
                               "(corrupt or replaced)")
        records = count_records(shard_path)  # its RecordError is a DatasetError
        if records != shard["records"]:
            raise DatasetError(f"{shard_path}: {records} records, the manifest says "
                               f"{shard['records']}")
    return shard_path
