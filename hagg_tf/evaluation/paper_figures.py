"""Figures of the paper's evaluation (Figs. 9–15, Table 4) as PNG files.

Input: the :class:`~hagg_tf.evaluation.predictions.Predictions` (for the per-image scatters) and
the dict of :func:`hagg_tf.evaluation.paper_evaluation.evaluate_predictions`. Needs matplotlib
(the ``plot`` extra), used with the Agg backend as in :mod:`hagg_tf.evaluation.figures`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from hagg_tf.evaluation import paper_evaluation
from hagg_tf.evaluation.figures import MATERIAL_COLORS, import_pyplot, save_png
from hagg_tf.evaluation.predictions import Predictions

#: File name of every figure (written into the output folder).
FIGURE_FILES = {"fig09": "fig09_mae_vs_nu.png", "fig10": "fig10_fractal_dimension.png",
                "fig11": "fig11_mixing_ratio.png", "table4": "table4_confusion.png",
                "fig12": "fig12_wo3_cluster_size.png", "fig13": "fig13_tio2_cluster_size.png",
                "fig14": "fig14_shadows.png", "fig15": "fig15_error_vs_size.png"}
# Fig. 14: original aggregates (θ) blue, digital shadows (θ̂) orange, as in the paper.
THETA_COLOR, ESTIMATE_COLOR = MATERIAL_COLORS[0], MATERIAL_COLORS[1]
_BASELINE_COLOR = "0.45"
# Gaussian KDEs cost O(n·m); fitting on a subsample keeps the colouring of 13 000 points fast.
_KDE_SAMPLE = 2000
_SYMBOLS = {"fractal_dimension": "θ_Df", "mixing_ratio": "θ_ρ", "wo3_cluster_size": "θ_0",
            "tio2_cluster_size": "θ_1", "tio2_cluster_size_descriptor": "S_TiO2",
            "hetero_coordination": "Z_hetero", "total_coordination": "Z_total"}
_HATS = {"wo3_cluster_size": "θ̂_0", "tio2_cluster_size": "θ̂_1"}


def _density_along_y(values: np.ndarray) -> np.ndarray:
    """1D Gaussian KDE of ``values`` at each value (the paper colours its scatters so)."""
    from scipy.stats import gaussian_kde

    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if finite.size < 3 or np.ptp(finite) == 0:
        return np.ones_like(values)
    sample = finite
    if finite.size > _KDE_SAMPLE:
        sample = np.random.default_rng(0).choice(finite, _KDE_SAMPLE, replace=False)
    density = np.zeros_like(values)
    density[np.isfinite(values)] = gaussian_kde(sample)(finite)
    return density


def _density_scatter(ax, x, y, label: Optional[str] = None) -> None:
    ax.scatter(x, y, c=_density_along_y(y), s=4, cmap="viridis", label=label, rasterized=True)


def _sliding_mean(x: np.ndarray, y: np.ndarray, window: Optional[int] = None):
    """Mean of y over a sliding window of neighbours in x (the black line of Fig. 11)."""
    finite = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(x[finite], kind="stable")
    x, y = x[finite][order], y[finite][order]
    if x.size < 3:
        return x, y
    window = window or max(3, x.size // 40)
    window = min(window, x.size)
    kernel = np.ones(window) / window
    return np.convolve(x, kernel, mode="valid"), np.convolve(y, kernel, mode="valid")


def _boxes_by_value(ax, keys: np.ndarray, values: np.ndarray, width_fraction: float = 0.6
                    ) -> None:
    keys = np.round(np.asarray(keys, np.float64), 6)
    unique = np.unique(keys)
    if not unique.size:
        return
    step = np.diff(unique).min() if unique.size > 1 else 1.0
    ax.boxplot([values[keys == key] for key in unique], positions=unique,
               widths=step * width_fraction, showfliers=True, manage_ticks=False,
               flierprops={"markersize": 2})
    ax.set_xticks(unique)
    ax.set_xticklabels([f"{key:g}" for key in unique], fontsize=8)
    ax.axhline(0.0, color="k", linewidth=0.6, linestyle="--")


def _finish(figure, path: Path) -> Path:
    plt = import_pyplot()
    figure.tight_layout()
    path = save_png(figure, path)
    plt.close(figure)
    return path


def plot_fig09(metrics: dict, path) -> Path:
    """Fig. 9: MAE against ν, θ_Df and θ_ρ (left) and θ_0, θ_1 (right)."""
    plt = import_pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    fig9 = metrics["fig09"]
    nu = metrics["settings"]["nu"]
    for name, marker in (("fractal_dimension", "o"), ("mixing_ratio", "s")):
        entry = fig9[name]
        axes[0].plot(entry["nu"], _as_float(entry["mae"]), marker=marker, markersize=4,
                     label=f"{_SYMBOLS[name]}")
    axes[0].plot(fig9["mixing_ratio"]["nu"], _as_float(fig9["mixing_ratio"]["mae_regressor_only"]),
                 linestyle=":", color="0.4", label="θ_ρ, regressor only")
    for name, marker, color in (("wo3_cluster_size", "o", "C0"),
                                ("tio2_cluster_size", "s", "C1")):
        entry = fig9.get(name) or {}
        if entry.get("nu"):
            axes[1].plot(entry["nu"], _as_float(entry["mae"]), marker=marker, color=color,
                         label=f"{_SYMBOLS[name]} (rounded)")
            axes[1].plot(entry["nu"], _as_float(entry["mae_raw"]), marker=marker, color=color,
                         linestyle="--", alpha=0.5, label=f"{_SYMBOLS[name]} (raw output)")
    largest = max(fig9["fractal_dimension"]["nu"] + [nu])
    for ax in axes:
        ax.axvline(nu, color="k", linewidth=0.6, linestyle=":")
        ax.set_xlim(0, largest + 1)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("ν (images per group)")
        ax.set_ylabel("MAE")
        ax.legend(fontsize=8)
    axes[0].set_title("θ̂_Df, θ̂_ρ from per-image outputs")
    axes[1].set_title("θ̂_0, θ̂_1 (multi-image networks)")
    return _finish(figure, path)


def _group_estimates(predictions: Predictions, settings: dict) -> dict:
    """θ̂ of the evaluation's groups of ν (the ones the metrics were computed on)."""
    return paper_evaluation.theta_level_estimates(
        predictions, paper_evaluation.groups_for(predictions, settings["nu"], settings["seed"]))


def plot_fig10(predictions: Predictions, metrics: dict, path) -> Path:
    """Fig. 10: (a) D̂_f(I) − D_f(A) against D_f(A), (b) θ̂_Df − θ_Df per preset θ_Df."""
    plt = import_pyplot()
    settings = metrics["settings"]
    arrays = predictions.arrays
    truth = np.asarray(arrays["fractal_dimension"], np.float64)
    error = np.asarray(arrays["fractal_dimension_pred"], np.float64) - truth
    estimates = _group_estimates(predictions, settings)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _density_scatter(axes[0], truth, error)
    axes[0].axhline(0.0, color="k", linewidth=0.6, linestyle="--")
    image = metrics["fig10"]["per_image"]
    axes[0].set_title(f"(a) D̂_f − D_f(A): mean {_fmt(image['mean'])}, IQR {_fmt(image['iqr'])}",
                      fontsize=10)
    axes[0].set_xlabel("D_f(A)")
    axes[0].set_ylabel("D̂_f(I) − D_f(A)")
    _boxes_by_value(axes[1], estimates["theta"][:, 0],
                    estimates["fractal_dimension"] - estimates["theta"][:, 0])
    axes[1].set_title(f"(b) θ̂_Df − θ_Df, ν = {settings['nu']}: MAE "
                      f"{_fmt(metrics['fig10']['per_theta']['mae'])}", fontsize=10)
    axes[1].set_xlabel("θ_Df")
    axes[1].set_ylabel("θ̂_Df − θ_Df")
    return _finish(figure, path)


def plot_fig11(predictions: Predictions, metrics: dict, path) -> Path:
    """Fig. 11: ρ̂ − ρ(A) per image, (a) regressor only, (b) with classifier; (c) θ̂_ρ − θ_ρ."""
    plt = import_pyplot()
    settings = metrics["settings"]
    arrays = predictions.arrays
    truth = np.asarray(arrays["mixing_ratio"], np.float64)
    regressor = np.asarray(arrays["mixing_ratio_regressor_pred"], np.float64) - truth
    combined = paper_evaluation.per_image_mixing_ratio(predictions) - truth
    estimates = _group_estimates(predictions, settings)
    fig11 = metrics["fig11"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=False)
    for ax, error in ((axes[0], regressor), (axes[1], combined)):
        _density_scatter(ax, truth, error)
        ax.plot(*_sliding_mean(truth, error), color="k", linewidth=1.2, label="sliding mean")
        ax.axhline(0.0, color="k", linewidth=0.6, linestyle="--")
        ax.set_xlabel("ρ(A)")
        ax.set_ylabel("error")
        ax.legend(fontsize=8, loc="upper right")
    axes[0].set_title(f"(a) CNN^ρ_reg(I) − ρ(A): MAE "
                      f"{_fmt(fig11['per_image_regressor_only']['mae'])}", fontsize=10)
    axes[1].set_title(f"(b) ρ̂(I) − ρ(A): MAE {_fmt(fig11['per_image_with_classifier']['mae'])}",
                      fontsize=10)
    _boxes_by_value(axes[2], estimates["theta"][:, 1],
                    estimates["mixing_ratio"] - estimates["theta"][:, 1])
    model_theta = fig11.get("per_theta", fig11["per_theta_with_classifier"])
    axes[2].set_title(f"(c) θ̂_ρ − θ_ρ, ν = {settings['nu']}: MAE "
                      f"{_fmt(model_theta['mae'])}", fontsize=10)
    axes[2].set_xlabel("θ_ρ")
    axes[2].set_ylabel("θ̂_ρ − θ_ρ")
    return _finish(figure, path)


def plot_table4(metrics: dict, path) -> Path:
    """Table 4 as a 2×2 confusion matrix (rows prediction, columns truth)."""
    plt = import_pyplot()
    table = metrics["table4"]
    matrix = np.asarray(table["matrix"], np.float64)
    figure, ax = plt.subplots(figsize=(4.6, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for row in range(2):
        for column in range(2):
            ax.text(column, row, f"{int(matrix[row, column])}", ha="center", va="center",
                    color="white" if matrix[row, column] > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], ["homogeneous", "heterogeneous"])
    ax.set_yticks([0, 1], ["homogeneous", "heterogeneous"])
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"accuracy {_fmt(100 * _as_float([table['accuracy']])[0], 1)} %", fontsize=10)
    return _finish(figure, path)


def plot_cluster_size(predictions: Predictions, metrics: dict, network: str, path) -> Path:
    """Figs. 12 / 13: (a) CNN(I(B)) − θ before rounding, (b) θ̂ − θ after rounding, per θ.

    Args:
        network: ``"wo3_cluster_size"`` (Fig. 12) or ``"tio2_cluster_size"`` (Fig. 13).
    """
    plt = import_pyplot()
    nu = metrics["settings"]["nu"]
    groups = predictions.groups(nu)
    column = paper_evaluation.THETA_COLUMNS[network]
    truth = np.asarray(predictions.arrays["theta"], np.float64)[groups[:, 0], column]
    raw = np.asarray(predictions.arrays[f"{network}_pred_nu{nu}"], np.float64)
    rounded = paper_evaluation.rounded_cluster_sizes(raw)
    entry = metrics[paper_evaluation.CLUSTER_SIZE_NETWORKS[network]]
    symbol = _SYMBOLS[network]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _boxes_by_value(axes[0], truth, raw - truth)
    axes[0].set_title(f"(a) network output − {symbol} (before rounding)", fontsize=10)
    axes[0].set_xlabel(symbol)
    axes[0].set_ylabel(f"CNN(I(B)) − {symbol}")
    error = rounded - truth
    pairs, counts = np.unique(np.stack([truth, error], axis=1), axis=0, return_counts=True)
    axes[1].scatter(pairs[:, 0], pairs[:, 1], s=800 * counts / max(1, counts.max()),
                    color=THETA_COLOR, alpha=0.6)
    for (value, offset), count in zip(pairs, counts):
        axes[1].annotate(str(count), (value, offset), ha="center", va="center", fontsize=7)
    axes[1].axhline(0.0, color="k", linewidth=0.6, linestyle="--")
    axes[1].set_xticks(np.unique(truth))
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    axes[1].set_title(f"(b) {_HATS[network]} − {symbol} after rounding: exact "
                      f"{_fmt(100 * _as_float([entry['exact']])[0], 0)} %, within ±1 "
                      f"{_fmt(100 * _as_float([entry['within_1']])[0], 0)} %", fontsize=10)
    axes[1].set_xlabel(symbol)
    axes[1].set_ylabel("error (groups per bubble)")
    return _finish(figure, path)


def plot_fig14(metrics: dict, path) -> Optional[Path]:
    """Fig. 14: S_TiO2, Z_hetero, Z_total of the aggregates of θ (blue) and θ̂ (orange), with
    their means, for the first pairs of Table 5; None when the shadows were skipped."""
    shadows = metrics.get("table5")
    if not shadows or not shadows.get("histograms"):
        return None
    plt = import_pyplot()
    histograms = shadows["histograms"]
    names = paper_evaluation.SHADOW_DESCRIPTOR_NAMES
    figure, axes = plt.subplots(len(histograms), len(names),
                                figsize=(13, 2.8 * len(histograms)), squeeze=False)
    for row, entry in enumerate(histograms):
        for column, name in enumerate(names):
            ax = axes[row, column]
            data = entry["descriptors"].get(name)
            if data is None:
                ax.set_axis_off()
                continue
            edges = np.asarray(data["edges"], np.float64)
            for counts, color, label in ((data["theta_counts"], THETA_COLOR, "θ"),
                                         (data["estimate_counts"], ESTIMATE_COLOR, "θ̂")):
                ax.stairs(np.asarray(counts, np.float64), edges, fill=True, alpha=0.45,
                          color=color, label=label)
            for mean, color in ((data["theta_mean"], THETA_COLOR),
                                (data["estimate_mean"], ESTIMATE_COLOR)):
                if mean is not None:
                    ax.axvline(mean, color=color, linewidth=1.5)
            symbol = _SYMBOLS["tio2_cluster_size_descriptor" if name == "tio2_cluster_size"
                              else name]
            ax.set_xlabel(symbol)
            if column == 0:
                ax.set_ylabel("aggregates")
                ax.set_title(f"θ = {_theta_text(entry['theta'])}, θ̂ = "
                             f"{_theta_text(entry['theta_hat'])}", fontsize=9, loc="left")
            if row == 0 and column == len(names) - 1:
                ax.legend(fontsize=8)
    return _finish(figure, path)


def plot_fig15(predictions: Predictions, metrics: dict, path) -> Path:
    """Fig. 15: per-image errors of D̂_f and ρ̂ against the number of particles, with the binned
    mean error and MAE (black) and, where present, the baseline's binned MAE (grey, dashed)."""
    plt = import_pyplot()
    arrays = predictions.arrays
    sizes = np.asarray(arrays["num_particles"], np.float64)
    fig15 = metrics["fig15"]
    errors = {"fractal_dimension": np.asarray(arrays["fractal_dimension_pred"], np.float64)
              - np.asarray(arrays["fractal_dimension"], np.float64),
              "mixing_ratio": paper_evaluation.per_image_mixing_ratio(predictions)
              - np.asarray(arrays["mixing_ratio"], np.float64)}
    baseline_of = {"fractal_dimension": "baseline_fractal_dimension_box",
                   "mixing_ratio": "baseline_mixing_ratio_threshold"}
    labels = {"fractal_dimension": "D̂_f(I) − D_f(A)", "mixing_ratio": "ρ̂(I) − ρ(A)"}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, name in zip(axes, ("fractal_dimension", "mixing_ratio")):
        rng = np.random.default_rng(0)
        _density_scatter(ax, sizes + rng.uniform(-0.3, 0.3, sizes.size), errors[name])
        # The paper's point (Sec. 4): the threshold baseline degrades with overlapping
        # particles, the CNN does not; binned MAEs show that, the binned mean shows bias.
        for key, statistic, color, style, label in (
                (name, "mean_error", "k", "-", "CNN, binned mean error"),
                (name, "mae", "k", ":", "CNN, binned MAE"),
                (baseline_of[name], "mae", _BASELINE_COLOR, "--", "baseline, binned MAE")):
            if key not in fig15:
                continue
            bins = fig15[key]["bins"]
            centres = [(item["low"] + item["high"]) / 2 for item in bins]
            ax.plot(centres, _as_float([item[statistic] for item in bins]), color=color,
                    linestyle=style, marker="o", markersize=3, label=label)
        ax.axhline(0.0, color="k", linewidth=0.6, linestyle=":")
        ax.set_xlabel("particles in the aggregate")
        ax.set_ylabel(labels[name])
        ax.legend(fontsize=8)
    axes[0].set_title("(a) fractal dimension", fontsize=10)
    axes[1].set_title("(b) mixing ratio (with classifier)", fontsize=10)
    return _finish(figure, path)


def plot_paper_figures(predictions: Predictions, metrics: dict, output_dir) -> dict[str, Path]:
    """Writes every figure into ``output_dir`` (names in :data:`FIGURE_FILES`).

    Returns:
        Figure key (``"fig09"``, …) → PNG path, for the figures drawn (Fig. 14 only with shadows).
    """
    output_dir = Path(output_dir)
    paths = {
        "fig09": plot_fig09(metrics, output_dir / FIGURE_FILES["fig09"]),
        "fig10": plot_fig10(predictions, metrics, output_dir / FIGURE_FILES["fig10"]),
        "fig11": plot_fig11(predictions, metrics, output_dir / FIGURE_FILES["fig11"]),
        "table4": plot_table4(metrics, output_dir / FIGURE_FILES["table4"]),
        "fig12": plot_cluster_size(predictions, metrics, "wo3_cluster_size",
                                   output_dir / FIGURE_FILES["fig12"]),
        "fig13": plot_cluster_size(predictions, metrics, "tio2_cluster_size",
                                   output_dir / FIGURE_FILES["fig13"]),
        "fig14": plot_fig14(metrics, output_dir / FIGURE_FILES["fig14"]),
        "fig15": plot_fig15(predictions, metrics, output_dir / FIGURE_FILES["fig15"]),
    }
    return {key: path for key, path in paths.items() if path is not None}


def _as_float(values) -> np.ndarray:
    """JSON values (None for NaN) as a float array."""
    return np.array([np.nan if value is None else value for value in values], np.float64)


def _fmt(value, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _theta_text(theta) -> str:
    return (f"({theta[0]:.2f}, {theta[1]:.2f}, {int(theta[2])}, {int(theta[3])})")
