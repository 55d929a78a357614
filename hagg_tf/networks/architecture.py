"""The paper's CNNs (Sec. 2.3.1–2.3.5, Table 3, Fig. 6) as Keras 3 functional models.

Every network is ``CNN = g(f)`` (Eq. 11):

* ``f`` (feature extractor, a nested ``keras.Model`` named ``"f"``): 2×2 average pooling, nine
  blocks "3×3 valid convolution + batch normalisation + ReLU" with 8, 16, 32 | 64, 64 | 128, 128 |
  256, 256 channels, each group followed by 2×2 max pooling, then flatten (36 864 values for
  512×512 inputs), dense 224 + ReLU and dense 112 + ReLU. Input ``(H, W, 1)``, output ``(112,)``.
* ``g`` (head, plain layers of the outer model): dense 44 + ReLU, dense 1, output activation.

Single-image networks (CNN^Df, CNN^ρ_reg, CNN^ρ_class) feed one image through ``f`` then ``g``
(``b = 1`` in Table 3); multi-image networks (CNN^0, CNN^1) apply the same ``f`` to each of the
``nu`` images of a sample and concatenate the ``nu`` feature vectors before ``g`` (Eq. 15, Fig. 6
right, ``b = nu``).

Inputs are images that have already been preprocessed with
:func:`hagg_tf.data.preprocessing.preprocess_images` (re-exported by :mod:`hagg_tf.networks`;
values on 256 levels in [-0.5, 0.5]);
the SavedModel exports of :mod:`hagg_tf.export` put that preprocessing in front of the network.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import keras

# The registry of the five networks (names, targets, θ columns, activations, losses, batch
# sizes, the classifier's threshold) is plain data below ``networks`` in the pipeline order;
# these names are re-exported from here and from hagg_tf.networks.
from hagg_tf.data.network_specs import (  # noqa: F401  (re-exported names)
    CLASSIFIER_NETWORK, CLASSIFIER_THRESHOLD, DEFAULT_NUM_IMAGES, MULTI_IMAGE_BATCH_SIZE,
    MULTI_IMAGE_NETWORKS, NETWORK_NAMES, NETWORK_SPECS, SINGLE_IMAGE_BATCH_SIZE,
    SINGLE_IMAGE_NETWORKS, THETA_COLUMNS, THETA_NAMES, NetworkSpec, network_spec)
from hagg_tf.networks.layers import FoldImageStack, ScaledSigmoid, UnfoldImageStack

#: Side length of the paper's STEM images in pixels (Table 3, layer 0).
DEFAULT_IMAGE_SIZE = 512
#: Adam learning rate of every network (Sec. 2.3.1).
LEARNING_RATE = 1e-4

#: Convolution channels of f in order; ``"max_pool"`` marks a 2×2 max-pooling layer (Table 3).
FEATURE_EXTRACTOR_PLAN = (8, 16, 32, "max_pool", 64, 64, "max_pool", 128, 128, "max_pool",
                          256, 256, "max_pool")
#: Units of the two dense layers at the end of f; the last one is the feature dimension.
FEATURE_DENSE_UNITS = (224, 112)
#: Units of the hidden dense layer of g.
HEAD_HIDDEN_UNITS = 44
#: Length of the feature vector produced by f for one image.
FEATURE_DIM = FEATURE_DENSE_UNITS[-1]
# Layer names, written only here: other packages reach the layers through the accessors
# (get_feature_extractor, input_pooling_layer, head_layers), never by these strings.
_FEATURE_EXTRACTOR_NAME = "f"
_INPUT_POOLING_LAYER = "f_average_pooling"
_HEAD_HIDDEN_LAYER = f"g_dense_{HEAD_HIDDEN_UNITS}"
_HEAD_LOGIT_LAYER = "g_dense_1"

#: Ways of applying f to the ``nu`` images of a multi-image sample; see :func:`build_network`.
STACK_STRATEGIES = ("fold_batch", "time_distributed")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The layers of a feature extractor f; g (dense 44, dense 1) is the same for all.

    Attributes:
        name: key of :data:`ARCHITECTURES`.
        input_pooling: side of the average pooling in front of the convolutions (pixels).
        plan: convolution channels in order; ``"max_pool"`` marks a 2×2 max-pooling layer. Every
            convolution is 3×3 + batch normalisation + ReLU.
        padding: ``"valid"`` (each convolution loses 2 px) or ``"same"``.
        dense_units: units of the dense layers closing f; the last one is the feature
            dimension (112 for every architecture, so the heads of Table 3 apply unchanged).
        description: one line for documentation and model cards.
        space_to_depth: side b of the blocks that a space-to-depth rearrangement after the
            input pooling turns into channels: ``(S, S, 1)`` → ``(S/b, S/b, b²)``, every pixel
            kept (a last row or column that does not fill a block is cropped). The first
            convolution then reads a 3b × 3b patch at stride b of the pooled image: the same
            multiply-adds as a 3×3 convolution at full resolution followed by a b × b max
            pooling, on maps b² times smaller. 1: none.
    """

    name: str
    input_pooling: int
    plan: tuple
    padding: str
    dense_units: tuple
    description: str
    space_to_depth: int = 1

    def feature_map_sizes(self, image_size: int) -> Optional[list[int]]:
        """Side after the input pooling and after every conv / max pooling; None if one is 0."""
        size = int(image_size) // self.input_pooling // self.space_to_depth
        sizes = [size]
        for entry in self.plan:
            if entry == "max_pool":
                size //= 2
            elif self.padding == "valid":
                size -= 2
            sizes.append(size)
            if size < 1:
                return None
        return sizes if size >= 1 else None

    def flops(self, image_size: int) -> float:
        """Floating-point operations of one forward pass of f on one image (2 per multiply-add).

        Counts the 3×3 convolutions and the two dense layers, the layers that cost anything;
        pooling, batch normalisation and ReLU are left out (under 1 % of the total).

        Args:
            image_size: side of the square input image, pixels.

        Returns:
            FLOPs per image (Table 3 at 512 px: 4.88e9).

        Raises:
            ValueError: ``image_size`` too small for the architecture.
        """
        sizes = self.feature_map_sizes(image_size)
        if sizes is None:
            raise ValueError(f"architecture {self.name!r} does not fit {image_size} px images")
        channels, flops = self.space_to_depth ** 2, 0.0
        for entry, side in zip(self.plan, sizes[1:]):
            if entry != "max_pool":
                flops += 2.0 * side * side * 9 * channels * entry
                channels = entry
        inputs = sizes[-1] * sizes[-1] * channels
        for units in self.dense_units:
            flops += 2.0 * inputs * units
            inputs = units
        return flops


#: Feature extractors by name. ``table3`` is the paper's (the default everywhere); ``compact``
#: is a CPU-budget variant (docs/learning.md): 4×4 average pooling (4.8 nm pixels at the
#: database's 1.2 nm, a mean particle radius still spans 2.5 px), "same" convolutions and a max
#: pooling after almost every one, about 4 % of Table 3's multiply-adds per image.
ARCHITECTURES = {
    arch.name: arch for arch in (
        Architecture("table3", 2, FEATURE_EXTRACTOR_PLAN, "valid", FEATURE_DENSE_UNITS,
                     "the paper's Table 3: 2x2 average pooling, nine 3x3 valid convolutions "
                     "8-256 channels, dense 224 and 112 (4.9 GFLOP per 512 px image)"),
        Architecture("compact", 4,
                     (16, "max_pool", 32, "max_pool", 64, 64, "max_pool", 128, "max_pool",
                      128, "max_pool"),
                     "same", FEATURE_DENSE_UNITS,
                     "CPU variant: 4x4 average pooling, six 3x3 same convolutions 16-128 "
                     "channels with five max poolings, dense 224 and 112 (0.21 GFLOP per 512 px "
                     "image)"),
        # The shared backbone of characterize/3: the paper's 2x2 input pooling (2.4 nm pixels,
        # where the compact 4x4 average erases the thin TiO2 rims θ_1 depends on), then a 3x3
        # convolution at that resolution whose max pooling keeps the strongest edge response
        # of every 4.8 nm cell instead of its mean.
        Architecture("fine", 2,
                     (16, "max_pool", 16, "max_pool", 32, "max_pool", 64, 64, "max_pool",
                      128, "max_pool", 128, "max_pool"),
                     "same", FEATURE_DENSE_UNITS,
                     "shared-backbone variant: 2x2 average pooling (2.4 nm pixels), seven 3x3 "
                     "same convolutions 16-128 channels with six max poolings, dense 224 and "
                     "112 (0.30 GFLOP per 512 px image)"),
        # The same seven convolutions and multiply-adds, with the first max pooling replaced
        # by a 2×2 space-to-depth rearrangement in front of the first convolution: it reads
        # the 2.4 nm pixels losslessly (as four channels of a 4.8 nm grid), and the maps of the
        # first block, the largest of f, shrink 4× (docs/learning.md has the measured speed-up).
        Architecture("fine_s2d", 2,
                     (16, 16, "max_pool", 32, "max_pool", 64, 64, "max_pool", 128, "max_pool",
                      128, "max_pool"),
                     "same", FEATURE_DENSE_UNITS,
                     "shared-backbone variant: 2x2 average pooling (2.4 nm pixels), 2x2 "
                     "space-to-depth, seven 3x3 same convolutions 16-128 channels with five max "
                     "poolings, dense 224 and 112 (0.30 GFLOP per 512 px image)",
                     space_to_depth=2),
    )
}
#: Architecture used unless another is asked for.
DEFAULT_ARCHITECTURE = "table3"


def get_architecture(architecture) -> Architecture:
    """The :class:`Architecture` named ``architecture`` (or ``architecture`` itself).

    Raises:
        ValueError: unknown name.
    """
    if isinstance(architecture, Architecture):
        return architecture
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of "
                         f"{sorted(ARCHITECTURES)}") from None


def minimum_image_size(architecture=DEFAULT_ARCHITECTURE) -> int:
    """Smallest square input side (pixels) for which every layer of f has a non-empty output.

    It is 156 for Table 3: 156 → 78 → 76, 74, 72 → 36 → 34, 32 → 16 → 14, 12 → 6 → 4, 2 → 1,
    i.e. the last max pooling sees a 2×2 map (fast tests use this size); 128 for ``compact``.
    """
    architecture = get_architecture(architecture)
    size = 1
    while architecture.feature_map_sizes(size) is None:
        size += 1
    return size


def feature_map_sizes(image_size: int, architecture=DEFAULT_ARCHITECTURE) -> list[int]:
    """Spatial side length after each spatial layer of f, for a square input.

    Args:
        image_size: Input side length in pixels.
        architecture: name or :class:`Architecture`.

    Returns:
        Side lengths after the average pooling and after every convolution / max pooling of f, in
        order (14 values for Table 3: ``[256, 254, 252, 250, 125, ..., 12]`` for 512 px).

    Raises:
        ValueError: Some layer would produce an empty feature map.
    """
    architecture = get_architecture(architecture)
    sizes = architecture.feature_map_sizes(image_size)
    if sizes is None:
        raise ValueError(
            f"image_size={image_size} is too small for f ({architecture.name}): its "
            f"convolutions and poolings leave no pixels; the smallest usable size is "
            f"{minimum_image_size(architecture)}")
    return sizes


def build_feature_extractor(image_size: int = DEFAULT_IMAGE_SIZE,
                            name: str = _FEATURE_EXTRACTOR_NAME,
                            architecture=DEFAULT_ARCHITECTURE) -> keras.Model:
    """Builds the feature extractor f of Table 3 (layers 0–17), or of another architecture.

    Layer names: ``f_average_pooling``; ``f_conv_k``, ``f_batch_norm_k``, ``f_relu_k`` for the
    k-th convolution block (k = 1..9); ``f_max_pooling_j`` (j = 1..4); ``f_flatten``;
    ``f_dense_224``; ``f_dense_112``.

    The convolutions keep their bias although batch normalisation makes it redundant, because
    Table 3 counts it (80 = 3·3·1·8 + 8 weights in layer 2).

    Args:
        image_size: Side of the square input in pixels (512 in the paper; at least
            :func:`minimum_image_size`).
        name: Name of the returned model.
        architecture: name or :class:`Architecture` (default Table 3). Layer names follow the
            same scheme for every architecture.

    Returns:
        A functional ``keras.Model`` mapping ``(batch, image_size, image_size, 1)`` preprocessed
        images to ``(batch, 112)`` features.
    """
    architecture = get_architecture(architecture)
    feature_map_sizes(image_size, architecture)  # fail early with a clear message
    images = keras.Input(shape=(image_size, image_size, 1), name="f_input")
    features = keras.layers.AveragePooling2D(pool_size=architecture.input_pooling,
                                             name=_INPUT_POOLING_LAYER)(images)
    if architecture.space_to_depth > 1:
        features = _space_to_depth(features, architecture.space_to_depth,
                                   int(image_size) // architecture.input_pooling)
    conv_index = 0
    pool_index = 0
    for entry in architecture.plan:
        if entry == "max_pool":
            pool_index += 1
            features = keras.layers.MaxPooling2D(pool_size=2,
                                                 name=f"f_max_pooling_{pool_index}")(features)
            continue
        conv_index += 1
        features = keras.layers.Conv2D(entry, kernel_size=3, padding=architecture.padding,
                                       name=f"f_conv_{conv_index}")(features)
        features = keras.layers.BatchNormalization(name=f"f_batch_norm_{conv_index}")(features)
        features = keras.layers.ReLU(name=f"f_relu_{conv_index}")(features)
    features = keras.layers.Flatten(name="f_flatten")(features)
    for units in architecture.dense_units:
        features = keras.layers.Dense(units, activation="relu", name=f"f_dense_{units}")(features)
    return keras.Model(images, features, name=name)


def _space_to_depth(features, block: int, side: int):
    """``(b, S, S, 1)`` → ``(b, S//block, S//block, block²)``, channel ``block·i + j`` holding
    pixel ``(i, j)`` of every block (as ``tf.nn.space_to_depth``), in plain Keras layers so that
    the exports and LiteRT need no custom op."""
    cells = side // block
    if cells * block != side:
        features = keras.layers.Cropping2D(((0, side - cells * block), (0, side - cells * block)),
                                           name="f_space_to_depth_crop")(features)
    features = keras.layers.Reshape((cells, block, cells, block),
                                    name="f_space_to_depth_split")(features)
    features = keras.layers.Permute((1, 3, 2, 4), name="f_space_to_depth_order")(features)
    return keras.layers.Reshape((cells, cells, block * block), name="f_space_to_depth")(features)


def architecture_of(model: keras.Model) -> Architecture:
    """The :class:`Architecture` a network (or a feature extractor) was built with.

    Raises:
        ValueError: its layers match no known architecture.
    """
    feature_extractor = (model if model.name == _FEATURE_EXTRACTOR_NAME
                         else get_feature_extractor(model))
    pooling = feature_extractor.get_layer(_INPUT_POOLING_LAYER).pool_size[0]
    convolution_layers = [layer for layer in feature_extractor.layers
                          if isinstance(layer, keras.layers.Conv2D)]
    convolutions = [(layer.filters, layer.padding) for layer in convolution_layers]
    # The first convolution's input channels tell the space-to-depth block (b² channels).
    first_channels = int(convolution_layers[0].kernel.shape[2]) if convolution_layers else 1
    for architecture in ARCHITECTURES.values():
        planned = [(entry, architecture.padding) for entry in architecture.plan
                   if entry != "max_pool"]
        if (architecture.input_pooling == pooling and planned == convolutions
                and architecture.space_to_depth ** 2 == first_channels):
            return architecture
    raise ValueError(f"model {model.name!r} matches none of the architectures "
                     f"{sorted(ARCHITECTURES)}")


def _output_activation_layer(spec: NetworkSpec) -> keras.layers.Layer:
    if spec.output_activation == "scaled_sigmoid":
        return ScaledSigmoid(scale=1.4, offset=1.3, name=spec.output_name)
    if spec.output_activation in ("sigmoid", "relu"):
        return keras.layers.Activation(spec.output_activation, name=spec.output_name)
    raise ValueError(f"unknown output activation {spec.output_activation!r}")


def apply_head(features, spec: NetworkSpec):
    """Head g (Table 3, layers 18–19) plus the network-specific output activation."""
    hidden = keras.layers.Dense(HEAD_HIDDEN_UNITS, activation="relu",
                                name=_HEAD_HIDDEN_LAYER)(features)
    logits = keras.layers.Dense(
        1, bias_initializer=keras.initializers.Constant(spec.initial_output_bias),
        name=_HEAD_LOGIT_LAYER)(hidden)
    return _output_activation_layer(spec)(logits)


def build_network(name: str, image_size: int = DEFAULT_IMAGE_SIZE,
                  num_images: int = DEFAULT_NUM_IMAGES,
                  stack_strategy: str = "fold_batch",
                  architecture=DEFAULT_ARCHITECTURE) -> keras.Model:
    """Builds one of the paper's networks as an uncompiled Keras functional model.

    Args:
        name: One of ``"fractal_dimension"`` (CNN^Df), ``"mixing_ratio_regressor"`` (CNN^ρ_reg),
            ``"mixing_ratio_classifier"`` (CNN^ρ_class), ``"wo3_cluster_size"`` (CNN^0),
            ``"tio2_cluster_size"`` (CNN^1).
        image_size: Side of the square input images in pixels (512 in the paper). Any size from
            :func:`minimum_image_size` (156) upwards works; only the flatten length and the
            weight count of ``f_dense_224`` depend on it.
        num_images: Images per sample ``nu`` of the multi-image networks (ignored otherwise).
        stack_strategy: How the multi-image networks apply f to the ``nu`` images (ignored for
            single-image networks):

            * ``"fold_batch"`` (default): ``FoldImageStack`` reshapes ``(b, nu, H, W, 1)`` to
              ``(b·nu, H, W, 1)``, f runs once on that batch, ``UnfoldImageStack`` reshapes the
              features back to ``(b, nu, 112)`` and a ``Flatten`` (named
              ``concatenate_features``) concatenates the nu vectors in slot order. Mathematically
              this is ``TimeDistributed(f)`` + concatenation (Eq. 15), but batch normalisation
              sees all b·nu images of the step as one batch and updates its moving averages once
              per step, exactly as in the single-image networks.
            * ``"time_distributed"``: ``keras.layers.TimeDistributed(f)``, the literal reading of
              the design card. In Keras 3 it calls f separately for every slot, so in training
              each batch-norm layer normalises slot j with statistics of the b images in slot j
              only (b = 8) and its moving averages are updated nu times per step (decaying them
              with momentum 0.99**nu instead of 0.99). Kept for comparison and to reproduce
              the measurement in ``docs/networks.md``; do not train with it.

            At inference both give identical results: f processes each image independently,
            whatever its slot (tested in ``tests/test_networks.py``).
        architecture: feature extractor, ``"table3"`` (default, the paper's) or ``"compact"``
            (see :data:`ARCHITECTURES`).

    Returns:
        ``keras.Model`` named ``name`` with one input ``images`` of shape
        ``(batch, image_size, image_size, 1)`` (single-image) or
        ``(batch, num_images, image_size, image_size, 1)`` (multi-image), preprocessed values in
        [-0.5, 0.5], and one output named ``spec.output_name`` of shape ``(batch, 1)``. The
        feature extractor is the nested model ``model.get_layer("f")`` (or the layer wrapped by
        ``time_distributed_f``).

    Raises:
        KeyError: Unknown ``name``.
        ValueError: ``image_size`` too small, ``num_images < 1`` or unknown ``stack_strategy``.
    """
    spec = network_spec(name)
    image_size = int(image_size)
    feature_extractor = build_feature_extractor(image_size, architecture=architecture)
    if not spec.multi_image:
        images = keras.Input(shape=(image_size, image_size, 1), name="images")
        features = feature_extractor(images)
        return keras.Model(images, apply_head(features, spec), name=spec.name)

    num_images = int(num_images)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if stack_strategy not in STACK_STRATEGIES:
        raise ValueError(
            f"stack_strategy must be one of {STACK_STRATEGIES}, got {stack_strategy!r}")
    images = keras.Input(shape=(num_images, image_size, image_size, 1), name="images")
    if stack_strategy == "fold_batch":
        folded = FoldImageStack(name="fold_image_stack")(images)
        per_image_features = UnfoldImageStack(num_images, name="unfold_image_stack")(
            feature_extractor(folded))
    else:
        per_image_features = keras.layers.TimeDistributed(
            feature_extractor, name="time_distributed_f")(images)
    # (b, nu, 112) -> (b, nu·112): slot-major concatenation of the nu feature vectors.
    concatenated = keras.layers.Flatten(name="concatenate_features")(per_image_features)
    return keras.Model(images, apply_head(concatenated, spec), name=spec.name)


def get_feature_extractor(model: keras.Model) -> keras.Model:
    """Returns the nested feature extractor f of a network built by :func:`build_network`."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.TimeDistributed):
            return layer.layer
        if isinstance(layer, keras.Model) and layer.name == _FEATURE_EXTRACTOR_NAME:
            return layer
    raise ValueError(f"model {model.name!r} has no feature extractor named "
                     f"{_FEATURE_EXTRACTOR_NAME!r}")


def input_pooling_layer(model: keras.Model) -> keras.layers.AveragePooling2D:
    """The average pooling at the input of f (Table 3, layer 1) of a network or of f itself.

    Its ``pool_size[0]`` is the architecture's ``input_pooling``; the layers of f after it are
    ``get_feature_extractor(model).layers[index + 1:]``.
    """
    feature_extractor = (model if model.name == _FEATURE_EXTRACTOR_NAME
                         else get_feature_extractor(model))
    return feature_extractor.get_layer(_INPUT_POOLING_LAYER)


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of the head g of a network, in call order (Table 3, layers 18–19).

    Returns:
        ``[dense 44 + ReLU, dense 1, output activation]``: applied in turn to f's features
        ``(b, F)`` (``(b, ν·F)`` concatenated for the multi-image networks) they give the
        network's output ``(b, 1)``.
    """
    spec = network_spec(model.name)
    return [model.get_layer(name)
            for name in (_HEAD_HIDDEN_LAYER, _HEAD_LOGIT_LAYER, spec.output_name)]


def compile_network(model: keras.Model, name: Optional[str] = None,
                    learning_rate: float = LEARNING_RATE) -> keras.Model:
    """Compiles a network with the paper's optimiser and loss (Sec. 2.3.1–2.3.5).

    Adam with learning rate 1e-4 for all networks. Losses: mean squared error (Eq. 12) for
    CNN^Df, CNN^ρ_reg, CNN^0 and CNN^1; binary cross-entropy for CNN^ρ_class (the paper does not
    name the classifier's loss; cross-entropy is the standard choice for a sigmoid classifier).
    Metrics: mean absolute error for regressors, binary accuracy for the classifier.

    Args:
        model: Network from :func:`build_network`.
        name: Network name; defaults to ``model.name``.
        learning_rate: Adam learning rate.

    Returns:
        ``model``, compiled in place. The batch size to train with is
        ``network_spec(name).batch_size``.
    """
    spec = network_spec(name or model.name)
    if spec.loss == "binary_crossentropy":
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy")]
    else:
        metrics = [keras.metrics.MeanAbsoluteError(name="mae")]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss=spec.loss, metrics=metrics)
    return model


def get_head(model: keras.Model) -> keras.Model:
    """Returns the head g of a network built by :func:`build_network` as a ``keras.Model``.

    The returned model shares its layers (and so its weights) with ``model``: dense 44 + ReLU,
    dense 1 and the output activation (Table 3, layers 18–19). Applied to f's features it gives
    the network's output: ``model(x) == get_head(model)(concatenated f(x))``.

    Args:
        model: a network from :func:`build_network` (either stack strategy).

    Returns:
        A functional ``keras.Model`` named ``"g"`` mapping ``(batch, b·F)`` features (``b = 1``
        for single-image networks, ``b = ν`` for multi-image networks, the ν feature vectors
        concatenated in slot order; ``F`` = :data:`FEATURE_DIM`) to ``(batch, 1)`` outputs.
    """
    first = head_layers(model)[0]
    # A model from an intermediate tensor: Keras clones the graph between it and the output.
    return keras.Model(first.input, model.output, name="g")
