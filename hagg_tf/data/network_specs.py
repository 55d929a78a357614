"""The registry of the paper's five networks (Sec. 2.3.2–2.3.5): plain facts, no TensorFlow.

One :class:`NetworkSpec` per network says what it estimates and how it is trained: its name,
output, target, the column of θ it estimates, its output activation, loss, batch size, input
transform and (CNN^ρ_class) decision threshold. Everything else reads these facts from here:
the tf.data pipelines and the pooled cache (:mod:`hagg_tf.data`), the Keras builders
(:mod:`hagg_tf.networks`, which re-exports this module's names), training, the estimators,
export and evaluation. It sits in ``data`` because the pipelines need the targets and the
θ columns and ``data`` comes before ``networks`` in the pipeline order.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from hagg_tf.model.parameters import ModelParameters

#: Number of images per sample of the multi-image networks, the paper's ν.
DEFAULT_NUM_IMAGES = 12
#: Images per gradient step of CNN^Df, CNN^ρ_reg and CNN^ρ_class (n in Eq. 12).
SINGLE_IMAGE_BATCH_SIZE = 16
#: Samples (of ``ν`` images each) per gradient step of CNN^0 and CNN^1.
MULTI_IMAGE_BATCH_SIZE = 8

#: The four model parameters θ = (θ_Df, θ_ρ, θ_0, θ_1) in the order of every ``theta`` array
#: (records, pooled cache, predictions): the fields of :class:`ModelParameters`.
THETA_NAMES = tuple(field.name for field in dataclasses.fields(ModelParameters))
#: Column of each parameter in a ``theta`` array, by name.
THETA_COLUMNS = {name: column for column, name in enumerate(THETA_NAMES)}

#: Kinds of sample a network is trained on (see :attr:`NetworkSpec.sample_kind`).
SAMPLE_KINDS = ("single", "classification", "multi")


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """What distinguishes one of the paper's networks from the basic architecture.

    Attributes:
        name: Key accepted by :func:`hagg_tf.networks.build_network`; also the Keras model name
            and the directory name of its SavedModel export and training run.
        output_name: Name of the output layer, the model output and the serving output.
        target: What the output estimates, in words (with the paper's symbol).
        multi_image: True for CNN^0 / CNN^1, which see ``ν`` images per sample (``b = ν``).
        output_activation: ``"scaled_sigmoid"`` (1.4·sigmoid + 1.3), ``"sigmoid"`` or ``"relu"``.
        loss: Keras loss identifier used by :func:`hagg_tf.networks.compile_network`.
        batch_size: Samples per gradient step (Sec. 2.3.1).
        invert_intensities: True if the images are preprocessed with the 1/p transform of Sec.
            2.3.5 (only CNN^1).
        initial_output_bias: Initial bias of the last dense layer. For the ReLU heads it is 3.5,
            the middle of the cluster-size range {1, ..., 6}: with a zero bias about half of all
            initial networks would output ReLU(negative) = 0 for every sample, which has zero
            gradient and never trains. The sigmoid heads start at the middle of their range with
            a zero bias. Only the initial value changes; Table 3 is unaffected.
        theta_column: Column of θ = (θ_Df, θ_ρ, θ_0, θ_1) (:data:`THETA_COLUMNS`) of the
            parameter this network's output is an estimate of (Eqs. 13–15); the multi-image
            networks are trained on that column of their sample's θ.
        image_label: Single-image networks: the per-image label they are trained on, a
            descriptor of the imaged aggregate: ``"fractal_dimension"`` (D_f(A)),
            ``"mixing_ratio"`` (ρ(A)) or ``"homogeneous"`` (ρ(A) ∈ {0, 1}). The record feature
            is ``target/<image_label>``, the pooled cache's label array ``<image_label>``. None
            for the multi-image networks.
        classifier_threshold: Output above which the image counts as the positive class
            (CNN^ρ_class: homogeneous, 0.5, Sec. 2.3.3); None for the regressors.
    """

    name: str
    output_name: str
    target: str
    multi_image: bool
    output_activation: str
    loss: str
    batch_size: int
    invert_intensities: bool = False
    initial_output_bias: float = 0.0
    theta_column: Optional[int] = None
    image_label: Optional[str] = None
    classifier_threshold: Optional[float] = None

    def __post_init__(self):
        if self.theta_column not in range(len(THETA_NAMES)):
            raise ValueError(f"{self.name}: theta_column must be one of "
                             f"0..{len(THETA_NAMES) - 1}, got {self.theta_column!r}")
        if (self.image_label is None) != self.multi_image:
            raise ValueError(f"{self.name}: single-image networks (only) need an image_label")

    @property
    def theta_name(self) -> str:
        """Name of the parameter of θ this network estimates (a :class:`ModelParameters` field)."""
        return THETA_NAMES[self.theta_column]

    @property
    def is_classifier(self) -> bool:
        """True for CNN^ρ_class, whose output is a probability thresholded at
        :attr:`classifier_threshold`."""
        return self.classifier_threshold is not None

    @property
    def sample_kind(self) -> str:
        """``"single"`` (one image, a scalar label), ``"classification"`` (one image, a class,
        balanced by oversampling in training) or ``"multi"`` (ν images of one θ)."""
        if self.multi_image:
            return "multi"
        return "classification" if self.is_classifier else "single"


#: The five networks of Sec. 2.3.2–2.3.5, by name, in the order of the composite export.
NETWORK_SPECS = {
    spec.name: spec
    for spec in (
        NetworkSpec("fractal_dimension", "fractal_dimension",
                    "fractal dimension D_f(A) of the imaged aggregate (CNN^Df, Sec. 2.3.2)",
                    multi_image=False, output_activation="scaled_sigmoid",
                    loss="mean_squared_error", batch_size=SINGLE_IMAGE_BATCH_SIZE,
                    theta_column=THETA_COLUMNS["fractal_dimension"],
                    image_label="fractal_dimension"),
        NetworkSpec("mixing_ratio_regressor", "mixing_ratio",
                    "mixing ratio rho(A) of the imaged aggregate (CNN^rho_reg, Sec. 2.3.3)",
                    multi_image=False, output_activation="sigmoid",
                    loss="mean_squared_error", batch_size=SINGLE_IMAGE_BATCH_SIZE,
                    theta_column=THETA_COLUMNS["mixing_ratio"], image_label="mixing_ratio"),
        NetworkSpec("mixing_ratio_classifier", "homogeneous_probability",
                    "probability that the aggregate is homogeneous, rho(A) in {0, 1} "
                    "(CNN^rho_class, Sec. 2.3.3)",
                    multi_image=False, output_activation="sigmoid",
                    loss="binary_crossentropy", batch_size=SINGLE_IMAGE_BATCH_SIZE,
                    theta_column=THETA_COLUMNS["mixing_ratio"], image_label="homogeneous",
                    classifier_threshold=0.5),
        NetworkSpec("wo3_cluster_size", "wo3_cluster_size",
                    "primary WO3 cluster size theta_0 before rounding (CNN^0, Sec. 2.3.4)",
                    multi_image=True, output_activation="relu",
                    loss="mean_squared_error", batch_size=MULTI_IMAGE_BATCH_SIZE,
                    initial_output_bias=3.5, theta_column=THETA_COLUMNS["wo3_cluster_size"]),
        NetworkSpec("tio2_cluster_size", "tio2_cluster_size",
                    "primary TiO2 cluster size theta_1 before rounding, from inverse-intensity "
                    "images (CNN^1, Sec. 2.3.5)",
                    multi_image=True, output_activation="relu",
                    loss="mean_squared_error", batch_size=MULTI_IMAGE_BATCH_SIZE,
                    invert_intensities=True, initial_output_bias=3.5,
                    theta_column=THETA_COLUMNS["tio2_cluster_size"]),
    )
}

#: The five network names in the composite's order (training runs, exports, tools).
NETWORK_NAMES = tuple(NETWORK_SPECS)
#: The networks that see one image per sample (CNN^Df, CNN^ρ_reg, CNN^ρ_class).
SINGLE_IMAGE_NETWORKS = tuple(name for name, spec in NETWORK_SPECS.items()
                              if not spec.multi_image)
#: The networks that see ν images of one θ per sample (CNN^0, CNN^1).
MULTI_IMAGE_NETWORKS = tuple(name for name, spec in NETWORK_SPECS.items() if spec.multi_image)
#: The classifier CNN^ρ_class.
CLASSIFIER_NETWORK = next(name for name, spec in NETWORK_SPECS.items() if spec.is_classifier)
#: CNN^ρ_class output above which an image counts as homogeneous (Sec. 2.3.3).
CLASSIFIER_THRESHOLD = NETWORK_SPECS[CLASSIFIER_NETWORK].classifier_threshold


def network_spec(name: str) -> NetworkSpec:
    """Returns the :class:`NetworkSpec` of network ``name``.

    Raises:
        KeyError: ``name`` is not one of :data:`NETWORK_SPECS`.
    """
    try:
        return NETWORK_SPECS[name]
    except KeyError:
        raise KeyError(f"unknown network {name!r}; choose one of {sorted(NETWORK_SPECS)}") from None


#: Key of a composite export's per-network settings (``hagg_tf_export.json``, ``"networks"``)
#: saying whether that network takes the inverse-intensity images of Sec. 2.3.5. The paper's
#: CNN^1 does (:attr:`NetworkSpec.invert_intensities`); the shared-backbone networks of
#: characterize/3 take the plain images, whose preprocessing does not depend on the
#: background level (:mod:`hagg_tf.training.multitask`).
INVERSE_INPUT_KEY = "inverse_intensity_input"


def takes_inverse_intensities(name: str, settings: Optional[dict] = None) -> bool:
    """Whether network ``name`` of a set of networks takes the 1/p images.

    Args:
        name: network name.
        settings: the network's entry in an export's ``"networks"`` metadata, or None.

    Returns:
        ``settings[INVERSE_INPUT_KEY]`` when recorded, else the paper's choice.
    """
    if settings is not None and INVERSE_INPUT_KEY in settings:
        return bool(settings[INVERSE_INPUT_KEY])
    return network_spec(name).invert_intensities


def inverse_intensity_networks(metadata: Optional[dict] = None) -> frozenset:
    """Names of the networks that take the 1/p images, from an export's metadata (or the
    paper's choice without one)."""
    recorded = (metadata or {}).get("networks") or {}
    return frozenset(name for name in NETWORK_NAMES
                     if takes_inverse_intensities(name, recorded.get(name)))

