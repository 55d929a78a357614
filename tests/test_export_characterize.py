"""The composite characterize SavedModel: reload with plain TensorFlow, same numbers as Keras."""
import json

import numpy as np
import pytest
from synthetic_images import ELECTRONS_PER_PIXEL, synthetic_counts

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from hagg_tf import networks  # noqa: E402
from hagg_tf.estimation import CharacterizeModel, ThetaEstimate, estimate_with_networks  # noqa
from hagg_tf.estimation.model import METADATA_FILENAME as ESTIMATION_METADATA  # noqa: E402
from hagg_tf.export import METADATA_FILENAME  # noqa: E402
from hagg_tf.estimation.model import resolve_version_dir  # noqa: E402
from hagg_tf.export.characterize import (INVERTED_IMAGES_INPUT, NETWORK_ORDER,  # noqa: E402
                                         OUTPUT_SHAPES, PREPROCESSED_ENDPOINT,
                                         CharacterizeModule, _network_settings,
                                         export_characterize_model, load_network_weights,
                                         network_weights, set_network_weights)
from hagg_tf.networks.preprocessing import INVERSION_THRESHOLD, preprocess_images_numpy  # noqa

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

SMALL = networks.minimum_image_size()
NU = 3


def make_networks(seed=0, num_images=NU):
    """The five networks with random weights, varied batch-norm statistics and an amplified
    last layer, so that outputs differ clearly between images and stacks."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    models = {}
    for name in NETWORK_ORDER:
        model = networks.build_network(name, SMALL, num_images=num_images)
        for layer in networks.get_feature_extractor(model).layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                channels = layer.gamma.shape[0]
                layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                                   rng.normal(0, 0.05, channels), rng.uniform(0.5, 2.0, channels)])
        last = model.get_layer("g_dense_1")
        kernel, bias = last.get_weights()
        last.set_weights([kernel * 10.0, bias])
        models[name] = model
    return models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    models = make_networks()
    base = tmp_path_factory.mktemp("composite")
    version_dir = export_characterize_model(models, base, version=2, kernel_dtype="float32",
                                            pixel_size_nm=3.5, model_card={"status": "test"})
    return models, version_dir, CharacterizeModel(base)  # the export base resolves too


def test_composite_matches_the_keras_networks(exported):
    models, version_dir, model = exported
    assert model.version_dir == version_dir
    assert version_dir.name == "2" and version_dir.parent.name == "characterize"
    loaded = model.saved_model  # tf.saved_model.load: plain TensorFlow, no hagg_tf code needed
    assert {"serving_default", "serving_uint16", PREPROCESSED_ENDPOINT} <= set(loaded.signatures)
    serve = loaded.signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert set(inputs) == {"images", "electrons_per_pixel"}
    assert tuple(inputs["images"].shape) == (None, None, SMALL, SMALL)
    assert set(serve.structured_outputs) == set(OUTPUT_SHAPES)

    rng = np.random.default_rng(1)
    for available in (NU, NU + 2):  # n = ν: one stack; n > ν: n cyclic ν-subsets
        counts = synthetic_counts(rng, (2, available), SMALL)
        electrons = np.full((2, available), ELECTRONS_PER_PIXEL, np.float32)
        outputs = {key: value.numpy() for key, value in serve(
            images=tf.constant(counts, tf.float32),
            electrons_per_pixel=tf.constant(electrons)).items()}
        assert outputs["theta"].shape == (2, 4)
        assert outputs["wo3_cluster_size_per_subset"].shape == (2, 1 if available == NU
                                                                else available)
        for row in range(2):
            served = ThetaEstimate.from_outputs(outputs, row)
            reference = estimate_with_networks(models, counts[row], electrons[row])
            for field in ("fractal_dimension_per_image", "mixing_ratio_regressor_per_image",
                          "homogeneous_probability_per_image", "mixing_ratio_per_image",
                          "wo3_cluster_size_per_subset", "tio2_cluster_size_per_subset"):
                np.testing.assert_allclose(getattr(served, field), getattr(reference, field),
                                           rtol=1e-5, atol=1e-5, err_msg=field)
            np.testing.assert_allclose(served.theta_raw, reference.theta_raw, rtol=1e-5, atol=1e-5)
            assert served.theta[2:] == reference.theta[2:]
            assert served.wo3_cluster_size == int(np.round(served.wo3_cluster_size_raw))
        # The outputs really vary between images (the test would be blind otherwise).
        assert np.ptp(outputs["fractal_dimension_per_image"]) > 1e-3

        uint16 = loaded.signatures["serving_uint16"](
            images=tf.constant(counts), electrons_per_pixel=tf.constant(electrons))
        np.testing.assert_array_equal(uint16["theta_raw"].numpy(), outputs["theta_raw"])
        preprocessed = loaded.signatures[PREPROCESSED_ENDPOINT](**{
            "images": tf.constant(preprocess_images_numpy(counts)),
            INVERTED_IMAGES_INPUT: tf.constant(preprocess_images_numpy(
                counts, electrons, inversion_threshold=INVERSION_THRESHOLD))})
        np.testing.assert_allclose(preprocessed["theta_raw"].numpy(), outputs["theta_raw"],
                                   rtol=1e-5, atol=1e-5)

    with pytest.raises(tf.errors.InvalidArgumentError, match="at least nu"):
        serve(images=tf.zeros((1, NU - 1, SMALL, SMALL)),
              electrons_per_pixel=tf.ones((1, NU - 1)))


def test_metadata_and_weights_round_trip(exported):
    models, version_dir, model = exported
    assert METADATA_FILENAME == ESTIMATION_METADATA
    metadata = json.loads((version_dir / METADATA_FILENAME).read_text())
    assert metadata == model.metadata
    assert metadata["image_size"] == SMALL and metadata["num_images"] == NU
    assert metadata["pixel_size_nm"] == 3.5 and metadata["model_card"] == {"status": "test"}
    assert set(metadata["networks"]) == set(NETWORK_ORDER)
    assert metadata["networks"]["fractal_dimension"]["parameters"] == \
        models["fractal_dimension"].count_params()
    assert (model.image_size, model.num_images, model.pixel_size_nm) == (SMALL, NU, 3.5)
    assert resolve_version_dir(version_dir.parent) == version_dir
    with pytest.raises(FileNotFoundError):
        resolve_version_dir(version_dir / "variables")

    weights = load_network_weights(model.saved_model)
    rebuilt = networks.build_network("wo3_cluster_size", SMALL, num_images=NU)
    set_network_weights(rebuilt, weights["wo3_cluster_size"])
    images = preprocess_images_numpy(synthetic_counts(np.random.default_rng(2), (2, NU), SMALL))
    np.testing.assert_array_equal(
        np.asarray(rebuilt(images[..., None], training=False)),
        np.asarray(models["wo3_cluster_size"](images[..., None], training=False)))
    with pytest.raises(ValueError, match="at least nu"):
        model.estimate(np.zeros((NU - 1, SMALL, SMALL)), np.ones(NU - 1))


def test_float16_kernels_halve_the_weights_and_change_little(exported):
    models, _, model = exported
    weights = {name: network_weights(models[name]) for name in NETWORK_ORDER}
    settings = {name: _network_settings(models[name]) for name in NETWORK_ORDER}
    half = CharacterizeModule(weights, settings, SMALL, NU, kernel_dtype="float16")

    def stored_bytes(module):
        return sum(variable.numpy().nbytes for network in module.networks.values()
                   for variable in network.weights.values())

    full = CharacterizeModule(weights, settings, SMALL, NU, kernel_dtype="float32")
    assert stored_bytes(half) < 0.51 * stored_bytes(full)
    rng = np.random.default_rng(3)
    counts = synthetic_counts(rng, (2, NU + 1), SMALL).astype(np.float32)
    electrons = np.full((2, NU + 1), ELECTRONS_PER_PIXEL, np.float32)
    full_out = model.outputs(counts, electrons)
    half_out = {key: value.numpy() for key, value in half.serve(counts, electrons).items()}
    for key in ("fractal_dimension_per_image", "mixing_ratio_regressor_per_image",
                "homogeneous_probability_per_image", "wo3_cluster_size_per_subset",
                "tio2_cluster_size_per_subset"):
        # Kernels rounded to float16 (relative 5e-4) with the last layer amplified 10×.
        np.testing.assert_allclose(half_out[key], full_out[key], rtol=0, atol=0.05, err_msg=key)


def test_composite_rounds_cluster_sizes_to_integers_at_least_zero(exported):
    # CNN^0 and CNN^1 end in a ReLU, so the shipped heads never go negative; give them a shifted
    # sigmoid to see the graph's η where the clamp matters: (−2, −1) must round to 0, not −1 or
    # −2, exactly as the numpy estimator's round_cluster_size does; (2, 3) rounds normally.
    from hagg_tf.estimation import round_cluster_size
    models, _, _ = exported
    weights = {name: network_weights(models[name]) for name in NETWORK_ORDER}
    settings = {name: dict(_network_settings(models[name])) for name in NETWORK_ORDER}
    settings["wo3_cluster_size"].update(activation="scaled_sigmoid", scale=1.0, offset=-2.0)
    settings["tio2_cluster_size"].update(activation="scaled_sigmoid", scale=1.0, offset=2.0)
    module = CharacterizeModule(weights, settings, SMALL, NU, kernel_dtype="float32")
    counts = synthetic_counts(np.random.default_rng(4), (3, NU), SMALL).astype(np.float32)
    electrons = np.full((3, NU), ELECTRONS_PER_PIXEL, np.float32)
    for outputs in (module.serve(counts, electrons), module.serve_uint16(
            counts.astype(np.uint16), electrons)):
        outputs = {key: value.numpy() for key, value in outputs.items()}
        wo3_raw, tio2_raw = outputs["wo3_cluster_size_raw"], outputs["tio2_cluster_size_raw"]
        assert np.all((wo3_raw > -2) & (wo3_raw < -1)) and np.all((tio2_raw > 2) & (tio2_raw < 3))
        np.testing.assert_array_equal(outputs["wo3_cluster_size"], 0)
        for row in range(3):
            estimate = ThetaEstimate.from_outputs(outputs, row)
            assert estimate.wo3_cluster_size == round_cluster_size(wo3_raw[row]) == 0
            assert estimate.tio2_cluster_size == round_cluster_size(tio2_raw[row])
        np.testing.assert_array_equal(outputs["theta"][:, 2], 0.0)
        np.testing.assert_array_equal(outputs["theta"][:, 3], np.round(tio2_raw))


def test_tensorflow_inversion_keeps_p_equal_to_t_and_inverts_just_above():
    # Sec. 2.3.5 / SPEC §7: p > t (t = 0.001) becomes 1/p; p ≤ t stays. The graphs compute in
    # float32, so "exactly t" is float32(0.001) and its neighbours are one ulp away.
    from hagg_tf.networks.preprocessing import invert_intensities, preprocess_images
    t = np.float32(0.001)
    below, above = np.nextafter(t, np.float32(0)), np.nextafter(t, np.float32(1))
    p = np.array([0.0, below, t, above, 0.004], np.float32)
    got = invert_intensities(tf.constant(p), 0.001).numpy()
    expected = np.array([0.0, below, t, np.float32(1) / above, np.float32(1) / p[4]], np.float32)
    np.testing.assert_array_equal(got, expected)

    # The same decision from detector counts: one count with 999, 1000 and 1001 electrons per
    # pixel gives p just above, exactly at (1/1000 in float32 is float32(0.001)) and below t.
    assert np.float32(1) / np.float32(1000) == t
    image = np.zeros((4, 4), np.float32)
    image[0, 0], image[3, 3] = 1.0, 100.0  # the probed pixel and a bright one
    images = np.stack([image] * 3)
    electrons = np.array([999.0, 1000.0, 1001.0], np.float32)
    out = preprocess_images(tf.constant(images), tf.constant(electrons),
                            inversion_threshold=0.001).numpy()
    # Inverted, the one-count pixel (1/p ≈ 1000) outshines the bright one (1/p ≈ 10): +0.5.
    # Kept, it stays next to the background: −0.5 after scaling to 256 levels.
    assert [out[i, 0, 0] for i in range(3)] == [0.5, -0.5, -0.5]
    np.testing.assert_array_equal(out, preprocess_images_numpy(
        images, electrons, inversion_threshold=INVERSION_THRESHOLD))
