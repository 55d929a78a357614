"""The paper's evaluation (Sec. 3, Figs. 9–15, Tables 4–5) computed from a predictions file.

Input is a :class:`~hagg_tf.evaluation.predictions.Predictions` object: per image of the
evaluation split E the truth and every network's raw output, and the multi-image networks'
outputs on groups of ν images of one θ. Everything here is numpy (plus the aggregate generator
for the digital shadows); figures are in :mod:`hagg_tf.evaluation.paper_figures`, the markdown
report in :mod:`hagg_tf.evaluation.report`.

Estimators (paper Sec. 2.3, the same code as :mod:`hagg_tf.estimation.estimators`):

* θ̂_Df = mean of CNN^Df over the ν images of a group (Eq. 13);
* ρ̂(I) = η(CNN^ρ_reg(I)) if CNN^ρ_class(I) > 0.5 else CNN^ρ_reg(I), θ̂_ρ = mean of ρ̂ over the
  group (Eq. 14); the "regressor only" variant averages CNN^ρ_reg(I) instead;
* θ̂_0 = η(CNN^0(I(B))), θ̂_1 = η(CNN^1(I(B))), η rounding to the nearest integer ≥ 0 exactly
  as the paper defines it: an output below 0.5 gives θ̂ = 0, which is counted and reported
  (``rounded_to_zero``), not raised to 1. Only the digital shadows need an admissible θ̂ and
  get it from :meth:`~hagg_tf.estimation.estimators.ThetaEstimate.shadow_parameters`.

Errors are estimate − truth throughout. Per-image errors compare with the imaged aggregate's
D_f(A) and ρ(A); θ-level errors with the preset θ of the group. Group membership: the file's
``groups_nu<ν>`` where it has them (so θ̂_Df, θ̂_ρ, θ̂_0 and θ̂_1 of a group come from the same
images), else :func:`~hagg_tf.data.design.disjoint_groups` with the given seed.

:func:`evaluate_predictions` returns one JSON-serialisable dict (NaN written as ``None``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from hagg_tf.estimation.estimators import (CLASSIFIER_THRESHOLD, combine_mixing_ratio,
                                           estimate_theta, round_cluster_size)
from hagg_tf.data.beam import LOCAL_RUNNER, is_beam_runner
from hagg_tf.data.design import disjoint_groups
# THETA_COLUMNS (columns of θ in a ``theta`` array) is the registry's, re-exported here.
from hagg_tf.data.network_specs import THETA_COLUMNS  # noqa: F401
from hagg_tf.evaluation.predictions import Predictions, PredictionsError
from hagg_tf.jsonsafe import json_safe
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters

#: ν of every θ-level result unless stated (the paper's Sec. 3).
DEFAULT_NU = 12
#: Group sizes of Fig. 9 for θ_Df and θ_ρ (estimators from per-image outputs).
FIG9_NUS = tuple(range(1, 21))
#: Digital shadows (Table 5): θ configurations and aggregates per θ and per θ̂ in the paper.
DEFAULT_SHADOW_THETAS = 50
DEFAULT_SHADOW_AGGREGATES = 800
#: Fig. 14 shows the descriptor histograms of this many (θ, θ̂) pairs, with this many bins.
FIG14_PAIRS = 4
FIG14_BINS = 20
#: Width of the particle-count bins of Fig. 15's summary.
SIZE_BIN_WIDTH = 10
#: The multi-image networks: parameter name → key of its figure in the results.
CLUSTER_SIZE_NETWORKS = {"wo3_cluster_size": "fig12", "tio2_cluster_size": "fig13"}
#: Per-image baseline arrays → the truth they estimate.
BASELINES = {"baseline_mixing_ratio_threshold": "mixing_ratio",
             "baseline_fractal_dimension_box": "fractal_dimension"}
#: The descriptors compared between aggregates of θ and of θ̂ (Sec. 3.4.2).
SHADOW_DESCRIPTOR_NAMES = ("tio2_cluster_size", "hetero_coordination", "total_coordination")
# Draw k of the aggregates for configuration c uses index (2c + role)·stride + k, role 0 for θ
# and 1 for θ̂: the θ and θ̂ samples are independent (the paper drew "800 additional
# aggregates" for θ̂), every draw depends on (seed, configuration, role, k) alone, and a larger
# count extends the same sample.
_SHADOW_INDEX_STRIDE = 1_000_000
_SHADOW_ROLES = ("theta", "estimate")
_SHADOW_CACHE_FORMAT = "hagg_tf.shadow_descriptors/1"
#: Under the shadow cache folder: the blocks of a Beam run, until every job is cached.
_BEAM_BLOCKS_DIR = "beam-blocks"


# --------------------------------------------------------------------------- basic statistics

def mean_absolute_error(truth, estimate) -> float:
    """MAE of Eq. 16, (1/n) Σ |y_i − ŷ_i|, over the pairs where both are finite.

    Args:
        truth: (n,) y.
        estimate: (n,) ŷ.

    Returns:
        The MAE, NaN when no pair is finite.
    """
    truth, estimate = _paired(truth, estimate)
    return float(np.abs(estimate - truth).mean()) if truth.size else math.nan


def coefficient_of_determination(truth, estimate) -> float:
    """R²(y, ŷ) = 1 − MSE(y, ŷ) / MSE(y, ȳ) as after the paper's Table 5, ȳ the mean of y.

    Pairs with a non-finite member are left out.

    Args:
        truth: (n,) y, e.g. the descriptor means of the aggregates drawn from each θ.
        estimate: (n,) ŷ, the same for θ̂.

    Returns:
        R², NaN when fewer than two pairs are finite or y is constant.
    """
    truth, estimate = _paired(truth, estimate)
    if truth.size < 2:
        return math.nan
    spread = float(np.sum((truth - truth.mean()) ** 2))
    if spread == 0.0:
        return math.nan
    return 1.0 - float(np.sum((truth - estimate) ** 2)) / spread


def error_summary(errors) -> dict:
    """Location and spread of errors (estimate − truth), non-finite values left out.

    Returns:
        ``count``, ``mean`` (the bias), ``std`` (ddof 1), ``mae``, ``median``, ``q25``, ``q75``,
        ``iqr`` (q75 − q25, the paper's Fig. 10a spread) and ``non_finite`` (values skipped).
    """
    errors = np.asarray(errors, np.float64).reshape(-1)
    finite = errors[np.isfinite(errors)]
    summary = {"count": int(finite.size), "non_finite": int(errors.size - finite.size)}
    if not finite.size:
        return {**summary, **{key: math.nan for key in ("mean", "std", "mae", "median", "q25",
                                                        "q75", "iqr")}}
    q25, median, q75 = np.quantile(finite, [0.25, 0.5, 0.75])
    return {**summary, "mean": float(finite.mean()),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "mae": float(np.abs(finite).mean()), "median": float(median), "q25": float(q25),
            "q75": float(q75), "iqr": float(q75 - q25)}


def _paired(truth, estimate) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth, np.float64).reshape(-1)
    estimate = np.asarray(estimate, np.float64).reshape(-1)
    if truth.shape != estimate.shape:
        raise ValueError(f"truth has {truth.size} values, the estimate {estimate.size}")
    finite = np.isfinite(truth) & np.isfinite(estimate)
    return truth[finite], estimate[finite]


# --------------------------------------------------------------------------- estimators

def per_image_mixing_ratio(predictions: Predictions,
                           threshold: float = CLASSIFIER_THRESHOLD) -> np.ndarray:
    """(N,) ρ̂(I) of Sec. 2.3.3: the regressor output, rounded to 0/1 where the classifier says
    homogeneous."""
    arrays = predictions.arrays
    return combine_mixing_ratio(arrays["mixing_ratio_regressor_pred"],
                                arrays["homogeneous_probability_pred"], threshold
                                ).astype(np.float64)


def groups_for(predictions: Predictions, nu: int, seed: int = 0) -> np.ndarray:
    """(G, ν) image rows of the groups of size ``nu``: the file's if present, else drawn with
    :func:`~hagg_tf.data.design.disjoint_groups`."""
    if nu in predictions.group_sizes:
        return np.asarray(predictions.groups(nu), np.int64)
    return disjoint_groups(predictions.arrays["theta_id"], nu, seed)


def theta_level_estimates(predictions: Predictions, groups: np.ndarray) -> dict[str, np.ndarray]:
    """θ̂_Df and θ̂_ρ of every group from the per-image outputs (Eqs. 13, 14, or the model's
    sample heads when the predictions carry them).

    Args:
        predictions: the predictions.
        groups: (G, ν) image rows, one θ per row.

    Returns:
        (G,) arrays ``theta`` (G, 4) preset θ, ``fractal_dimension`` θ̂_Df,
        ``mixing_ratio`` θ̂_ρ (the sample heads' where the predictions have them, else the
        means), ``fractal_dimension_images_mean`` and ``mixing_ratio_images_mean`` the means of
        Eqs. 13–14 (with the classifier), ``mixing_ratio_regressor_only`` the mean
        CNN^ρ_reg output, ``mixing_ratio_true_per_image`` the mean of the true ρ(A) (Eq. 14's
        floor), and the baselines' group means where the file has them (NaN images
        left out of a group's mean).
    """
    arrays = predictions.arrays
    groups = np.asarray(groups, np.int64)
    theta = np.asarray(arrays["theta"], np.float64)[groups[:, 0]] if groups.size else \
        np.empty((0, 4))
    result = {
        "theta": theta,
        "fractal_dimension_images_mean": np.asarray(arrays["fractal_dimension_pred"],
                                                    np.float64)[groups].mean(axis=1),
        "mixing_ratio_images_mean": per_image_mixing_ratio(predictions)[groups].mean(axis=1),
        "mixing_ratio_regressor_only": np.asarray(arrays["mixing_ratio_regressor_pred"],
                                                  np.float64)[groups].mean(axis=1),
        # Eq. 14 with exact per-image ratios: ρ(A) itself spreads around θ_ρ (Fig. 4), so no
        # per-image estimator averaged over the group gets closer to θ_ρ than this on average.
        "mixing_ratio_true_per_image": np.asarray(arrays["mixing_ratio"],
                                                  np.float64)[groups].mean(axis=1),
    }
    for key in BASELINES:
        if key in arrays:
            values = np.asarray(arrays[key], np.float64)[groups]
            finite = np.isfinite(values)
            with np.errstate(invalid="ignore", divide="ignore"):
                result[key] = np.where(finite, values, 0.0).sum(axis=1) / finite.sum(axis=1)
    heads = predictions.sample_heads
    if heads is None or not groups.size:
        result["fractal_dimension"] = result["fractal_dimension_images_mean"]
        result["mixing_ratio"] = result["mixing_ratio_images_mean"]
    else:
        estimated = heads(*(np.asarray(arrays[key])[groups] for key in (
            "fractal_dimension_pred", "mixing_ratio_regressor_pred",
            "homogeneous_probability_pred")))
        result.update({key: np.asarray(value, np.float64) for key, value in estimated.items()})
    return result


def rounded_cluster_sizes(raw) -> np.ndarray:
    """η of Sec. 2.3.4 applied to every network output: nearest integer ≥ 0 (int64)."""
    return np.array([round_cluster_size(value) for value in np.asarray(raw).reshape(-1)],
                    dtype=np.int64)


def require_group_outputs(predictions: Predictions, nu: int) -> None:
    """Raises :class:`PredictionsError` unless the file has ν-groups with CNN^0 and CNN^1."""
    if nu not in predictions.group_sizes:
        have = ", ".join(map(str, predictions.group_sizes)) or "none"
        raise PredictionsError(f"predictions have no groups of nu = {nu} (groups_nu{nu}); "
                               f"group sizes present: {have}")
    missing = [f"{network}_pred_nu{nu}" for network in CLUSTER_SIZE_NETWORKS
               if f"{network}_pred_nu{nu}" not in predictions.arrays]
    if missing:
        raise PredictionsError(f"predictions lack {', '.join(missing)}")


def attach_baselines(predictions: Predictions,
                     source: Union[str, os.PathLike, Mapping[str, np.ndarray]]) -> Predictions:
    """``predictions`` with per-image baseline outputs added, matched by record index.

    Args:
        predictions: the predictions.
        source: a mapping or an ``.npz`` (``hagg_tf.evaluation.baselines.save_split_baselines``)
            with ``record_index`` (M,) and one or both of ``baseline_mixing_ratio_threshold``,
            ``baseline_fractal_dimension_box`` (M,). Images it lacks get NaN (left out of the
            baseline's statistics and counted there).

    Raises:
        FileNotFoundError: no such file.
        PredictionsError: no baseline arrays, or none of its records among the predictions.
    """
    if isinstance(source, Mapping):
        name, arrays = "baselines", {key: np.asarray(value) for key, value in source.items()}
    else:
        path = pathlib.Path(source)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no baseline results file")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: np.asarray(data[key]) for key in data.files}
        except (ValueError, OSError) as error:
            raise PredictionsError(f"{path}: not a baseline results file ({error})") from None
    present = [key for key in BASELINES if key in arrays]
    if "record_index" not in arrays or not present:
        raise PredictionsError(f"{name}: needs record_index and at least one of "
                               f"{', '.join(BASELINES)}")
    row_of = {int(record): row for row, record in enumerate(arrays["record_index"])}
    records = np.asarray(predictions.arrays["record_index"], np.int64)
    rows = np.array([row_of.get(int(record), -1) for record in records], np.int64)
    if not np.any(rows >= 0):
        raise PredictionsError(f"{name}: none of its record indices are in the predictions")
    merged = dict(predictions.arrays)
    for key in present:
        values = np.asarray(arrays[key], np.float64)
        if len(values) != len(arrays["record_index"]):
            raise PredictionsError(f"{name}: {key} and record_index differ in length")
        merged[key] = np.where(rows >= 0, values[np.maximum(rows, 0)], np.nan)
    return Predictions(merged, dict(predictions.info, baselines=name))


# --------------------------------------------------------------------------- Figs. 9–13, 15

def mae_versus_nu(predictions: Predictions, nus: Iterable[int] = FIG9_NUS, seed: int = 0
                  ) -> dict:
    """Fig. 9: MAE of the four estimators against the group size ν.

    θ_Df and θ_ρ at every ν of ``nus`` (groups from :func:`groups_for`); θ_0 and θ_1 at the ν
    the file has multi-image outputs for, after rounding (θ̂) and before (raw output).

    Returns:
        Per parameter: ``nu`` (list), ``mae`` (list, NaN where no group of that size fits) and
        ``groups`` (groups per ν); θ_Df and θ_ρ also ``mae_images_mean`` (the means of Eqs.
        13–14, equal to ``mae`` without sample heads), θ_ρ ``mae_regressor_only``, θ_0/θ_1
        ``mae_raw``.
    """
    arrays = predictions.arrays
    result = {"fractal_dimension": {"nu": [], "mae": [], "mae_images_mean": [], "groups": []},
              "mixing_ratio": {"nu": [], "mae": [], "mae_images_mean": [],
                               "mae_regressor_only": [], "groups": []}}
    for nu in nus:
        groups = groups_for(predictions, int(nu), seed)
        estimates = theta_level_estimates(predictions, groups)
        theta = estimates["theta"]
        for name in ("fractal_dimension", "mixing_ratio"):
            entry = result[name]
            entry["nu"].append(int(nu))
            entry["groups"].append(int(len(groups)))
            entry["mae"].append(mean_absolute_error(theta[:, THETA_COLUMNS[name]],
                                                    estimates[name]))
            entry["mae_images_mean"].append(mean_absolute_error(
                theta[:, THETA_COLUMNS[name]], estimates[f"{name}_images_mean"]))
        result["mixing_ratio"]["mae_regressor_only"].append(mean_absolute_error(
            theta[:, 1], estimates["mixing_ratio_regressor_only"]))
    for network in CLUSTER_SIZE_NETWORKS:
        entry = {"nu": [], "mae": [], "mae_raw": [], "groups": []}
        for nu in predictions.group_sizes:
            key = f"{network}_pred_nu{nu}"
            if key not in arrays:
                continue
            groups = predictions.groups(nu)
            truth = np.asarray(arrays["theta"], np.float64)[groups[:, 0],
                                                            THETA_COLUMNS[network]]
            raw = np.asarray(arrays[key], np.float64)
            entry["nu"].append(int(nu))
            entry["groups"].append(int(len(groups)))
            entry["mae"].append(mean_absolute_error(truth, rounded_cluster_sizes(raw)))
            entry["mae_raw"].append(mean_absolute_error(truth, raw))
        result[network] = entry
    return result


def _by_preset(preset: np.ndarray, errors: np.ndarray) -> list[dict]:
    """Mean error, MAE and count per preset value (rounded to 6 digits to merge float noise)."""
    preset = np.round(np.asarray(preset, np.float64), 6)
    rows = []
    for value in np.unique(preset):
        chosen = errors[preset == value]
        summary = error_summary(chosen)
        rows.append({"preset": float(value), "count": summary["count"],
                     "mean_error": summary["mean"], "mae": summary["mae"]})
    return rows


def fractal_dimension_metrics(predictions: Predictions, nu: int = DEFAULT_NU, seed: int = 0
                              ) -> dict:
    """Fig. 10: D̂_f(I) − D_f(A) per image and θ̂_Df − θ_Df per group of ν.

    Returns:
        ``per_image`` and ``per_theta`` error summaries (:func:`error_summary`),
        ``per_theta_images_mean`` (the mean of Eq. 13, without the sample head), and
        ``per_theta_by_preset`` (mean error and MAE per preset θ_Df: the paper's over-estimate at
        small θ_Df and under-estimate at large).
    """
    arrays = predictions.arrays
    per_image = (np.asarray(arrays["fractal_dimension_pred"], np.float64)
                 - np.asarray(arrays["fractal_dimension"], np.float64))
    estimates = theta_level_estimates(predictions, groups_for(predictions, nu, seed))
    per_theta = estimates["fractal_dimension"] - estimates["theta"][:, 0]
    return {"nu": nu, "per_image": error_summary(per_image),
            "per_theta": error_summary(per_theta),
            "per_theta_images_mean": error_summary(estimates["fractal_dimension_images_mean"]
                                                   - estimates["theta"][:, 0]),
            "per_theta_by_preset": _by_preset(estimates["theta"][:, 0], per_theta)}


def mixing_ratio_metrics(predictions: Predictions, nu: int = DEFAULT_NU, seed: int = 0) -> dict:
    """Fig. 11: ρ̂ per image and θ̂_ρ per group, regressor only and with the classifier.

    Returns:
        ``per_image_regressor_only``, ``per_image_with_classifier``, ``per_theta_regressor_only``,
        ``per_theta_with_classifier`` (the means of Eq. 14), ``per_theta`` (θ̂_ρ as the model
        gives it: the sample head's where the predictions have it, else the mean with the
        classifier), ``per_theta_true_per_image`` (θ̂_ρ from the exact ρ(A)
        of the group's images: the floor of Eq. 14, set by the spread of ρ(A) around θ_ρ) (error
        summaries) and ``bias_at_extremes``: the mean error
        for aggregates with ρ(A) ∈ [0, 0.1] and ∈ [0.9, 1] (the paper: about 0.04 / −0.1 for the
        regressor, 0.009 / 0.02 with the classifier).
    """
    arrays = predictions.arrays
    truth = np.asarray(arrays["mixing_ratio"], np.float64)
    regressor = np.asarray(arrays["mixing_ratio_regressor_pred"], np.float64) - truth
    combined = per_image_mixing_ratio(predictions) - truth
    estimates = theta_level_estimates(predictions, groups_for(predictions, nu, seed))
    preset = estimates["theta"][:, 1]
    low, high = truth <= 0.1, truth >= 0.9
    return {
        "nu": nu,
        "per_image_regressor_only": error_summary(regressor),
        "per_image_with_classifier": error_summary(combined),
        "per_theta_regressor_only": error_summary(estimates["mixing_ratio_regressor_only"]
                                                  - preset),
        "per_theta_with_classifier": error_summary(estimates["mixing_ratio_images_mean"]
                                                   - preset),
        "per_theta": error_summary(estimates["mixing_ratio"] - preset),
        "per_theta_true_per_image": error_summary(estimates["mixing_ratio_true_per_image"]
                                                  - preset),
        "bias_at_extremes": {
            "regressor_only": {"rho_at_most_0.1": error_summary(regressor[low])["mean"],
                               "rho_at_least_0.9": error_summary(regressor[high])["mean"]},
            "with_classifier": {"rho_at_most_0.1": error_summary(combined[low])["mean"],
                                "rho_at_least_0.9": error_summary(combined[high])["mean"]},
            "images": {"rho_at_most_0.1": int(low.sum()), "rho_at_least_0.9": int(high.sum())},
        },
    }


def classification_metrics(predictions: Predictions,
                           threshold: float = CLASSIFIER_THRESHOLD) -> dict:
    """Table 4: homogeneous/heterogeneous per image, CNN^ρ_class > threshold against ρ(A) ∈ {0,1}.

    Returns:
        ``matrix`` [[pred hom & true hom, pred hom & true het], [pred het & true hom,
        pred het & true het]] (rows prediction, columns truth, as the paper's Table 4), the same
        counts by name, ``accuracy``, ``homogeneous_recall`` (true homogeneous found),
        ``homogeneous_precision`` and ``images``.
    """
    arrays = predictions.arrays
    predicted = np.asarray(arrays["homogeneous_probability_pred"], np.float64) > threshold
    truth = np.asarray(arrays["homogeneous"]).astype(bool)
    counts = {"predicted_homogeneous_true_homogeneous": int(np.sum(predicted & truth)),
              "predicted_homogeneous_true_heterogeneous": int(np.sum(predicted & ~truth)),
              "predicted_heterogeneous_true_homogeneous": int(np.sum(~predicted & truth)),
              "predicted_heterogeneous_true_heterogeneous": int(np.sum(~predicted & ~truth))}
    true_positive = counts["predicted_homogeneous_true_homogeneous"]
    total = int(truth.size)
    return {
        "threshold": threshold,
        "images": total,
        "matrix": [[true_positive, counts["predicted_homogeneous_true_heterogeneous"]],
                   [counts["predicted_heterogeneous_true_homogeneous"],
                    counts["predicted_heterogeneous_true_heterogeneous"]]],
        **counts,
        "accuracy": (true_positive + counts["predicted_heterogeneous_true_heterogeneous"]) / total
        if total else math.nan,
        "homogeneous_recall": true_positive / int(truth.sum()) if truth.any() else math.nan,
        "homogeneous_precision": true_positive / int(predicted.sum()) if predicted.any()
        else math.nan,
    }


def cluster_size_metrics(predictions: Predictions, network: str, nu: int = DEFAULT_NU) -> dict:
    """Figs. 12 (``wo3_cluster_size``, CNN^0) and 13 (``tio2_cluster_size``, CNN^1).

    Args:
        predictions: with ``groups_nu<ν>`` and ``<network>_pred_nu<ν>``.
        network: ``"wo3_cluster_size"`` or ``"tio2_cluster_size"``.
        nu: group size.

    Returns:
        ``raw`` (summary of CNN(I(B)) − θ before rounding), ``rounded`` (summary of θ̂ − θ),
        ``exact`` and ``within_1`` (shares of groups with |θ̂ − θ| = 0, ≤ 1), ``mae``,
        ``rounded_to_zero`` (groups whose output rounds to 0, below any admissible size),
        ``error_distribution`` (θ̂ − θ → share of groups) and ``by_true_value`` (per θ: count,
        exact, within_1, MAE after rounding, relative MAE, mean raw error).
    """
    if network not in CLUSTER_SIZE_NETWORKS:
        raise ValueError(f"network must be one of {', '.join(CLUSTER_SIZE_NETWORKS)}, "
                         f"got {network!r}")
    require_group_outputs(predictions, nu)
    groups = predictions.groups(nu)
    truth = np.asarray(predictions.arrays["theta"], np.float64)[groups[:, 0],
                                                                THETA_COLUMNS[network]]
    raw = np.asarray(predictions.arrays[f"{network}_pred_nu{nu}"], np.float64)
    rounded = rounded_cluster_sizes(raw)
    error = rounded - truth
    values, counts = np.unique(error.astype(np.int64), return_counts=True)
    by_true_value = []
    for value in np.unique(truth):
        chosen = truth == value
        mae = float(np.abs(error[chosen]).mean())
        by_true_value.append({"true_value": int(value), "count": int(chosen.sum()),
                              "exact": float(np.mean(error[chosen] == 0)),
                              "within_1": float(np.mean(np.abs(error[chosen]) <= 1)),
                              "mae": mae, "relative_mae": mae / value if value else math.nan,
                              "mean_raw_error": float((raw[chosen] - value).mean())})
    return {
        "nu": nu,
        "groups": int(len(groups)),
        "raw": error_summary(raw - truth),
        "rounded": error_summary(error),
        "exact": float(np.mean(error == 0)) if error.size else math.nan,
        "within_1": float(np.mean(np.abs(error) <= 1)) if error.size else math.nan,
        "mae": mean_absolute_error(truth, rounded),
        "rounded_to_zero": int(np.sum(rounded == 0)),
        "error_distribution": {str(int(value)): float(count / error.size)
                               for value, count in zip(values, counts)},
        "by_true_value": by_true_value,
    }


def size_bins(num_particles, width: int = SIZE_BIN_WIDTH) -> np.ndarray:
    """Bin edges [a, a + width) covering every particle count, aligned to multiples of width."""
    sizes = np.asarray(num_particles, np.int64)
    if not sizes.size:
        return np.array([0, width])
    start = (int(sizes.min()) // width) * width
    stop = (int(sizes.max()) // width + 1) * width
    return np.arange(start, stop + 1, width)


def error_versus_size(predictions: Predictions, width: int = SIZE_BIN_WIDTH) -> dict:
    """Fig. 15: per-image errors of D̂_f and ρ̂ (and the baselines) against particle count.

    Returns:
        ``edges`` of the particle-count bins and, per estimate (``fractal_dimension``,
        ``mixing_ratio`` with the classifier, baselines if present), ``bins`` (count, mean error,
        MAE, IQR per bin) and ``abs_error_size_correlation`` (Pearson r of |error| and N; a
        method that degrades with overlapping particles has r > 0).
    """
    arrays = predictions.arrays
    sizes = np.asarray(arrays["num_particles"], np.int64)
    edges = size_bins(sizes, width)
    errors = {"fractal_dimension": np.asarray(arrays["fractal_dimension_pred"], np.float64)
              - np.asarray(arrays["fractal_dimension"], np.float64),
              "mixing_ratio": per_image_mixing_ratio(predictions)
              - np.asarray(arrays["mixing_ratio"], np.float64)}
    for key, truth in BASELINES.items():
        if key in arrays:
            errors[key] = (np.asarray(arrays[key], np.float64)
                           - np.asarray(arrays[truth], np.float64))
    result = {"edges": edges.tolist()}
    for name, error in errors.items():
        bins = []
        for low, high in zip(edges[:-1], edges[1:]):
            summary = error_summary(error[(sizes >= low) & (sizes < high)])
            bins.append({"low": int(low), "high": int(high), "count": summary["count"],
                         "mean_error": summary["mean"], "mae": summary["mae"],
                         "iqr": summary["iqr"]})
        finite = np.isfinite(error)
        correlation = math.nan
        if finite.sum() > 2 and np.ptp(sizes[finite]) > 0 and np.ptp(error[finite]) > 0:
            correlation = float(np.corrcoef(np.abs(error[finite]), sizes[finite])[0, 1])
        result[name] = {"bins": bins, "abs_error_size_correlation": correlation}
    return result


def baseline_metrics(predictions: Predictions, nu: int = DEFAULT_NU, seed: int = 0) -> dict:
    """The classical baselines of Sec. 4, where the file has them, on the CNN's groups.

    Returns:
        Per baseline key present: ``per_image`` (error summary against ρ(A) or D_f(A)) and
        ``per_theta`` (error summary of the group mean against the preset θ_ρ or θ_Df). Empty
        when the file has no baselines.
    """
    arrays = predictions.arrays
    present = [key for key in BASELINES if key in arrays]
    if not present:
        return {}
    estimates = theta_level_estimates(predictions, groups_for(predictions, nu, seed))
    result = {}
    for key in present:
        truth = BASELINES[key]
        result[key] = {
            "estimates": truth,
            "per_image": error_summary(np.asarray(arrays[key], np.float64)
                                       - np.asarray(arrays[truth], np.float64)),
            "per_theta": error_summary(estimates[key]
                                       - estimates["theta"][:, THETA_COLUMNS[truth]]),
        }
    return result


# --------------------------------------------------------------------------- Table 5, Fig. 14

@dataclasses.dataclass(frozen=True)
class ShadowPair:
    """One preset θ of E and its estimate θ̂ from one group of ν images.

    Attributes:
        theta_id: configuration id.
        rows: image rows of the group.
        truth: preset θ.
        estimate: θ̂ made admissible for the generator (θ̂_0, θ̂_1 ≥ 1, θ̂_Df inside (1, 3)).
        estimate_rounded: (θ̂_Df, θ̂_ρ, η(CNN^0), η(CNN^1)) exactly as estimated.
        estimate_raw: (θ̂_Df, θ̂_ρ, CNN^0, CNN^1) before rounding.
    """

    theta_id: int
    rows: tuple
    truth: ModelParameters
    estimate: ModelParameters
    estimate_rounded: tuple
    estimate_raw: tuple


def select_shadow_pairs(predictions: Predictions, count: int = DEFAULT_SHADOW_THETAS,
                        nu: int = DEFAULT_NU, seed: int = 0) -> list[ShadowPair]:
    """Table 5's (θ, θ̂) pairs: ``count`` configurations of E chosen at random, one group each.

    The configurations are a seeded permutation of those with a ν-group, cut after ``count``
    (so a larger count keeps the earlier pairs); each uses its first group of the file.

    Returns:
        Up to ``count`` pairs (fewer when E has fewer configurations).
    """
    require_group_outputs(predictions, nu)
    arrays = predictions.arrays
    groups = predictions.groups(nu)
    theta_ids = np.asarray(arrays["theta_id"], np.int64)[groups[:, 0]]
    first_group = {}
    for number, theta_id in enumerate(theta_ids):
        first_group.setdefault(int(theta_id), number)
    configurations = sorted(first_group)
    order = np.random.default_rng(seed).permutation(len(configurations))[:count]
    pairs, heads = [], predictions.sample_heads  # read from the arrays once, not per pair
    for position in order:
        group = first_group[configurations[position]]
        rows = groups[group]
        estimate = estimate_theta(
            np.asarray(arrays["fractal_dimension_pred"])[rows],
            np.asarray(arrays["mixing_ratio_regressor_pred"])[rows],
            np.asarray(arrays["homogeneous_probability_pred"])[rows],
            [np.asarray(arrays[f"wo3_cluster_size_pred_nu{nu}"])[group]],
            [np.asarray(arrays[f"tio2_cluster_size_pred_nu{nu}"])[group]],
            sample_heads=heads)
        theta = np.asarray(arrays["theta"], np.float64)[rows[0]]
        pairs.append(ShadowPair(
            theta_id=configurations[position], rows=tuple(int(row) for row in rows),
            # a float32 file holds 1.7999999523 for θ_Df = 1.8; preset grids have few digits
            truth=ModelParameters(round(float(theta[0]), 6), round(float(theta[1]), 6),
                                  int(round(theta[2])), int(round(theta[3]))),
            estimate=estimate.shadow_parameters(),
            estimate_rounded=tuple(estimate.theta), estimate_raw=tuple(estimate.theta_raw)))
    return pairs


@dataclasses.dataclass(frozen=True)
class _ShadowJob:
    """The aggregates of one θ (role ``theta``) or one θ̂ (role ``estimate``) of a pair."""

    theta_id: int
    role: str
    params: ModelParameters
    count: int

    @property
    def indices(self) -> list[int]:
        base = (2 * self.theta_id + _SHADOW_ROLES.index(self.role)) * _SHADOW_INDEX_STRIDE
        return list(range(base, base + self.count))

    @property
    def file_name(self) -> str:
        return f"theta{self.theta_id:06d}_{self.role}.npz"


def _config_tag(config: GeneratorConfig) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def _read_cache(path: pathlib.Path, job: _ShadowJob, seed: int, config: GeneratorConfig
                ) -> Optional[dict]:
    """The cached descriptor arrays of ``job`` (or ``{"error": ...}``), None if absent or made
    with other settings (then it is redrawn and overwritten)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if (str(data["format"]) != _SHADOW_CACHE_FORMAT or int(data["seed"]) != seed
                    or int(data["count"]) != job.count or str(data["config"]) != _config_tag(config)
                    or not np.allclose(data["theta"], job.params.as_tuple(), rtol=0, atol=1e-12)):
                return None
            if "error" in data.files:
                return {"error": str(data["error"])}
            return {name: np.asarray(data[name], np.float64)
                    for name in SHADOW_DESCRIPTOR_NAMES + ("size",)}
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(path: pathlib.Path, job: _ShadowJob, seed: int, config: GeneratorConfig,
                 arrays: dict) -> None:
    from hagg_tf.model.io import atomic_write

    def write(stream):
        np.savez(stream, format=np.asarray(_SHADOW_CACHE_FORMAT), seed=np.asarray(seed),
                 count=np.asarray(job.count), config=np.asarray(_config_tag(config)),
                 theta=np.asarray(job.params.as_tuple(), np.float64),
                 **{key: np.asarray(value) for key, value in arrays.items()})

    atomic_write(path, write)


def _descriptor_arrays(descriptors) -> dict:
    from hagg_tf.estimation.shadows import descriptor_arrays

    arrays = descriptor_arrays(descriptors)
    arrays["size"] = np.array([item.size for item in descriptors], dtype=np.float64)
    return arrays


def _draw_jobs(jobs: list[_ShadowJob], seed: int, config: GeneratorConfig, workers: int,
               cache_dir: Optional[pathlib.Path], bar, runner: str = LOCAL_RUNNER,
               beam_args: Sequence[str] = ()) -> dict:
    """Draws and describes the aggregates of every job, in one worker pool where possible.

    One pool for all jobs saves starting the worker processes anew for every θ. A θ the
    generator cannot draw (``GenerationError``, e.g. θ̂_Df near the top of CNN^Df's range with
    large clusters) is recorded as failed, and the remaining jobs go on in a fresh pool.
    With a Beam ``runner``, one pipeline draws every job in blocks instead
    (`hagg_tf.estimation.beam_shadows`; the same descriptors), its blocks kept under
    ``cache_dir`` until every job's cache file is written.
    """
    from hagg_tf.model.batch import iter_aggregates
    from hagg_tf.model.generator import GenerationError

    results = {}

    def finish(job, arrays):
        results[job] = arrays
        if cache_dir is not None:
            _write_cache(cache_dir / job.file_name, job, seed, config, arrays)

    if is_beam_runner(runner):
        import shutil

        from hagg_tf.estimation.beam_shadows import beam_shadow_descriptors

        blocks = None if cache_dir is None else cache_dir / _BEAM_BLOCKS_DIR
        outcomes = beam_shadow_descriptors([(job.params, seed, job.indices) for job in jobs],
                                           None if blocks is None else str(blocks),
                                           runner=runner, beam_args=beam_args, config=config)
        for job, outcome in zip(jobs, outcomes):
            finish(job, {"error": outcome.error} if outcome.error
                   else _descriptor_arrays(outcome.descriptors))
            bar.update(job.count)
        if blocks is not None:
            shutil.rmtree(blocks, ignore_errors=True)  # every job is in its cache file now
        return results

    def describe_all(batch):
        params = [job.params for job in batch for _ in range(job.count)]
        indices = [index for job in batch for index in job.indices]
        for _, descriptors in iter_aggregates(params, seed, indices, config, workers=workers,
                                              with_descriptors=True):
            bar.update(1)
            yield descriptors

    pending = list(jobs)
    while pending:
        position, collected = 0, []
        try:
            for descriptors in describe_all(pending):
                collected.append(descriptors)
                if len(collected) == pending[position].count:
                    finish(pending[position], _descriptor_arrays(collected))
                    position, collected = position + 1, []
            pending = []
        except GenerationError:
            # A pool reports a failed draw for the whole chunk of tasks it was in, and a chunk
            # may begin in the job before the failing one: draw the current job alone to learn
            # whether it is the one that fails.
            job = pending[position]
            bar.update(-len(collected))
            collected = []
            try:
                for descriptors in describe_all([job]):
                    collected.append(descriptors)
                finish(job, _descriptor_arrays(collected))
            except GenerationError as error:
                bar.update(job.count - len(collected))
                finish(job, {"error": str(error)})
            pending = pending[position + 1:]
    return results


def _descriptor_means(arrays: dict) -> dict:
    means = {}
    for name in SHADOW_DESCRIPTOR_NAMES:
        values = arrays[name][np.isfinite(arrays[name])]  # S_TiO2 is NaN without TiO2
        means[name] = {"mean": float(values.mean()) if values.size else math.nan,
                       "count": int(values.size)}
    return means


def _histograms(truth: dict, estimate: dict, bins: int) -> dict:
    """Fig. 14 histograms: ``bins`` equal bins spanning both samples' values."""
    result = {}
    for name in SHADOW_DESCRIPTOR_NAMES:
        first = truth[name][np.isfinite(truth[name])]
        second = estimate[name][np.isfinite(estimate[name])]
        both = np.concatenate([first, second])
        if not both.size:
            continue
        low, high = float(both.min()), float(both.max())
        if high <= low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, bins + 1)
        result[name] = {"edges": edges, "theta_counts": np.histogram(first, edges)[0],
                        "estimate_counts": np.histogram(second, edges)[0],
                        "theta_mean": float(first.mean()) if first.size else math.nan,
                        "estimate_mean": float(second.mean()) if second.size else math.nan}
    return result


def compare_digital_shadows(pairs: Sequence[ShadowPair],
                            aggregates: int = DEFAULT_SHADOW_AGGREGATES, *, seed: int = 0,
                            cache_dir: Optional[Union[str, os.PathLike]] = None,
                            workers: int = 1, progress: bool = True,
                            config: Optional[GeneratorConfig] = None,
                            histogram_pairs: int = FIG14_PAIRS, bins: int = FIG14_BINS,
                            runner: str = LOCAL_RUNNER, beam_args: Sequence[str] = ()) -> dict:
    """Table 5 and Fig. 14: descriptor means of aggregates drawn from θ and from θ̂.

    For every pair, ``aggregates`` aggregates are drawn from θ and as many, independently, from
    θ̂ (draw k of configuration c under role r ∈ {θ: 0, θ̂: 1} is
    ``sample_aggregate(params, seed, (2c + r)·10⁶ + k)``); S_TiO2, Z_hetero and Z_total are
    averaged per sample (aggregates without TiO2 left out of S_TiO2), and MAE and R² (paper
    Eq. after Table 5) are taken over the pairs, y the θ means and ŷ the θ̂ means.

    Args:
        pairs: from :func:`select_shadow_pairs`.
        aggregates: aggregates per θ and per θ̂ (the paper: 800).
        seed: generator seed.
        cache_dir: folder for one ``.npz`` of descriptor arrays per θ and θ̂, written atomically
            and reused on a rerun with the same settings (resume after an interruption).
        workers: generator processes.
        progress: show a progress bar (aggregates).
        config: generator settings.
        histogram_pairs: the first this many successful pairs get Fig. 14 histograms.
        bins: histogram bins.
        runner: ``"local"`` (``workers`` processes) or an Apache Beam runner
            (`hagg_tf.data.beam.beam_pipeline`; on a cluster ``cache_dir`` must be shared).
        beam_args: Beam pipeline options.

    Returns:
        ``pairs`` (θ, θ̂ in its three forms, the two samples' means and counts, or ``failed``),
        ``table5`` (per descriptor: ``mae``, ``r2``, ``pairs`` used), ``histograms`` and the
        settings.
    """
    from tqdm import tqdm

    if aggregates < 1:
        raise ValueError(f"aggregates must be at least 1, got {aggregates}")
    config = config or GeneratorConfig()
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else None
    jobs = [_ShadowJob(pair.theta_id, role, params, aggregates) for pair in pairs
            for role, params in zip(_SHADOW_ROLES, (pair.truth, pair.estimate))]
    results = {}
    for job in jobs:
        if cache_dir is not None:
            cached = _read_cache(cache_dir / job.file_name, job, seed, config)
            if cached is not None:
                results[job] = cached
    missing = [job for job in jobs if job not in results]
    with tqdm(total=len(jobs) * aggregates, initial=(len(jobs) - len(missing)) * aggregates,
              unit="agg", desc="digital shadows", disable=not progress) as bar:
        results.update(_draw_jobs(missing, seed, config, workers, cache_dir, bar, runner,
                                  beam_args))

    rows, histograms = [], []
    for pair in pairs:
        truth = results[_ShadowJob(pair.theta_id, "theta", pair.truth, aggregates)]
        estimate = results[_ShadowJob(pair.theta_id, "estimate", pair.estimate, aggregates)]
        row = {"theta_id": pair.theta_id, "theta": list(pair.truth.as_tuple()),
               "theta_hat": list(pair.estimate.as_tuple()),
               "theta_hat_rounded": list(pair.estimate_rounded),
               "theta_hat_raw": list(pair.estimate_raw)}
        failed = truth.get("error") or estimate.get("error")
        if failed:
            rows.append({**row, "failed": failed})
            continue
        row["theta_means"], row["estimate_means"] = _descriptor_means(truth), \
            _descriptor_means(estimate)
        rows.append(row)
        if len(histograms) < histogram_pairs:
            histograms.append({"theta_id": pair.theta_id, "theta": row["theta"],
                               "theta_hat": row["theta_hat"],
                               "descriptors": _histograms(truth, estimate, bins)})
    table5 = {}
    complete = [row for row in rows if "failed" not in row]
    for name in SHADOW_DESCRIPTOR_NAMES:
        y = np.array([row["theta_means"][name]["mean"] for row in complete], np.float64)
        y_hat = np.array([row["estimate_means"][name]["mean"] for row in complete], np.float64)
        table5[name] = {"mae": mean_absolute_error(y, y_hat),
                        "r2": coefficient_of_determination(y, y_hat),
                        "pairs": int(np.sum(np.isfinite(y) & np.isfinite(y_hat)))}
    return {"thetas": len(pairs), "aggregates_per_theta": aggregates, "seed": seed,
            "failed_pairs": len(rows) - len(complete), "pairs": rows, "table5": table5,
            "histograms": histograms}


# --------------------------------------------------------------------------- everything

def evaluate_predictions(predictions: Predictions, *, nu: int = DEFAULT_NU, seed: int = 0,
                         fig9_nus: Iterable[int] = FIG9_NUS,
                         shadow_thetas: int = DEFAULT_SHADOW_THETAS,
                         shadow_aggregates: int = DEFAULT_SHADOW_AGGREGATES,
                         shadow_cache_dir: Optional[Union[str, os.PathLike]] = None,
                         workers: int = 1, progress: bool = True,
                         generator_config: Optional[GeneratorConfig] = None,
                         runner: str = LOCAL_RUNNER, beam_args: Sequence[str] = ()) -> dict:
    """The paper's Sec. 3 evaluation (Figs. 9–15, Tables 4–5) of one predictions file.

    Args:
        predictions: per-image truth and outputs on E with multi-image outputs for ``nu``.
        nu: group size of every θ-level result (the paper: 12).
        seed: seed of the groups drawn for ν the file has none for, of the choice of shadow
            configurations, and of the shadows' generator.
        fig9_nus: ν values of Fig. 9 for θ_Df and θ_ρ.
        shadow_thetas: (θ, θ̂) pairs of Table 5 (the paper: 50); 0 skips the digital shadows.
        shadow_aggregates: aggregates per θ and per θ̂ (the paper: 800).
        shadow_cache_dir: resume folder of the shadows (see :func:`compare_digital_shadows`).
        workers: generator processes.
        progress: progress bar for the shadows.
        generator_config: generator settings of the shadows.
        runner, beam_args: where the shadows are drawn (see :func:`compare_digital_shadows`).

    Returns:
        JSON-serialisable dict: ``settings``, ``info`` (of the predictions), ``fig09``,
        ``fig10``, ``fig11``, ``table4``, ``fig12``, ``fig13``, ``fig15``, ``baselines`` and
        ``table5`` (None when skipped).

    Raises:
        PredictionsError: no ν-groups with CNN^0/CNN^1 outputs for ``nu``.
    """
    require_group_outputs(predictions, nu)
    shadows = None
    if shadow_thetas > 0:
        pairs = select_shadow_pairs(predictions, shadow_thetas, nu, seed)
        shadows = compare_digital_shadows(pairs, shadow_aggregates, seed=seed,
                                          cache_dir=shadow_cache_dir, workers=workers,
                                          progress=progress, config=generator_config,
                                          runner=runner, beam_args=beam_args)
    return json_safe({
        "settings": {"nu": nu, "seed": seed, "images": predictions.num_images,
                     "configurations": int(np.unique(predictions.arrays["theta_id"]).size),
                     "groups": int(len(predictions.groups(nu))),
                     "shadow_thetas": shadow_thetas, "shadow_aggregates": shadow_aggregates,
                     "classifier_threshold": CLASSIFIER_THRESHOLD,
                     "sample_heads": predictions.sample_heads is not None},
        "info": predictions.info,
        "fig09": mae_versus_nu(predictions, fig9_nus, seed),
        "fig10": fractal_dimension_metrics(predictions, nu, seed),
        "fig11": mixing_ratio_metrics(predictions, nu, seed),
        "table4": classification_metrics(predictions),
        "fig12": cluster_size_metrics(predictions, "wo3_cluster_size", nu),
        "fig13": cluster_size_metrics(predictions, "tio2_cluster_size", nu),
        "fig15": error_versus_size(predictions),
        "baselines": baseline_metrics(predictions, nu, seed),
        "table5": shadows,
    })
