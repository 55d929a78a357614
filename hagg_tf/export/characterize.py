"""The composite "characterize" SavedModel: STEM images of one sample in, θ̂ out (SPEC §9–10).

One SavedModel holds the weights of all five networks (CNN^Df, CNN^ρ_reg, CNN^ρ_class, CNN^0,
CNN^1) and one TensorFlow graph that runs, for ``n ≥ ν`` images of one sample,

1. the paper's preprocessing (:func:`hagg_tf.networks.preprocess_images`: scaling to [-0.5, 0.5]
   and 256 levels; for CNN^1 first p → 1/p for p > t = 0.001, Sec. 2.3.5);
2. the feature extractor f on all images at once, one pass per distinct f (``feature_source``;
   one for the shared backbone's five copies), times 8 in an export with test-time symmetry
   averaging (:class:`CharacterizeModule`): the whole cost of the estimate;
3. the heads g and the estimators of Sec. 2.3 (see :mod:`hagg_tf.estimation.estimators`):
   θ̂_Df = mean_i CNN^Df(I_i) (Eq. 13); ρ̂(I) = η(CNN^ρ_reg(I)) if CNN^ρ_class(I) > 0.5 else
   CNN^ρ_reg(I), θ̂_ρ = mean_i ρ̂(I_i) (Eq. 14) — or, in an export with sample heads
   (:mod:`hagg_tf.data.sample_heads`), θ̂_Df and θ̂_ρ from those heads on summaries of the
   per-image outputs, the two means then kept as ``fractal_dimension_images_mean`` and
   ``mixing_ratio_images_mean``; θ̂_0 = η(CNN^0(ν-stack)),
   θ̂_1 = η(CNN^1(inverse-intensity ν-stack)) with η rounding to the nearest integer ≥ 0. The
   multi-image heads are averaged over the ``n`` cyclic ν-subsets {(k + j) mod n : j < ν},
   k = 0..n−1, in which every image sits in every slot exactly once (for ``n = ν`` the ν
   rotations of the stack); since f runs once per image and g is tiny, the extra subsets cost
   nothing measurable.

The networks in the graph are the Keras networks themselves: each is rebuilt with
:func:`hagg_tf.networks.build_network` (the architecture recorded in the export), and the graph
calls its feature extractor f (:func:`~hagg_tf.networks.get_feature_extractor`) and head g
(:func:`~hagg_tf.networks.architecture.get_head`) with ``training=False`` — batch normalisation
in Keras' inference mode, nothing rewritten by hand. They run through Keras' ``stateless_call``
on the stored variables, so the SavedModel holds each weight once, under its Keras name.

Layout (TF Serving's ``<model>/<version>/``)::

    <export_dir_base>/characterize/<version>/
        saved_model.pb  variables/  fingerprint.pb  assets/
        hagg_tf_export.json     # signatures, shapes, pixel size, estimator settings, model card

Signatures (``b`` samples of ``n`` images each, ``H = W`` = the networks' input size):

* ``serving_default``: ``images`` float32 (b, n, H, W) raw detector counts (or intensity
  fractions with ``electrons_per_pixel`` = 1), ``electrons_per_pixel`` float32 (b, n); n ≥ ν;
* ``serving_uint16``: the same with ``images`` as uint16 counts (the on-disk format);
* ``serving_preprocessed``: ``images`` float32 (b, n, H, W) already preprocessed for CNN^Df,
  CNN^ρ and CNN^0, and ``inverted_images`` float32 (b, n, H, W) preprocessed with the 1/p
  inversion for CNN^1;
* ``serving_per_image`` (:data:`~hagg_tf.estimation.model.PER_IMAGE_SIGNATURE`): the inputs of
  ``serving_default``, any n ≥ 1; outputs the raw per-image outputs of CNN^Df, CNN^ρ_reg and
  CNN^ρ_class (``fractal_dimension_per_image``, ``mixing_ratio_regressor_per_image``,
  ``homogeneous_probability_per_image``, (b, n)) and the features f(I) of CNN^0 and CNN^1
  (``wo3_cluster_size_features``, ``tio2_cluster_size_features``, (b, n, F));
* ``serving_cluster_heads`` (:data:`~hagg_tf.estimation.model.CLUSTER_HEADS_SIGNATURE`):
  ``wo3_cluster_size_features`` and ``tio2_cluster_size_features`` float32 (k, ν, F), k stacks of
  ν feature vectors in slot order; outputs the heads g before rounding,
  ``wo3_cluster_size_raw`` and ``tio2_cluster_size_raw`` (k,).

The last two hold everything θ̂ is made of: θ̂ of ``serving_default`` is recomputed from them in
numpy (means, :func:`~hagg_tf.estimation.combine_mixing_ratio`, the heads averaged over
:func:`~hagg_tf.estimation.cyclic_subsets`, η), so a light runtime needs only these two, and a
bootstrap over the images runs f once per image.

Outputs of the first three: ``theta`` (b, 4) = (θ̂_Df, θ̂_ρ, θ̂_0, θ̂_1) with the cluster sizes
rounded, ``theta_raw`` (b, 4) with the cluster sizes before rounding (θ̂_Df and θ̂_ρ are means and
are not rounded, so both vectors share them), the same as named scalars (``fractal_dimension``,
``mixing_ratio``, ``mixing_ratio_regressor_only``, ``wo3_cluster_size`` int32,
``wo3_cluster_size_raw``, ``tio2_cluster_size`` int32, ``tio2_cluster_size_raw``, all (b,)),
every network's raw output per image (``fractal_dimension_per_image``,
``mixing_ratio_regressor_per_image``, ``homogeneous_probability_per_image``,
``mixing_ratio_per_image``, all (b, n)) and per ν-subset (``wo3_cluster_size_per_subset``,
``tio2_cluster_size_per_subset``, (b, n)).

Storage: the Keras weights of every network under their layer names (so the Keras networks can
be rebuilt from the export, see :func:`load_network_weights`), transformed by
:func:`stored_weights`: kernels of convolutions and dense layers optionally as float16
(``kernel_dtype="float16"``, half the size; 99.4 % of the weights are kernels), everything else
float32; the graph casts them back to float32 before the Keras layers see them. Variables are
written in shards of at most 40 MiB, each variable whole.
"""
from __future__ import annotations

import pathlib
import shutil
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from hagg_tf.data.pooled import SQUARE_SYMMETRIES
from hagg_tf.data.network_specs import (INVERSE_INPUT_KEY, MULTI_IMAGE_NETWORKS,
                                        SINGLE_IMAGE_NETWORKS, takes_inverse_intensities)
from hagg_tf.data.sample_heads import (SAMPLE_HEAD_TARGETS, SAMPLE_HEADS_FILE, SUMMARY_FEATURES,
                                       SampleHeads, apply_sample_heads_tf)
from hagg_tf.estimation.model import (CHARACTERIZE_MODEL_NAME, CLUSTER_HEAD_OUTPUTS,
                                      CLUSTER_HEADS_SIGNATURE, METADATA_FORMAT,
                                      PER_IMAGE_OUTPUTS, PER_IMAGE_SIGNATURE,
                                      TEST_TIME_SYMMETRIES_KEY, TIO2_FEATURES, WO3_FEATURES,
                                      averaged_symmetries, resolve_version_dir)
from hagg_tf.export.saved_model import DOSE_INPUT, IMAGES_INPUT, METADATA_FILENAME, UINT16_ENDPOINT
from hagg_tf.model.io import write_json_atomic
from hagg_tf.networks.architecture import (CLASSIFIER_THRESHOLD, DEFAULT_ARCHITECTURE,
                                           NETWORK_NAMES, NETWORK_SPECS, architecture_of,
                                           build_network, get_feature_extractor, get_head,
                                           network_spec)
from hagg_tf.networks.preprocessing import INVERSION_THRESHOLD, NUM_LEVELS, preprocess_images

#: Signature taking preprocessed images.
PREPROCESSED_ENDPOINT = "serving_preprocessed"
#: Name of the second image input of :data:`PREPROCESSED_ENDPOINT` (inverse intensities).
INVERTED_IMAGES_INPUT = "inverted_images"
#: The five networks, in the order their weights are stored and their outputs computed.
NETWORK_ORDER = NETWORK_NAMES
#: Storage types of the kernels.
KERNEL_DTYPES = ("float32", "float16")
#: Largest variables shard written (bytes): keeps each file well below git hosts' limits.
MAX_SHARD_BYTES = 40 * 2 ** 20

# Output names of the θ̂ signatures, in a fixed order (also the order of the metadata's
# "outputs").
OUTPUT_SHAPES = {
    "theta": ["b", 4], "theta_raw": ["b", 4],
    "fractal_dimension": ["b"], "mixing_ratio": ["b"], "mixing_ratio_regressor_only": ["b"],
    "fractal_dimension_images_mean": ["b"], "mixing_ratio_images_mean": ["b"],
    "wo3_cluster_size": ["b"], "wo3_cluster_size_raw": ["b"],
    "tio2_cluster_size": ["b"], "tio2_cluster_size_raw": ["b"],
    "fractal_dimension_per_image": ["b", "n"], "mixing_ratio_regressor_per_image": ["b", "n"],
    "homogeneous_probability_per_image": ["b", "n"], "mixing_ratio_per_image": ["b", "n"],
    "wo3_cluster_size_per_subset": ["b", "k"], "tio2_cluster_size_per_subset": ["b", "k"],
}
#: The single-image networks and their per-image output (of every signature but the heads').
PER_IMAGE_NETWORK_OUTPUTS = dict(zip(SINGLE_IMAGE_NETWORKS, PER_IMAGE_OUTPUTS[:3],
                                     strict=True))
#: The multi-image networks, their feature output / heads input, and their raw head output.
CLUSTER_NETWORK_FEATURES = dict(zip(MULTI_IMAGE_NETWORKS, (WO3_FEATURES, TIO2_FEATURES),
                                    strict=True))
CLUSTER_NETWORK_RAW = dict(zip(CLUSTER_NETWORK_FEATURES, CLUSTER_HEAD_OUTPUTS))


def _network_layers(model) -> list:
    """The layers holding weights of a network: those of f, then those of g, in call order."""
    return [layer for layer in list(get_feature_extractor(model).layers)
            + list(get_head(model).layers) if layer.weights]


def network_weights(model) -> dict[str, np.ndarray]:
    """The weights of a network from :func:`hagg_tf.networks.build_network`, by layer.

    Args:
        model: a Keras network (any stack strategy).

    Returns:
        ``{"<layer>/<weight>": array}`` for every layer of f (``f_conv_k``, ``f_batch_norm_k``,
        ``f_dense_224``, ``f_dense_112``) and of g (``g_dense_44``, ``g_dense_1``), float32.
    """
    return {f"{layer.name}/{variable.name}": np.asarray(variable, dtype=np.float32)
            for layer in _network_layers(model) for variable in layer.weights}


def set_network_weights(model, weights: Mapping[str, np.ndarray]) -> None:
    """Inverse of :func:`network_weights`: loads ``weights`` into a freshly built network.

    Raises:
        ValueError: a weight is missing or has the wrong shape.
    """
    for layer in _network_layers(model):
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


def _is_kernel(key: str) -> bool:
    return key.endswith("/kernel")


def stored_weights(weights: Mapping[str, np.ndarray], kernel_dtype: str = "float32"
                   ) -> dict[str, np.ndarray]:
    """The weights as the composite stores them: kernels in ``kernel_dtype``, the rest float32.

    A weight transformation, not a change of the network: the graph casts every stored weight
    back to float32 and runs the unchanged Keras layers on it, so the exported network is the
    Keras network with ``{key: value.astype(float32)}`` of this dict as its weights. Kernels of
    convolutions and dense layers are 99.4 % of the weights, so float16 halves the export;
    each kernel entry then changes by at most 2⁻¹¹ relative (float16 rounding; values beyond
    ±65 504 would overflow, trained kernels are far below). Biases and batch-norm statistics
    stay float32.

    Args:
        weights: ``{"<layer>/<weight>": array}`` as from :func:`network_weights`.
        kernel_dtype: one of :data:`KERNEL_DTYPES`.

    Raises:
        ValueError: unknown ``kernel_dtype``.
    """
    if kernel_dtype not in KERNEL_DTYPES:
        raise ValueError(f"kernel_dtype must be one of {KERNEL_DTYPES}, got {kernel_dtype!r}")
    return {key: np.asarray(value, dtype=kernel_dtype if _is_kernel(key) else np.float32)
            for key, value in weights.items()}


def _network_settings(model, inverse_input: Optional[bool] = None) -> dict[str, Any]:
    """What the metadata records of a network besides its weights (the architecture rebuilds
    it; its input (None: the paper's), batch-norm ε and the output activation describe it)."""
    spec = network_spec(model.name)
    if inverse_input is None:
        inverse_input = takes_inverse_intensities(model.name)
    feature_extractor = get_feature_extractor(model)
    epsilons = [float(layer.epsilon) for layer in feature_extractor.layers
                if hasattr(layer, "moving_variance")]
    settings = {"epsilon": epsilons, "activation": spec.output_activation,
                "architecture": architecture_of(model).name,
                INVERSE_INPUT_KEY: bool(inverse_input),
                "input_shape": [None if size is None else int(size)
                                for size in model.input_shape]}
    output_layer = get_head(model).layers[-1]
    if spec.output_activation == "scaled_sigmoid":
        settings["scale"] = float(output_layer.scale)
        settings["offset"] = float(output_layer.offset)
    return settings


class _KerasParts:
    """Holds the Keras objects of one network outside TensorFlow's object tracking, so that
    the SavedModel stores the weights once, as :attr:`_KerasNetwork.weights`."""

    def __init__(self, model, feature_extractor, head, keys):
        self.model, self.feature_extractor, self.head, self.keys = (model, feature_extractor,
                                                                    head, keys)


class _KerasNetwork(tf.Module):
    """One network: its weights as stored variables, and its Keras f and g run on them.

    The Keras network is rebuilt with :func:`hagg_tf.networks.build_network` (the architecture
    from ``settings``) and given ``weights``. The graph runs its feature extractor f and head g
    (``training=False``) through ``stateless_call`` on the stored variables cast to float32, so
    what runs is the Keras network and what is stored is :func:`stored_weights`.

    Args:
        name: network name (a key of :data:`NETWORK_SPECS`).
        weights: ``{"<layer>/<weight>": array}`` as from :func:`network_weights`.
        settings: from :func:`_network_settings` (only ``architecture`` is used; exports written
            before architectures existed are Table 3).
        image_size: side of the square input images, pixels.
        num_images: ν (multi-image networks).
        kernel_dtype: storage type of the kernels (``"float32"`` or ``"float16"``).
    """

    def __init__(self, name: str, weights: Mapping[str, np.ndarray], settings: Mapping,
                 image_size: int, num_images: int, kernel_dtype: str,
                 earlier: Sequence["_KerasNetwork"] = ()):
        super().__init__(name=name)
        self.spec = network_spec(name)
        self.settings = dict(settings)
        # Exports written before the setting existed are the paper's networks.
        self.inverse_input = takes_inverse_intensities(name, self.settings)
        model = build_network(name, image_size, num_images,
                              architecture=self.settings.get("architecture",
                                                             DEFAULT_ARCHITECTURE))
        set_network_weights(model, weights)  # checks names and shapes
        keys = {id(variable): f"{layer.name}/{variable.name}"
                for layer in _network_layers(model) for variable in layer.weights}
        self.f_weights = [(f"{layer.name}/{variable.name}",
                           np.asarray(weights[f"{layer.name}/{variable.name}"]))
                          for layer in get_feature_extractor(model).layers
                          for variable in layer.weights]
        # The first earlier network with the same input and a bit-identical f (the shared
        # backbone's copies): its f runs for this one too, and its variables hold f's weights,
        # so that the SavedModel stores them once.
        self.feature_source = next((other for other in earlier if self._same_f(other)), self)
        shared = {} if self.feature_source is self else {
            key: self.feature_source.weights[key] for key, _ in self.f_weights}
        # Keys keep the Keras layer/weight names so that the Keras model can be rebuilt.
        self.weights = {
            key: shared[key] if key in shared else tf.Variable(
                value, trainable=False, name=key.replace("/", "."))
            for key, value in sorted(stored_weights(
                {key: weights[key] for key in keys.values()}, kernel_dtype).items())}
        self._keras = _KerasParts(model, get_feature_extractor(model), get_head(model), keys)
        # Traced once each and called from every signature's graph (tracing Keras is the slow
        # part of an export).
        self.features = tf.function(self._features, input_signature=[tf.TensorSpec(
            [None, image_size, image_size, 1], tf.float32, name="images")])
        self.head = tf.function(self._head, input_signature=[tf.TensorSpec(
            self._keras.head.input_shape, tf.float32, name="features")])

    def _same_f(self, other: "_KerasNetwork") -> bool:
        return (other.settings.get("architecture") == self.settings.get("architecture")
                and other.inverse_input == self.inverse_input
                and len(other.f_weights) == len(self.f_weights)
                and all(key == other_key and value.shape == other_value.shape
                        and np.array_equal(value, other_value)
                        for (key, value), (other_key, other_value)
                        in zip(self.f_weights, other.f_weights)))

    @property
    def keras_model(self):
        """The rebuilt Keras network (its own variables hold the float32 weights given)."""
        return self._keras.model

    def _call(self, keras_model, inputs: tf.Tensor) -> tf.Tensor:
        def values(variables):
            return [tf.cast(self.weights[self._keras.keys[id(variable)]], tf.float32)
                    for variable in variables]

        outputs, _ = keras_model.stateless_call(values(keras_model.trainable_variables),
                                                values(keras_model.non_trainable_variables),
                                                inputs, training=False)
        return outputs

    def _features(self, images: tf.Tensor) -> tf.Tensor:
        """f (:attr:`features`): ``(m, H, W, 1)`` preprocessed images → ``(m, F)`` features."""
        return self._call(self._keras.feature_extractor, images)

    def _head(self, features: tf.Tensor) -> tf.Tensor:
        """g plus output activation (:attr:`head`): ``(m, b·F)`` concatenated features (b = 1
        or ν) → ``(m,)``."""
        return self._call(self._keras.head, features)[:, 0]

    @property
    def feature_dim(self) -> int:
        """F, the length of f's feature vector."""
        return int(self._keras.feature_extractor.output_shape[-1])


def cyclic_subset_indices(num_available, num_images: int) -> tf.Tensor:
    """Image indices of the ν-subsets of ``n`` images (TensorFlow; see the module docstring).

    Args:
        num_available: n, scalar int32 tensor or int, at least ``num_images``.
        num_images: ν.

    Returns:
        int32 tensor (n, ν): the n cyclic windows (for n = ν the ν rotations of one stack).
    """
    num_available = tf.cast(num_available, tf.int32)
    starts = tf.range(num_available, dtype=tf.int32)[:, tf.newaxis]
    return (starts + tf.range(num_images, dtype=tf.int32)[tf.newaxis, :]) % num_available


class CharacterizeModule(tf.Module):
    """The five Keras networks and the estimators of Sec. 2.3 in one graph (module docstring).

    Args:
        weights: ``{network name: {"<layer>/<weight>": array}}`` for all of
            :data:`NETWORK_ORDER`.
        settings: ``{network name: settings}`` as from :func:`_network_settings` (the
            architecture to rebuild each network with).
        image_size: side of the square input images, pixels.
        num_images: ν of CNN^0 and CNN^1.
        kernel_dtype: storage type of the kernels (:func:`stored_weights`).
        num_levels: grey levels of the preprocessing.
        inversion_threshold: the t of Sec. 2.3.5.
        classifier_threshold: CNN^ρ_class output above which ρ̂(I) is rounded.
        sample_heads: θ̂_Df and θ̂_ρ from the sample heads (:mod:`hagg_tf.data.sample_heads`);
            None: the means of Eqs. 13–14.
        test_time_symmetries: 1, or :data:`~hagg_tf.data.pooled.SQUARE_SYMMETRIES`: f runs on
            every image under each of the square's 8 symmetries (the training augmentation),
            and each per-image output is the mean of its head over the 8 passes, each feature
            vector of CNN^0 / CNN^1 the mean of the 8 (:meth:`_symmetric_passes`).
    """

    def __init__(self, weights: Mapping[str, Mapping[str, np.ndarray]],
                 settings: Mapping[str, dict], image_size: int, num_images: int,
                 kernel_dtype: str = "float16", num_levels: int = NUM_LEVELS,
                 inversion_threshold: float = INVERSION_THRESHOLD,
                 classifier_threshold: float = CLASSIFIER_THRESHOLD,
                 sample_heads: Optional[SampleHeads] = None,
                 test_time_symmetries: int = 1):
        super().__init__(name=CHARACTERIZE_MODEL_NAME)
        if test_time_symmetries not in (1, SQUARE_SYMMETRIES):
            raise ValueError(f"test_time_symmetries must be 1 or {SQUARE_SYMMETRIES}, got "
                             f"{test_time_symmetries!r}")
        self.test_time_symmetries = int(test_time_symmetries)
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
        # Not trackable state: the heads' weights enter the graph as constants when traced.
        self._sample_heads = sample_heads
        self.networks = {}
        for name in NETWORK_ORDER:
            self.networks[name] = _KerasNetwork(name, weights[name], settings[name],
                                                self.image_size, self.num_images, kernel_dtype,
                                                earlier=list(self.networks.values()))
        # Networks whose f is bit-identical (the shared backbone's five copies) and which take
        # the same images share one pass of f per image, one for all five in characterize/3.
        self.feature_source = {name: network.feature_source.name
                               for name, network in self.networks.items()}
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
        self.serve_per_image = tf.function(self._serve_per_image,
                                           input_signature=[raw_spec, dose_spec])
        self.serve_cluster_heads = tf.function(
            self._serve_cluster_heads,
            input_signature=[tf.TensorSpec([None, self.num_images, self.feature_dims[name]],
                                           tf.float32, name=CLUSTER_NETWORK_FEATURES[name])
                             for name in CLUSTER_NETWORK_FEATURES])

    @property
    def feature_dims(self) -> dict[str, int]:
        """``{network name: F}``, the feature length of every network's f."""
        return {name: network.feature_dim for name, network in self.networks.items()}

    def signatures(self) -> dict[str, Any]:
        """``{signature name: concrete function}`` of every serving signature."""
        return {"serving_default": self.serve.get_concrete_function(),
                UINT16_ENDPOINT: self.serve_uint16.get_concrete_function(),
                PREPROCESSED_ENDPOINT: self.serve_preprocessed.get_concrete_function(),
                PER_IMAGE_SIGNATURE: self.serve_per_image.get_concrete_function(),
                CLUSTER_HEADS_SIGNATURE: self.serve_cluster_heads.get_concrete_function()}

    # The argument names below become the serving input names.
    def _preprocess(self, images, electrons_per_pixel) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.cast(images, tf.float32)
        plain = preprocess_images(images, num_levels=self.num_levels)
        inverted = preprocess_images(images, electrons_per_pixel,
                                     inversion_threshold=self.inversion_threshold,
                                     num_levels=self.num_levels)
        return plain, inverted

    def _serve_raw(self, images, electrons_per_pixel):
        return self._estimate(*self._preprocess(images, electrons_per_pixel))

    def _serve_preprocessed(self, images, inverted_images):
        return self._estimate(images, inverted_images)

    def _serve_per_image(self, images, electrons_per_pixel):
        return self._per_image(*self._preprocess(images, electrons_per_pixel))

    def _serve_cluster_heads(self, wo3_cluster_size_features, tio2_cluster_size_features):
        features = dict(zip(CLUSTER_NETWORK_FEATURES, (wo3_cluster_size_features,
                                                        tio2_cluster_size_features)))
        return {CLUSTER_NETWORK_RAW[name]: self._cluster_head(name, features[name])
                for name in CLUSTER_NETWORK_FEATURES}

    def _symmetric_passes(self, images: tf.Tensor) -> tf.Tensor:
        """(m, H, W, 1) images → (s·m, H, W, 1): the s = :attr:`test_time_symmetries` elements
        of the square's symmetry group, element-major (as
        :func:`hagg_tf.data.pooled.square_symmetry`; the mean over all of them does not depend
        on their order)."""
        if self.test_time_symmetries == 1:
            return images
        passes = []
        for index in range(self.test_time_symmetries):
            rotated = tf.image.rot90(images, index % 4)
            passes.append(tf.reverse(rotated, axis=[2]) if index >= 4 else rotated)
        return tf.concat(passes, axis=0)

    def _mean_over_passes(self, values: tf.Tensor) -> tf.Tensor:
        """(s·m, ...) element-major → (m, ...), the mean over the s symmetric passes."""
        if self.test_time_symmetries == 1:
            return values
        shape = tf.shape(values)
        passes = tf.reshape(values, tf.concat([[self.test_time_symmetries, -1], shape[1:]], 0))
        return tf.reduce_mean(passes, axis=0)

    def _per_image(self, plain: tf.Tensor, inverted: tf.Tensor) -> dict[str, tf.Tensor]:
        """(b, n, H, W) preprocessed images → the outputs of :data:`PER_IMAGE_SIGNATURE`."""
        shape = tf.shape(plain)
        batch, available = shape[0], shape[1]
        images = {False: tf.reshape(plain, [-1, self.image_size, self.image_size, 1]),
                  True: tf.reshape(inverted, [-1, self.image_size, self.image_size, 1])}
        computed = {}

        def features_of(name):
            """(s·m, F): f of every symmetric pass of every image."""
            source = self.networks[self.feature_source[name]]
            if source.name not in computed:
                computed[source.name] = source.features(
                    self._symmetric_passes(images[source.inverse_input]))
            return computed[source.name]

        outputs = {}
        for name, key in PER_IMAGE_NETWORK_OUTPUTS.items():
            values = self._mean_over_passes(self.networks[name].head(features_of(name)))
            outputs[key] = tf.reshape(values, [batch, available])
        for name, key in CLUSTER_NETWORK_FEATURES.items():
            outputs[key] = tf.reshape(self._mean_over_passes(features_of(name)),
                                      [batch, available, self.networks[name].feature_dim])
        return {key: outputs[key] for key in PER_IMAGE_OUTPUTS}

    def _cluster_head(self, name: str, stacks: tf.Tensor) -> tf.Tensor:
        """(k, ν, F) features in slot order → (k,) raw output of the head of ``name``."""
        network = self.networks[name]
        # Slot-major concatenation, as the network's Flatten of (k, ν, F).
        return network.head(tf.reshape(stacks, [-1, self.num_images * network.feature_dim]))

    def _estimate(self, plain: tf.Tensor, inverted: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.shape(plain)
        batch, available = shape[0], shape[1]
        check = tf.debugging.assert_greater_equal(
            available, self.num_images,
            message=f"the multi-image networks need at least nu = {self.num_images} images "
                    "per sample")
        with tf.control_dependencies([check]):
            plain = tf.identity(plain)
        outputs = self._per_image(plain, inverted)
        subsets = cyclic_subset_indices(available, self.num_images)
        num_subsets = tf.shape(subsets)[0]
        for name, key in CLUSTER_NETWORK_FEATURES.items():
            stacks = tf.gather(outputs.pop(key), subsets, axis=1)  # (b, k, ν, F), slot-major
            stacks = tf.reshape(stacks, [batch * num_subsets, self.num_images, -1])
            per_subset = tf.reshape(self._cluster_head(name, stacks), [batch, num_subsets])
            raw = tf.reduce_mean(per_subset, axis=1)
            outputs[f"{name}_per_subset"] = per_subset
            outputs[CLUSTER_NETWORK_RAW[name]] = raw
            # η: the nearest integer ≥ 0, as estimation.round_cluster_size (rounding first would
            # give −1 below −0.5; the clamp first keeps ties to even).
            outputs[name] = tf.cast(tf.round(tf.maximum(raw, 0.0)), tf.int32)

        regressor = outputs["mixing_ratio_regressor_per_image"]
        homogeneous = outputs["homogeneous_probability_per_image"] > self.classifier_threshold
        mixing_per_image = tf.where(homogeneous, tf.round(regressor), regressor)
        outputs["mixing_ratio_per_image"] = mixing_per_image
        outputs["fractal_dimension_images_mean"] = tf.reduce_mean(
            outputs["fractal_dimension_per_image"], axis=1)
        outputs["mixing_ratio_images_mean"] = tf.reduce_mean(mixing_per_image, axis=1)
        outputs["mixing_ratio_regressor_only"] = tf.reduce_mean(regressor, axis=1)
        if self._sample_heads is None:
            outputs["fractal_dimension"] = outputs["fractal_dimension_images_mean"]
            outputs["mixing_ratio"] = outputs["mixing_ratio_images_mean"]
        else:
            outputs.update(apply_sample_heads_tf(
                self._sample_heads, outputs["fractal_dimension_per_image"], regressor,
                outputs["homogeneous_probability_per_image"]))
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
                              inverse_intensity_networks: Optional[Sequence[str]] = None,
                              sample_heads: Optional[SampleHeads] = None,
                              test_time_symmetries: int = 1,
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
        inverse_intensity_networks: networks that take the 1/p images of Sec. 2.3.5; None:
            the paper's choice (CNN^1). Recorded per network (``INVERSE_INPUT_KEY``).
        sample_heads: θ̂_Df and θ̂_ρ from these sample heads (:mod:`hagg_tf.data.sample_heads`),
            written beside the metadata as ``sample_heads.npz``; None: the means of Eqs. 13–14.
        test_time_symmetries: see :class:`CharacterizeModule`; recorded in the metadata
            (:data:`~hagg_tf.estimation.model.TEST_TIME_SYMMETRIES_KEY`).
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
    if inverse_intensity_networks is None:
        inverse_intensity_networks = [name for name in NETWORK_ORDER
                                      if takes_inverse_intensities(name)]
    unknown = sorted(set(inverse_intensity_networks) - set(NETWORK_ORDER))
    if unknown:
        raise ValueError(f"inverse_intensity_networks: unknown networks {unknown}")
    settings = {name: _network_settings(models[name], name in inverse_intensity_networks)
                for name in NETWORK_ORDER}
    module = CharacterizeModule(weights, settings, image_size, num_images, kernel_dtype,
                                sample_heads=sample_heads,
                                test_time_symmetries=test_time_symmetries)
    signatures = module.signatures()
    options = tf.saved_model.SaveOptions(
        experimental_sharding_callback=_WholeVariableShards(MAX_SHARD_BYTES))
    tf.saved_model.save(module, str(version_dir), signatures=signatures, options=options)
    feature_dims = module.feature_dims
    estimators = {
        "classifier_threshold": module.classifier_threshold,
        "subsets": "the n cyclic windows {(k + j) mod n : j < nu} (n = nu: the nu rotations "
                   "of the stack), raw outputs averaged, then rounded",
        "rounding": "nearest integer >= 0, ties to even",
    }
    if sample_heads is not None:
        sample_heads.save(version_dir / SAMPLE_HEADS_FILE)
        estimators["sample_heads"] = {
            "file": SAMPLE_HEADS_FILE, "targets": list(SAMPLE_HEAD_TARGETS),
            "features": list(SUMMARY_FEATURES),
            "how": "theta_Df and theta_rho from dense heads on summaries of the per-image "
                   "outputs (hagg_tf.data.sample_heads), not the means of Eqs. 13-14"}

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
            # The two below have their own outputs (the θ̂ signatures above share "outputs").
            PER_IMAGE_SIGNATURE: {
                "inputs": {IMAGES_INPUT: ["b", "n", image_size, image_size],
                           DOSE_INPUT: ["b", "n"]},
                "images_dtype": "float32",
                "outputs": {**{key: ["b", "n"] for key in PER_IMAGE_NETWORK_OUTPUTS.values()},
                            **{key: ["b", "n", feature_dims[name]]
                               for name, key in CLUSTER_NETWORK_FEATURES.items()}}},
            CLUSTER_HEADS_SIGNATURE: {
                "inputs": {key: ["k", num_images, feature_dims[name]]
                           for name, key in CLUSTER_NETWORK_FEATURES.items()},
                "outputs": {key: ["k"] for key in CLUSTER_NETWORK_RAW.values()}},
        },
        "outputs": OUTPUT_SHAPES,
        "image_size": image_size,
        "num_images": num_images,
        "architecture": settings[NETWORK_ORDER[0]]["architecture"],
        "pixel_size_nm": pixel_size_nm,
        "kernel_dtype": kernel_dtype,
        "preprocessing": {"num_levels": module.num_levels,
                          "inversion_threshold": module.inversion_threshold,
                          "inverse_intensity_networks": [
                              name for name in NETWORK_ORDER
                              if module.networks[name].inverse_input]},
        "estimators": estimators,
        TEST_TIME_SYMMETRIES_KEY: module.test_time_symmetries,
        # The network whose pass of f each network uses (itself when it has its own f).
        "feature_source": dict(module.feature_source),
        "networks": {name: {"parameters": int(sum(np.prod(value.shape)
                                                  for value in weights[name].values())),
                            **settings[name]} for name in NETWORK_ORDER},
        "model_card": model_card or {},
    }
    write_json_atomic(version_dir / METADATA_FILENAME, metadata)
    return version_dir


def feature_passes(metadata: Mapping) -> int:
    """Passes of f per image that a composite export runs, from its ``hagg_tf_export.json``.

    The distinct networks of its ``feature_source`` record (exports written before the record
    existed had one f per network), each run once per symmetry the export averages over.
    """
    sources = metadata.get("feature_source")
    distinct = len(set(sources.values())) if sources else len(NETWORK_ORDER)
    return distinct * averaged_symmetries(metadata)


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
