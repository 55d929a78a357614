"""Tests of the preprocessing (Sec. 2.2.2, 2.3.5) and of the SavedModel export (SPEC §10)."""
import json

import numpy as np
import pytest
from synthetic_images import ELECTRONS_PER_PIXEL, synthetic_counts

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from hagg_tf import networks  # noqa: E402
from hagg_tf.export import (DOSE_INPUT, IMAGES_INPUT, METADATA_FILENAME,  # noqa: E402
                            UINT16_ENDPOINT, export_network, load_keras_network)
from hagg_tf.networks.preprocessing import (INVERSION_THRESHOLD, ImagePreprocessing,  # noqa: E402
                                            preprocess_images, preprocess_images_numpy)

# TensorFlow 2.21 tensors lack the numpy-2 `copy` keyword in __array__; Keras warns on every
# conversion. Upstream issue, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

SMALL = networks.minimum_image_size()
NU = 3  # small stack for fast multi-image exports


# ----------------------------------------------------------------------------- preprocessing

def test_preprocessing_scales_per_image_to_256_levels():
    rng = np.random.default_rng(0)
    counts = synthetic_counts(rng, (3,), SMALL)
    out = preprocess_images_numpy(counts)
    assert out.dtype == np.float32 and out.shape == counts.shape
    for image in out:
        assert image.min() == -0.5 and image.max() == 0.5  # each image uses the full range
    levels = np.round((out + 0.5) * 255)
    np.testing.assert_allclose((out + 0.5) * 255, levels, atol=1e-4)  # on the 256 levels
    assert len(np.unique(levels)) <= 256
    # Invariant to a positive factor: counts and intensity fractions give the same result.
    np.testing.assert_array_equal(
        preprocess_images_numpy(counts.astype(np.float64) / ELECTRONS_PER_PIXEL * 4), out)
    # A constant image has no range: it becomes background (-0.5) instead of NaN.
    np.testing.assert_array_equal(preprocess_images_numpy(np.full((4, 4), 7.0)), -0.5)


def test_inversion_replaces_pixels_above_threshold_by_their_inverse():
    # Intensity fractions p: background (0, t/2, t itself) stays, p > t becomes 1/p.
    p = np.array([[0.0, 0.0005, INVERSION_THRESHOLD, 0.002],
                  [0.004, 0.01, 0.1, 0.25]])
    modified = np.where(p > INVERSION_THRESHOLD, 1 / np.maximum(p, 1e-12), p)
    expected = preprocess_images_numpy(modified)
    got = preprocess_images_numpy(p * ELECTRONS_PER_PIXEL, ELECTRONS_PER_PIXEL,
                                  inversion_threshold=INVERSION_THRESHOLD)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # The darkest non-background pixel (p = 0.002 -> 500) is now the brightest; the strongest
    # scatterer (p = 0.25 -> 4) sits just above the background.
    assert got[0, 3] == 0.5 and got[0, 0] == -0.5
    assert -0.5 < got[1, 3] < -0.49


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("invert", [False, True])
def test_tensorflow_preprocessing_equals_numpy_reference(dtype, invert):
    rng = np.random.default_rng(1)
    counts = synthetic_counts(rng, (2, NU), SMALL).astype(dtype)
    dose = rng.uniform(0.9, 1.1, (2, NU)) * ELECTRONS_PER_PIXEL
    kwargs = {"inversion_threshold": INVERSION_THRESHOLD if invert else None}
    reference = preprocess_images_numpy(counts, dose, **kwargs)
    ours = preprocess_images(tf.constant(counts), tf.constant(dose), **kwargs).numpy()
    np.testing.assert_array_equal(ours, reference)


def test_preprocessing_runs_in_tf_data():
    rng = np.random.default_rng(2)
    counts = synthetic_counts(rng, (4,), SMALL)
    config = ImagePreprocessing.for_network("tio2_cluster_size")
    dataset = tf.data.Dataset.from_tensor_slices(
        (counts, np.full(4, ELECTRONS_PER_PIXEL, np.float32))).map(config).batch(4)
    np.testing.assert_array_equal(
        next(iter(dataset)).numpy(),
        preprocess_images_numpy(counts, np.full(4, ELECTRONS_PER_PIXEL),
                                inversion_threshold=INVERSION_THRESHOLD))


# ------------------------------------------------------------------------------------ export

def _randomize_batch_norm(model, seed):
    """Non-trivial moving statistics, so that a training-mode call would be noticed."""
    rng = np.random.default_rng(seed)
    for layer in networks.get_feature_extractor(model).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.05, channels), rng.uniform(0.5, 2.0, channels)])


@pytest.mark.parametrize("name", sorted(networks.NETWORK_SPECS))
def test_export_reloads_with_plain_tensorflow(tmp_path, name):
    keras.utils.set_random_seed(3)
    spec = networks.network_spec(name)
    model = networks.build_network(name, SMALL, num_images=NU)
    _randomize_batch_norm(model, seed=4)
    version_dir = export_network(model, tmp_path / "models", version=3)
    assert version_dir == tmp_path / "models" / name / "3"
    assert (version_dir / "saved_model.pb").is_file()

    rng = np.random.default_rng(5)
    leading = (2, NU) if spec.multi_image else (2,)
    counts = synthetic_counts(rng, leading, SMALL)
    dose = np.full(leading, ELECTRONS_PER_PIXEL, np.float32)
    threshold = INVERSION_THRESHOLD if spec.invert_intensities else None
    network_input = preprocess_images_numpy(counts, dose, inversion_threshold=threshold)[..., None]
    expected = np.asarray(model(network_input, training=False)).reshape(-1)

    loaded = tf.saved_model.load(str(version_dir))
    assert {"serving_default", UINT16_ENDPOINT} <= set(loaded.signatures)
    for endpoint, images in (("serving_default", counts.astype(np.float32)),
                             (UINT16_ENDPOINT, counts)):
        signature = loaded.signatures[endpoint]
        _, input_specs = signature.structured_input_signature
        expected_inputs = {IMAGES_INPUT} | ({DOSE_INPUT} if spec.invert_intensities else set())
        assert set(input_specs) == expected_inputs
        assert tuple(input_specs[IMAGES_INPUT].shape) == (None,) + counts.shape[1:]
        assert set(signature.structured_outputs) == {spec.output_name}
        feed = {IMAGES_INPUT: tf.constant(images)}
        if spec.invert_intensities:
            feed[DOSE_INPUT] = tf.constant(dose)
        served = signature(**feed)[spec.output_name].numpy()
        assert served.shape == (2,)
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)

    metadata = json.loads((version_dir / METADATA_FILENAME).read_text())
    assert metadata["outputs"] == {spec.output_name: [None]}
    assert metadata["preprocessing"]["inversion_threshold"] == threshold

    reloaded = load_keras_network(version_dir)
    np.testing.assert_allclose(np.asarray(reloaded(network_input, training=False)).reshape(-1),
                               expected, rtol=1e-6, atol=1e-6)


def test_export_without_preprocessing_and_version_safety(tmp_path):
    model = networks.build_network("mixing_ratio_regressor", SMALL)
    version_dir = export_network(model, tmp_path, version=1, preprocessing=None, save_keras=False)
    assert not (version_dir / "keras").exists()
    images = np.random.default_rng(6).uniform(-0.5, 0.5, (2, SMALL, SMALL)).astype(np.float32)
    served = tf.saved_model.load(str(version_dir)).signatures["serving_default"](
        images=tf.constant(images))["mixing_ratio"].numpy()
    np.testing.assert_allclose(served, np.asarray(model(images[..., None])).reshape(-1),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(FileExistsError):
        export_network(model, tmp_path, version=1, preprocessing=None)
    with pytest.raises(ValueError):
        export_network(model, tmp_path, version=0)
