"""Every batch source feeds each sample with its own record's label.

The label of a record is read back from the record itself (:func:`read_samples`: θ of its
aggregate and its descriptors), never from the pipeline's or the cache's own label arrays; a
sample is joined to its records by its index (TFRecord pipelines, ``with_info``) or by its
image (pooled batches, which carry no index). Sources: the TFRecord pipeline of each network
(:func:`hagg_tf.data.network_dataset`, training and evaluation mode) and the pooled batches of
:func:`hagg_tf.training.pooled.make_batches` (training and validation mode).
"""
import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from hagg_tf import data, networks  # noqa: E402
from hagg_tf.data.manifest import load_manifest, shard_paths  # noqa: E402
from hagg_tf.data.pooled import load_pooled_split  # noqa: E402
from hagg_tf.data.records import read_samples  # noqa: E402
from hagg_tf.training.pooled import make_batches  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:Your `PyDataset` class should call:UserWarning")

NETWORKS = tuple(networks.NETWORK_SPECS)
MULTI = ("wo3_cluster_size", "tio2_cluster_size")
NUM_IMAGES = 2  # tiny: 4 training images per θ, 3 evaluation images


def record_label(network, sample):
    """What ``network`` must learn from ``sample``, straight from the record (Sec. 2.3)."""
    return {"fractal_dimension": sample.descriptors.fractal_dimension,       # D_f(A)
            "mixing_ratio_regressor": sample.descriptors.mixing_ratio,       # ρ(A)
            "mixing_ratio_classifier": float(sample.descriptors.homogeneous),
            "wo3_cluster_size": sample.theta.wo3_cluster_size,               # θ_0
            "tio2_cluster_size": sample.theta.tio2_cluster_size}[network]    # θ_1


def _distinguishing(network, samples):
    """The labels of these samples tell ``network``'s target from the other networks'."""
    others = [name for name in NETWORKS if name != network]
    return all(any(not np.isclose(record_label(network, s), record_label(other, s))
                   for s in samples) for other in others)


@pytest.fixture(scope="module")
def database(tiny_compact_cache):
    return tiny_compact_cache[0]


@pytest.fixture(scope="module")
def samples(database):
    """split → records of that split, in database order."""
    manifest = load_manifest(database)
    return {split: [sample for path in shard_paths(manifest, split)
                    for sample in read_samples(path)] for split in manifest["splits"]}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("split", ["train", "evaluation"])
def test_tfrecord_batches_carry_each_records_own_label(database, samples, network, split):
    by_index = {sample.index: sample for sample in samples[split]}
    multi = {"num_images": NUM_IMAGES} if network in MULTI else {}
    # The call of train_network, plus the per-image indices.
    dataset = data.network_dataset(database, network, split, batch_size=2, seed=3, epochs=2,
                                   verify="none", with_info=True, **multi)
    seen = []
    for _, targets, info in dataset:
        indices = info["index"].numpy()
        for target, index in zip(targets.numpy()[:, 0], indices):
            members = [by_index[int(i)] for i in np.atleast_1d(index)]
            # A ν-sample is ν images of one θ; its label is that θ's.
            assert len({sample.theta_id for sample in members}) == 1
            assert target == np.float32(record_label(network, members[0]))
            seen += members
    assert seen and _distinguishing(network, seen)


def _pooled_reference(split_samples, pooling, inverted):
    """Each record's pooled network input, computed from its stored counts."""
    counts = np.stack([sample.counts for sample in split_samples])
    electrons = np.array([sample.electrons_per_pixel for sample in split_samples], np.float32)
    images = networks.preprocess_images_numpy(
        counts, electrons,
        inversion_threshold=networks.INVERSION_THRESHOLD if inverted else None)
    n, height, width = images.shape
    return images.reshape(n, height // pooling, pooling, width // pooling, pooling).mean((2, 4))


def _identify(image, references):
    """Row of ``references`` whose image is ``image`` up to a symmetry of the square."""
    variants = [np.rot90(flipped, turns) for flipped in (image, image[:, ::-1])
                for turns in range(4)]
    distance = np.min([np.abs(references - variant).max(axis=(1, 2)) for variant in variants],
                      axis=0)
    best = int(np.argmin(distance))
    assert distance[best] < 1e-5, "a batch image is no record's image"
    assert np.sum(distance < 1e-3) == 1, "records with indistinguishable images"
    return best


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("split, training", [("train", True), ("evaluation", False)])
def test_pooled_batches_carry_each_records_own_label(tiny_compact_cache, samples, network,
                                                     split, training):
    database, cache = tiny_compact_cache
    pooled = load_pooled_split(cache, split, database)
    spec = networks.network_spec(network)
    references = _pooled_reference(samples[split], pooled.pooling, spec.invert_intensities)
    batches = make_batches(keras, pooled, network, 2, seed=3, training=training,
                           num_images=NUM_IMAGES)
    seen = []
    for epoch in range(2 if training else 1):
        for index in range(len(batches)):
            images, targets = batches[index]
            assert targets.shape == (len(images), 1)
            for stack, target in zip(images, targets[:, 0]):
                stack = stack[..., 0] if spec.multi_image else stack[None, ..., 0]
                members = [samples[split][_identify(image, references)] for image in stack]
                assert len({sample.theta_id for sample in members}) == 1
                assert target == np.float32(record_label(network, members[0]))
                seen += members
        batches.on_epoch_end()
    assert seen and _distinguishing(network, seen)
