"""How uncertain θ̂ is: a bootstrap over the sample's images.

θ̂ is a function of the n images of one sample (Eqs. 13–15). How much it would change with
another set of n images of the same sample is estimated by the nonparametric bootstrap
(Efron 1979): B resamples of the n images, drawn with replacement, each giving a replicate
θ̂*_b computed by the very estimators of :mod:`hagg_tf.estimation.estimators`:

* θ̂*_Df = mean of CNN^Df over the resample's images (Eq. 13);
* θ̂*_ρ = mean of ρ̂(I) (:func:`~hagg_tf.estimation.estimators.combine_mixing_ratio`, Eq. 14);
  with an export's sample heads (:mod:`hagg_tf.data.sample_heads`), θ̂*_Df and θ̂*_ρ are the
  heads on the resample's per-image outputs instead, as for θ̂;
* θ̂*_0, θ̂*_1 = the heads g of CNN^0 / CNN^1 averaged over the cyclic ν-subsets
  (:func:`~hagg_tf.estimation.estimators.cyclic_subsets`) of the resample, in the resample's
  order, then rounded (Eq. 15).

The expensive part of every network, the per-image part f (and CNN^Df, CNN^ρ), runs once per
image (the composite model's ``serving_per_image``); only the tiny multi-image heads g see the
resampled stacks, all of them in one call (``serving_cluster_heads``). The spread of the
replicates (s.d., percentile intervals) is the sampling uncertainty of θ̂ due to the finite
number of images; it says nothing about the networks' own bias, which the model card's typical
error measures on simulated samples.

The resamples are reproducible: they depend on (n, B, seed) only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import numpy as np

from hagg_tf.data.sample_heads import SampleHeads
from hagg_tf.estimation.estimators import ThetaEstimate, cyclic_subsets, estimate_theta
from hagg_tf.estimation.model import (CLUSTER_HEAD_OUTPUTS, PER_IMAGE_OUTPUTS, TIO2_FEATURES,
                                      WO3_FEATURES)
from hagg_tf.estimation.quantities import THETA_QUANTITIES
from hagg_tf.jsonsafe import finite_or_none

#: What report.json's ``uncertainty.method`` says.
UNCERTAINTY_METHOD = "bootstrap over the sample's images"
#: Bootstrap resamples per sample by default: enough for a s.d. to ~5 % and the 95 % interval's
#: ends to a few replicates; they cost a few ms, the heads being tiny.
DEFAULT_RESAMPLES = 200
#: Fewest resamples when the bootstrap is on: with fewer, the 95 % interval is just the extremes.
MIN_RESAMPLES = 10
#: Most resamples (the means' own Monte-Carlo error is already < 1 % of the s.d. at 10 000).
MAX_RESAMPLES = 100_000
#: Central coverage of the reported percentile intervals, percent.
INTERVAL_LEVELS = (68, 95)
#: Most ν-stacks sent to ``cluster_heads`` at once. n = 12 images and B = 200 need 2 412 stacks
#: (one call); only samples of hundreds of images are split, so memory stays < ~0.5 GB.
MAX_STACKS_PER_CALL = 32_768
#: Columns of :attr:`ThetaUncertainty.replicates`, in the order of ``ThetaEstimate.theta``.
PARAMETER_KEYS = tuple(quantity.key for quantity in THETA_QUANTITIES)
#: The rounded cluster sizes among them (integer replicates, with a distribution).
CLUSTER_SIZE_KEYS = ("wo3_cluster_size", "tio2_cluster_size")
# Spawn key of the resampling stream: two entries, so it never equals a shadow's (index,) key.
_BOOTSTRAP_STREAM = (0xB0075, 0)


def check_resamples(resamples: int) -> int:
    """``resamples`` if it is 0 (off) or in [:data:`MIN_RESAMPLES`, :data:`MAX_RESAMPLES`].

    Raises:
        ValueError: it is not (the message names the allowed values).
    """
    if resamples != int(resamples) or not (resamples == 0
                                           or MIN_RESAMPLES <= resamples <= MAX_RESAMPLES):
        raise ValueError(f"the number of bootstrap resamples must be 0 (off) or lie between "
                         f"{MIN_RESAMPLES} and {MAX_RESAMPLES}, got {resamples}")
    return int(resamples)


def bootstrap_indices(num_available: int, resamples: int, seed: int = 0) -> np.ndarray:
    """The resamples: which images each replicate uses.

    Args:
        num_available: n, the images of the sample.
        resamples: B.
        seed: seed of the resampling (any integer ≥ 0).

    Returns:
        int64 array (B, n): row b lists the n images of resample b, drawn uniformly with
        replacement, in draw order (the order in which they fill the ν-stacks).
    """
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=_BOOTSTRAP_STREAM))
    return rng.integers(0, num_available, size=(resamples, num_available), dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class ThetaUncertainty:
    """The bootstrap replicates of θ̂ and what they say about its uncertainty.

    Attributes:
        resamples: B, the number of resamples.
        seed: seed of the resampling (:func:`bootstrap_indices`).
        num_images: n, the images of the sample (each resample has n too).
        estimate: θ̂ from all images, (θ̂_Df, θ̂_ρ, θ̂_0, θ̂_1), cluster sizes rounded.
        replicates: (B, 4) float64, θ̂*_b per resample in the order of ``estimate`` (cluster
            sizes rounded, so integer-valued).
        cluster_size_raw: (B, 2) float64, the heads' mean before rounding (θ_0, θ_1).
        shadow_thetas: the B replicates made admissible for the stochastic model
            (:meth:`ThetaEstimate.shadow_parameters`), to draw digital shadows from.
    """

    resamples: int
    seed: int
    num_images: int
    estimate: tuple
    replicates: np.ndarray
    cluster_size_raw: np.ndarray
    shadow_thetas: tuple

    def column(self, key: str) -> np.ndarray:
        """The (B,) replicates of one parameter (a key of :data:`PARAMETER_KEYS`)."""
        return self.replicates[:, PARAMETER_KEYS.index(key)]

    def sd(self, key: str) -> float:
        """Bootstrap standard error of θ̂'s ``key``: the s.d. (ddof = 1) of its replicates."""
        return float(np.std(self.column(key), ddof=1))

    def interval(self, key: str, level: float = 95) -> tuple:
        """Percentile interval holding the central ``level`` % of the replicates.

        Continuous parameters: numpy's linear percentiles. Cluster sizes: the nearest replicate
        values (integers).
        """
        tails = [(100.0 - level) / 2.0, 100.0 - (100.0 - level) / 2.0]
        values = self.column(key)
        if key in CLUSTER_SIZE_KEYS:
            low, high = np.percentile(values, tails, method="nearest")
            return int(low), int(high)
        low, high = np.percentile(values, tails)
        return float(low), float(high)

    def distribution(self, key: str) -> dict[str, float]:
        """Share of the replicates per value of a cluster size, ``{"3": 0.31, "4": 0.69}``
        (keys in increasing order; the shares sum to 1)."""
        values, counts = np.unique(self.column(key).astype(np.int64), return_counts=True)
        return {str(int(value)): float(count) / self.resamples
                for value, count in zip(values, counts)}

    def as_dict(self) -> dict[str, Any]:
        """The ``uncertainty`` object of report.json (JSON-able)."""
        parameters = {}
        for key, estimate in zip(PARAMETER_KEYS, self.estimate):
            entry = {"estimate": int(estimate) if key in CLUSTER_SIZE_KEYS else float(estimate),
                     "sd": finite_or_none(self.sd(key))}
            for level in INTERVAL_LEVELS:
                entry[f"interval_{level}"] = list(self.interval(key, level))
            if key in CLUSTER_SIZE_KEYS:
                entry["distribution"] = self.distribution(key)
            parameters[key] = entry
        return {"method": UNCERTAINTY_METHOD, "resamples": self.resamples, "seed": self.seed,
                "num_images": self.num_images, "parameters": parameters}


def per_image_arrays(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The five per-image outputs (contract A) as float32 arrays of one sample.

    Raises:
        ValueError: one is missing, or their image counts differ.
    """
    missing = [key for key in PER_IMAGE_OUTPUTS if key not in outputs]
    if missing:
        raise ValueError(f"the model's per-image outputs lack {', '.join(missing)}")
    arrays = {key: np.asarray(outputs[key], np.float32) for key in PER_IMAGE_OUTPUTS}
    counts = {array.shape[0] for array in arrays.values()}
    if len(counts) != 1 or any(arrays[key].ndim != 1 for key in PER_IMAGE_OUTPUTS[:3]) \
            or any(arrays[key].ndim != 2 for key in (WO3_FEATURES, TIO2_FEATURES)):
        raise ValueError("per-image outputs of one sample must be (n,) and (n, F) arrays with "
                         "the same n, got " + ", ".join(f"{key} {arrays[key].shape}"
                                                        for key in PER_IMAGE_OUTPUTS))
    return arrays


def _heads(cluster_heads: Callable, wo3_features: np.ndarray, tio2_features: np.ndarray,
           stacks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The heads g on every ν-stack of image indices ``stacks`` (S, ν): two (S,) arrays."""
    wo3, tio2 = [], []
    for start in range(0, len(stacks), MAX_STACKS_PER_CALL):
        chunk = stacks[start:start + MAX_STACKS_PER_CALL]
        raw = cluster_heads(wo3_features[chunk], tio2_features[chunk])
        wo3_key, tio2_key = CLUSTER_HEAD_OUTPUTS
        wo3.append(np.asarray(raw[wo3_key], np.float32).reshape(-1))
        tio2.append(np.asarray(raw[tio2_key], np.float32).reshape(-1))
    return np.concatenate(wo3), np.concatenate(tio2)


def bootstrap_theta(outputs: Mapping[str, Any], cluster_heads: Callable, num_images: int, *,
                    resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    sample_heads: Optional[SampleHeads] = None
                    ) -> tuple[ThetaEstimate, Optional[ThetaUncertainty]]:
    """θ̂ from all images and its bootstrap replicates, from the per-image outputs.

    The heads see the ν-stacks of the full sample (for θ̂) and of every resample in one
    ``cluster_heads`` call (split only above :data:`MAX_STACKS_PER_CALL` stacks).

    Args:
        outputs: the per-image outputs of one sample
            (:data:`~hagg_tf.estimation.model.PER_IMAGE_OUTPUTS`: (n,) network outputs and
            (n, F0), (n, F1) features), e.g. ``model.per_image(counts, electrons)``.
        cluster_heads: ``(wo3 (k, ν, F0), tio2 (k, ν, F1)) -> {"wo3_cluster_size_raw": (k,),
            "tio2_cluster_size_raw": (k,)}``, e.g. ``model.cluster_heads``.
        num_images: ν, the images per stack of the heads.
        resamples: B; 0 computes θ̂ only.
        seed: seed of the resampling.
        sample_heads: the export's sample heads of θ̂_Df and θ̂_ρ (None: Eqs. 13–14).

    Returns:
        (θ̂ as :func:`estimate_theta` gives it from all n images, the uncertainty or None when
        ``resamples`` is 0).

    Raises:
        ValueError: bad outputs, n < ν, or ``resamples`` outside the allowed values.
    """
    resamples = check_resamples(resamples)
    arrays = per_image_arrays(outputs)
    fractal_dimension, regressor, probability = (arrays[key] for key in PER_IMAGE_OUTPUTS[:3])
    wo3_features, tio2_features = arrays[WO3_FEATURES], arrays[TIO2_FEATURES]
    count = len(fractal_dimension)
    subsets = cyclic_subsets(count, num_images)                      # (k, ν)
    indices = bootstrap_indices(count, resamples, seed)              # (B, n)
    # Resample b's stacks are its cyclic ν-subsets in draw order: the estimator of Eq. 15 applied
    # to the resample as if those n images had been given.
    stacks = np.concatenate([subsets[np.newaxis], indices[:, subsets]])   # (1 + B, k, ν)
    wo3, tio2 = _heads(cluster_heads, wo3_features, tio2_features,
                       stacks.reshape(-1, num_images))
    wo3, tio2 = wo3.reshape(len(stacks), -1), tio2.reshape(len(stacks), -1)
    estimate = estimate_theta(fractal_dimension, regressor, probability, wo3[0], tio2[0],
                              sample_heads=sample_heads)
    if not resamples:
        return estimate, None
    replicates = [estimate_theta(fractal_dimension[rows], regressor[rows], probability[rows],
                                 wo3[number + 1], tio2[number + 1], sample_heads=sample_heads)
                  for number, rows in enumerate(indices)]
    return estimate, ThetaUncertainty(
        resamples=resamples, seed=int(seed), num_images=count, estimate=estimate.theta,
        replicates=np.array([replicate.theta for replicate in replicates], np.float64),
        cluster_size_raw=np.array([(replicate.wo3_cluster_size_raw,
                                    replicate.tio2_cluster_size_raw)
                                   for replicate in replicates], np.float64),
        shadow_thetas=tuple(replicate.shadow_parameters() for replicate in replicates))


def estimate_with_uncertainty(model, counts: np.ndarray, electrons_per_pixel: np.ndarray, *,
                              resamples: int = DEFAULT_RESAMPLES, seed: int = 0
                              ) -> tuple[ThetaEstimate, Optional[ThetaUncertainty]]:
    """θ̂ of one sample and its bootstrap uncertainty, with one run of the per-image networks.

    Args:
        model: a model with contract A's methods (``per_image``, ``cluster_heads``,
            ``num_images``): :class:`~hagg_tf.estimation.model.CharacterizeModel` or a lighter
            runtime with the same methods.
        counts: (n, H, W) detector counts at the networks' size (n ≥ ν).
        electrons_per_pixel: (n,) incident electrons per pixel.
        resamples, seed: as for :func:`bootstrap_theta`.

    Returns:
        (θ̂, its uncertainty or None when ``resamples`` is 0).
    """
    counts = np.asarray(counts)
    if counts.ndim != 3:
        raise ValueError(f"expected (n, H, W) images of one sample, got shape {counts.shape}")
    outputs = model.per_image(counts, np.asarray(electrons_per_pixel).reshape(-1))
    return bootstrap_theta(outputs, model.cluster_heads, model.num_images,
                           resamples=resamples, seed=seed,
                           sample_heads=getattr(model, "sample_heads", None))

