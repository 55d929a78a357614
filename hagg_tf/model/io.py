"""Aggregate files: an exact native format and plain exports for downstream tools.

Native format (``.npz``, numpy's zip of arrays, read with ``allow_pickle=False``). One file holds
M ≥ 1 aggregates, concatenated:

=================  ==============  ==========================================================
key                shape, dtype    meaning
=================  ==============  ==========================================================
format             () str          ``"hagg_tf.aggregates"``
format_version     () int64        1
sizes              (M,) int64      particles per aggregate, N_m
positions          (ΣN, 3) f8      particle centres, nm
radii              (ΣN,) f8        radii, nm
labels             (ΣN,) i1        0 = WO3, 1 = TiO2
cluster_ids        (ΣN,) i4        primary cluster of each particle
theta              (M, 4) f8       (θ_Df, θ_ρ, θ_0, θ_1); NaN row for hand-made aggregates
seed, index        (M,) int64      the draw's (seed, index); −1 when unknown
target_size        (M,) int64      target N of the draw; −1 when unknown
restarts           (M,) int64      restarts the draw needed
=================  ==============  ==========================================================

``load_aggregates`` checks every array's presence, shape and dtype and every value's domain
(as ``Aggregate`` and ``ModelParameters`` do) and raises ``AggregateFileError`` naming the
file and the problem, rather than truncating a 0.5 label or failing with a bare KeyError.

Every value round-trips bit for bit. Files are written to a temporary name and renamed, so an
interrupted write never leaves a file that looks complete. :func:`atomic_write` (any file) and
:func:`write_json_atomic` (a JSON file) are how every stage of hagg_tf writes its files so.

Plain exports for geometry input elsewhere: extended XYZ (one frame per aggregate; species W for
WO3 and Ti for TiO2 particles; columns position, radius, label, cluster; θ, seed and units in
the comment line; readable by ASE and OVITO) and CSV with a commented header. Both print floats
with 17 significant digits, so they round-trip exactly too.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hagg_tf.jsonsafe import json_default
from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.parameters import MATERIAL_NAMES, ModelParameters

FORMAT_NAME = "hagg_tf.aggregates"
FORMAT_VERSION = 1
_XYZ_SPECIES = {0: "W", 1: "Ti"}
_XYZ_LABELS = {species: label for label, species in _XYZ_SPECIES.items()}
# Layout of the native format: key -> (dtype kinds allowed, shape in terms of the aggregate
# count "M" and particle count "N"); see the module docstring.
_NATIVE_LAYOUT = {
    "format_version": ("iu", ()),
    "sizes": ("iu", ("M",)),
    "positions": ("fiu", ("N", 3)),
    "radii": ("fiu", ("N",)),
    "labels": ("biu", ("N",)),
    "cluster_ids": ("iu", ("N",)),
    "theta": ("fiu", ("M", 4)),
    "seed": ("iu", ("M",)),
    "index": ("iu", ("M",)),
    "target_size": ("iu", ("M",)),
    "restarts": ("iu", ("M",)),
}
# Stored in place of an absent seed, index or target size.
_UNKNOWN = -1


class AggregateFileError(ValueError):
    """Raised for a file that is not a valid aggregate file; the message names the file."""


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Calls ``write(file_object)`` on a temporary file beside ``path``, then renames it.

    Args:
        path: destination.
        write: callable receiving a binary file object.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, value, *, indent: int | None = 2,
                      sort_keys: bool = False, ensure_ascii: bool = True,
                      allow_nan: bool = False, default=json_default,
                      trailing_newline: bool = True) -> Path:
    """Writes ``value`` as JSON (UTF-8) to ``path`` through :func:`atomic_write`.

    The keyword arguments are ``json.dumps``'s; the defaults refuse NaN/±inf (invalid JSON:
    pass the value through :func:`hagg_tf.jsonsafe.json_safe` where a number may be missing)
    and write numpy scalars, arrays and paths (:func:`hagg_tf.jsonsafe.json_default`).

    Args:
        path: destination.
        value: what to write.
        trailing_newline: end the file with ``"\n"``.

    Returns:
        The destination path.

    Raises:
        ValueError: ``value`` holds NaN or ±inf and ``allow_nan`` is False.
        TypeError: ``value`` holds something ``default`` cannot write.
    """
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii,
                      allow_nan=allow_nan, default=default)
    data = (text + "\n" if trailing_newline else text).encode()
    return atomic_write(path, lambda stream: stream.write(data))


def read_json_record(path: str | os.PathLike, format_name: str, what: str, *,
                     error: type[Exception] = ValueError) -> dict:
    """Reads a JSON object that names its own format (``{"format": format_name, …}``).

    The one reader of hagg_tf's self-describing JSON files (export metadata, dataset manifests,
    training domains, LiteRT records): every problem is one ``error`` naming the file.

    Args:
        path: the file.
        format_name: the value its ``"format"`` must have.
        what: what the file is, in words, for the messages ("export metadata").
        error: the exception type raised.

    Raises:
        error: unreadable, not JSON, not an object or another format (the message names
            ``path``). A missing file is the caller's to check first.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"{path}: unreadable {what} ({problem})") from None
    if not isinstance(value, dict) or value.get("format") != format_name:
        found = value.get("format") if isinstance(value, dict) else type(value).__name__
        raise error(f"{path}: not a {what} (format {found!r}, expected {format_name!r})")
    return value


def _optional(value) -> int:
    return _UNKNOWN if value is None else int(value)


def save_aggregates(path: str | os.PathLike, aggregates: Sequence[Aggregate]) -> Path:
    """Writes aggregates to one native ``.npz`` file (atomically). See the module docstring."""
    aggregates = list(aggregates)
    if not aggregates:
        raise ValueError("save_aggregates needs at least one aggregate")
    nan_theta = (math.nan,) * 4
    arrays = dict(
        format=np.array(FORMAT_NAME),
        format_version=np.array(FORMAT_VERSION, dtype=np.int64),
        sizes=np.array([item.size for item in aggregates], dtype=np.int64),
        positions=np.concatenate([item.positions for item in aggregates]),
        radii=np.concatenate([item.radii for item in aggregates]),
        labels=np.concatenate([item.labels for item in aggregates]).astype(np.int8),
        cluster_ids=np.concatenate([item.cluster_ids for item in aggregates]).astype(np.int32),
        theta=np.array([item.params.as_tuple() if item.params else nan_theta
                        for item in aggregates], dtype=np.float64),
        seed=np.array([_optional(item.seed) for item in aggregates], dtype=np.int64),
        index=np.array([_optional(item.index) for item in aggregates], dtype=np.int64),
        target_size=np.array([_optional(item.target_size) for item in aggregates], dtype=np.int64),
        restarts=np.array([item.restarts for item in aggregates], dtype=np.int64),
    )
    return atomic_write(path, lambda stream: np.savez_compressed(stream, **arrays))


def _check_layout(path: Path, arrays: dict) -> None:
    """Raises AggregateFileError unless ``arrays`` has every key of the format, well shaped."""
    missing = [key for key in _NATIVE_LAYOUT if key not in arrays]
    if missing:
        raise AggregateFileError(f"{path}: missing array(s) {', '.join(missing)}")
    for key, (kinds, _) in _NATIVE_LAYOUT.items():
        if arrays[key].dtype.kind not in kinds:
            raise AggregateFileError(f"{path}: {key} has dtype {arrays[key].dtype}, expected "
                                     f"{'integers' if 'f' not in kinds else 'numbers'}")
    if arrays["format_version"].shape != ():
        raise AggregateFileError(f"{path}: format_version has shape "
                                 f"{arrays['format_version'].shape}, expected ()")
    if int(arrays["format_version"]) != FORMAT_VERSION:
        raise AggregateFileError(
            f"{path}: format version {int(arrays['format_version'])}, this hagg_tf reads "
            f"{FORMAT_VERSION}")
    sizes = arrays["sizes"]
    if sizes.ndim != 1 or sizes.shape[0] == 0:
        raise AggregateFileError(f"{path}: sizes has shape {sizes.shape}, expected (M,) with "
                                 f"M >= 1")
    if np.any(sizes < 1):
        raise AggregateFileError(f"{path}: sizes must be >= 1, got {sizes.min()}")
    count, particles = sizes.shape[0], int(sizes.sum())
    for key, (_, shape) in _NATIVE_LAYOUT.items():
        expected = tuple({"M": count, "N": particles}.get(length, length) for length in shape)
        if arrays[key].shape != expected:
            raise AggregateFileError(
                f"{path}: {key} has shape {arrays[key].shape}, expected {expected} (sizes says "
                f"M = {count} aggregates of N = {particles} particles in all)")


def load_aggregates(path: str | os.PathLike) -> list[Aggregate]:
    """Reads every aggregate of a native file, checking it against the format first.

    Raises:
        FileNotFoundError: no such file.
        AggregateFileError: not an aggregate file (unreadable, no format tag, another version),
            a missing array, an array of the wrong shape or dtype, or a value out of its domain
            (labels other than 0/1, non-positive or non-finite radii, a bad θ, …); the message
            names the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aggregate file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # zipfile, OSError, ValueError: all mean "not our file"
        raise AggregateFileError(f"{path}: not a readable aggregate file ({error})") from error
    tag = arrays.get("format")
    if tag is None or tag.shape != () or str(tag) != FORMAT_NAME:
        raise AggregateFileError(f"{path}: not a hagg_tf aggregate file (no format tag)")
    _check_layout(path, arrays)
    bounds = np.concatenate([[0], np.cumsum(arrays["sizes"])])
    aggregates = []
    for item, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):

        def known(key):
            value = int(arrays[key][item])
            return None if value == _UNKNOWN else value

        try:
            theta = arrays["theta"][item]
            # ModelParameters refuses a partly NaN row and non-integral cluster sizes.
            params = None if np.isnan(theta).all() else ModelParameters(
                *(float(value) for value in theta))
            aggregates.append(Aggregate(
                positions=arrays["positions"][start:stop], radii=arrays["radii"][start:stop],
                labels=arrays["labels"][start:stop], cluster_ids=arrays["cluster_ids"][start:stop],
                params=params, seed=known("seed"), index=known("index"),
                target_size=known("target_size"), restarts=int(arrays["restarts"][item])))
        except ValueError as error:
            raise AggregateFileError(f"{path}: aggregate {item}: {error}") from error
    return aggregates


def save_aggregate(path: str | os.PathLike, aggregate: Aggregate) -> Path:
    """Writes one aggregate to a native file."""
    return save_aggregates(path, [aggregate])


def load_aggregate(path: str | os.PathLike) -> Aggregate:
    """Reads a native file holding exactly one aggregate."""
    aggregates = load_aggregates(path)
    if len(aggregates) != 1:
        raise AggregateFileError(f"{path}: holds {len(aggregates)} aggregates, expected one")
    return aggregates[0]


def _comment_fields(aggregate: Aggregate) -> dict[str, str]:
    fields = {"units": "nm"}
    if aggregate.params is not None:
        fields.update(theta_Df=repr(aggregate.params.fractal_dimension),
                      theta_rho=repr(aggregate.params.mixing_ratio),
                      theta_0=str(aggregate.params.wo3_cluster_size),
                      theta_1=str(aggregate.params.tio2_cluster_size))
    for key in ("seed", "index", "target_size"):
        if getattr(aggregate, key) is not None:
            fields[key] = str(getattr(aggregate, key))
    return fields


def export_xyz(path: str | os.PathLike, aggregates: Iterable[Aggregate]) -> Path:
    """Writes aggregates as extended XYZ frames (atomically); see the module docstring."""
    lines = []
    for aggregate in aggregates:
        lines.append(str(aggregate.size))
        comment = " ".join(f"{key}={value}" for key, value in _comment_fields(aggregate).items())
        lines.append("Properties=species:S:1:pos:R:3:radius:R:1:label:I:1:cluster:I:1 " + comment)
        for position, radius, label, cluster in zip(aggregate.positions, aggregate.radii,
                                                    aggregate.labels, aggregate.cluster_ids):
            lines.append(f"{_XYZ_SPECIES[int(label)]} {position[0]:.17g} {position[1]:.17g} "
                         f"{position[2]:.17g} {radius:.17g} {int(label)} {int(cluster)}")
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda stream: stream.write(text.encode()))


def read_xyz(path: str | os.PathLike) -> list[Aggregate]:
    """Reads frames written by ``export_xyz`` back into aggregates."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"XYZ file not found: {path}")
    lines = path.read_text().splitlines()
    aggregates, cursor = [], 0
    while cursor < len(lines) and lines[cursor].strip():
        try:
            count = int(lines[cursor])
            fields = dict(re.findall(r"(\w+)=(\S+)", lines[cursor + 1]))
            rows = [line.split() for line in lines[cursor + 2:cursor + 2 + count]]
            if len(rows) != count:
                raise ValueError(f"frame announces {count} particles, holds {len(rows)}")
            params = None
            if "theta_Df" in fields:
                params = ModelParameters(float(fields["theta_Df"]), float(fields["theta_rho"]),
                                         int(fields["theta_0"]), int(fields["theta_1"]))
            aggregates.append(Aggregate(
                positions=[[float(value) for value in row[1:4]] for row in rows],
                radii=[float(row[4]) for row in rows], labels=[int(row[5]) for row in rows],
                cluster_ids=[int(row[6]) for row in rows], params=params,
                seed=int(fields["seed"]) if "seed" in fields else None,
                index=int(fields["index"]) if "index" in fields else None,
                target_size=int(fields["target_size"]) if "target_size" in fields else None))
        except (ValueError, IndexError, KeyError) as error:
            raise AggregateFileError(f"{path}: line {cursor + 1}: not extended XYZ of hagg_tf "
                                     f"({error})") from error
        cursor += 2 + count
    return aggregates


def export_csv(path: str | os.PathLike, aggregates: Iterable[Aggregate]) -> Path:
    """Writes one row per particle (atomically), θ and seed of each aggregate in the header.

    Columns: aggregate, x_nm, y_nm, z_nm, radius_nm, label, material, cluster_id.
    """
    header = ["# hagg_tf aggregates; lengths in nm; label 0 = WO3, 1 = TiO2"]
    rows = ["aggregate,x_nm,y_nm,z_nm,radius_nm,label,material,cluster_id"]
    for number, aggregate in enumerate(aggregates):
        fields = " ".join(f"{key}={value}" for key, value in _comment_fields(aggregate).items())
        header.append(f"# aggregate {number}: {fields}")
        for position, radius, label, cluster in zip(aggregate.positions, aggregate.radii,
                                                    aggregate.labels, aggregate.cluster_ids):
            rows.append(f"{number},{position[0]:.17g},{position[1]:.17g},{position[2]:.17g},"
                        f"{radius:.17g},{int(label)},{MATERIAL_NAMES[int(label)]},{int(cluster)}")
    text = "\n".join(header + rows) + "\n"
    return atomic_write(path, lambda stream: stream.write(text.encode()))
