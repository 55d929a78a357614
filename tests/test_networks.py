"""Tests of hagg_tf.networks: Table 3 of the paper, batch-norm semantics, training, saving."""
import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from hagg_tf import networks  # noqa: E402

# TensorFlow 2.21 tensors lack the numpy-2 `copy` keyword in __array__; Keras warns on every
# conversion. Upstream issue, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

NU = 12  # the paper's nu for the Table-3 check at b = nu
SMALL = networks.minimum_image_size()  # 156 px: fast tests

# Table 3 of the paper, rows 1-19, transcribed literally. Each row: Table-3 index, layers of our
# model that implement it, per-image output shape (the paper's shape without the factor b), and
# the paper's parameter counts as (convolution/dense weights, batch-norm numbers). Row 18 depends
# on b and is handled separately.
TABLE3_F_ROWS = [
    (1, ["f_average_pooling"], (256, 256, 1), 0, 0),
    (2, ["f_conv_1", "f_batch_norm_1", "f_relu_1"], (254, 254, 8), 80, 56),
    (3, ["f_conv_2", "f_batch_norm_2", "f_relu_2"], (252, 252, 16), 1168, 112),
    (4, ["f_conv_3", "f_batch_norm_3", "f_relu_3"], (250, 250, 32), 4640, 224),
    (5, ["f_max_pooling_1"], (125, 125, 32), 0, 0),
    (6, ["f_conv_4", "f_batch_norm_4", "f_relu_4"], (123, 123, 64), 18496, 448),
    (7, ["f_conv_5", "f_batch_norm_5", "f_relu_5"], (121, 121, 64), 36928, 448),
    (8, ["f_max_pooling_2"], (60, 60, 64), 0, 0),
    (9, ["f_conv_6", "f_batch_norm_6", "f_relu_6"], (58, 58, 128), 73856, 896),
    (10, ["f_conv_7", "f_batch_norm_7", "f_relu_7"], (56, 56, 128), 147584, 896),
    (11, ["f_max_pooling_3"], (28, 28, 128), 0, 0),
    (12, ["f_conv_8", "f_batch_norm_8", "f_relu_8"], (26, 26, 256), 295168, 1792),
    (13, ["f_conv_9", "f_batch_norm_9", "f_relu_9"], (24, 24, 256), 590080, 1792),
    (14, ["f_max_pooling_4"], (12, 12, 256), 0, 0),
    (15, ["f_flatten"], (36864,), 0, 0),
    (16, ["f_dense_224"], (224,), 8257760, 0),
    (17, ["f_dense_112"], (112,), 25200, 0),
]
TABLE3_DENSE_1_PARAMS = 45  # row 19


def table3_dense_44_params(b):
    """Row 18 of Table 3: 112·b·44 + 44."""
    return 112 * b * 44 + 44


def table3_total(b):
    """Bottom line of Table 3: b·4928 + 9 457 713 (with 7 numbers per batch-norm channel)."""
    return b * 4928 + 9457713


# The paper counts 7 numbers per batch-norm channel (56 for 8 channels); Keras stores 4 per
# channel: gamma and beta (trainable), moving mean and moving variance (non-trainable).
PAPER_NUMBERS_PER_BN_CHANNEL = 7
KERAS_NUMBERS_PER_BN_CHANNEL = 4


def keras_bn_params(table3_bn_params):
    return table3_bn_params * KERAS_NUMBERS_PER_BN_CHANNEL // PAPER_NUMBERS_PER_BN_CHANNEL


TABLE3_BN_PARAMS_TOTAL = sum(row[4] for row in TABLE3_F_ROWS)  # 6664 = 7 · 952 channels


@pytest.fixture(scope="module")
def full_size_networks():
    """All five networks at the paper's 512 px and nu = 12 (built, never run on big batches)."""
    return {name: networks.build_network(name, image_size=512, num_images=NU)
            for name in networks.NETWORK_SPECS}


def _count(layer):
    return sum(int(np.prod(w.shape)) for w in layer.weights)


@pytest.mark.parametrize("name", sorted(networks.NETWORK_SPECS))
def test_layers_match_table3(full_size_networks, name):
    model = full_size_networks[name]
    spec = networks.network_spec(name)
    b = NU if spec.multi_image else 1
    f = networks.get_feature_extractor(model)

    # Row 0: the input, (512, 512, 1)·b.
    image_axes = (NU, 512, 512, 1) if spec.multi_image else (512, 512, 1)
    assert tuple(model.input_shape) == (None,) + image_axes
    assert tuple(f.input_shape) == (None, 512, 512, 1)

    for row, layer_names, shape, paper_weights, paper_bn in TABLE3_F_ROWS:
        layers = [f.get_layer(layer_name) for layer_name in layer_names]
        # f runs on single images (the b images are stacked on the batch axis), so each f-layer
        # output is the per-image shape of Table 3; the factor b appears below.
        assert tuple(layers[-1].output.shape) == (None,) + shape, f"Table 3 row {row}"
        ours = sum(_count(layer) for layer in layers)
        assert ours == paper_weights + keras_bn_params(paper_bn), f"Table 3 row {row}"
        if paper_bn:
            bn = layers[1]
            channels = shape[-1]
            assert paper_bn == PAPER_NUMBERS_PER_BN_CHANNEL * channels
            assert _count(bn) == KERAS_NUMBERS_PER_BN_CHANNEL * channels
            assert sum(int(np.prod(w.shape)) for w in bn.trainable_weights) == 2 * channels

    if spec.multi_image:
        # The factor b = nu: nu feature vectors of length 112, concatenated to 112·nu.
        assert tuple(model.get_layer("fold_image_stack").output.shape) == (None, 512, 512, 1)
        assert tuple(model.get_layer("unfold_image_stack").output.shape) == (None, NU, 112)
        assert tuple(model.get_layer("concatenate_features").output.shape) == (None, 112 * NU)

    dense_44 = model.get_layer("g_dense_44")
    assert tuple(dense_44.output.shape) == (None, 44)
    assert _count(dense_44) == table3_dense_44_params(b)  # row 18
    assert tuple(model.get_layer("g_dense_1").output.shape) == (None, 1)
    assert _count(model.get_layer("g_dense_1")) == TABLE3_DENSE_1_PARAMS  # row 19
    assert tuple(model.output.shape) == (None, 1)
    assert model.output_names == [spec.output_name]

    # Totals: Table 3's b·4928 + 9 457 713 minus the 3 batch-norm numbers per channel that Keras
    # does not store (952 channels · 3 = 2856).
    bn_difference = TABLE3_BN_PARAMS_TOTAL - keras_bn_params(TABLE3_BN_PARAMS_TOTAL)
    assert bn_difference == 952 * 3
    assert model.count_params() == table3_total(b) - bn_difference
    assert f.count_params() + _count(dense_44) + TABLE3_DENSE_1_PARAMS == model.count_params()


def test_single_image_total_is_9_46_million(full_size_networks):
    total = full_size_networks["fractal_dimension"].count_params()
    assert total == 9_459_785  # Table 3 with b = 1: 9 462 641 (7 numbers per BN channel)
    assert round(table3_total(1) / 1e6, 2) == 9.46


def test_minimum_image_size():
    assert SMALL == 156
    assert networks.feature_map_sizes(512) == [256, 254, 252, 250, 125, 123, 121, 60, 58, 56,
                                                28, 26, 24, 12]
    assert networks.feature_map_sizes(156)[-1] == 1
    with pytest.raises(ValueError, match="too small"):
        networks.build_network("fractal_dimension", image_size=155)


def test_unknown_network_and_bad_arguments():
    with pytest.raises(KeyError, match="unknown network"):
        networks.build_network("porosity", image_size=SMALL)
    with pytest.raises(ValueError):
        networks.build_network("wo3_cluster_size", image_size=SMALL, num_images=0)
    with pytest.raises(ValueError):
        networks.build_network("wo3_cluster_size", image_size=SMALL, stack_strategy="loop")


def test_specs_follow_the_paper():
    specs = networks.NETWORK_SPECS
    assert networks.SINGLE_IMAGE_BATCH_SIZE == 16 and networks.MULTI_IMAGE_BATCH_SIZE == 8
    assert [n for n, s in specs.items() if s.multi_image] == ["wo3_cluster_size",
                                                               "tio2_cluster_size"]
    assert [n for n, s in specs.items() if s.invert_intensities] == ["tio2_cluster_size"]
    for name, spec in specs.items():
        assert spec.batch_size == (8 if spec.multi_image else 16)
        model = networks.compile_network(networks.build_network(name, SMALL, num_images=2))
        learning_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        assert learning_rate == pytest.approx(1e-4)
        assert isinstance(model.optimizer, keras.optimizers.Adam)
        expected_loss = "binary_crossentropy" if name == "mixing_ratio_classifier" \
            else "mean_squared_error"
        assert model.loss == expected_loss


def test_output_activations():
    layer = networks.ScaledSigmoid()
    values = keras.ops.convert_to_numpy(layer(np.array([-50.0, 0.0, 50.0], "float32")))
    np.testing.assert_allclose(values, [1.3, 2.0, 2.7], atol=1e-6)
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, (3, SMALL, SMALL, 1)).astype("float32")
    ranges = {"fractal_dimension": (1.3, 2.7), "mixing_ratio_regressor": (0.0, 1.0),
              "mixing_ratio_classifier": (0.0, 1.0)}
    for name, (low, high) in ranges.items():
        out = np.asarray(networks.build_network(name, SMALL)(x, training=False))
        assert out.shape == (3, 1) and np.all((out >= low) & (out <= high))


def _randomize_batch_norm(model, seed):
    """Gives every batch-norm layer non-trivial gamma, beta and moving statistics."""
    rng = np.random.default_rng(seed)
    for layer in networks.get_feature_extractor(model).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.05, channels), rng.uniform(0.5, 2.0, channels)])


@pytest.fixture(scope="module")
def multi_image_setup():
    keras.utils.set_random_seed(3)
    nu, b = 4, 2
    model = networks.build_network("wo3_cluster_size", SMALL, num_images=nu)
    _randomize_batch_norm(model, seed=4)
    rng = np.random.default_rng(5)
    images = rng.uniform(-0.5, 0.5, (b, nu, SMALL, SMALL, 1)).astype("float32")
    # Give every slot its own brightness so that per-slot batch statistics would differ.
    images += 0.2 * np.arange(nu, dtype="float32")[None, :, None, None, None]
    return model, images


def test_slot_invariance_at_inference(multi_image_setup):
    model, images = multi_image_setup
    nu = images.shape[1]
    features = keras.Model(model.input, model.get_layer("unfold_image_stack").output)
    reference = np.asarray(features(images, training=False))  # (b, nu, 112)
    assert reference.shape == (2, nu, 112) and np.abs(reference).max() > 0

    permutation = np.array([2, 0, 3, 1])
    permuted = np.asarray(features(images[:, permutation], training=False))
    np.testing.assert_allclose(permuted, reference[:, permutation], rtol=1e-5, atol=1e-5)

    # Each image's features equal those of the single-image f applied to that image alone.
    f = networks.get_feature_extractor(model)
    for sample in range(images.shape[0]):
        for slot in range(nu):
            alone = np.asarray(f(images[sample, slot][None], training=False))[0]
            np.testing.assert_allclose(reference[sample, slot], alone, rtol=1e-5, atol=1e-5)

    # The concatenation is slot-major: features of slot j sit at [112·j, 112·(j+1)).
    concatenated = keras.Model(model.input, model.get_layer("concatenate_features").output)
    np.testing.assert_allclose(np.asarray(concatenated(images, training=False)),
                               reference.reshape(2, nu * 112), rtol=1e-6, atol=1e-6)


def test_fold_batch_equals_time_distributed_at_inference(multi_image_setup):
    model, images = multi_image_setup
    nu = images.shape[1]
    time_distributed = networks.build_network("wo3_cluster_size", SMALL, num_images=nu,
                                              stack_strategy="time_distributed")
    time_distributed.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(time_distributed(images, training=False)),
                               np.asarray(model(images, training=False)), rtol=1e-5, atol=1e-5)


def _first_bn_update(model, images):
    """Moving mean of f_batch_norm_1 before and after one training-mode forward pass, and the
    per-channel mean of its input over all b·nu images."""
    f = networks.get_feature_extractor(model)
    bn = f.get_layer("f_batch_norm_1")
    conv = keras.Model(f.input, f.get_layer("f_conv_1").output)
    before = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    pooled_mean = np.asarray(conv(images.reshape((-1,) + images.shape[2:]))).mean(axis=(0, 1, 2))
    model(images, training=True)
    return before, keras.ops.convert_to_numpy(bn.moving_mean).copy(), pooled_mean, bn.momentum


def test_batch_norm_sees_all_images_once_per_step():
    keras.utils.set_random_seed(6)
    nu, b = 3, 2
    rng = np.random.default_rng(7)
    images = rng.uniform(-0.5, 0.5, (b, nu, SMALL, SMALL, 1)).astype("float32")
    images += np.arange(nu, dtype="float32")[None, :, None, None, None]
    model = networks.build_network("wo3_cluster_size", SMALL, num_images=nu)
    before, after, pooled_mean, momentum = _first_bn_update(model, images)
    # One update with the statistics of all b·nu images, as for a single-image network.
    np.testing.assert_allclose(after, momentum * before + (1 - momentum) * pooled_mean,
                               rtol=1e-4, atol=1e-7)

    # Training-mode features are also slot-equivariant: the batch statistics do not depend on
    # the order of the slots.
    features = keras.Model(model.input, model.get_layer("unfold_image_stack").output)
    permutation = np.array([1, 2, 0])
    np.testing.assert_allclose(np.asarray(features(images[:, permutation], training=True)),
                               np.asarray(features(images, training=True))[:, permutation],
                               rtol=1e-3, atol=1e-4)  # batch sums in another order: float noise


def test_time_distributed_has_the_documented_batch_norm_pitfall():
    """Keras 3 TimeDistributed calls f once per slot: nu moving-average updates per step.

    This documents why build_network folds the stack into the batch instead (docs/networks.md).
    If it fails, Keras changed TimeDistributed and the choice can be revisited.
    """
    keras.utils.set_random_seed(6)
    nu, b = 3, 2
    rng = np.random.default_rng(7)
    images = rng.uniform(-0.5, 0.5, (b, nu, SMALL, SMALL, 1)).astype("float32")
    images += np.arange(nu, dtype="float32")[None, :, None, None, None]
    model = networks.build_network("wo3_cluster_size", SMALL, num_images=nu,
                                   stack_strategy="time_distributed")
    before, after, pooled_mean, momentum = _first_bn_update(model, images)
    single_update = momentum * before + (1 - momentum) * pooled_mean
    assert not np.allclose(after, single_update, rtol=1e-2, atol=1e-6)
    # What it does instead: one update per slot with that slot's statistics only.
    f = networks.get_feature_extractor(model)
    conv = keras.Model(f.input, f.get_layer("f_conv_1").output)
    expected = before.copy()
    for slot in range(nu):
        slot_mean = np.asarray(conv(images[:, slot])).mean(axis=(0, 1, 2))
        expected = momentum * expected + (1 - momentum) * slot_mean
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name, num_images, batch", [
    ("fractal_dimension", 1, 8),
    ("mixing_ratio_classifier", 1, 8),
    ("wo3_cluster_size", 3, 2),
])
def test_a_few_training_steps_lower_the_loss(name, num_images, batch):
    keras.utils.set_random_seed(11)
    spec = networks.network_spec(name)
    rng = np.random.default_rng(12)
    shape = (batch, num_images, SMALL, SMALL, 1) if spec.multi_image else (batch, SMALL, SMALL, 1)
    images = rng.uniform(-0.5, 0.5, shape).astype("float32")
    if name == "fractal_dimension":
        targets = rng.uniform(1.5, 2.5, (batch, 1))
    elif name == "mixing_ratio_classifier":
        targets = (np.arange(batch) % 2).reshape(batch, 1).astype("float64")
    else:
        targets = rng.integers(1, 7, (batch, 1)).astype("float64")
    model = networks.compile_network(
        networks.build_network(name, SMALL, num_images=max(num_images, 1)))
    losses = [float(model.train_on_batch(images, targets.astype("float32"))[0])
              for _ in range(12)]
    assert np.all(np.isfinite(losses))
    assert min(losses[-3:]) < 0.8 * losses[0], losses


def test_keras_file_round_trip(tmp_path, multi_image_setup):
    model, images = multi_image_setup
    path = tmp_path / "cnn0.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert [type(layer).__name__ for layer in reloaded.layers] == \
        [type(layer).__name__ for layer in model.layers]
    assert reloaded.get_layer("unfold_image_stack").num_images == images.shape[1]
    np.testing.assert_allclose(np.asarray(reloaded(images, training=False)),
                               np.asarray(model(images, training=False)), rtol=1e-6, atol=1e-6)

    single = networks.build_network("fractal_dimension", SMALL)
    single.save(tmp_path / "cnn_df.keras")
    reloaded_single = keras.saving.load_model(tmp_path / "cnn_df.keras")
    layer = reloaded_single.get_layer("fractal_dimension")
    assert isinstance(layer, networks.ScaledSigmoid)
    assert (layer.scale, layer.offset) == (1.4, 1.3)


# --- the registry and the accessors -----------------------------------------------------------

def test_registry_holds_each_networks_target_column_and_threshold():
    from hagg_tf.data import network_specs
    from hagg_tf.model.parameters import ModelParameters

    # One registry: hagg_tf.networks re-exports the data-level one, not a copy.
    assert networks.NETWORK_SPECS is network_specs.NETWORK_SPECS
    assert networks.NETWORK_NAMES == tuple(network_specs.NETWORK_SPECS)
    theta = ModelParameters(1.8, 0.4, 3, 5)
    # θ column of each network: the position of the parameter it estimates in θ's tuple form.
    estimated = {"fractal_dimension": 1.8, "mixing_ratio_regressor": 0.4,
                 "mixing_ratio_classifier": 0.4, "wo3_cluster_size": 3, "tio2_cluster_size": 5}
    for name, spec in networks.NETWORK_SPECS.items():
        assert theta.as_tuple()[spec.theta_column] == estimated[name]
        assert getattr(theta, spec.theta_name) == estimated[name]
        assert spec.sample_kind == ("multi" if spec.multi_image else
                                    "classification" if spec.loss == "binary_crossentropy"
                                    else "single")
    assert [name for name, spec in networks.NETWORK_SPECS.items() if spec.is_classifier] == \
        ["mixing_ratio_classifier"]
    assert networks.CLASSIFIER_THRESHOLD == 0.5
    from hagg_tf.estimation import estimators
    assert estimators.CLASSIFIER_THRESHOLD is networks.CLASSIFIER_THRESHOLD
    with pytest.raises(ValueError, match="theta_column"):
        network_specs.NetworkSpec("x", "x", "x", False, "relu", "mse", 1, image_label="y")


def test_registry_and_preprocessing_import_without_tensorflow():
    import subprocess
    import sys

    code = ("import sys; import hagg_tf.data.network_specs, hagg_tf.data.preprocessing as p; "
            "import numpy as np; p.preprocess_images_numpy(np.ones((4, 4)), 1.0, "
            "inversion_threshold=p.INVERSION_THRESHOLD); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["fractal_dimension", "tio2_cluster_size"])
def test_accessors_reach_the_pooling_and_the_head(name):
    model = networks.build_network(name, image_size=128, num_images=2, architecture="compact")
    pooling = networks.input_pooling_layer(model)
    assert pooling.pool_size[0] == networks.get_architecture("compact").input_pooling
    f = networks.get_feature_extractor(model)
    assert networks.input_pooling_layer(f) is pooling
    stack = (3, 2) if networks.network_spec(name).multi_image else (3,)
    images = np.random.default_rng(0).uniform(-0.5, 0.5, stack + (128, 128, 1)).astype(np.float32)
    features = np.asarray(f(images.reshape((-1, 128, 128, 1)), training=False))
    features = features.reshape(3, -1)  # slot-major concatenation of the ν feature vectors
    for layer in networks.head_layers(model):
        features = layer(features)
    np.testing.assert_allclose(np.asarray(features), np.asarray(model(images, training=False)),
                               rtol=1e-5, atol=1e-6)


def test_architecture_flops_counts_convolutions_and_dense_layers():
    # 16 px, 2x2 pooling -> 8; conv 4 valid -> 6 px: 2·36·9·1·4; max pool -> 3; conv 8 valid
    # -> 1 px: 2·1·9·4·8; dense 8 -> 10 -> 5: 2·8·10 + 2·10·5.
    tiny = networks.Architecture("tiny", 2, (4, "max_pool", 8), "valid", (10, 5), "")
    assert tiny.flops(16) == 2 * 36 * 9 * 4 + 2 * 9 * 4 * 8 + 2 * 8 * 10 + 2 * 10 * 5
    with pytest.raises(ValueError, match="does not fit"):
        tiny.flops(6)


@pytest.mark.parametrize("name", sorted(networks.ARCHITECTURES))
def test_architecture_descriptions_state_their_flops(name):
    # The GFLOP figure each description (and so every model card) prints is the count.
    architecture = networks.ARCHITECTURES[name]
    stated = re.search(r"\(([\d.]+) GFLOP per 512 px image\)", architecture.description)
    assert stated, architecture.description
    digits = len(stated.group(1).split(".")[1])
    assert round(architecture.flops(512) / 1e9, digits) == float(stated.group(1))


def test_space_to_depth_stem_keeps_every_pixel_as_channels():
    import tensorflow as tf

    architecture = networks.get_architecture("fine_s2d")
    block = architecture.space_to_depth
    model = networks.build_network("fractal_dimension", 206, architecture="fine_s2d")
    f = networks.get_feature_extractor(model)
    pooling = networks.input_pooling_layer(f)
    side = 206 // architecture.input_pooling  # 103: its last row and column are cropped
    first_convolution = next(layer for layer in f.layers
                             if isinstance(layer, keras.layers.Conv2D))
    stem = f.layers[f.layers.index(pooling) + 1:f.layers.index(first_convolution)]
    pooled = np.random.default_rng(4).normal(size=(2, side, side, 1)).astype(np.float32)
    rearranged = pooled
    for layer in stem:
        rearranged = layer(rearranged)
    cropped = side - side % block
    expected = tf.nn.space_to_depth(pooled[:, :cropped, :cropped], block).numpy()
    np.testing.assert_array_equal(np.asarray(rearranged), expected)
    assert first_convolution.kernel.shape[2] == block ** 2


def test_space_to_depth_stem_has_the_multiply_adds_of_the_max_pooled_one():
    # A 3×3 convolution on S/2 × S/2 × 4 costs what one on S × S × 1 costs; the second
    # convolution then runs where the fine variant's ran after its first max pooling.
    fine, s2d = networks.get_architecture("fine"), networks.get_architecture("fine_s2d")
    assert s2d.flops(512) == fine.flops(512)
    assert s2d.feature_map_sizes(512)[-1] == fine.feature_map_sizes(512)[-1]
    assert s2d.feature_map_sizes(512)[0] == fine.feature_map_sizes(512)[0] // 2


@pytest.mark.parametrize("name", sorted(networks.ARCHITECTURES))
def test_architecture_of_names_what_built_the_network(name):
    size = networks.minimum_image_size(name)
    model = networks.build_network("tio2_cluster_size", size, num_images=2, architecture=name)
    assert networks.architecture_of(model).name == name
