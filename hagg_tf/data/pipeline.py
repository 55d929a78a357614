"""tf.data input pipelines that stream the database into the paper's networks (Sec. 2.2.2, 2.3).

Three shapes of sample:

* `single_image_dataset` — one image, a scalar target: D_f(A) for CNN^Df, ρ(A) for CNN^ρ_reg.
  Elements ``(images (b, H, W, 1), targets (b, 1))``.
* `classification_dataset` — one image, the homogeneity class (1: ρ(A) ∈ {0, 1}) for
  CNN^ρ_class; in training the homogeneous images (about 10 %) are oversampled so that both
  classes are equally frequent in every epoch (Sec. 2.3.3).
* `multi_image_dataset` — ν images of one θ, target θ_0 (CNN^0) or θ_1 (CNN^1, whose images
  get the 1/p transform of Sec. 2.3.5 with t = 0.001). Elements
  ``(images (b, ν, H, W, 1), targets (b, 1))``.

Every pipeline: verify the shards against the manifest (`verify_dataset`), read the shards
with parallel interleaving, parse, (training: shuffle), decode the 16-bit PNG, (training:
augment, see `hagg_tf.data.augment`), preprocess with `hagg_tf.data.preprocessing` (scale
to [−0.5, 0.5], 256 levels; 1/p first where asked), batch, prefetch. tf.data checks the CRCs of
every record it reads, but its ``tf.errors.DataLossError`` ("corrupted record at …") names no
file: `corrupt_shard_error` finds the shard and names it.

Training mode (default for the ``train`` split) produces ``epochs`` epochs one after another
(None: endless); epoch e reads the shards in an order and shuffles with a seed drawn from
(seed, e), and augments sample j of epoch e with a stateless seed from (seed, e, j). A run is
therefore repeatable exactly, and epochs differ. Each epoch is cut to whole batches of the same
number of samples (`epoch_size`), so pass ``steps_per_epoch=epoch_size(...).steps`` to
``model.fit``. Evaluation mode (other splits): one pass in stored order, no augmentation, the
last partial batch kept.

Grouping for the multi-image samples: ``group_by_window`` keyed by theta_id over the shuffled
record stream emits ν images of one θ as soon as ν have arrived; each θ with n images in the
epoch gives ⌊n/ν⌋ samples (27 training images per θ, ν = 12: 2 samples, 3 images left over,
other ones each epoch). Only the PNG bytes of waiting images are held (≤ C·(ν−1) of them).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf

from hagg_tf.data.augment import NO_AUGMENTATION, Augmentation, augment_image, sample_seed
from hagg_tf.data.design import expected_multi_image_samples
from hagg_tf.data.manifest import (DatasetError, load_manifest, parse_splits, shard_paths,
                                   verify_dataset)
from hagg_tf.data.network_specs import (DEFAULT_NUM_IMAGES, MULTI_IMAGE_BATCH_SIZE,
                                        NETWORK_SPECS, SAMPLE_KINDS, SINGLE_IMAGE_BATCH_SIZE,
                                        network_spec)
from hagg_tf.data.preprocessing import INVERSION_THRESHOLD, preprocess_images
from hagg_tf.data.records import RecordError, iter_tfrecord

#: Targets of the single-image pipeline: per-image label → record feature (the regressors'
#: labels of the registry; the classifier's class is `classification_dataset`'s).
SINGLE_IMAGE_TARGETS = {spec.image_label: f"target/{spec.image_label}"
                        for spec in NETWORK_SPECS.values() if spec.sample_kind == "single"}
#: Targets of the multi-image pipeline: name → position in θ = (θ_Df, θ_ρ, θ_0, θ_1).
MULTI_IMAGE_TARGETS = {spec.name: spec.theta_column
                       for spec in NETWORK_SPECS.values() if spec.sample_kind == "multi"}
_CLASS_FEATURE = "target/" + next(spec.image_label for spec in NETWORK_SPECS.values()
                                  if spec.sample_kind == "classification")
DEFAULT_SHUFFLE_BUFFER = 2048
# Separate seed streams for file order and record shuffling of an epoch.
_FILE_ORDER_STREAM, _SHUFFLE_STREAM = 0x46494C45, 0x53485546

_PARSE_SPEC = {
    "index": tf.io.FixedLenFeature([], tf.int64),
    "theta_id": tf.io.FixedLenFeature([], tf.int64),
    "theta": tf.io.FixedLenFeature([4], tf.float32),
    "target/fractal_dimension": tf.io.FixedLenFeature([], tf.float32),
    "target/mixing_ratio": tf.io.FixedLenFeature([], tf.float32),
    "target/homogeneous": tf.io.FixedLenFeature([], tf.int64),
    "image/png": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/electrons_per_pixel": tf.io.FixedLenFeature([], tf.float32),
    # Records with drawn imaging conditions only (`hagg_tf.data.records`); 0 elsewhere, where
    # the black level is 0 and the beam level is the electrons per pixel.
    "image/dark_level": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
    "image/beam_level": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
}


@dataclasses.dataclass(frozen=True)
class EpochSize:
    """Samples and batches per epoch of a pipeline.

    Attributes:
        samples: samples per epoch (training: a multiple of the batch size).
        steps: batches per epoch (pass as ``steps_per_epoch`` to ``model.fit``).
        batch_size: samples per batch.
    """

    samples: int
    steps: int
    batch_size: int


@dataclasses.dataclass(frozen=True)
class _Source:
    manifest: dict
    files: list[str]
    records: int
    homogeneous: int
    per_theta: np.ndarray
    height: int
    width: int


def _source(path, splits, verify: str) -> _Source:
    names = parse_splits(splits)
    manifest = verify_dataset(path, level=verify, splits=names)
    infos = [manifest["splits"][name] for name in names]
    return _Source(manifest=manifest, files=[str(p) for p in shard_paths(manifest, names)],
                   records=sum(info["records"] for info in infos),
                   homogeneous=sum(info["homogeneous"] for info in infos),
                   per_theta=np.sum([info["per_theta"] for info in infos], axis=0),
                   height=int(manifest["image"]["height"]), width=int(manifest["image"]["width"]))


def _default_training(splits) -> bool:
    return parse_splits(splits) == ["train"]


def _epoch_seed(seed: int, epoch, stream: int):
    """Stateless seed (shape [2]) of one random stream of one epoch."""
    base = tf.constant([int(seed) & 0x7FFFFFFF, stream], tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))


def _block_shuffle(dataset, block_size: int, seed):
    """Shuffles within consecutive blocks of ``block_size`` elements, statelessly.

    Used instead of ``Dataset.shuffle``, whose seeds are combined with TensorFlow's global seed:
    the order would change with ``tf.random.set_seed`` / ``keras.utils.set_random_seed`` (and
    a global seed of 0 with a seed tensor fails to build). Here the order is a function of
    ``seed`` alone. The shards are stored in random order already, so shuffling blocks of the
    interleaved stream is enough to make every epoch's order new.
    """
    def shuffle(block_number, block):
        size = tf.shape(tf.nest.flatten(block)[0])[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size), tf.random.experimental.stateless_fold_in(seed, block_number))
        return tf.data.Dataset.from_tensor_slices(
            tf.nest.map_structure(lambda values: tf.gather(values, order), block))

    return dataset.batch(block_size).enumerate().flat_map(shuffle)


def _records(source: _Source, epoch, seed: int, training: bool, parallel_reads: int):
    """Parsed records of one pass over the files: dicts with the ``file`` they came from."""
    files = tf.constant(source.files)
    if training:
        files = tf.random.experimental.stateless_shuffle(
            files, _epoch_seed(seed, epoch, _FILE_ORDER_STREAM))
    files = tf.data.Dataset.from_tensor_slices(files)
    height, width = source.height, source.width

    def read(file):
        return tf.data.TFRecordDataset(file).map(lambda record: (file, record))

    def parse(file, record):
        features = tf.io.parse_single_example(record, _PARSE_SPEC)
        header_ok = tf.logical_and(tf.equal(features["image/height"], height),
                                   tf.equal(features["image/width"], width))
        check = tf.debugging.Assert(header_ok, [
            "record of the wrong image size in", file, "sample", features["index"], "is",
            features["image/height"], features["image/width"], "; the manifest says",
            height, width])
        with tf.control_dependencies([check]):
            features["file"] = tf.identity(file)
        return features

    records = files.interleave(read, cycle_length=max(1, min(parallel_reads, len(source.files))),
                               block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=True)
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _decode(png, file, index, height: int, width: int):
    """(H, W) float32 counts of one PNG, checked against the manifest's image size."""
    counts = tf.io.decode_png(png, channels=1, dtype=tf.uint16)
    shape = tf.shape(counts)
    check = tf.debugging.Assert(
        tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width)),
        ["image of the wrong size in", file, "sample", index, "is", shape[0], shape[1],
         "; the manifest says", height, width])
    with tf.control_dependencies([check]):
        image = tf.cast(counts[:, :, 0], tf.float32)
    return tf.ensure_shape(image, [height, width])


def _prepare_image(png, file, index, electrons_per_pixel, seed, source: _Source,
                   augmentation: Augmentation, inversion_threshold, dark_level=0.0,
                   beam_level=0.0):
    """Decoded, augmented, preprocessed (H, W, 1) image of one record.

    The intensity the 1/p inversion thresholds is (counts − dark_level) / beam_level, the
    quantitative-STEM normalization; ``beam_level`` 0 (records without drawn conditions) means
    ``electrons_per_pixel`` and a black level of 0, i.e. p = counts / electrons_per_pixel. The
    subtraction changes nothing else: the min–max scaling that follows ignores offsets.
    """
    image = _decode(png, file, index, source.height, source.width)
    if augmentation.enabled:
        image = augment_image(image, seed, augmentation)
    beam = tf.where(beam_level > 0, beam_level, electrons_per_pixel)
    image = preprocess_images(image - dark_level, beam, inversion_threshold=inversion_threshold)
    return image[:, :, tf.newaxis]


def _finish(epoch_stream, source: _Source, epochs, training: bool, prepare, batch_size: int,
            per_epoch: int):
    """Epoch loop, per-sample preparation in parallel, batching, prefetch."""
    if training:
        def epoch_of(epoch):
            return (epoch_stream(epoch).take(per_epoch).enumerate()
                    .map(lambda position, element: (epoch, position, element)))

        counter = tf.data.Dataset.range(epochs) if epochs is not None else \
            tf.data.Dataset.range(2 ** 62)
        stream = counter.flat_map(epoch_of)
    else:
        stream = epoch_stream(tf.constant(0, tf.int64)).enumerate().map(
            lambda position, element: (tf.constant(0, tf.int64), position, element))
    stream = stream.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    batches = stream.batch(batch_size, drop_remainder=training,
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # The length is known from the manifest; declaring it lets Keras size its progress and stop
    # cleanly, and tf.data checks it at the end of the data.
    if training:
        length = tf.data.INFINITE_CARDINALITY if epochs is None else epochs * (
            per_epoch // batch_size)
    else:
        length = math.ceil(per_epoch / batch_size)
    return (batches.apply(tf.data.experimental.assert_cardinality(length))
            .prefetch(tf.data.AUTOTUNE).with_options(options))


def _check_common(batch_size: int, shuffle_buffer: int, epochs):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1 or None, got {epochs}")


def single_image_dataset(path, target: str = "fractal_dimension", split="train", *,
                         training: bool | None = None, batch_size: int = SINGLE_IMAGE_BATCH_SIZE,
                         seed: int = 0, epochs: int | None = None,
                         augmentation: Augmentation | None = None,
                         inverse_intensities: bool = False,
                         shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, parallel_reads: int = 16,
                         verify: str = "checksum", with_info: bool = False) -> tf.data.Dataset:
    """One image per sample with a scalar target (CNN^Df, CNN^ρ_reg).

    Args:
        path: database directory (with ``manifest.json``).
        target: ``"fractal_dimension"`` (D_f(A)) or ``"mixing_ratio"`` (ρ(A)).
        split: ``"train"``, ``"validation"``, ``"evaluation"`` or a '+'-join
            (``"train+validation"`` is the paper's T).
        training: shuffle, augment and loop over epochs; default: True for ``"train"`` only.
        batch_size: images per batch (16 in the paper).
        seed: seed of shuffling and augmentation.
        epochs: training epochs to produce (None: endless); ignored in evaluation mode.
        augmentation: training augmentation (default `Augmentation()`: 90° rotations, flips,
            shifts ≤ 5 %); ignored in evaluation mode.
        inverse_intensities: apply the 1/p transform (t = 0.001) before scaling.
        shuffle_buffer: records per shuffled block (training).
        parallel_reads: shards read at once.
        verify: check of the files against the manifest first: ``"checksum"``, ``"size"`` or
            ``"none"`` (see `verify_dataset`).
        with_info: add a third element, a dict with per-image ``index``, ``theta_id`` and
            ``homogeneous`` (for inspection; Keras would take it for sample weights).

    Returns:
        ``tf.data.Dataset`` of ``(images (b, H, W, 1) float32, targets (b, 1) float32)``.

    Raises:
        DatasetError: the files do not match the manifest (names the file).
        ValueError: unknown target or split, bad numbers.
    """
    if target not in SINGLE_IMAGE_TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {sorted(SINGLE_IMAGE_TARGETS)}")
    training = _default_training(split) if training is None else training
    _check_common(batch_size, shuffle_buffer, epochs)
    source = _source(path, split, verify)
    return _single_image_pipeline(source, SINGLE_IMAGE_TARGETS[target], training, batch_size,
                                  seed, epochs, augmentation, inverse_intensities, shuffle_buffer,
                                  parallel_reads, with_info, oversample=False)


def classification_dataset(path, split="train", *, training: bool | None = None,
                           oversample: bool | None = None,
                           batch_size: int = SINGLE_IMAGE_BATCH_SIZE, seed: int = 0,
                           epochs: int | None = None, augmentation: Augmentation | None = None,
                           shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                           parallel_reads: int = 16, verify: str = "checksum",
                           with_info: bool = False) -> tf.data.Dataset:
    """One image per sample with its class, 1 = homogeneous (ρ(A) ∈ {0, 1}) (CNN^ρ_class).

    Oversampling (default: in training) repeats the m homogeneous images of an epoch so that
    they fill as many samples as the n heterogeneous ones: the k-th homogeneous image read is
    used ⌊(k+1)n/m⌋ − ⌊kn/m⌋ times (exactly n in total), each copy augmented differently, then
    everything is shuffled. An epoch has 2n samples (cut to whole batches).

    Args:
        oversample: balance the classes (default: same as ``training``).
        Others as in `single_image_dataset`.

    Returns:
        ``tf.data.Dataset`` of ``(images (b, H, W, 1) float32, labels (b, 1) float32)``.

    Raises:
        ValueError: oversampling asked for but a class is absent from the split.
    """
    training = _default_training(split) if training is None else training
    oversample = training if oversample is None else oversample
    _check_common(batch_size, shuffle_buffer, epochs)
    source = _source(path, split, verify)
    if oversample and (source.homogeneous == 0 or source.homogeneous == source.records):
        raise ValueError(f"cannot balance classes: split {split!r} holds {source.homogeneous} "
                         f"homogeneous images of {source.records}")
    return _single_image_pipeline(source, _CLASS_FEATURE, training, batch_size, seed,
                                  epochs, augmentation, False, shuffle_buffer, parallel_reads,
                                  with_info, oversample=oversample)


def _oversample(records, source: _Source):
    """Repeats homogeneous records so that both classes are equally frequent (see above)."""
    heterogeneous = source.records - source.homogeneous
    homogeneous = source.homogeneous

    def count(rank, element):
        is_homogeneous = tf.equal(element["target/homogeneous"], 1)
        repeats = tf.where(is_homogeneous,
                           (rank + 1) * heterogeneous // homogeneous
                           - rank * heterogeneous // homogeneous,
                           tf.constant(1, tf.int64))
        return rank + tf.cast(is_homogeneous, tf.int64), (element, repeats)

    return (records.scan(tf.constant(0, tf.int64), count)
            .flat_map(lambda element, repeats: tf.data.Dataset.from_tensors(element)
                      .repeat(repeats)))


def _single_image_pipeline(source: _Source, target_key: str, training: bool, batch_size: int,
                           seed: int, epochs, augmentation, inverse_intensities: bool,
                           shuffle_buffer: int, parallel_reads: int, with_info: bool,
                           oversample: bool):
    augmentation = (augmentation or Augmentation()) if training else NO_AUGMENTATION
    threshold = INVERSION_THRESHOLD if inverse_intensities else None
    per_epoch = 2 * (source.records - source.homogeneous) if oversample else source.records
    if training:
        per_epoch = (per_epoch // batch_size) * batch_size
        if per_epoch == 0:
            raise ValueError(f"an epoch holds fewer samples than one batch of {batch_size}")

    def epoch_stream(epoch):
        records = _records(source, epoch, seed, training, parallel_reads)
        if oversample:
            records = _oversample(records, source)
        if training:
            records = _block_shuffle(records, shuffle_buffer,
                                     _epoch_seed(seed, epoch, _SHUFFLE_STREAM))
        return records

    def prepare(epoch, position, element):
        image = _prepare_image(element["image/png"], element["file"], element["index"],
                               element["image/electrons_per_pixel"],
                               sample_seed(seed, epoch, position), source, augmentation,
                               threshold, element["image/dark_level"],
                               element["image/beam_level"])
        label = tf.reshape(tf.cast(element[target_key], tf.float32), [1])
        if not with_info:
            return image, label
        return image, label, {"index": element["index"], "theta_id": element["theta_id"],
                              "homogeneous": element["target/homogeneous"]}

    return _finish(epoch_stream, source, epochs, training, prepare, batch_size, per_epoch)


def multi_image_dataset(path, target: str = "wo3_cluster_size", split="train", *,
                        num_images: int = DEFAULT_NUM_IMAGES, training: bool | None = None,
                        batch_size: int = MULTI_IMAGE_BATCH_SIZE, seed: int = 0,
                        epochs: int | None = None, augmentation: Augmentation | None = None,
                        inverse_intensities: bool | None = None,
                        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, parallel_reads: int = 16,
                        verify: str = "checksum", with_info: bool = False) -> tf.data.Dataset:
    """ν images of one θ per sample, target θ_0 (CNN^0) or θ_1 (CNN^1).

    Args:
        target: ``"wo3_cluster_size"`` (θ_0) or ``"tio2_cluster_size"`` (θ_1).
        num_images: ν, images per sample (12 in the paper).
        inverse_intensities: 1/p transform before scaling; default: True for θ_1 (Sec. 2.3.5).
        batch_size: samples per batch (8 in the paper).
        with_info: add a dict with (b, ν) ``index`` and ``theta_id`` of every image.
        Others as in `single_image_dataset`; each image of a sample is augmented with its own
        seed.

    Returns:
        ``tf.data.Dataset`` of ``(images (b, ν, H, W, 1) float32, targets (b, 1) float32)``.

    Raises:
        ValueError: no θ of the split has ν images.
    """
    if target not in MULTI_IMAGE_TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {sorted(MULTI_IMAGE_TARGETS)}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    training = _default_training(split) if training is None else training
    _check_common(batch_size, shuffle_buffer, epochs)
    if inverse_intensities is None:
        inverse_intensities = network_spec(target).invert_intensities
    source = _source(path, split, verify)
    augmentation = (augmentation or Augmentation()) if training else NO_AUGMENTATION
    threshold = INVERSION_THRESHOLD if inverse_intensities else None
    theta_position = MULTI_IMAGE_TARGETS[target]
    per_epoch = expected_multi_image_samples(source.per_theta, num_images)
    if per_epoch == 0:
        raise ValueError(f"no θ has {num_images} images in split {split!r} (at most "
                         f"{int(source.per_theta.max())})")
    if training:
        per_epoch = (per_epoch // batch_size) * batch_size
        if per_epoch == 0:
            raise ValueError(f"an epoch holds fewer samples than one batch of {batch_size}")
    compact_keys = ("image/png", "file", "index", "theta_id", "theta",
                    "image/electrons_per_pixel", "image/dark_level", "image/beam_level")

    def epoch_stream(epoch):
        records = _records(source, epoch, seed, training, parallel_reads)
        # Only what a sample needs waits in the windows (not the aggregate, not the labels).
        records = records.map(lambda element: {key: element[key] for key in compact_keys})
        if training:
            records = _block_shuffle(records, shuffle_buffer,
                                     _epoch_seed(seed, epoch, _SHUFFLE_STREAM))
        groups = records.group_by_window(
            key_func=lambda element: element["theta_id"],
            reduce_func=lambda key, window: window.batch(num_images), window_size=num_images)
        return groups.filter(lambda group: tf.equal(tf.shape(group["index"])[0], num_images))

    def prepare(epoch, position, group):
        slots = tf.range(num_images, dtype=tf.int64)

        def one(slot):
            return _prepare_image(group["image/png"][slot], group["file"][slot],
                                  group["index"][slot], group["image/electrons_per_pixel"][slot],
                                  sample_seed(seed, epoch, position, slot), source, augmentation,
                                  threshold, group["image/dark_level"][slot],
                                  group["image/beam_level"][slot])

        images = tf.map_fn(one, slots, fn_output_signature=tf.TensorSpec(
            [source.height, source.width, 1], tf.float32))
        label = tf.reshape(group["theta"][0, theta_position], [1])
        if not with_info:
            return images, label
        return images, label, {"index": group["index"], "theta_id": group["theta_id"]}

    return _finish(epoch_stream, source, epochs, training, prepare, batch_size, per_epoch)


def network_dataset(path, network: str, split="train", **kwargs) -> tf.data.Dataset:
    """The pipeline of one of the paper's networks, by its name in `hagg_tf.networks`.

    ``"fractal_dimension"`` and ``"mixing_ratio_regressor"`` → `single_image_dataset`,
    ``"mixing_ratio_classifier"`` → `classification_dataset`, ``"wo3_cluster_size"`` and
    ``"tio2_cluster_size"`` → `multi_image_dataset` (θ_1 with inverse intensities); batch
    sizes from the network's spec unless given. ``kwargs`` go to that function.
    """
    spec = network_spec(network)
    kwargs.setdefault("batch_size", spec.batch_size)
    if spec.sample_kind == "single":
        return single_image_dataset(path, spec.image_label, split, **kwargs)
    if spec.sample_kind == "classification":
        return classification_dataset(path, split, **kwargs)
    kwargs.setdefault("inverse_intensities", spec.invert_intensities)
    return multi_image_dataset(path, spec.name, split, **kwargs)


def epoch_size(path, network_or_kind: str, split="train", *, batch_size: int | None = None,
               num_images: int = DEFAULT_NUM_IMAGES, training: bool | None = None,
               oversample: bool | None = None) -> EpochSize:
    """Samples and batches per epoch of a pipeline (manifest only; no data read).

    Args:
        network_or_kind: a network name (see `network_dataset`) or ``"single"``,
            ``"classification"``, ``"multi"``.
        Others as in the dataset functions.
    """
    from hagg_tf.data.manifest import load_manifest

    kinds = {**{name: spec.sample_kind for name, spec in NETWORK_SPECS.items()},
             **{kind: kind for kind in SAMPLE_KINDS}}
    if network_or_kind not in kinds:
        raise ValueError(f"unknown network or kind {network_or_kind!r}; choose one of "
                         f"{sorted(kinds)}")
    kind = kinds[network_or_kind]
    if batch_size is None:
        batch_size = MULTI_IMAGE_BATCH_SIZE if kind == "multi" else SINGLE_IMAGE_BATCH_SIZE
    training = _default_training(split) if training is None else training
    manifest = load_manifest(path)
    infos = [manifest["splits"][name] for name in parse_splits(split)]
    records = sum(info["records"] for info in infos)
    homogeneous = sum(info["homogeneous"] for info in infos)
    if kind == "single":
        samples = records
    elif kind == "classification":
        samples = 2 * (records - homogeneous) if (training if oversample is None
                                                  else oversample) else records
    else:
        samples = expected_multi_image_samples(np.sum([info["per_theta"] for info in infos],
                                                      axis=0), num_images)
    if training:
        samples = (samples // batch_size) * batch_size
        return EpochSize(samples, samples // batch_size, batch_size)
    return EpochSize(samples, math.ceil(samples / batch_size), batch_size)


def corrupt_shard_error(path, splits=None) -> DatasetError:
    """The error naming the damaged shard of a database whose pipeline hit a DataLossError.

    Walks the shards' records with their CRCs checked (`iter_tfrecord`), in manifest order.

    Args:
        path: database directory.
        splits: the splits read (default: all).

    Returns:
        The first shard's `RecordError` (file, record, byte offset), or a `DatasetError` saying
        that every shard reads cleanly now.
    """
    manifest = load_manifest(path)
    for shard in shard_paths(manifest, splits or list(manifest["splits"])):
        try:
            for _ in iter_tfrecord(shard):
                pass
        except RecordError as error:
            return error
    return DatasetError(f"{path}: TensorFlow reported a corrupt record, but every shard's "
                        "records check out now (did a file change while it was read?)")
