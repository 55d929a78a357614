"""The estimators of Sec. 2.3 (Eqs. 13–15) on the raw outputs of the five networks (numpy).

For ``n`` images I_1..I_n of one sample (``n ≥ ν``):

* θ̂_Df = (1/n) Σ_i CNN^Df(I_i) (Eq. 13).
* ρ̂(I) = η(CNN^ρ_reg(I)) if CNN^ρ_class(I) > 0.5, else CNN^ρ_reg(I) (Sec. 2.3.3), with η the
  rounding to {0, 1}; θ̂_ρ = (1/n) Σ_i ρ̂(I_i) (Eq. 14). The regressor-only estimate
  (1/n) Σ_i CNN^ρ_reg(I_i) is kept beside it (the paper's "regressor only" column).
* With sample heads (:mod:`hagg_tf.data.sample_heads`, in the exports that have them), θ̂_Df and
  θ̂_ρ are the heads' outputs on summaries of the n per-image outputs instead; the means above
  are kept beside them (``fractal_dimension_images_mean``, ``mixing_ratio_images_mean``).
* θ̂_0 = η(CNN^0(I(B))) and θ̂_1 = η(CNN^1(I(B))) (Eq. 15, Sec. 2.3.5; CNN^1 sees the inverse-
  intensity images), η rounding to the nearest integer (ties to even, as numpy and TensorFlow
  do). The raw outputs are averaged over the ``n`` cyclic ν-subsets {(k + j) mod n : j < ν},
  k = 0..n−1, before rounding: every image is used equally often and in every slot of the stack
  exactly once, so the estimate does not depend on which images happen to share a stack or on
  a rotation of their order. For ``n = ν`` these are the ν rotations of the one stack; the
  paper feeds the stack once, in the given order, and then the same 12 images in another order
  give another rounded θ̂_1 for about a fifth of the samples (docs/learning.md).

These functions are the reference implementation; the composite SavedModel
(:mod:`hagg_tf.export.characterize`) computes the same in its graph, and
:class:`ThetaEstimate` holds either's result.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional

import numpy as np

# CLASSIFIER_THRESHOLD: CNN^ρ_class output above which an image counts as homogeneous (Sec.
# 2.3.3), from the registry of the networks (re-exported here).
from hagg_tf.data.network_specs import CLASSIFIER_THRESHOLD  # noqa: F401
# cyclic_subsets: the n cyclic ν-subsets of n images, the ν rotations of a stack for n = ν
# (re-exported here; the training's model selection uses them too).
from hagg_tf.data.design import cyclic_subsets  # noqa: F401
from hagg_tf.data.sample_heads import SampleHeads
from hagg_tf.model.parameters import ModelParameters

#: θ_Df of digital shadows is clipped into this closed interval inside the model's (1, 3).
SHADOW_FRACTAL_DIMENSION_RANGE = (1.01, 2.99)


def combine_mixing_ratio(regressor: np.ndarray, homogeneous_probability: np.ndarray,
                         threshold: float = CLASSIFIER_THRESHOLD) -> np.ndarray:
    """ρ̂(I) of Sec. 2.3.3 per image.

    Args:
        regressor: CNN^ρ_reg outputs in [0, 1], any shape.
        homogeneous_probability: CNN^ρ_class outputs, same shape.
        threshold: classifier output above which the image counts as homogeneous.

    Returns:
        float32 array of that shape: the regressor output, rounded to 0 or 1 where the classifier
        says homogeneous.
    """
    regressor = np.asarray(regressor, dtype=np.float32)
    return np.where(np.asarray(homogeneous_probability) > threshold, np.round(regressor),
                    regressor).astype(np.float32)


def round_cluster_size(raw: float) -> int:
    """η of Sec. 2.3.4: the nearest integer ≥ 0 (ties to even)."""
    return int(np.round(max(float(raw), 0.0)))


@dataclasses.dataclass(frozen=True)
class ThetaEstimate:
    """θ̂ of one sample with every network's raw output.

    Attributes:
        fractal_dimension: θ̂_Df (Eq. 13, or the sample head).
        mixing_ratio: θ̂_ρ with the classifier (Eq. 14, or the sample head).
        mixing_ratio_regressor_only: mean CNN^ρ_reg output.
        wo3_cluster_size: θ̂_0, rounded (may be 0 if the network outputs < 0.5).
        wo3_cluster_size_raw: CNN^0 output before rounding (mean over the ν-subsets).
        tio2_cluster_size: θ̂_1, rounded.
        tio2_cluster_size_raw: CNN^1 output before rounding (mean over the ν-subsets).
        fractal_dimension_per_image: (n,) CNN^Df(I_i) = D̂_f(I_i).
        mixing_ratio_regressor_per_image: (n,) CNN^ρ_reg(I_i).
        homogeneous_probability_per_image: (n,) CNN^ρ_class(I_i).
        mixing_ratio_per_image: (n,) ρ̂(I_i).
        wo3_cluster_size_per_subset: (k,) CNN^0 on each ν-subset.
        tio2_cluster_size_per_subset: (k,) CNN^1 on each ν-subset.
        fractal_dimension_images_mean: the mean of Eq. 13 (None: equal to
            ``fractal_dimension``, from an export without sample heads).
        mixing_ratio_images_mean: the mean of Eq. 14 (None: equal to ``mixing_ratio``).
    """

    fractal_dimension: float
    mixing_ratio: float
    mixing_ratio_regressor_only: float
    wo3_cluster_size: int
    wo3_cluster_size_raw: float
    tio2_cluster_size: int
    tio2_cluster_size_raw: float
    fractal_dimension_per_image: np.ndarray
    mixing_ratio_regressor_per_image: np.ndarray
    homogeneous_probability_per_image: np.ndarray
    mixing_ratio_per_image: np.ndarray
    wo3_cluster_size_per_subset: np.ndarray
    tio2_cluster_size_per_subset: np.ndarray
    fractal_dimension_images_mean: Optional[float] = None
    mixing_ratio_images_mean: Optional[float] = None

    def __post_init__(self):
        # Without sample heads θ̂_Df and θ̂_ρ are the means themselves.
        if self.fractal_dimension_images_mean is None:
            object.__setattr__(self, "fractal_dimension_images_mean", self.fractal_dimension)
        if self.mixing_ratio_images_mean is None:
            object.__setattr__(self, "mixing_ratio_images_mean", self.mixing_ratio)

    @property
    def num_images(self) -> int:
        """n, the number of images the estimate is based on."""
        return int(len(self.fractal_dimension_per_image))

    @property
    def theta(self) -> tuple[float, float, int, int]:
        """(θ̂_Df, θ̂_ρ, θ̂_0, θ̂_1) with the cluster sizes rounded."""
        return (self.fractal_dimension, self.mixing_ratio, self.wo3_cluster_size,
                self.tio2_cluster_size)

    @property
    def theta_raw(self) -> tuple[float, float, float, float]:
        """(θ̂_Df, θ̂_ρ, CNN^0, CNN^1) with the cluster sizes before rounding."""
        return (self.fractal_dimension, self.mixing_ratio, self.wo3_cluster_size_raw,
                self.tio2_cluster_size_raw)

    @property
    def homogeneous_images(self) -> int:
        """Images the classifier calls homogeneous (output > 0.5)."""
        return int(np.count_nonzero(self.homogeneous_probability_per_image > CLASSIFIER_THRESHOLD))

    def shadow_parameters(self) -> ModelParameters:
        """θ̂ made admissible for the stochastic model, to draw digital shadows from.

        θ̂_Df is clipped into [1.01, 2.99] (the model needs (1, 3); CNN^Df's output lies in
        (1.3, 2.7) anyway), θ̂_ρ into [0, 1] (always true for sigmoid outputs), and θ̂_0, θ̂_1 to
        at least 1: a primary cluster has at least one particle, whereas η may round a network
        output below 0.5 to 0.
        """
        low, high = SHADOW_FRACTAL_DIMENSION_RANGE
        return ModelParameters(float(np.clip(self.fractal_dimension, low, high)),
                               float(np.clip(self.mixing_ratio, 0.0, 1.0)),
                               max(1, int(self.wo3_cluster_size)),
                               max(1, int(self.tio2_cluster_size)))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (arrays as lists)."""
        result = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                value = [float(item) for item in value]
            elif isinstance(value, (np.floating, float)):
                value = float(value)
            elif isinstance(value, (np.integer, int)):
                value = int(value)
            result[field.name] = value
        result["theta"] = list(self.theta)
        result["theta_raw"] = [float(item) for item in self.theta_raw]
        return result

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Any], row: int = 0) -> "ThetaEstimate":
        """Row ``row`` of the outputs of the composite SavedModel (tensors or arrays)."""
        def value(key):
            return np.asarray(outputs[key])[row]

        def optional(key):  # outputs of exports written since the sample heads
            return float(value(key)) if key in outputs else None

        return cls(
            fractal_dimension=float(value("fractal_dimension")),
            mixing_ratio=float(value("mixing_ratio")),
            mixing_ratio_regressor_only=float(value("mixing_ratio_regressor_only")),
            wo3_cluster_size=int(value("wo3_cluster_size")),
            wo3_cluster_size_raw=float(value("wo3_cluster_size_raw")),
            tio2_cluster_size=int(value("tio2_cluster_size")),
            tio2_cluster_size_raw=float(value("tio2_cluster_size_raw")),
            fractal_dimension_per_image=value("fractal_dimension_per_image").astype(np.float32),
            mixing_ratio_regressor_per_image=value("mixing_ratio_regressor_per_image")
            .astype(np.float32),
            homogeneous_probability_per_image=value("homogeneous_probability_per_image")
            .astype(np.float32),
            mixing_ratio_per_image=value("mixing_ratio_per_image").astype(np.float32),
            wo3_cluster_size_per_subset=value("wo3_cluster_size_per_subset").astype(np.float32),
            tio2_cluster_size_per_subset=value("tio2_cluster_size_per_subset")
            .astype(np.float32),
            fractal_dimension_images_mean=optional("fractal_dimension_images_mean"),
            mixing_ratio_images_mean=optional("mixing_ratio_images_mean"),
        )


def estimate_theta(fractal_dimension: np.ndarray, mixing_ratio_regressor: np.ndarray,
                   homogeneous_probability: np.ndarray, wo3_cluster_size_per_subset: np.ndarray,
                   tio2_cluster_size_per_subset: np.ndarray,
                   threshold: float = CLASSIFIER_THRESHOLD,
                   sample_heads: Optional[SampleHeads] = None) -> ThetaEstimate:
    """θ̂ from the raw network outputs of one sample (Eqs. 13–15).

    Args:
        fractal_dimension: (n,) CNN^Df per image.
        mixing_ratio_regressor: (n,) CNN^ρ_reg per image.
        homogeneous_probability: (n,) CNN^ρ_class per image.
        wo3_cluster_size_per_subset: (k,) CNN^0 per ν-subset (see :func:`cyclic_subsets`).
        tio2_cluster_size_per_subset: (k,) CNN^1 per ν-subset.
        threshold: classifier threshold.
        sample_heads: θ̂_Df and θ̂_ρ from these heads; None: the means of Eqs. 13–14.

    Returns:
        The estimate.
    """
    fractal_dimension = np.asarray(fractal_dimension, np.float32).reshape(-1)
    regressor = np.asarray(mixing_ratio_regressor, np.float32).reshape(-1)
    probability = np.asarray(homogeneous_probability, np.float32).reshape(-1)
    wo3 = np.asarray(wo3_cluster_size_per_subset, np.float32).reshape(-1)
    tio2 = np.asarray(tio2_cluster_size_per_subset, np.float32).reshape(-1)
    if not len(fractal_dimension) == len(regressor) == len(probability) or not len(regressor):
        raise ValueError("the per-image outputs must have the same, non-zero length")
    combined = combine_mixing_ratio(regressor, probability, threshold)
    wo3_raw, tio2_raw = float(wo3.mean()), float(tio2.mean())
    means = {"fractal_dimension": float(fractal_dimension.mean()),
             "mixing_ratio": float(combined.mean())}
    estimated = dict(means) if sample_heads is None else {
        key: float(value) for key, value in
        sample_heads(fractal_dimension, regressor, probability).items()}
    return ThetaEstimate(
        fractal_dimension=estimated["fractal_dimension"],
        mixing_ratio=estimated["mixing_ratio"],
        mixing_ratio_regressor_only=float(regressor.mean()),
        wo3_cluster_size=round_cluster_size(wo3_raw),
        wo3_cluster_size_raw=wo3_raw,
        tio2_cluster_size=round_cluster_size(tio2_raw),
        tio2_cluster_size_raw=tio2_raw,
        fractal_dimension_per_image=fractal_dimension,
        mixing_ratio_regressor_per_image=regressor,
        homogeneous_probability_per_image=probability,
        mixing_ratio_per_image=combined,
        wo3_cluster_size_per_subset=wo3,
        tio2_cluster_size_per_subset=tio2,
        fractal_dimension_images_mean=means["fractal_dimension"],
        mixing_ratio_images_mean=means["mixing_ratio"],
    )


def estimate_with_networks(models: Mapping[str, Any], counts: np.ndarray,
                           electrons_per_pixel: np.ndarray, batch_size: int = 16,
                           inverse_networks: Optional[Iterable[str]] = None,
                           sample_heads: Optional[SampleHeads] = None) -> ThetaEstimate:
    """θ̂ of one sample computed with the five Keras networks (reference path; evaluation).

    Runs each network on its own, with the numpy preprocessing
    (:func:`hagg_tf.networks.preprocess_images_numpy`). The composite SavedModel gives the same
    numbers from one graph (tested to 1e-5) and is what ``hagg-characterize`` uses.

    Args:
        models: ``{network name: keras.Model}`` for the five networks.
        counts: (n, H, W) detector counts (or intensity fractions with electrons_per_pixel 1).
        electrons_per_pixel: (n,) incident electrons per pixel of each image.
        batch_size: images per forward call.
        inverse_networks: names of the networks that take the 1/p images; None: the paper's
            (CNN^1). An export records its own
            (:func:`hagg_tf.data.network_specs.inverse_intensity_networks` of its metadata).
        sample_heads: the export's sample heads (:meth:`CompositeRuntime.sample_heads
            <hagg_tf.estimation.model.CompositeRuntime.sample_heads>`); None: Eqs. 13–14.

    Returns:
        The estimate.
    """
    from hagg_tf.data.network_specs import MULTI_IMAGE_NETWORKS, inverse_intensity_networks
    from hagg_tf.networks.preprocessing import INVERSION_THRESHOLD, preprocess_images_numpy

    inverse_networks = (inverse_intensity_networks() if inverse_networks is None
                        else frozenset(inverse_networks))

    counts = np.asarray(counts, dtype=np.float32)
    electrons = np.asarray(electrons_per_pixel, dtype=np.float32).reshape(-1)
    plain = preprocess_images_numpy(counts)[..., np.newaxis]
    inverted = preprocess_images_numpy(counts, electrons,
                                       inversion_threshold=INVERSION_THRESHOLD)[..., np.newaxis]

    def single(name):
        model = models[name]
        return np.concatenate([np.asarray(model(plain[start:start + batch_size], training=False))
                               .reshape(-1) for start in range(0, len(plain), batch_size)])

    def multi(name, images):
        model = models[name]
        num_images = int(model.input_shape[1])
        stacks = images[cyclic_subsets(len(images), num_images)]  # (k, ν, H, W, 1)
        step = max(1, batch_size // num_images)
        return np.concatenate([np.asarray(model(stacks[start:start + step], training=False))
                               .reshape(-1) for start in range(0, len(stacks), step)])

    return estimate_theta(single("fractal_dimension"), single("mixing_ratio_regressor"),
                          single("mixing_ratio_classifier"),
                          *(multi(name, inverted if name in inverse_networks else plain)
                            for name in MULTI_IMAGE_NETWORKS), sample_heads=sample_heads)


def theta_errors(estimate: ThetaEstimate, truth: ModelParameters) -> dict[str, float]:
    """Signed errors θ̂ − θ of one sample (rounded sizes), for reports and evaluation."""
    return {
        "fractal_dimension": estimate.fractal_dimension - truth.fractal_dimension,
        "mixing_ratio": estimate.mixing_ratio - truth.mixing_ratio,
        "mixing_ratio_regressor_only": estimate.mixing_ratio_regressor_only
        - truth.mixing_ratio,
        "wo3_cluster_size": float(estimate.wo3_cluster_size - truth.wo3_cluster_size),
        "tio2_cluster_size": float(estimate.tio2_cluster_size - truth.tio2_cluster_size),
    }
