"""The tf.data pipelines: preprocessing, augmentation, sample shapes, balance, repeatability."""

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

tf = pytest.importorskip("tensorflow")

from hagg_tf import data  # noqa: E402
from hagg_tf.data import records  # noqa: E402
from hagg_tf.data.manifest import file_sha256  # noqa: E402
from hagg_tf.data.augment import (NO_AUGMENTATION, Augmentation, augment_image,  # noqa: E402
                                  sample_seed)
from hagg_tf.networks import (INVERSION_THRESHOLD, build_network, compile_network,  # noqa: E402
                              minimum_image_size, preprocess_images_numpy)

# Networks need ≥ 156 pixels; the pipelines themselves would run at any size.
IMAGE_SIZE = minimum_image_size()


@pytest.fixture(scope="module")
def db(tiny_synthetic_database):
    """The tiny preset at IMAGE_SIZE with synthetic HAADF tables (tests/conftest.py)."""
    return tiny_synthetic_database


@pytest.fixture(scope="module")
def stored(db):
    """index → Sample of every record."""
    return {sample.index: sample for path in sorted(db.glob("*.tfrecord"))
            for sample in records.read_samples(path)}


def _batches(dataset):
    return [tuple(item.numpy() if not isinstance(item, dict) else
                  {key: value.numpy() for key, value in item.items()} for item in batch)
            for batch in dataset]


# --- augmentation on synthetic images -------------------------------------------------------

def _blobs(size=64, touching_top=False):
    image = np.zeros((size, size), np.float32)
    image[20:26, 15:30] = 7.0   # a bar
    image[40:44, 40:43] = 3.0   # a small block
    image[30, 50] = 11.0        # a single bright pixel
    if touching_top:
        image[0:4, 5:9] = 5.0
    return image


def _component_sizes(image):
    labels, count = ndimage.label(image > image.min())
    return sorted(np.bincount(labels.ravel())[1:].tolist())


def _dihedral(image):
    return [np.rot90(flipped, k) for flipped in (image, image[:, ::-1]) for k in range(4)]


def test_rotations_and_flips_are_exact_symmetries_and_all_occur():
    image = _blobs()
    transforms = _dihedral(image)
    seen = set()
    for position in range(64):
        out = augment_image(image, sample_seed(3, 0, position),
                            Augmentation(max_shift_fraction=0.0)).numpy()
        matches = [k for k, candidate in enumerate(transforms) if np.array_equal(out, candidate)]
        assert matches, "not one of the 8 symmetries of the square"
        seen.add(matches[0])
    assert seen == set(range(8))


@pytest.mark.parametrize("touching_top", [False, True])
def test_augmentation_preserves_histogram_and_particle_sizes(touching_top):
    image = _blobs(touching_top=touching_top)
    shifts = set()
    for position in range(60):
        out = augment_image(image, sample_seed(5, 1, position),
                            Augmentation(max_shift_fraction=0.1)).numpy()
        assert np.array_equal(np.sort(out.ravel()), np.sort(image.ravel()))  # histogram
        assert _component_sizes(out) == _component_sizes(image)  # nothing cut or wrapped
        # The content is a symmetry of the original, translated by at most 10 % (6 px).
        rows, cols = np.nonzero(out)
        for candidate in _dihedral(image):
            r, c = np.nonzero(candidate)
            shift = (rows.min() - r.min(), cols.min() - c.min())
            if np.array_equal(np.roll(candidate, shift, axis=(0, 1)), out):
                assert max(abs(shift[0]), abs(shift[1])) <= 6
                shifts.add(shift)
                break
        else:
            pytest.fail("augmented image is not a translated symmetry of the original")
    assert len(shifts) > 10  # shifts really vary


def test_shift_never_moves_a_border_particle_out():
    image = _blobs(touching_top=True)
    vertical = set()
    for position in range(40):
        out = augment_image(image, sample_seed(0, 0, position),
                            Augmentation(rotate90=False, flip=False,
                                         max_shift_fraction=0.2)).numpy()
        assert np.array_equal(np.sort(out.ravel()), np.sort(image.ravel()))
        rows, cols = np.nonzero(out)
        shift = (rows.min() - 0, cols.min() - 5)  # the top particle's corner was (0, 5)
        assert np.array_equal(np.roll(image, shift, axis=(0, 1)), out)
        assert shift[0] >= 0  # it touches the top: it can only move down
        vertical.add(shift[0])
    assert len(vertical) > 3


def test_arbitrary_rotation_keeps_shape_and_mass():
    image = _blobs()
    out = augment_image(image, sample_seed(1, 0, 0),
                        Augmentation(arbitrary_rotation=True, max_shift_fraction=0.0)).numpy()
    assert out.shape == image.shape and out.min() >= 0.0
    assert out.sum() == pytest.approx(image.sum(), rel=0.05)


def test_augmentation_is_a_function_of_the_seed():
    image = _blobs()
    first = augment_image(image, sample_seed(7, 2, 9)).numpy()
    again = augment_image(image, sample_seed(7, 2, 9)).numpy()
    assert np.array_equal(first, again)
    others = [augment_image(image, sample_seed(7, epoch, 9)).numpy() for epoch in range(3, 9)]
    assert any(not np.array_equal(first, other) for other in others)


# --- pipelines on a generated database ------------------------------------------------------

def test_evaluation_images_are_the_papers_preprocessing_of_the_stored_counts(db, stored):
    dataset = data.single_image_dataset(db, "mixing_ratio", "evaluation", batch_size=5,
                                        with_info=True)
    assert dataset.element_spec[0].shape.as_list() == [None, IMAGE_SIZE, IMAGE_SIZE, 1]
    seen = []
    for images, targets, info in _batches(dataset):
        for image, target, index in zip(images, targets, info["index"]):
            sample = stored[int(index)]
            expected = preprocess_images_numpy(sample.counts)
            assert np.array_equal(image[:, :, 0], expected)
            assert image.min() == -0.5 and image.max() == 0.5
            assert len(np.unique(image)) <= 256
            assert target[0] == np.float32(sample.descriptors.mixing_ratio)
            seen.append(int(index))
    assert sorted(seen) == sorted(i for i, s in stored.items() if s.split == "evaluation")


def test_inverse_intensities_for_theta_1(db, stored):
    dataset = data.multi_image_dataset(db, "tio2_cluster_size", "evaluation", num_images=3,
                                       batch_size=2, with_info=True)
    images, targets, info = _batches(dataset)[0]
    sample = stored[int(info["index"][0, 0])]
    expected = preprocess_images_numpy(sample.counts, sample.electrons_per_pixel,
                                       inversion_threshold=INVERSION_THRESHOLD)
    assert np.array_equal(images[0, 0, :, :, 0], expected)
    assert not np.array_equal(expected, preprocess_images_numpy(sample.counts))
    assert targets[0, 0] == sample.aggregate.params.tio2_cluster_size


def test_training_epochs_cover_the_split_once_and_differ(db, stored):
    dataset = data.single_image_dataset(db, "fractal_dimension", batch_size=4, seed=3,
                                        epochs=2, with_info=True)
    size = data.epoch_size(db, "fractal_dimension", batch_size=4)
    batches = _batches(dataset)
    assert len(batches) == 2 * size.steps and size.samples == 24
    train = sorted(i for i, s in stored.items() if s.split == "train")
    epochs = [batches[:size.steps], batches[size.steps:]]
    orders = []
    for epoch in epochs:
        indices = [int(i) for batch in epoch for i in batch[2]["index"]]
        assert sorted(indices) == train  # every training image once per epoch
        orders.append(indices)
        for images, targets, info in epoch:
            for image, target, index in zip(images, targets, info["index"]):
                sample = stored[int(index)]
                reference = preprocess_images_numpy(sample.counts)
                # augmentation keeps the histogram and the particles' sizes
                assert np.array_equal(np.sort(image.ravel()), np.sort(reference.ravel()))
                assert _component_sizes(image[:, :, 0]) == _component_sizes(reference)
                assert target[0] == np.float32(sample.descriptors.fractal_dimension)
    assert orders[0] != orders[1]


def test_training_run_repeats_exactly_and_epochs_differ(db):
    def first_two_epochs(seed):
        return _batches(data.single_image_dataset(db, batch_size=8, seed=seed, epochs=2,
                                                  with_info=True))

    first, again, other = first_two_epochs(11), first_two_epochs(11), first_two_epochs(12)
    for a, b in zip(first, again):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[2]["index"], b[2]["index"])
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    # The same image looks different in epoch 0 and epoch 1.
    steps = len(first) // 2
    epoch0 = {int(i): image for batch in first[:steps] for i, image in
              zip(batch[2]["index"], batch[0])}
    epoch1 = {int(i): image for batch in first[steps:] for i, image in
              zip(batch[2]["index"], batch[0])}
    changed = [not np.array_equal(epoch0[i], epoch1[i]) for i in epoch0 if i in epoch1]
    assert sum(changed) >= len(changed) // 2


def test_pipeline_ignores_tensorflows_global_seed(db):
    """Order and augmentation depend on the pipeline's seed only (not tf.random.set_seed)."""
    def first_epoch():
        return _batches(data.classification_dataset(db, batch_size=4, seed=5, epochs=1,
                                                    with_info=True))

    runs = []
    try:
        for global_seed in (0, 123, None):
            tf.random.set_seed(global_seed)
            runs.append(first_epoch())
    finally:
        tf.random.set_seed(None)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a[2]["index"], b[2]["index"])
            assert np.array_equal(a[0], b[0])


def test_multi_image_samples_always_share_one_theta(db):
    manifest = data.load_manifest(db)
    thetas = np.array(manifest["thetas"])
    for target, position in (("wo3_cluster_size", 2), ("tio2_cluster_size", 3)):
        dataset = data.multi_image_dataset(db, target, num_images=2, batch_size=2, seed=4,
                                           epochs=3, with_info=True)
        size = data.epoch_size(db, target, num_images=2, batch_size=2)
        batches = _batches(dataset)
        assert len(batches) == 3 * size.steps
        assert size.samples == 12  # 6 θ × ⌊4 training images / 2⌋
        for images, targets, info in batches:
            assert images.shape == (2, 2, IMAGE_SIZE, IMAGE_SIZE, 1)
            for theta_ids, target_value in zip(info["theta_id"], targets[:, 0]):
                assert len(set(theta_ids.tolist())) == 1
                assert target_value == thetas[theta_ids[0], position]
            assert len({int(i) for i in info["index"].ravel()}) == 4  # distinct images
        # Groupings change between epochs.
        groups = [{tuple(sorted(map(int, g))) for batch in batches[e * size.steps:(e + 1) *
                                                                     size.steps]
                   for g in batch[2]["index"]} for e in range(3)]
        assert groups[0] != groups[1] or groups[1] != groups[2]


def test_classifier_oversampling_balances_classes(db, stored):
    manifest = data.load_manifest(db)
    train = manifest["splits"]["train"]
    heterogeneous = train["records"] - train["homogeneous"]
    assert 0 < train["homogeneous"] < heterogeneous  # the imbalance to correct
    dataset = data.classification_dataset(db, batch_size=4, seed=2, epochs=2, with_info=True)
    size = data.epoch_size(db, "classification", batch_size=4)
    assert size.samples == 2 * heterogeneous - (2 * heterogeneous) % 4
    batches = _batches(dataset)
    for epoch in (batches[:size.steps], batches[size.steps:]):
        labels = np.concatenate([batch[1][:, 0] for batch in epoch])
        homogeneous = labels.sum()
        assert abs(homogeneous - (labels.size - homogeneous)) <= 0.05 * labels.size
        for _, targets, info in epoch:
            for target, index in zip(targets[:, 0], info["index"]):
                assert target == float(stored[int(index)].descriptors.homogeneous)
        counts = {}
        for batch in epoch:
            for index in batch[2]["index"]:
                counts[int(index)] = counts.get(int(index), 0) + 1
        heterogeneous_seen = [i for i, s in stored.items()
                              if s.split == "train" and not s.descriptors.homogeneous]
        assert all(counts.get(i, 0) <= 1 for i in heterogeneous_seen)
        assert max(counts.values()) > 1  # homogeneous images repeated
    # Without oversampling: the natural proportions.
    natural = _batches(data.classification_dataset(db, batch_size=24, seed=2, epochs=1,
                                                   oversample=False))
    assert natural[0][1].sum() == train["homogeneous"]


def test_network_datasets_feed_the_networks(db):
    for name in ("fractal_dimension", "mixing_ratio_classifier", "wo3_cluster_size"):
        multi = name == "wo3_cluster_size"
        kwargs = dict(num_images=2) if multi else {}
        dataset = data.network_dataset(db, name, "train", batch_size=2, seed=1, **kwargs)
        model = compile_network(build_network(name, IMAGE_SIZE, num_images=2))
        history = model.fit(dataset, epochs=1, steps_per_epoch=1, shuffle=False, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        validation = data.network_dataset(db, name, "evaluation", batch_size=2, **kwargs)
        predictions = model.predict(validation.take(2), verbose=0)  # two batches suffice
        assert predictions.shape == (4, 1) and np.all(np.isfinite(predictions))


def test_pipeline_refuses_bad_data_naming_the_file(db, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(db, broken)
    shard = broken / "train-00000-of-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(data.DatasetError, match=str(shard)):
        data.single_image_dataset(broken)
    with pytest.raises(data.DatasetError, match=str(shard)):
        data.multi_image_dataset(broken, num_images=2)


def test_record_of_the_wrong_size_stops_the_pipeline_naming_the_file(db, tmp_path):
    """A shard whose images are 64 px in a 156-px database (checksums made to match)."""
    wrong = tmp_path / "wrong"
    shutil.copytree(db, wrong)
    task = records.SampleTask(index=0, theta_id=0, theta=(2.0, 0.5, 3, 3), seed=0,
                              image_size=64, pixel_size_nm=9.6, dose=149.0, min_size=20,
                              max_size=80, tables_path=str(db.parent / "tables.csv"))
    shard = wrong / "validation-00001-of-00002.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for _ in range(3):
            writer.write(records.encode_example(records.compute_sample(task), "validation"))
    manifest_path = wrong / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["splits"]["validation"]["shards"][1]
    manifest["splits"]["validation"]["records"] += 3 - entry["records"]
    entry.update(records=3, bytes=shard.stat().st_size, sha256=file_sha256(shard))
    manifest_path.write_text(json.dumps(manifest))
    data.verify_dataset(wrong)  # the files match the manifest ...
    dataset = data.single_image_dataset(wrong, split="validation", batch_size=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="wrong image size") as caught:
        list(dataset)
    assert str(shard) in str(caught.value)


@pytest.mark.parametrize("call, message", [
    (lambda db: data.single_image_dataset(db, "size"), "unknown target"),
    (lambda db: data.single_image_dataset(db, split="test"), "unknown split"),
    (lambda db: data.multi_image_dataset(db, num_images=50, split="evaluation"),
     "no θ has 50 images"),
    (lambda db: data.single_image_dataset(db, batch_size=100), "fewer samples than one batch"),
    (lambda db: data.single_image_dataset(db.parent / "nothing"), "no manifest"),
])
def test_bad_arguments_are_rejected(db, call, message):
    with pytest.raises(ValueError, match=message):
        call(db)


def test_train_plus_validation_is_T(db):
    size = data.epoch_size(db, "single", "train+validation", batch_size=1, training=False)
    assert size.samples == 30  # 6 θ × 5
    dataset = data.single_image_dataset(db, split="train+validation", batch_size=7,
                                        with_info=True)
    indices = [int(i) for batch in _batches(dataset) for i in batch[2]["index"]]
    assert len(indices) == len(set(indices)) == 30


def test_no_augmentation_when_not_training(db):
    first = _batches(data.single_image_dataset(db, split="train", training=False, batch_size=24,
                                               seed=1))
    second = _batches(data.single_image_dataset(db, split="train", training=False,
                                                batch_size=24, seed=2,
                                                augmentation=Augmentation()))
    assert np.array_equal(first[0][0], second[0][0])
    assert not NO_AUGMENTATION.enabled
