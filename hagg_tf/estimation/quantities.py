"""The seven numbers ``hagg-characterize`` reports, in plain words, with their typical errors.

θ̂ = (θ_Df, θ_ρ, θ_0, θ_1) are the parameters of the stochastic 3D model estimated from the
images (Sec. 2.3); S_TiO2, Z_hetero and Z_total are structural descriptors of the digital
shadows, new aggregates drawn from θ̂ (Sec. 3.4.1). These tables are the one place that says
what each number means: the console summary, ``report.json`` and ``characterize.png`` all read
them.

The typical error of each θ̂ comes from the model card of the networks used
(``accuracy.per_theta`` in ``hagg_tf_export.json``: the evaluation of the trained networks on
simulated samples with known θ). The descriptors have no such error; what is reported beside
their mean is their spread, the s.d. over the shadows (how much single aggregates of the
sample differ), not an error of the mean.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

from hagg_tf.model.parameters import TABLE2_CLUSTER_SIZES


@dataclasses.dataclass(frozen=True)
class Quantity:
    """One reported number.

    Attributes:
        key: its attribute name (of ``ModelParameters`` / ``ThetaEstimate`` for θ, of
            ``Descriptors`` for the shadows' descriptors).
        symbol: plain-text symbol for consoles and JSON (``"θ_Df"``).
        tex: the symbol in matplotlib mathtext, with proper subscripts.
        name: a short name in words.
        meaning: what the number says about the aggregates, in words.
    """

    key: str
    symbol: str
    tex: str
    name: str
    meaning: str


#: θ̂, in the order of ``ThetaEstimate.theta``.
THETA_QUANTITIES = (
    Quantity("fractal_dimension", "θ_Df", r"$\theta_{D_f}$", "fractal dimension",
             "compactness: 1 = a chain, 3 = a ball"),
    Quantity("mixing_ratio", "θ_ρ", r"$\theta_\rho$", "mixing ratio",
             "share of WO3 particles (0 to 1)"),
    Quantity("wo3_cluster_size", "θ_0", r"$\theta_0$", "WO3 cluster size",
             "particles per primary WO3 cluster"),
    Quantity("tio2_cluster_size", "θ_1", r"$\theta_1$", "TiO2 cluster size",
             "particles per primary TiO2 cluster"),
)

#: The descriptors of the digital shadows (Sec. 3.4.1; Eqs. 17–19).
DESCRIPTOR_QUANTITIES = (
    Quantity("tio2_cluster_size", "S_TiO2", r"$S_{\mathrm{TiO}_2}$", "TiO2 cluster size",
             "particles per connected TiO2 cluster"),
    Quantity("hetero_coordination", "Z_hetero", r"$Z_{\mathrm{hetero}}$",
             "hetero-coordination", "WO3–TiO2 contacts per particle"),
    Quantity("total_coordination", "Z_total", r"$Z_{\mathrm{total}}$", "coordination number",
             "contacts per particle"),
)

# Where the model card's accuracy.per_theta holds each θ̂'s error: a mean absolute error for the
# continuous estimates, the share exact / within ±1 for the rounded cluster sizes.
_CARD_ERROR_KEYS = {
    "fractal_dimension": {"mae": "fractal_dimension_mae"},
    "mixing_ratio": {"mae": "mixing_ratio_mae_with_classifier"},
    "wo3_cluster_size": {"exact": "wo3_cluster_size_exact",
                         "within_1": "wo3_cluster_size_within_1"},
    "tio2_cluster_size": {"exact": "tio2_cluster_size_exact",
                          "within_1": "tio2_cluster_size_within_1"},
}


def typical_error(key: str, model_card: Optional[Mapping]) -> Optional[dict]:
    """The measured error of θ̂'s ``key`` from a model card, or None when it was not measured.

    Returns:
        ``{"mae": …}`` for θ_Df and θ_ρ, ``{"exact": …, "within_1": …}`` (fractions of the
        evaluation samples) for θ_0 and θ_1, each with ``"samples"``, the number of evaluation
        samples (groups of ν images) when the card says it.
    """
    accuracy = (model_card or {}).get("accuracy") or {}
    per_theta = accuracy.get("per_theta") or {}
    values = {name: per_theta.get(card_key) for name, card_key in _CARD_ERROR_KEYS[key].items()}
    if any(value is None for value in values.values()):
        return None
    if accuracy.get("groups_of_nu") is not None:
        values["samples"] = int(accuracy["groups_of_nu"])
    return values


def format_typical_error(error: Optional[dict]) -> str:
    """``"typical error ±0.030"`` / ``"exact in 37 %, ±1 in 86 %"`` (how often θ̂ is exact and
    within ±1) / ``"error not measured"``."""
    if error is None:
        return "error not measured"
    if "mae" in error:
        return f"typical error ±{error['mae']:.3f}"
    return f"exact in {100 * error['exact']:.0f} %, ±1 in {100 * error['within_1']:.0f} %"


def quantities_record(model_card: Optional[Mapping]) -> dict:
    """The meanings and typical errors of all seven quantities, for ``report.json``."""
    record = {}
    for quantity in THETA_QUANTITIES:
        record[quantity.symbol] = {"key": quantity.key, "name": quantity.name,
                                   "meaning": quantity.meaning,
                                   "typical_error": typical_error(quantity.key, model_card)}
    for quantity in DESCRIPTOR_QUANTITIES:
        record[quantity.symbol] = {"key": quantity.key, "name": quantity.name,
                                   "meaning": quantity.meaning,
                                   "spread": "s.d. over the digital shadows (how much single "
                                             "aggregates differ; not an error of the mean)"}
    return record


#: A cluster-size network whose raw outputs over the evaluation samples span less than this
#: share of the true sizes' range answers nearly the same for every sample: it has not learnt
#: its parameter, whatever its exact/±1 rates (a constant answer of the middle size already
#: scores some).
UNRESOLVED_RANGE_SHARE = 0.5
# Which descriptors of the shadows (keys of DESCRIPTOR_QUANTITIES) depend on which cluster size
# (Sec. 3.4.1: S_TiO2 counts TiO2 clusters; Z_hetero counts WO3–TiO2 contacts, set by how the
# clusters of both interleave).
_DEPENDENT_DESCRIPTORS = {"wo3_cluster_size": ("hetero_coordination",),
                          "tio2_cluster_size": ("tio2_cluster_size", "hetero_coordination")}


def unresolved_parameter_warnings(model_card: Optional[Mapping]) -> list[str]:
    """Warnings for the cluster sizes whose networks, by their own evaluation, did not learn them.

    A network is taken not to resolve its parameter when its raw outputs over the model card's
    evaluation samples (``accuracy.per_theta.<key>_raw_range``) span less than
    :data:`UNRESOLVED_RANGE_SHARE` of the design's range of true sizes
    (:data:`~hagg_tf.model.parameters.TABLE2_CLUSTER_SIZES`). Such an estimate is close to a
    constant, and so are the shadows' descriptors that depend on it.

    Args:
        model_card: the networks' model card (may be empty).

    Returns:
        One warning per unresolved parameter (none when the card has no raw ranges).
    """
    per_theta = (((model_card or {}).get("accuracy") or {}).get("per_theta") or {})
    design_width = max(TABLE2_CLUSTER_SIZES) - min(TABLE2_CLUSTER_SIZES)
    symbols = {descriptor.key: descriptor.symbol for descriptor in DESCRIPTOR_QUANTITIES}
    warnings = []
    for quantity in THETA_QUANTITIES:
        raw_range = per_theta.get(f"{quantity.key}_raw_range")
        if quantity.key not in _DEPENDENT_DESCRIPTORS or not raw_range:
            continue
        low, high = float(raw_range[0]), float(raw_range[1])
        if high - low >= UNRESOLVED_RANGE_SHARE * design_width:
            continue
        error = format_typical_error(typical_error(quantity.key, model_card))
        dependent = " and ".join(symbols[key] for key in _DEPENDENT_DESCRIPTORS[quantity.key])
        warnings.append(
            f"the networks do not resolve {quantity.symbol} ({quantity.name}): on their "
            f"evaluation samples, whose true sizes run from {min(TABLE2_CLUSTER_SIZES)} to "
            f"{max(TABLE2_CLUSTER_SIZES)}, the raw estimate only spans {low:.1f}–{high:.1f} "
            f"({error}), so the estimate of {quantity.symbol} comes out nearly the same for "
            f"every sample and the shadows' {dependent} inherit that")
    return warnings
