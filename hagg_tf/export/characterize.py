"""The composite "characterize" SavedModel: STEM images of one sample in, θ̂ out (SPEC §9–10).

One SavedModel holds the weights of all five networks (CNN^Df, CNN^ρ_reg, CNN^ρ_class, CNN^0,
CNN^1) and one TensorFlow graph that runs, for ``n ≥ ν`` images of one sample,

1. the paper's preprocessing (:func:`hagg_tf.networks.preprocess_images`: scaling to [-0.5, 0.5]
   and 256 levels; for CNN^1 first p → 1/p for p > t = 0.001, Sec. 2.3.5);
2. the feature extractor f of every network on all images at once: 5·n forward passes of f, the
   whole cost of the estimate (4.9 GFLOP each at 512 px);
3. the heads g and the estimators of Sec. 2.3 (see :mod:`hagg_tf.estimation.estimators`):
   θ̂_Df = mean_i CNN^Df(I_i) (Eq. 13); ρ̂(I) = η(CNN^ρ_reg(I)) if CNN^ρ_class(I) > 0.5 else
   CNN^ρ_reg(I), θ̂_ρ = mean_i ρ̂(I_i) (Eq. 14); θ̂_0 = η(CNN^0(ν-stack)),
   θ̂_1 = η(CNN^1(inverse-intensity ν-stack)) with η rounding to the nearest integer ≥ 0. With
   ``n > ν`` images the multi-image heads are averaged over the ``n`` cyclic ν-subsets
   {(k + j) mod n : j < ν}, k = 0..n−1, in which every image sits in every slot exactly once;
   since f runs once per image and g is tiny, the extra subsets cost nothing measurable.

Layout (TF Serving's ``<model>/<version>/``)::

    <export_dir_base>/characterize/<version>/
        saved_model.pb  variables/  fingerprint.pb  assets/
        hagg_tf_export.json     # signatures, shapes, pixel size, estimator settings, model card

Signatures (``b`` samples of ``n ≥ ν`` images each, ``H = W`` = the networks' input size):

* ``serving_default``: ``images`` float32 (b, n, H, W) raw detector counts (or intensity
  fractions with ``electrons_per_pixel`` = 1), ``electrons_per_pixel`` float32 (b, n);
* ``serving_uint16``: the same with ``images`` as uint16 counts (the on-disk format);
* ``serving_preprocessed``: ``images`` float32 (b, n, H, W) already preprocessed for CNN^Df,
  CNN^ρ and CNN^0, and ``inverted_images`` float32 (b, n, H, W) preprocessed with the 1/p
  inversion for CNN^1.

Outputs of every signature: ``theta`` (b, 4) = (θ̂_Df, θ̂_ρ, θ̂_0, θ̂_1) with the cluster sizes
rounded, ``theta_raw`` (b, 4) with the cluster sizes before rounding (θ̂_Df and θ̂_ρ are means and
are not rounded, so both vectors share them), the same as named scalars (``fractal_dimension``,
``mixing_ratio``, ``mixing_ratio_regressor_only``, ``wo3_cluster_size`` int32,
``wo3_cluster_size_raw``, ``tio2_cluster_size`` int32, ``tio2_cluster_size_raw``, all (b,)),
every network's raw output per image (``fractal_dimension_per_image``,
``mixing_ratio_regressor_per_image``, ``homogeneous_probability_per_image``,
``mixing_ratio_per_image``, all (b, n)) and per ν-subset (``wo3_cluster_size_per_subset``,
``tio2_cluster_size_per_subset``, (b, k) with k = 1 if n = ν else n).

Storage: the Keras weights of every network are stored unchanged (so the Keras networks can be
rebuilt from the export, see :func:`load_network_weights`), the kernels of convolutions and dense
layers optionally as float16 (``kernel_dtype="float16"``, half the size; 99.4 % of the weights
are kernels) and cast to float32 in the graph; biases and batch-norm statistics stay float32.
Batch normalisation is folded into the preceding convolution inside the graph (kernel·γ/√(σ²+ε),
(bias − μ)·γ/√(σ²+ε) + β): the same function as Keras' inference mode, one pass fewer over every
feature map. Variables are written in shards of at most 40 MiB, each variable whole.
"""
from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from hagg_tf.estimation.model import (CHARACTERIZE_MODEL_NAME, METADATA_FORMAT,
                                      resolve_version_dir)
from hagg_tf.export.saved_model import DOSE_INPUT, IMAGES_INPUT, METADATA_FILENAME, UINT16_ENDPOINT
from hagg_tf.networks.architecture import (DEFAULT_ARCHITECTURE, NETWORK_SPECS,
                                           architecture_of, get_architecture,
                                           get_feature_extractor, network_spec)
from hagg_tf.networks.preprocessing import INVERSION_THRESHOLD, NUM_LEVELS, preprocess_images

#: Signature taking preprocessed images.
PREPROCESSED_ENDPOINT = "serving_preprocessed"
#: Name of the second image input of :data:`PREPROCESSED_ENDPOINT` (inverse intensities).
INVERTED_IMAGES_INPUT = "inverted_images"
#: The five networks, in the order their weights are stored and their outputs computed.
NETWORK_ORDER = ("fractal_dimension", "mixing_ratio_regressor", "mixing_ratio_classifier",
                 "wo3_cluster_size", "tio2_cluster_size")
#: Storage types of the kernels.
KERNEL_DTYPES = ("float32", "float16")
#: CNN^ρ_class output above which an image counts as homogeneous (Sec. 2.3.3).
CLASSIFIER_THRESHOLD = 0.5
#: Largest variables shard written (bytes): keeps each file well below git hosts' limits.
MAX_SHARD_BYTES = 40 * 2 ** 20

# Output names, in a fixed order (also the order of the metadata's "outputs").
OUTPUT_SHAPES = {
    "theta": ["b", 4], "theta_raw": ["b", 4],
    "fractal_dimension": ["b"], "mixing_ratio": ["b"], "mixing_ratio_regressor_only": ["b"],
    "wo3_cluster_size": ["b"], "wo3_cluster_size_raw": ["b"],
    "tio2_cluster_size": ["b"], "tio2_cluster_size_raw": ["b"],
    "fractal_dimension_per_image": ["b", "n"], "mixing_ratio_regressor_per_image": ["b", "n"],
    "homogeneous_probability_per_image": ["b", "n"], "mixing_ratio_per_image": ["b", "n"],
    "wo3_cluster_size_per_subset": ["b", "k"], "tio2_cluster_size_per_subset": ["b", "k"],
}

_HEAD_LAYERS = ("g_dense_44", "g_dense_1")


def _is_kernel(key: str) -> bool:
    return key.endswith("/kernel")


def network_weights(model) -> dict[str, np.ndarray]:
    """The weights of a network from :func:`hagg_tf.networks.build_network`, by layer.

    Args:
        model: a Keras network (any stack strategy).

    Returns:
        ``{"<layer>/<weight>": array}`` for every layer of f (``f_conv_k``, ``f_batch_norm_k``,
        ``f_dense_224``, ``f_dense_112``) and of g (``g_dense_44``, ``g_dense_1``), float32.
    """
    weights = {}
    layers = list(get_feature_extractor(model).layers) + [model.get_layer(name)
                                                           for name in _HEAD_LAYERS]
    for layer in layers:
        for variable in layer.weights:
            weights[f"{layer.name}/{variable.name}"] = np.asarray(variable, dtype=np.float32)
    return weights


def set_network_weights(model, weights: Mapping[str, np.ndarray]) -> None:
    """Inverse of :func:`network_weights`: loads ``weights`` into a freshly built network.

    Raises:
        ValueError: a weight is missing or has the wrong shape.
    """
    layers = list(get_feature_extractor(model).layers) + [model.get_layer(name)
                                                           for name in _HEAD_LAYERS]
    for layer in layers:
        if not layer.weights:
            continue
        values = []
        for variable in layer.weights:
            key = f"{layer.name}/{variable.name}"
            if key not in weights:
                raise ValueError(f"no weight {key!r} for network {model.name!r}")
            value = np.asarray(weights[key], dtype=np.float32)
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(f"weight {key!r} of {model.name!r} has shape {value.shape}, "
                                 f"the network needs {tuple(variable.shape)} (other image size?)")
            values.append(value)
        layer.set_weights(values)


def _network_settings(model) -> dict[str, Any]:
    """What the graph needs besides the weights: batch-norm ε and the output activation."""
    spec = network_spec(model.name)
    feature_extractor = get_feature_extractor(model)
    epsilons = [float(layer.epsilon) for layer in feature_extractor.layers
                if layer.name.startswith("f_batch_norm_")]
    output_layer = model.get_layer(spec.output_name)
    settings = {"epsilon": epsilons, "activation": spec.output_activation,
                "architecture": architecture_of(model).name,
                "input_shape": [None if size is None else int(size)
                                for size in model.input_shape]}
    if spec.output_activation == "scaled_sigmoid":
        settings["scale"] = float(output_layer.scale)
        settings["offset"] = float(output_layer.offset)
    return settings


class _NetworkGraph(tf.Module):
    """One network's weights as variables plus its inference function in plain TF ops.

    Args:
        name: network name (a key of :data:`NETWORK_SPECS`).
        weights: ``{"<layer>/<weight>": array}`` as from :func:`network_weights`.
        settings: from :func:`_network_settings`.
        kernel_dtype: storage type of the kernels (``"float32"`` or ``"float16"``).
    """

    def __init__(self, name: str, weights: Mapping[str, np.ndarray], settings: dict,
                 kernel_dtype: str):
        super().__init__(name=name)
        self.spec = network_spec(name)
        self.settings = dict(settings)
        # Keys keep the Keras layer/weight names so that the Keras model can be rebuilt.
        self.weights = {
            key: tf.Variable(np.asarray(value, dtype=kernel_dtype if _is_kernel(key)
                                        else np.float32), trainable=False,
                             name=key.replace("/", "."))
            for key, value in sorted(weights.items())}

    def _get(self, key: str) -> tf.Tensor:
        return tf.cast(self.weights[key], tf.float32)

    def features(self, images: tf.Tensor) -> tf.Tensor:
        """f (Table 3, layers 0–17): ``(m, H, W, 1)`` preprocessed images → ``(m, 112)``."""
        # Exports written before architectures existed are Table 3.
        architecture = get_architecture(self.settings.get("architecture", DEFAULT_ARCHITECTURE))
        pooling = architecture.input_pooling
        padding = architecture.padding.upper()
        hidden = tf.nn.avg_pool2d(images, ksize=pooling, strides=pooling, padding="VALID")
        block = 0
        for entry in architecture.plan:
            if entry == "max_pool":
                hidden = tf.nn.max_pool2d(hidden, ksize=2, strides=2, padding="VALID")
                continue
            block += 1
            norm = f"f_batch_norm_{block}"
            scale = self._get(f"{norm}/gamma") * tf.math.rsqrt(
                self._get(f"{norm}/moving_variance") + self.settings["epsilon"][block - 1])
            kernel = self._get(f"f_conv_{block}/kernel") * scale
            bias = ((self._get(f"f_conv_{block}/bias") - self._get(f"{norm}/moving_mean")) * scale
                    + self._get(f"{norm}/beta"))
            hidden = tf.nn.relu(tf.nn.bias_add(
                tf.nn.conv2d(hidden, kernel, strides=1, padding=padding), bias))
        hidden = tf.reshape(hidden, [tf.shape(hidden)[0], -1])  # H, W, C order, as Keras Flatten
        for layer in (f"f_dense_{units}" for units in architecture.dense_units):
            hidden = tf.nn.relu(tf.matmul(hidden, self._get(f"{layer}/kernel"))
                                + self._get(f"{layer}/bias"))
        return hidden

    def head(self, features: tf.Tensor) -> tf.Tensor:
        """g plus output activation (Table 3, layers 18–19): ``(m, b·112)`` → ``(m,)``."""
        hidden = tf.nn.relu(tf.matmul(features, self._get("g_dense_44/kernel"))
                            + self._get("g_dense_44/bias"))
        logits = tf.matmul(hidden, self._get("g_dense_1/kernel")) + self._get("g_dense_1/bias")
        logits = logits[:, 0]
        activation = self.settings["activation"]
        if activation == "scaled_sigmoid":
            return self.settings["scale"] * tf.sigmoid(logits) + self.settings["offset"]
        if activation == "sigmoid":
            return tf.sigmoid(logits)
        return tf.nn.relu(logits)


def cyclic_subset_indices(num_available, num_images: int) -> tf.Tensor:
    """Image indices of the ν-subsets of ``n`` images (TensorFlow; see the module docstring).

    Args:
        num_available: n, scalar int32 tensor or int, at least ``num_images``.
        num_images: ν.

    Returns:
        int32 tensor (k, ν): one subset (0, …, ν−1) if n = ν, else the n cyclic windows.
    """
    num_available = tf.cast(num_available, tf.int32)
    count = tf.where(tf.equal(num_available, num_images), 1, num_available)
    starts = tf.range(count, dtype=tf.int32)[:, tf.newaxis]
    return (starts + tf.range(num_images, dtype=tf.int32)[tf.newaxis, :]) % num_available


class CharacterizeModule(tf.Module):
    """The five networks and the estimators of Sec. 2.3 in one graph (see module docstring).

    Args:
        weights: ``{network name: {"<layer>/<weight>": array}}`` for all of
            :data:`NETWORK_ORDER`.
        settings: ``{network name: settings}`` (batch-norm ε, output activation).
        image_size: side of the square input images, pixels.
        num_images: ν of CNN^0 and CNN^1.
        kernel_dtype: storage type of the kernels.
        num_levels: grey levels of the preprocessing.
        inversion_threshold: the t of Sec. 2.3.5.
        classifier_threshold: CNN^ρ_class output above which ρ̂(I) is rounded.
    """

    def __init__(self, weights: Mapping[str, Mapping[str, np.ndarray]],
                 settings: Mapping[str, dict], image_size: int, num_images: int,
                 kernel_dtype: str = "float16", num_levels: int = NUM_LEVELS,
                 inversion_threshold: float = INVERSION_THRESHOLD,
                 classifier_threshold: float = CLASSIFIER_THRESHOLD):
        super().__init__(name=CHARACTERIZE_MODEL_NAME)
        missing = [name for name in NETWORK_ORDER if name not in weights]
        if missing:
            raise ValueError(f"weights of {missing} missing; the composite needs all of "
                             f"{list(NETWORK_ORDER)}")
        if kernel_dtype not in KERNEL_DTYPES:
            raise ValueError(f"kernel_dtype must be one of {KERNEL_DTYPES}, got {kernel_dtype!r}")
        self.image_size = int(image_size)
        self.num_images = int(num_images)
        self.num_levels = int(num_levels)
        self.inversion_threshold = float(inversion_threshold)
        self.classifier_threshold = float(classifier_threshold)
        self.networks = {name: _NetworkGraph(name, weights[name], settings[name], kernel_dtype)
                         for name in NETWORK_ORDER}
        size = self.image_size
        raw_spec = tf.TensorSpec([None, None, size, size], tf.float32, name=IMAGES_INPUT)
        dose_spec = tf.TensorSpec([None, None], tf.float32, name=DOSE_INPUT)
        self.serve = tf.function(self._serve_raw, input_signature=[raw_spec, dose_spec])
        self.serve_uint16 = tf.function(
            self._serve_raw,
            input_signature=[tf.TensorSpec([None, None, size, size], tf.uint16,
                                           name=IMAGES_INPUT), dose_spec])
        self.serve_preprocessed = tf.function(
            self._serve_preprocessed,
            input_signature=[tf.TensorSpec([None, None, size, size], tf.float32,
                                           name=IMAGES_INPUT),
                             tf.TensorSpec([None, None, size, size], tf.float32,
                                           name=INVERTED_IMAGES_INPUT)])

    # The argument names below become the serving input names.
    def _serve_raw(self, images, electrons_per_pixel):
        images = tf.cast(images, tf.float32)
        plain = preprocess_images(images, num_levels=self.num_levels)
        inverted = preprocess_images(images, electrons_per_pixel,
                                     inversion_threshold=self.inversion_threshold,
                                     num_levels=self.num_levels)
        return self._estimate(plain, inverted)

    def _serve_preprocessed(self, images, inverted_images):
        return self._estimate(images, inverted_images)

    def _estimate(self, plain: tf.Tensor, inverted: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.shape(plain)
        batch, available = shape[0], shape[1]
        check = tf.debugging.assert_greater_equal(
            available, self.num_images,
            message=f"the multi-image networks need at least nu = {self.num_images} images "
                    "per sample")
        with tf.control_dependencies([check]):
            plain = tf.reshape(plain, [-1, self.image_size, self.image_size, 1])
        inverted = tf.reshape(inverted, [-1, self.image_size, self.image_size, 1])

        def per_image(name, images):
            network = self.networks[name]
            return network, network.features(images)

        outputs = {}
        per_image_values = {}
        for name, key in (("fractal_dimension", "fractal_dimension_per_image"),
                          ("mixing_ratio_regressor", "mixing_ratio_regressor_per_image"),
                          ("mixing_ratio_classifier", "homogeneous_probability_per_image")):
            network, features = per_image(name, plain)
            per_image_values[key] = tf.reshape(network.head(features), [batch, available])
        subsets = cyclic_subset_indices(available, self.num_images)
        num_subsets = tf.shape(subsets)[0]
        per_subset = {}
        for name, images in (("wo3_cluster_size", plain), ("tio2_cluster_size", inverted)):
            network, features = per_image(name, images)
            features = tf.reshape(features, [batch, available, features.shape[-1]])
            stacks = tf.gather(features, subsets, axis=1)  # (b, k, ν, 112), slot-major
            stacks = tf.reshape(stacks, [batch * num_subsets, -1])
            per_subset[name] = tf.reshape(network.head(stacks), [batch, num_subsets])

        regressor = per_image_values["mixing_ratio_regressor_per_image"]
        homogeneous = per_image_values["homogeneous_probability_per_image"] > \
            self.classifier_threshold
        mixing_per_image = tf.where(homogeneous, tf.round(regressor), regressor)
        outputs.update(per_image_values)
        outputs["mixing_ratio_per_image"] = mixing_per_image
        outputs["fractal_dimension"] = tf.reduce_mean(
            per_image_values["fractal_dimension_per_image"], axis=1)
        outputs["mixing_ratio"] = tf.reduce_mean(mixing_per_image, axis=1)
        outputs["mixing_ratio_regressor_only"] = tf.reduce_mean(regressor, axis=1)
        for name in ("wo3_cluster_size", "tio2_cluster_size"):
            raw = tf.reduce_mean(per_subset[name], axis=1)
            outputs[f"{name}_per_subset"] = per_subset[name]
            outputs[f"{name}_raw"] = raw
            # η: the nearest integer ≥ 0, as estimation.round_cluster_size (rounding first would
            # give −1 below −0.5; the clamp first keeps ties to even).
            outputs[name] = tf.cast(tf.round(tf.maximum(raw, 0.0)), tf.int32)
        outputs["theta_raw"] = tf.stack(
            [outputs["fractal_dimension"], outputs["mixing_ratio"],
             outputs["wo3_cluster_size_raw"], outputs["tio2_cluster_size_raw"]], axis=1)
        outputs["theta"] = tf.stack(
            [outputs["fractal_dimension"], outputs["mixing_ratio"],
             tf.cast(outputs["wo3_cluster_size"], tf.float32),
             tf.cast(outputs["tio2_cluster_size"], tf.float32)], axis=1)
        return {key: outputs[key] for key in OUTPUT_SHAPES}


class _WholeVariableShards(tf.train.experimental.ShardingCallback):
    """Variables shards of at most ``max_shard_bytes``, each variable whole in one shard.

    TensorFlow's ``MaxShardSizePolicy`` slices large variables across shards, and a SavedModel
    with sliced float16 variables then fails to load ("Dtype half not supported" in RestoreV2,
    TF 2.21). Kept whole, they load; the largest variable (the 36 864 × 224 dense kernel, 16 MiB
    in float16) bounds the shard size from below.
    """

    def __init__(self, max_shard_bytes: int):
        self.max_shard_bytes = int(max_shard_bytes)

    @property
    def description(self) -> str:
        return f"whole variables, shards of at most {self.max_shard_bytes} bytes"

    def __call__(self, shardable_tensors):
        shards, current, used = [], {}, 0
        for item in shardable_tensors:
            elements = item.tensor.shape.num_elements()
            size = 0 if item.dtype == tf.string or elements is None else \
                elements * item.dtype.size
            if current and used + size > self.max_shard_bytes:
                shards.append(current)
                current, used = {}, 0
            current.setdefault(item.checkpoint_key, {})[item.slice_spec] = item.tensor
            used += size
        if current:
            shards.append(current)
        return shards


def _check_models(models: Mapping[str, Any]) -> tuple[int, int]:
    """Image size and ν shared by the five Keras networks."""
    missing = [name for name in NETWORK_ORDER if name not in models]
    if missing:
        raise ValueError(f"networks {missing} missing; the composite needs all of "
                         f"{list(NETWORK_ORDER)}")
    sizes, stacks = set(), set()
    for name in NETWORK_ORDER:
        shape = tuple(models[name].input_shape)
        if models[name].name != name:
            raise ValueError(f"models[{name!r}] is the network {models[name].name!r}")
        sizes.add((shape[-3], shape[-2]))
        if NETWORK_SPECS[name].multi_image:
            stacks.add(shape[1])
    if len(sizes) != 1 or len(stacks) != 1:
        raise ValueError(f"the networks disagree on image size {sorted(sizes)} or nu "
                         f"{sorted(stacks)}")
    (height, width), = sizes
    if height != width:
        raise ValueError(f"square images expected, the networks take {height}×{width}")
    return int(height), int(stacks.pop())


def export_characterize_model(models: Mapping[str, Any], export_dir_base: Union[str, pathlib.Path],
                              version: int = 1, *, kernel_dtype: str = "float16",
                              pixel_size_nm: Optional[float] = None,
                              model_card: Optional[dict] = None,
                              overwrite: bool = False) -> pathlib.Path:
    """Writes the composite SavedModel of the five networks.

    Args:
        models: ``{network name: keras.Model}`` for all of :data:`NETWORK_ORDER`, built by
            :func:`hagg_tf.networks.build_network` with one image size and one ν.
        export_dir_base: TF Serving's model root; the export goes to
            ``<export_dir_base>/characterize/<version>``.
        version: positive integer.
        kernel_dtype: ``"float16"`` (half the size) or ``"float32"`` (bit-exact weights).
        pixel_size_nm: pixel size of the training images, nm; recorded so that clients can
            resample other images to it (:mod:`hagg_tf.estimation.characterize` does).
        model_card: JSON-able description of the networks (training data, accuracy, status),
            stored in the metadata file and printed by ``hagg-characterize``.
        overwrite: replace an existing version directory.

    Returns:
        The version directory.

    Raises:
        FileExistsError: the version exists and ``overwrite`` is False.
        ValueError: networks missing or inconsistent, bad version or dtype.
    """
    version = int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    image_size, num_images = _check_models(models)
    version_dir = pathlib.Path(export_dir_base) / CHARACTERIZE_MODEL_NAME / str(version)
    if version_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{version_dir} exists; pass overwrite=True to replace it")
        shutil.rmtree(version_dir)
    weights = {name: network_weights(models[name]) for name in NETWORK_ORDER}
    settings = {name: _network_settings(models[name]) for name in NETWORK_ORDER}
    module = CharacterizeModule(weights, settings, image_size, num_images, kernel_dtype)
    signatures = {
        "serving_default": module.serve.get_concrete_function(),
        UINT16_ENDPOINT: module.serve_uint16.get_concrete_function(),
        PREPROCESSED_ENDPOINT: module.serve_preprocessed.get_concrete_function(),
    }
    options = tf.saved_model.SaveOptions(
        experimental_sharding_callback=_WholeVariableShards(MAX_SHARD_BYTES))
    tf.saved_model.save(module, str(version_dir), signatures=signatures, options=options)

    metadata = {
        "format": METADATA_FORMAT,
        "model_name": CHARACTERIZE_MODEL_NAME,
        "version": version,
        "signatures": {
            "serving_default": {"inputs": {IMAGES_INPUT: ["b", "n", image_size, image_size],
                                           DOSE_INPUT: ["b", "n"]},
                                "images_dtype": "float32"},
            UINT16_ENDPOINT: {"inputs": {IMAGES_INPUT: ["b", "n", image_size, image_size],
                                         DOSE_INPUT: ["b", "n"]},
                              "images_dtype": "uint16"},
            PREPROCESSED_ENDPOINT: {"inputs": {
                IMAGES_INPUT: ["b", "n", image_size, image_size],
                INVERTED_IMAGES_INPUT: ["b", "n", image_size, image_size]}},
        },
        "outputs": OUTPUT_SHAPES,
        "image_size": image_size,
        "num_images": num_images,
        "architecture": settings[NETWORK_ORDER[0]]["architecture"],
        "pixel_size_nm": pixel_size_nm,
        "kernel_dtype": kernel_dtype,
        "preprocessing": {"num_levels": module.num_levels,
                          "inversion_threshold": module.inversion_threshold},
        "estimators": {
            "classifier_threshold": module.classifier_threshold,
            "subsets": "n = nu: the images in the given order; n > nu: the n cyclic windows "
                       "{(k + j) mod n : j < nu}, raw outputs averaged, then rounded",
            "rounding": "nearest integer >= 0, ties to even",
        },
        "networks": {name: {"parameters": int(sum(np.prod(value.shape)
                                                  for value in weights[name].values())),
                            **settings[name]} for name in NETWORK_ORDER},
        "model_card": model_card or {},
    }
    (version_dir / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2) + "\n")
    return version_dir


def load_network_weights(source) -> dict[str, dict[str, np.ndarray]]:
    """The Keras weights of the five networks stored in a composite export, as float32.

    With ``set_network_weights(build_network(name, image_size, num_images, architecture=...),
    weights[name])`` (the architecture is in the metadata) the
    Keras networks come back (bit-exact for ``kernel_dtype="float32"``; kernels rounded to
    float16 otherwise). ``tools/export_models.py`` uses this to recreate per-network exports.

    Args:
        source: export base, model or version directory, or an already loaded export
            (``tf.saved_model.load``) or :class:`CharacterizeModule`.
    """
    if isinstance(source, (str, pathlib.Path)):
        loaded = tf.saved_model.load(str(resolve_version_dir(source)))
    else:
        loaded = source
    return {name: {key: np.asarray(variable.numpy(), dtype=np.float32)
                   for key, variable in loaded.networks[name].weights.items()}
            for name in NETWORK_ORDER}
