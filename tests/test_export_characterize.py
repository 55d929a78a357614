"""The composite characterize SavedModel: reload with plain TensorFlow, same numbers as Keras."""
import json

import numpy as np
import pytest
from synthetic_images import ELECTRONS_PER_PIXEL, synthetic_counts

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from hagg_tf import networks  # noqa: E402
from hagg_tf.data.pooled import SQUARE_SYMMETRIES, square_symmetry  # noqa: E402
from hagg_tf.estimation import CharacterizeModel, ThetaEstimate, estimate_with_networks  # noqa
from hagg_tf.estimation.model import METADATA_FILENAME as ESTIMATION_METADATA  # noqa: E402
from hagg_tf.export import METADATA_FILENAME  # noqa: E402
from hagg_tf.estimation.model import resolve_version_dir  # noqa: E402
from hagg_tf.estimation.model import (CLUSTER_HEAD_OUTPUTS, CLUSTER_HEADS_SIGNATURE,  # noqa
                                      PER_IMAGE_OUTPUTS, PER_IMAGE_SIGNATURE, TIO2_FEATURES,
                                      WO3_FEATURES, averaged_symmetries)
from hagg_tf.export.characterize import (INVERTED_IMAGES_INPUT, NETWORK_ORDER,  # noqa: E402
                                         OUTPUT_SHAPES, PREPROCESSED_ENDPOINT,
                                         CharacterizeModule, _network_settings,
                                         export_characterize_model, feature_passes,
                                         load_network_weights, network_weights,
                                         set_network_weights, stored_weights)
from hagg_tf.networks.architecture import get_head  # noqa: E402
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
    assert {"serving_default", "serving_uint16", PREPROCESSED_ENDPOINT, PER_IMAGE_SIGNATURE,
            CLUSTER_HEADS_SIGNATURE} <= set(loaded.signatures)
    serve = loaded.signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert set(inputs) == {"images", "electrons_per_pixel"}
    assert tuple(inputs["images"].shape) == (None, None, SMALL, SMALL)
    assert set(serve.structured_outputs) == set(OUTPUT_SHAPES)

    rng = np.random.default_rng(1)
    for available in (NU, NU + 2):  # the n cyclic ν-subsets (n = ν: the stack's rotations)
        counts = synthetic_counts(rng, (2, available), SMALL)
        electrons = np.full((2, available), ELECTRONS_PER_PIXEL, np.float32)
        outputs = {key: value.numpy() for key, value in serve(
            images=tf.constant(counts, tf.float32),
            electrons_per_pixel=tf.constant(electrons)).items()}
        assert outputs["theta"].shape == (2, 4)
        assert outputs["wo3_cluster_size_per_subset"].shape == (2, available)
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
    feature_dim = networks.FEATURE_DIM
    assert metadata["signatures"][PER_IMAGE_SIGNATURE]["outputs"] == {
        "fractal_dimension_per_image": ["b", "n"], "mixing_ratio_regressor_per_image": ["b", "n"],
        "homogeneous_probability_per_image": ["b", "n"],
        WO3_FEATURES: ["b", "n", feature_dim], TIO2_FEATURES: ["b", "n", feature_dim]}
    assert metadata["signatures"][CLUSTER_HEADS_SIGNATURE] == {
        "inputs": {WO3_FEATURES: ["k", NU, feature_dim], TIO2_FEATURES: ["k", NU, feature_dim]},
        "outputs": {"wo3_cluster_size_raw": ["k"], "tio2_cluster_size_raw": ["k"]}}
    # The metadata says what the SavedModel holds: names, ranks and the fixed sizes.
    for name, signature in metadata["signatures"].items():
        function = model.saved_model.signatures[name]
        _, inputs = function.structured_input_signature
        assert set(inputs) == set(signature["inputs"]), name
        for key, shape in signature["inputs"].items():
            assert [size if isinstance(size, int) else None for size in shape] == \
                list(inputs[key].shape), (name, key)
        outputs = signature.get("outputs", metadata["outputs"])
        assert set(function.structured_outputs) == set(outputs), name
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


def test_float16_storage_is_a_weight_transformation_of_the_keras_network(exported):
    # stored_weights(…, "float16") rounds the kernels and nothing else; the graph runs the
    # Keras network on exactly those weights (cast back to float32), to float32 round-off.
    models, _, model = exported
    weights = {name: network_weights(models[name]) for name in NETWORK_ORDER}
    settings = {name: _network_settings(models[name]) for name in NETWORK_ORDER}
    for name in NETWORK_ORDER:
        half = stored_weights(weights[name], "float16")
        assert set(half) == set(weights[name])
        for key, value in half.items():
            assert value.dtype == (np.float16 if key.endswith("/kernel") else np.float32), key
            if value.dtype == np.float32:
                np.testing.assert_array_equal(value, weights[name][key])
            else:  # float16 rounding: relative error at most 2**-11 (normal range)
                np.testing.assert_allclose(value.astype(np.float32), weights[name][key],
                                           rtol=2.0 ** -11, atol=2.0 ** -24)
    module = CharacterizeModule(weights, settings, SMALL, NU, kernel_dtype="float16")

    stored = sum(variable.numpy().nbytes for network in module.networks.values()
                 for variable in network.weights.values())
    assert stored < 0.51 * sum(value.nbytes for network in weights.values()
                               for value in network.values())
    rng = np.random.default_rng(3)
    counts = synthetic_counts(rng, (NU + 1,), SMALL).astype(np.float32)
    electrons = np.full((NU + 1,), ELECTRONS_PER_PIXEL, np.float32)
    half_out = {key: value.numpy()[0] for key, value in module.serve(
        counts[np.newaxis], electrons[np.newaxis]).items()}
    rounded = {}
    for name in NETWORK_ORDER:
        rounded[name] = networks.build_network(name, SMALL, num_images=NU)
        set_network_weights(rounded[name], {key: value.astype(np.float32) for key, value in
                                            stored_weights(weights[name], "float16").items()})
    keras_half = estimate_with_networks(rounded, counts, electrons)
    full_out = model.outputs(counts, electrons)
    fields = ("fractal_dimension_per_image", "mixing_ratio_regressor_per_image",
              "homogeneous_probability_per_image", "wo3_cluster_size_per_subset",
              "tio2_cluster_size_per_subset")
    for key in fields:
        # The graph is the Keras network with the transformed weights …
        np.testing.assert_allclose(half_out[key], getattr(keras_half, key), rtol=1e-5,
                                   atol=1e-5, err_msg=key)
        # … which is close to the original (kernels rounded to float16, relative 5e-4, with the
        # last layer amplified 10×), but not equal to it.
        np.testing.assert_allclose(half_out[key], full_out[key][0], rtol=0, atol=0.05,
                                   err_msg=key)
    assert max(np.max(np.abs(half_out[key] - full_out[key][0])) for key in fields) > 1e-6


def test_composite_rounds_cluster_sizes_to_integers_at_least_zero(exported):
    # CNN^0 and CNN^1 end in a ReLU, so the shipped heads never go negative; give them a shifted
    # sigmoid to see the graph's η where the clamp matters: (−2, −1) must round to 0, not −1 or
    # −2, exactly as the numpy estimator's round_cluster_size does; (2, 3) rounds normally.
    from hagg_tf.estimation import round_cluster_size
    models, _, _ = exported
    weights = {name: network_weights(models[name]) for name in NETWORK_ORDER}
    settings = {name: _network_settings(models[name]) for name in NETWORK_ORDER}
    module = CharacterizeModule(weights, settings, SMALL, NU, kernel_dtype="float32")
    # The graph calls the Keras layers, so swapping the output activation (before the first
    # trace) changes what the signatures compute.
    for name, offset in (("wo3_cluster_size", -2.0), ("tio2_cluster_size", 2.0)):
        output_layer = get_head(module.networks[name].keras_model).layers[-1]
        output_layer.activation = lambda logits, offset=offset: tf.sigmoid(logits) + offset
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


def test_theta_from_the_per_image_and_cluster_heads_signatures_equals_serving_default(exported):
    # Contract A: θ̂ recomputed in numpy from serving_per_image and serving_cluster_heads (means
    # per image, combine_mixing_ratio, heads averaged over the cyclic ν-subsets, then η) is
    # serving_default's θ̂, for n = ν (the ν rotations of the stack) and n > ν (n stacks).
    from hagg_tf.estimation import combine_mixing_ratio, cyclic_subsets, round_cluster_size
    _, _, model = exported
    rng = np.random.default_rng(5)
    for available in (NU, NU + 2):
        counts = synthetic_counts(rng, (available,), SMALL).astype(np.float32)
        electrons = np.full(available, ELECTRONS_PER_PIXEL, np.float32)
        served = ThetaEstimate.from_outputs(model.outputs(counts, electrons))
        per_image = model.per_image(counts, electrons)
        assert tuple(per_image) == PER_IMAGE_OUTPUTS
        for key in PER_IMAGE_OUTPUTS[:3]:
            assert per_image[key].shape == (available,)
        assert per_image[WO3_FEATURES].shape == (available, networks.FEATURE_DIM)
        assert per_image[TIO2_FEATURES].shape == (available, networks.FEATURE_DIM)
        # CNN^1's features come from the inverted images: not CNN^0's f on the plain ones.
        assert not np.allclose(per_image[WO3_FEATURES], per_image[TIO2_FEATURES])
        subsets = cyclic_subsets(available, NU)
        heads = model.cluster_heads(per_image[WO3_FEATURES][subsets],
                                    per_image[TIO2_FEATURES][subsets])
        assert tuple(heads) == CLUSTER_HEAD_OUTPUTS
        assert heads["wo3_cluster_size_raw"].shape == (len(subsets),)
        mixing = combine_mixing_ratio(per_image["mixing_ratio_regressor_per_image"],
                                      per_image["homogeneous_probability_per_image"])
        recomputed_raw = (per_image["fractal_dimension_per_image"].mean(), mixing.mean(),
                          heads["wo3_cluster_size_raw"].mean(),
                          heads["tio2_cluster_size_raw"].mean())
        np.testing.assert_allclose(recomputed_raw, served.theta_raw, rtol=1e-5, atol=1e-5)
        assert (round_cluster_size(recomputed_raw[2]), round_cluster_size(recomputed_raw[3])) \
            == served.theta[2:]
        np.testing.assert_allclose(heads["wo3_cluster_size_raw"],
                                   served.wo3_cluster_size_per_subset, rtol=1e-5, atol=1e-5)
        # The per-image values of an image do not depend on the other images: the first image
        # alone (n = 1 < ν is fine here) gives the same.
        alone = model.per_image(counts[:1], electrons[:1])
        for key in PER_IMAGE_OUTPUTS:
            np.testing.assert_allclose(alone[key][0], per_image[key][0], rtol=1e-5, atol=1e-5)

    # (b, n, H, W) input keeps the b axis; the heads refuse stacks of the wrong ν.
    counts = synthetic_counts(rng, (2, NU), SMALL)
    batched = model.per_image(counts, np.full((2, NU), ELECTRONS_PER_PIXEL))
    assert batched[WO3_FEATURES].shape == (2, NU, networks.FEATURE_DIM)
    with pytest.raises(ValueError, match="nu"):
        model.cluster_heads(batched[WO3_FEATURES][:, :NU - 1], batched[TIO2_FEATURES][:, :NU - 1])


def test_new_signatures_take_the_input_names_of_the_contract(exported):
    _, _, model = exported
    signatures = model.saved_model.signatures
    _, per_image_inputs = signatures[PER_IMAGE_SIGNATURE].structured_input_signature
    assert set(per_image_inputs) == {"images", "electrons_per_pixel"}
    _, head_inputs = signatures[CLUSTER_HEADS_SIGNATURE].structured_input_signature
    assert {key: tuple(spec.shape) for key, spec in head_inputs.items()} == {
        WO3_FEATURES: (None, NU, networks.FEATURE_DIM),
        TIO2_FEATURES: (None, NU, networks.FEATURE_DIM)}
    assert set(signatures[CLUSTER_HEADS_SIGNATURE].structured_outputs) == \
        set(CLUSTER_HEAD_OUTPUTS)


def test_get_head_applied_to_f_is_the_network(exported):
    # The accessors the export traces: g(concatenated f(images)) is the Keras network's output.
    models, _, _ = exported
    images = preprocess_images_numpy(synthetic_counts(np.random.default_rng(6), (2, NU), SMALL))
    for name in ("fractal_dimension", "tio2_cluster_size"):
        model = models[name]
        f, g = networks.get_feature_extractor(model), get_head(model)
        batch = images[:, 0, ..., None] if name == "fractal_dimension" else images[..., None]
        features = np.asarray(f(batch.reshape((-1, SMALL, SMALL, 1)), training=False))
        got = np.asarray(g(features.reshape(len(batch), -1), training=False))
        np.testing.assert_allclose(got, np.asarray(model(batch, training=False)), rtol=1e-6,
                                   atol=1e-6, err_msg=name)
        assert g.output_shape == (None, 1) and len(g.weights) == 4  # dense 44 and dense 1


def test_the_same_images_rotated_give_the_same_cluster_sizes(exported):
    # The concatenation head g is not symmetric in its ν slots: fed one stack in the given
    # order, a rotation of the same ν images changed θ̂_1 in a fifth of the shipped model's
    # samples. Averaged over the ν rotations, the order no longer matters.
    _, _, model = exported
    counts = synthetic_counts(np.random.default_rng(9), (NU,), SMALL).astype(np.float32)
    electrons = np.full(NU, ELECTRONS_PER_PIXEL, np.float32)
    given = ThetaEstimate.from_outputs(model.outputs(counts, electrons))
    rotated = ThetaEstimate.from_outputs(model.outputs(np.roll(counts, 1, axis=0), electrons))
    np.testing.assert_allclose(rotated.theta_raw, given.theta_raw, rtol=1e-5, atol=1e-5)
    # Each rotation alone gives its own answer (the test would be blind otherwise).
    assert np.ptp(given.tio2_cluster_size_per_subset) > 1e-4


def _per_image_outputs(model, counts, electrons):
    """``serving_per_image`` of one sample: {output: (n, …) array}."""
    outputs = model.saved_model.signatures[PER_IMAGE_SIGNATURE](
        images=tf.constant(counts[np.newaxis], tf.float32),
        electrons_per_pixel=tf.constant(electrons[np.newaxis]))
    return {key: value.numpy()[0] for key, value in outputs.items()}


@pytest.fixture(scope="module")
def symmetric(tmp_path_factory, exported):
    base = tmp_path_factory.mktemp("symmetric")
    export_characterize_model(exported[0], base, version=1, kernel_dtype="float32",
                              test_time_symmetries=SQUARE_SYMMETRIES)
    return CharacterizeModel(base)


def test_symmetry_averaging_is_the_mean_of_the_eight_passes(exported, symmetric):
    _, _, single_pass = exported
    counts = synthetic_counts(np.random.default_rng(4), (NU,), SMALL).astype(np.float32)
    electrons = np.full(NU, ELECTRONS_PER_PIXEL, np.float32)
    averaged = _per_image_outputs(symmetric, counts, electrons)
    passes = [_per_image_outputs(single_pass, np.ascontiguousarray(square_symmetry(counts, k)),
                                 electrons) for k in range(SQUARE_SYMMETRIES)]
    for key in PER_IMAGE_OUTPUTS:
        np.testing.assert_allclose(averaged[key], np.mean([p[key] for p in passes], axis=0),
                                   rtol=1e-5, atol=1e-5, err_msg=key)
    # Averaged over the group, a rotated or reflected image gives the same outputs; one pass
    # does not (the test would be blind otherwise).
    for element in (1, 6):
        turned = _per_image_outputs(
            symmetric, np.ascontiguousarray(square_symmetry(counts, element)), electrons)
        for key in PER_IMAGE_OUTPUTS:
            np.testing.assert_allclose(turned[key], averaged[key], rtol=1e-5, atol=1e-5,
                                       err_msg=key)
    assert np.abs(passes[1]["fractal_dimension_per_image"]
                  - passes[0]["fractal_dimension_per_image"]).max() > 1e-4
    # θ̂ of serving_default is built on the averaged per-image outputs.
    served = ThetaEstimate.from_outputs(symmetric.outputs(counts, electrons))
    np.testing.assert_allclose(served.fractal_dimension_per_image,
                               averaged["fractal_dimension_per_image"], rtol=1e-5, atol=1e-5)
    assert averaged_symmetries(symmetric.metadata) == SQUARE_SYMMETRIES
    assert averaged_symmetries(single_pass.metadata) == 1
    # The benchmark's FLOP floor counts every pass: five distinct f, each eight times.
    assert feature_passes(single_pass.metadata) == len(NETWORK_ORDER)
    assert feature_passes(symmetric.metadata) == SQUARE_SYMMETRIES * len(NETWORK_ORDER)


def test_symmetry_averaging_takes_the_whole_group_or_nothing(exported, tmp_path):
    with pytest.raises(ValueError, match="test_time_symmetries must be 1 or 8"):
        export_characterize_model(exported[0], tmp_path, kernel_dtype="float32",
                                  test_time_symmetries=4)
    assert not (tmp_path / "characterize" / "1").exists()


def test_a_rebuilt_composite_keeps_the_training_domain_of_its_source(exported, tmp_path):
    # The domain describes the training images, which a rebuild does not change: dropping it
    # left characterize warning that the user's images went unchecked.
    from hagg_tf.estimation.domain import (TRAINING_DOMAIN_FILENAME, TRAINING_DOMAIN_FORMAT,
                                           load_training_domain, write_training_domain)
    from hagg_tf.export.from_training import export_from_composite

    _, version_dir, _ = exported
    source = tmp_path / "source"
    source.mkdir()
    for path in version_dir.iterdir():
        target = source / path.name
        target.symlink_to(path, target_is_directory=path.is_dir())
    domain = {"format": TRAINING_DOMAIN_FORMAT, "images": 7, "pixel_size_nm": 3.5,
              "theta": {"fractal_dimension": {"min": 1.5, "max": 2.5}}}
    write_training_domain(domain, source)
    written = export_from_composite(source, tmp_path / "out", version=3, composite=True,
                                    per_network=False, kernel_dtype="float32")["composite"]
    kept = load_training_domain(written)
    assert kept["_path"] == str(written / TRAINING_DOMAIN_FILENAME)
    assert {key: value for key, value in kept.items() if key != "_path"} == domain
    # A source without one gives an export without one.
    bare = export_from_composite(version_dir, tmp_path / "bare", version=3, composite=True,
                                 per_network=False, kernel_dtype="float32")["composite"]
    assert load_training_domain(bare) is None
    # An unreadable domain fails the export before anything is written.
    (source / TRAINING_DOMAIN_FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match=TRAINING_DOMAIN_FILENAME):
        export_from_composite(source, tmp_path / "broken", version=3, composite=True,
                              per_network=False, kernel_dtype="float32")
    assert not (tmp_path / "broken").exists()
