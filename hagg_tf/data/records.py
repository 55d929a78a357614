"""One database sample as a ``tf.train.Example``: the schema, the encoder and an exact reader.

A record holds everything about sample ``index``: the image the networks see, every label they
are trained on, and the aggregate itself, so that evaluation (digital shadows, descriptor
comparisons, error versus size) never regenerates anything.

Feature keys (``float`` features are float32 — protobuf's FloatList — for the pipeline; the
``…/float64`` byte features hold the exact values; all raw arrays are little-endian):

==========================  =========  =====================================================
key                         type       content
==========================  =========  =====================================================
index                       int64      sample index i: aggregate and image are drawn from
                                       (seed, i)
seed                        int64      base seed of the database
split                       bytes      ``train``, ``validation`` or ``evaluation``
theta_id                    int64      row of the manifest's ``thetas`` (θ configuration)
theta                       float ×4   (θ_Df, θ_ρ, θ_0, θ_1)
theta/float64               bytes      the same, 4 × float64
target/fractal_dimension    float      D_f(A), Eq. 5 (CNN^Df target)
target/mixing_ratio         float      ρ(A), Eq. 3 (CNN^ρ_reg target)
target/homogeneous          int64      1 if ρ(A) ∈ {0, 1} (CNN^ρ_class target), else 0
aggregate/size              int64      N, particles
aggregate/target_size       int64      the target N of the draw (−1: unknown)
aggregate/restarts          int64      restarts the draw needed
aggregate/positions         bytes      (N, 3) float64 particle centres, nm
aggregate/radii             bytes      (N,) float64 radii, nm
aggregate/labels            bytes      (N,) int8, 0 = WO3, 1 = TiO2
aggregate/cluster_ids       bytes      (N,) int32 primary cluster of each particle
descriptors/float64         bytes      7 × float64 in `DESCRIPTOR_FIELDS` order (NaN kept)
descriptors/connected       int64      1 if the contact graph is connected
image/png                   bytes      16-bit greyscale PNG of the detector counts
image/height, image/width   int64      pixels
image/electrons_per_pixel   float      incident electrons per pixel (for 1/p, Sec. 2.3.5)
image/pixel_size_nm         float      pixel edge, nm
image/dose_e_per_A2         float      electron dose, e/Å²
image/metadata              bytes      the renderer's metadata as JSON (exact floats)
==========================  =========  =====================================================

Records of a database with drawn imaging conditions (``DatasetConfig.conditions``, the
``realistic`` preset) hold four more (`CONDITION_FEATURE_KEYS`); the image is then stored on
the database's grid after resampling from the acquisition pixel size, and the ``image/…``
features above describe the grid:

===============================  =====  ===========================================================
key                              type   content
===============================  =====  ===========================================================
conditions/json                  bytes  JSON ``{"imaging": ImagingConditions.to_dict(), "generator":
                                        {radius_mean, radius_std, min_size, max_size}}``: the drawn
                                        conditions (acquisition pixel size and dose included)
image/dark_level                 float  counts of the detector's black level on the grid
image/beam_level                 float  counts of the unscattered beam minus the black level, on
                                        the grid; intensity = (counts − dark) / beam
image/acquisition_pixel_size_nm  float  pixel edge of the rendered (acquired) image, nm
===============================  =====  ===========================================================

The payload of a record (`compute_sample`) is computed without TensorFlow, so the generation
workers stay light; only the process that writes the shards imports TensorFlow to serialise.
Serialisation is deterministic (map fields sorted), so a shard's bytes depend only on its
content.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Iterator

import google_crc32c
import numpy as np

from hagg_tf.data.manifest import DatasetError
from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.descriptors import Descriptors, describe
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters

#: Order of the float64 descriptors in ``descriptors/float64``.
DESCRIPTOR_FIELDS = ("mixing_ratio", "radius_of_gyration", "fractal_dimension",
                     "tio2_cluster_size", "wo3_cluster_size", "hetero_coordination",
                     "total_coordination")
#: zlib level of the PNGs: 6 is Pillow's default (smaller than 1–3 and about as fast here).
PNG_COMPRESS_LEVEL = 6
#: zlib level of the PNGs of records with drawn imaging conditions (`encode_noisy_png16`).
NOISY_PNG_COMPRESS_LEVEL = 1

FEATURE_KEYS = (
    "index", "seed", "split", "theta_id", "theta", "theta/float64",
    "target/fractal_dimension", "target/mixing_ratio", "target/homogeneous",
    "aggregate/size", "aggregate/target_size", "aggregate/restarts", "aggregate/positions",
    "aggregate/radii", "aggregate/labels", "aggregate/cluster_ids",
    "descriptors/float64", "descriptors/connected",
    "image/png", "image/height", "image/width", "image/electrons_per_pixel",
    "image/pixel_size_nm", "image/dose_e_per_A2", "image/metadata",
)
#: The extra features of records with drawn imaging conditions (see the module docstring).
CONDITION_FEATURE_KEYS = ("conditions/json", "image/dark_level", "image/beam_level",
                          "image/acquisition_pixel_size_nm")


@dataclasses.dataclass(eq=False)
class Sample:
    """One database sample, exactly as stored.

    Attributes:
        index: sample index i.
        seed: base seed.
        split: split name.
        theta_id: configuration id (row of the manifest's ``thetas``).
        aggregate: the aggregate (arrays, θ, seed, index, target size, restarts).
        descriptors: its descriptors (``describe(aggregate)``).
        counts: (H, W) uint16 detector counts.
        metadata: the renderer's metadata dict.
        png: the PNG bytes of ``counts`` as stored.
        conditions: the drawn conditions (``{"imaging": …, "generator": …}``) of a record
            with drawn imaging conditions, else None.
    """

    index: int
    seed: int
    split: str
    theta_id: int
    aggregate: Aggregate
    descriptors: Descriptors
    counts: np.ndarray
    metadata: dict
    png: bytes = b""
    conditions: dict | None = None

    @property
    def theta(self) -> ModelParameters:
        return self.aggregate.params

    @property
    def electrons_per_pixel(self) -> float:
        return float(self.metadata["electrons_per_pixel"])

    @property
    def dark_level(self) -> float:
        """Counts of the detector's black level (0 for the paper's images)."""
        return float(self.metadata.get("dark_level", 0.0))

    @property
    def beam_level(self) -> float:
        """Counts of the unscattered beam minus the black level (the paper's images: the
        electrons per pixel): intensity = (counts − `dark_level`) / beam_level."""
        return float(self.metadata.get("beam_level", self.metadata["electrons_per_pixel"]))


def encode_png16(counts: np.ndarray) -> bytes:
    """16-bit greyscale PNG bytes of (H, W) uint16 counts (lossless)."""
    import imageio.v3 as iio

    counts = np.asarray(counts)
    if counts.dtype != np.uint16 or counts.ndim != 2:
        raise ValueError(f"counts must be a 2-D uint16 array, got {counts.dtype} {counts.shape}")
    return iio.imwrite("<bytes>", counts, extension=".png", compress_level=PNG_COMPRESS_LEVEL)


def encode_noisy_png16(counts: np.ndarray) -> bytes:
    """16-bit greyscale PNG bytes of (H, W) uint16 counts whose background is noise (lossless).

    For images with noise over the whole field (drawn imaging conditions), where Pillow's
    per-row filter search and zlib's match search cost most of the time and gain little: every
    row gets the PNG "Up" filter (difference to the row above, byte-wise, modulo 256) and zlib
    runs at level `NOISY_PNG_COMPRESS_LEVEL` with its run-length strategy: faster than Pillow
    at level 1 and no larger on such images (measured in docs/data.md, "The realistic
    preset"). The chunks are the minimal PNG: IHDR (16-bit
    greyscale, not interlaced), one IDAT, IEND; any PNG reader decodes them (`decode_png16`,
    ``tf.io.decode_png``).
    """
    import struct
    import zlib

    counts = np.asarray(counts)
    if counts.dtype != np.uint16 or counts.ndim != 2:
        raise ValueError(f"counts must be a 2-D uint16 array, got {counts.dtype} {counts.shape}")
    height, width = counts.shape
    rows = np.ascontiguousarray(counts, dtype=">u2").view(np.uint8).reshape(height, 2 * width)
    filtered = np.empty((height, 2 * width + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type "Up"
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps mod 256
    compressor = zlib.compressobj(NOISY_PNG_COMPRESS_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = compressor.compress(filtered.tobytes()) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def decode_png16(data: bytes) -> np.ndarray:
    """(H, W) uint16 counts from PNG bytes written by `encode_png16`."""
    import imageio.v3 as iio

    # Pillow only (it wrote the PNG): on bytes it cannot read, imageio would try every other
    # format's reader.
    counts = iio.imread(data, plugin="pillow", extension=".png")
    if counts.dtype != np.uint16 or counts.ndim != 2:
        raise ValueError(f"not a 16-bit greyscale PNG ({counts.dtype}, {counts.shape})")
    return counts


_TABLE_CACHE: dict = {}


def _tables(path: str | None):
    # Parsing a table file costs milliseconds; a worker renders thousands of images.
    from hagg_tf.stem import load_tables

    if path not in _TABLE_CACHE:
        _TABLE_CACHE[path] = load_tables(path)
    return _TABLE_CACHE[path]


@dataclasses.dataclass(frozen=True)
class SampleTask:
    """What a worker needs to compute sample ``index`` (picklable, TensorFlow-free)."""

    index: int
    theta_id: int
    theta: tuple[float, float, int, int]
    seed: int
    image_size: int
    pixel_size_nm: float
    dose: float
    min_size: int
    max_size: int
    tables_path: str | None
    #: Name of the domain randomization ranges (`DatasetConfig.conditions`), or None.
    conditions: str | None = None


def compute_sample(task: SampleTask) -> dict:
    """Draws the aggregate and renders the image of one sample (runs in worker processes).

    Returns:
        A dict of plain values and numpy arrays (see `encode_example`).
    """
    from hagg_tf.model.generator import sample_aggregate
    from hagg_tf.stem import render_stem

    if task.conditions is not None:
        return _compute_randomized_sample(task)
    params = ModelParameters(*task.theta)
    config = GeneratorConfig(min_size=task.min_size, max_size=task.max_size)
    aggregate = sample_aggregate(params, task.seed, task.index, config)
    image = render_stem(aggregate, seed=task.seed, index=task.index,
                        tables=_tables(task.tables_path), pixel_size_nm=task.pixel_size_nm,
                        image_size=task.image_size, dose=task.dose)
    return {"index": task.index, "seed": task.seed, "theta_id": task.theta_id,
            "aggregate": aggregate, "descriptors": describe(aggregate),
            "png": encode_png16(image.counts), "height": int(image.counts.shape[0]),
            "width": int(image.counts.shape[1]),
            "metadata_json": json.dumps(image.metadata, sort_keys=True)}


def _compute_randomized_sample(task: SampleTask) -> dict:
    """`compute_sample` with imaging conditions and generator settings drawn from (seed, i).

    The image is rendered at the drawn acquisition pixel size over the grid's field of view
    and resampled to the grid (``task.image_size`` pixels of ``task.pixel_size_nm``) with
    `hagg_tf.stem.resample.resample`, the resampling of a user's image at inference; the
    resampled counts are rounded to integers (16-bit; the quantisation, s.d. 0.29 counts, is far
    below the noise). Resampling keeps the dose per area, so on the grid the electrons per
    pixel, the black level and the beam level all scale with the pixel area.
    """
    from hagg_tf.data.randomization import (acquisition_pixels, condition_ranges,
                                            draw_conditions, generator_settings)
    from hagg_tf.model.generator import sample_aggregate
    from hagg_tf.stem import render_stem
    from hagg_tf.stem.render import MAX_COUNT
    from hagg_tf.stem.resample import resample

    imaging, generator = draw_conditions(task.seed, task.index, condition_ranges(task.conditions),
                                         image_size=task.image_size,
                                         grid_pixel_size_nm=task.pixel_size_nm)
    aggregate = sample_aggregate(ModelParameters(*task.theta), task.seed, task.index, generator)
    field_of_view = task.image_size * task.pixel_size_nm
    acquired_size = acquisition_pixels(field_of_view, imaging.pixel_size_nm)
    # Pixel size, dose and focus come from the conditions.
    image = render_stem(aggregate, seed=task.seed, index=task.index,
                        tables=_tables(task.tables_path), image_size=acquired_size,
                        conditions=imaging)
    acquired = image.metadata
    electrons = float(acquired["electrons_per_pixel"])
    # Drawn conditions equal to the defaults (possible in principle) add no levels: a plain image.
    dark = float(acquired.get("dark_level", 0.0))
    beam = float(acquired.get("beam_level", electrons))
    clipped = 0
    if acquired_size == task.image_size:
        counts, area_ratio = image.counts, 1.0
    else:
        zoom = task.image_size / acquired_size
        resampled, electrons = resample(image.counts, electrons, zoom)
        area_ratio = 1.0 / zoom ** 2
        counts = np.rint(resampled)
        clipped = int(np.count_nonzero(counts > MAX_COUNT))
        counts = np.minimum(counts, MAX_COUNT).astype(np.uint16)
    metadata = dict(acquired)
    metadata.update({
        "pixel_size_nm": float(task.pixel_size_nm),
        "image_size": [task.image_size, task.image_size],
        "electrons_per_pixel": float(electrons),
        "dark_level": dark * area_ratio,
        "beam_level": beam * area_ratio,
        "conditions": imaging.to_dict(),
        "generator": generator_settings(generator),
        "acquisition": {"pixel_size_nm": float(imaging.pixel_size_nm),
                        "image_size": [acquired_size, acquired_size],
                        "electrons_per_pixel": float(acquired["electrons_per_pixel"]),
                        "dark_level": dark, "beam_level": beam,
                        "resampled": acquired_size != task.image_size,
                        "clipped_after_resampling": clipped},
    })
    conditions_json = json.dumps({"imaging": imaging.to_dict(),
                                  "generator": generator_settings(generator)}, sort_keys=True)
    return {"index": task.index, "seed": task.seed, "theta_id": task.theta_id,
            "aggregate": aggregate, "descriptors": describe(aggregate),
            "png": encode_noisy_png16(counts),
            "height": int(counts.shape[0]), "width": int(counts.shape[1]),
            "metadata_json": json.dumps(metadata, sort_keys=True),
            "conditions_json": conditions_json}


def _little_endian(array: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def encode_example(payload: dict, split: str) -> bytes:
    """Serialises a `compute_sample` payload as a ``tf.train.Example`` (deterministic bytes)."""
    import tensorflow as tf

    aggregate: Aggregate = payload["aggregate"]
    descriptors: Descriptors = payload["descriptors"]
    metadata = json.loads(payload["metadata_json"])
    theta = np.array(aggregate.params.as_tuple(), dtype=np.float64)

    def ints(*values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def floats(*values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    def raw(data: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))

    feature = {
        "index": ints(payload["index"]),
        "seed": ints(payload["seed"]),
        "split": raw(split.encode()),
        "theta_id": ints(payload["theta_id"]),
        "theta": floats(*theta),
        "theta/float64": raw(_little_endian(theta, "f8")),
        "target/fractal_dimension": floats(descriptors.fractal_dimension),
        "target/mixing_ratio": floats(descriptors.mixing_ratio),
        "target/homogeneous": ints(descriptors.homogeneous),
        "aggregate/size": ints(aggregate.size),
        "aggregate/target_size": ints(-1 if aggregate.target_size is None
                                      else aggregate.target_size),
        "aggregate/restarts": ints(aggregate.restarts),
        "aggregate/positions": raw(_little_endian(aggregate.positions, "f8")),
        "aggregate/radii": raw(_little_endian(aggregate.radii, "f8")),
        "aggregate/labels": raw(_little_endian(aggregate.labels, "i1")),
        "aggregate/cluster_ids": raw(_little_endian(aggregate.cluster_ids, "i4")),
        "descriptors/float64": raw(_little_endian(
            np.array([getattr(descriptors, name) for name in DESCRIPTOR_FIELDS]), "f8")),
        "descriptors/connected": ints(descriptors.connected),
        "image/png": raw(payload["png"]),
        "image/height": ints(payload["height"]),
        "image/width": ints(payload["width"]),
        "image/electrons_per_pixel": floats(metadata["electrons_per_pixel"]),
        "image/pixel_size_nm": floats(metadata["pixel_size_nm"]),
        "image/dose_e_per_A2": floats(metadata["dose_e_per_A2"]),
        "image/metadata": raw(payload["metadata_json"].encode()),
    }
    expected_keys = FEATURE_KEYS
    if "conditions_json" in payload:
        feature.update({
            "conditions/json": raw(payload["conditions_json"].encode()),
            "image/dark_level": floats(metadata["dark_level"]),
            "image/beam_level": floats(metadata["beam_level"]),
            "image/acquisition_pixel_size_nm": floats(metadata["acquisition"]["pixel_size_nm"]),
        })
        expected_keys = FEATURE_KEYS + CONDITION_FEATURE_KEYS
    assert set(feature) == set(expected_keys)
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


class RecordError(DatasetError):
    """A record that does not follow the schema or the TFRecord framing; names the file."""


class CorruptRecordError(RecordError):
    """A TFRecord whose stored CRC does not match its bytes; names the file and byte offset."""


def decode_example(serialized: bytes, source: str = "<record>") -> Sample:
    """Parses one serialised record back into a `Sample` (exact arrays and metadata).

    Raises:
        RecordError: missing features or inconsistent sizes (message names ``source``).
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        features = tf.train.Example.FromString(serialized).features.feature
        def one_int(key):
            return int(features[key].int64_list.value[0])

        def raw(key):
            return bytes(features[key].bytes_list.value[0])

        size = one_int("aggregate/size")
        theta = np.frombuffer(raw("theta/float64"), dtype="<f8")
        positions = np.frombuffer(raw("aggregate/positions"), dtype="<f8").reshape(size, 3)
        radii = np.frombuffer(raw("aggregate/radii"), dtype="<f8")
        labels = np.frombuffer(raw("aggregate/labels"), dtype="i1")
        cluster_ids = np.frombuffer(raw("aggregate/cluster_ids"), dtype="<i4")
        values = np.frombuffer(raw("descriptors/float64"), dtype="<f8")
        target_size = one_int("aggregate/target_size")
        index, seed = one_int("index"), one_int("seed")
        aggregate = Aggregate(
            positions=positions.astype(np.float64), radii=radii.astype(np.float64),
            labels=labels.astype(np.int8), cluster_ids=cluster_ids.astype(np.int32),
            params=ModelParameters(float(theta[0]), float(theta[1]), int(theta[2]),
                                   int(theta[3])),
            seed=seed, index=index, target_size=None if target_size < 0 else target_size,
            restarts=one_int("aggregate/restarts"))
        descriptors = Descriptors(
            size=size, connected=bool(one_int("descriptors/connected")),
            **{name: float(value) for name, value in zip(DESCRIPTOR_FIELDS, values, strict=True)})
        png = raw("image/png")
        counts = decode_png16(png)
        height, width = one_int("image/height"), one_int("image/width")
        split, theta_id = raw("split").decode(), one_int("theta_id")
        metadata = json.loads(raw("image/metadata"))
        conditions = (json.loads(raw("conditions/json")) if "conditions/json" in features
                      else None)
    # A damaged PNG raises OSError or SyntaxError (Pillow), bad text UnicodeDecodeError or
    # JSONDecodeError (both ValueErrors).
    except (DecodeError, IndexError, ValueError, KeyError, OSError, SyntaxError) as error:
        raise RecordError(f"{source}: not a hagg_tf dataset record ({error})") from error
    if counts.shape != (height, width):
        raise RecordError(f"{source}: record {index} holds a {counts.shape} image, its header "
                          f"says {(height, width)}")
    return Sample(index=index, seed=seed, split=split, theta_id=theta_id, aggregate=aggregate,
                  descriptors=descriptors, counts=counts, metadata=metadata, png=png,
                  conditions=conditions)


#: Added to the rotated CRC-32C in the TFRecord format ("masked" CRCs, see `masked_crc32c`).
_CRC_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that the TFRecord format stores after a record's length and data.

    Masking (rotate right by 15 bits, add a constant) keeps the CRC of data that itself holds
    CRCs from being trivially related to them; it is TensorFlow's ``crc32c::Mask``.
    """
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def _check_crc(path: Path, number: int, offset: int, what: str, data: bytes,
               stored: bytes) -> None:
    if masked_crc32c(data) != int.from_bytes(stored, "little"):
        raise CorruptRecordError(f"{path}: record {number} at byte {offset}: the {what} does "
                                 "not match its CRC (the file is corrupt)")


def iter_tfrecord(path: str | Path) -> Iterator[bytes]:
    """The raw records of a TFRecord file, with both CRCs of every record checked.

    A TFRecord is ``length (uint64) · masked CRC of length · data · masked CRC of data``, all
    little-endian. Checking the length's CRC first means a damaged length is reported as such
    instead of sending the reader to a wrong place in the file.

    Raises:
        CorruptRecordError: a CRC mismatch (names the file, the record and its byte offset).
        RecordError: the file ends inside a record.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        offset, number = 0, 0
        while True:
            header = stream.read(12)
            if not header:
                return
            if len(header) < 12:
                raise RecordError(f"{path}: truncated record header at byte {offset}")
            _check_crc(path, number, offset, "length", header[:8], header[8:])
            length = int.from_bytes(header[:8], "little")
            data = stream.read(length)
            footer = stream.read(4)
            if len(data) < length or len(footer) < 4:
                raise RecordError(f"{path}: truncated record at byte {offset} (announces "
                                  f"{length} bytes, file ends first)")
            _check_crc(path, number, offset, "data", data, footer)
            offset += 16 + length
            number += 1
            yield data


def count_records(path: str | Path) -> int:
    """Number of records in a TFRecord file, walking the framing (lengths CRC-checked).

    Raises:
        CorruptRecordError: a record length that does not match its CRC.
        RecordError: the file ends inside a record.
    """
    path = Path(path)
    size = path.stat().st_size
    count, offset = 0, 0
    with open(path, "rb") as stream:
        while offset < size:
            stream.seek(offset)
            header = stream.read(12)
            if len(header) < 12:
                raise RecordError(f"{path}: truncated record header at byte {offset}")
            _check_crc(path, count, offset, "length", header[:8], header[8:])
            end = offset + 16 + int.from_bytes(header[:8], "little")
            if end > size:
                raise RecordError(f"{path}: truncated record at byte {offset} (the file ends "
                                  f"at byte {size}, the record at byte {end})")
            offset = end
            count += 1
    return count


def read_samples(path: str | Path) -> Iterator[Sample]:
    """All samples of one shard file, in record order (exact; for evaluation and tests)."""
    for number, serialized in enumerate(iter_tfrecord(path)):
        yield decode_example(serialized, f"{path} (record {number})")


def descriptors_equal(first: Descriptors, second: Descriptors) -> bool:
    """Field-wise equality that treats NaN == NaN (S_TiO2 of an aggregate without TiO2)."""
    for field in dataclasses.fields(Descriptors):
        a, b = getattr(first, field.name), getattr(second, field.name)
        if isinstance(a, float) and math.isnan(a):
            if not (isinstance(b, float) and math.isnan(b)):
                return False
        elif a != b:
            return False
    return True
