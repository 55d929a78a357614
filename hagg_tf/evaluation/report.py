"""The evaluation report (``report.md``): the paper's numbers beside ours, figure by figure.

Input is the dict of :func:`hagg_tf.evaluation.paper_evaluation.evaluate_predictions` (as written
to ``metrics.json``), optionally the figure paths and the model card. Every paper value lives in
:data:`PAPER_VALUES`, taken from SPEC §9 and the paper's Sec. 3–4.
"""
from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Mapping, Optional

from hagg_tf.model.io import atomic_write

#: The paper's results (Fuchs et al., Sec. 3–4; SPEC §9), ν = 12, evaluation set E.
PAPER_VALUES = {
    # Fig. 10 / Sec. 3.1
    "fractal_dimension_per_image_mean_error": -0.006,
    "fractal_dimension_per_image_iqr": 0.118,
    "fractal_dimension_theta_mae": 0.041,
    # Fig. 11 / Sec. 3.2
    "mixing_ratio_per_image_mae_regressor_only": 0.059,
    "mixing_ratio_per_image_mae_with_classifier": 0.053,
    "mixing_ratio_theta_mae_regressor_only": 0.027,
    "mixing_ratio_theta_mae_with_classifier": 0.017,
    "mixing_ratio_bias_low_regressor_only": 0.04,   # ρ(A) ∈ [0, 0.1], "about"
    "mixing_ratio_bias_high_regressor_only": -0.1,  # ρ(A) ∈ [0.9, 1], "about"
    "mixing_ratio_bias_low_with_classifier": 0.009,
    "mixing_ratio_bias_high_with_classifier": 0.02,
    # Table 4: rows prediction (homogeneous, heterogeneous), columns truth (same order)
    "classification_matrix": [[1174, 567], [67, 12082]],
    "classification_accuracy": 0.95,
    # Figs. 12–13 / Sec. 3.3
    "wo3_cluster_size_exact": 0.48,
    "wo3_cluster_size_within_1": 0.92,
    "wo3_cluster_size_relative_mae_at_6": 0.20,
    "tio2_cluster_size_exact": 0.32,
    "tio2_cluster_size_within_1": 0.82,
    "tio2_cluster_size_mae_at_6": 1.44,
    "tio2_cluster_size_relative_mae_at_6": 0.24,
    # Table 5 / Sec. 3.4.2: 50 θ × 800 aggregates
    "shadow_mae": {"tio2_cluster_size": 2.165, "hetero_coordination": 0.056,
                   "total_coordination": 0.007},
    "shadow_r2": {"tio2_cluster_size": 0.84, "hetero_coordination": 0.85,
                  "total_coordination": 0.87},
    # Sec. 4
    "threshold_baseline_per_image_mae": 0.078,
}
#: Table 5's descriptors with their symbols.
DESCRIPTOR_SYMBOLS = {"tio2_cluster_size": "S_TiO2", "hetero_coordination": "Z_hetero",
                      "total_coordination": "Z_total"}
_NOT_IN_FILE = "—"


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _percent(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * value:.{digits}f} %"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _at_true_value(entry: dict, value: int) -> Optional[dict]:
    for row in entry.get("by_true_value", []):
        if row["true_value"] == value:
            return row
    return None


def main_table_rows(metrics: Mapping) -> list[list[str]]:
    """Rows (quantity, paper, ours, baseline) of SPEC §9's table."""
    paper = PAPER_VALUES
    fig10, fig11, table4 = metrics["fig10"], metrics["fig11"], metrics["table4"]
    fig12, fig13 = metrics["fig12"], metrics["fig13"]
    baselines = metrics.get("baselines") or {}
    box = baselines.get("baseline_fractal_dimension_box")
    threshold = baselines.get("baseline_mixing_ratio_threshold")
    at_six = _at_true_value(fig13, 6)
    heads = bool((metrics.get("settings") or {}).get("sample_heads"))
    rows = [
        ["D̂_f per image: mean error / IQR",
         f"{paper['fractal_dimension_per_image_mean_error']} / "
         f"{paper['fractal_dimension_per_image_iqr']}",
         f"{_number(fig10['per_image']['mean'])} / {_number(fig10['per_image']['iqr'])}",
         (f"box counting: {_number(box['per_image']['mean'])} / "
          f"{_number(box['per_image']['iqr'])}" if box else _NOT_IN_FILE)],
        ["θ̂_Df MAE" + (" (sample head; mean of Eq. 13 in brackets)" if heads else ""),
         f"{paper['fractal_dimension_theta_mae']}",
         _number(fig10["per_theta"]["mae"])
         + (f" ({_number(fig10['per_theta_images_mean']['mae'])})" if heads else ""),
         f"box counting: {_number(box['per_theta']['mae'])}" if box else _NOT_IN_FILE],
        ["ρ̂ per image MAE, regressor only → with classifier",
         f"{paper['mixing_ratio_per_image_mae_regressor_only']} → "
         f"{paper['mixing_ratio_per_image_mae_with_classifier']}",
         f"{_number(fig11['per_image_regressor_only']['mae'])} → "
         f"{_number(fig11['per_image_with_classifier']['mae'])}",
         f"threshold: {_number(threshold['per_image']['mae'])}" if threshold else _NOT_IN_FILE],
        ["θ̂_ρ MAE, regressor only → with classifier",
         f"{paper['mixing_ratio_theta_mae_regressor_only']} → "
         f"{paper['mixing_ratio_theta_mae_with_classifier']}",
         f"{_number(fig11['per_theta_regressor_only']['mae'])} → "
         f"{_number(fig11['per_theta_with_classifier']['mae'])}",
         f"threshold: {_number(threshold['per_theta']['mae'])}" if threshold else _NOT_IN_FILE],
        *([["θ̂_ρ MAE, sample head (the model's θ̂_ρ)", "—",
            _number(fig11["per_theta"]["mae"]), _NOT_IN_FILE]] if heads else []),
        ["homogeneous/heterogeneous classification accuracy (Table 4)",
         f"≈ {_percent(paper['classification_accuracy'])}", _percent(table4["accuracy"], 1),
         _NOT_IN_FILE],
        ["θ̂_0 exact / within ±1",
         f"{_percent(paper['wo3_cluster_size_exact'])} / "
         f"{_percent(paper['wo3_cluster_size_within_1'])}",
         f"{_percent(fig12['exact'])} / {_percent(fig12['within_1'])}", _NOT_IN_FILE],
        ["θ̂_1 exact / within ±1; MAE at θ_1 = 6",
         f"{_percent(paper['tio2_cluster_size_exact'])} / "
         f"{_percent(paper['tio2_cluster_size_within_1'])}; "
         f"{paper['tio2_cluster_size_mae_at_6']}",
         f"{_percent(fig13['exact'])} / {_percent(fig13['within_1'])}; "
         f"{_number(at_six['mae'], 2) if at_six else 'n/a (no θ_1 = 6)'}", _NOT_IN_FILE],
    ]
    shadows = metrics.get("table5")
    names = list(DESCRIPTOR_SYMBOLS)
    shadow_label = (f"{shadows['thetas']} θ × {shadows['aggregates_per_theta']} aggregates"
                    if shadows else "not computed")
    ours_mae = (" / ".join(_number(shadows["table5"][name]["mae"]) for name in names)
                if shadows else "not computed")
    ours_r2 = (" / ".join(_number(shadows["table5"][name]["r2"], 2) for name in names)
               if shadows else "not computed")
    rows += [
        ["digital shadows, 50 θ × 800 aggregates: MAE of means S_TiO2 / Z_hetero / Z_total",
         " / ".join(str(paper["shadow_mae"][name]) for name in names),
         f"{ours_mae} ({shadow_label})", _NOT_IN_FILE],
        ["same, R²", " / ".join(str(paper["shadow_r2"][name]) for name in names),
         ours_r2, _NOT_IN_FILE],
        ["threshold baseline, ρ per image MAE", f"{paper['threshold_baseline_per_image_mae']}",
         _number(threshold["per_image"]["mae"]) if threshold else "not in predictions",
         _NOT_IN_FILE],
    ]
    return rows


def _header(metrics: Mapping, model_card: Optional[Mapping]) -> list[str]:
    settings = metrics["settings"]
    info = metrics.get("info") or {}
    lines = ["# Evaluation as in the paper (Sec. 3, Figs. 9–15, Tables 4–5)", "",
             f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} from a "
             "predictions file by `hagg_tf.evaluation.paper_evaluation` (`hagg-evaluate`).", "",
             f"- images: {settings['images']} in {settings['configurations']} θ configurations"
             f"; {settings['groups']} groups of ν = {settings['nu']} images of one θ",
             f"- seed {settings['seed']}; classifier threshold {settings['classifier_threshold']}"]
    if settings.get("predictions"):
        lines.append(f"- predictions file: `{settings['predictions']}`")
    for key, value in info.items():
        lines.append(f"- {key}: {value}")
    if model_card:
        status = model_card.get("status")
        lines.append(f"- model card: status {status or 'not given'}"
                     + (f"; {model_card['summary']}" if model_card.get("summary") else ""))
        if str(status).lower() == "placeholder":
            lines += ["", "**The networks are placeholders** (trained briefly on a small "
                      "database): the numbers below show that the evaluation runs, not the "
                      "paper's accuracy."]
    lines += ["", "Errors are estimate − truth. Per image against the imaged aggregate's "
              "D_f(A), ρ(A); per θ against the preset θ of the group. θ̂_0, θ̂_1 = η(network "
              "output), η rounding to the nearest integer ≥ 0 as in the paper.", ""]
    return lines


def _figure_link(figures: Mapping, key: str, title: str) -> list[str]:
    path = figures.get(key)
    return [f"![{title}]({Path(path).name})", ""] if path else []


def _fig09(metrics, figures) -> list[str]:
    fig9 = metrics["fig09"]
    lines = ["## Fig. 9: MAE against ν", "",
             "θ̂_Df and θ̂_ρ from the per-image outputs for every ν; θ̂_0 and θ̂_1 at the ν the "
             "multi-image networks were run with. The paper sees no significant gain beyond "
             "ν ≈ 10.", ""]
    df, rho = fig9["fractal_dimension"], fig9["mixing_ratio"]
    if metrics["settings"].get("sample_heads"):
        lines += ["θ̂_Df and θ̂_ρ are the sample heads' (`hagg_tf.data.sample_heads`); the means "
                  "of Eqs. 13–14 beside them.", ""]
        rows = [[nu, groups, _number(a), _number(b), _number(c), _number(d), _number(e)]
                for nu, groups, a, b, c, d, e in zip(
                    df["nu"], df["groups"], df["mae"], df["mae_images_mean"], rho["mae"],
                    rho["mae_images_mean"], rho["mae_regressor_only"])]
        lines += _table(["ν", "groups", "θ̂_Df MAE", "θ̂_Df MAE, mean", "θ̂_ρ MAE",
                         "θ̂_ρ MAE, mean with classifier", "θ̂_ρ MAE, regressor only"], rows)
    else:
        rows = [[nu, groups, _number(a), _number(b), _number(c)]
                for nu, groups, a, b, c in zip(df["nu"], df["groups"], df["mae"], rho["mae"],
                                               rho["mae_regressor_only"])]
        lines += _table(["ν", "groups", "θ̂_Df MAE", "θ̂_ρ MAE", "θ̂_ρ MAE, regressor only"],
                        rows)
    lines.append("")
    rows = []
    for name, symbol in (("wo3_cluster_size", "θ̂_0"), ("tio2_cluster_size", "θ̂_1")):
        entry = fig9.get(name) or {}
        for nu, groups, mae, raw in zip(entry.get("nu", []), entry.get("groups", []),
                                        entry.get("mae", []), entry.get("mae_raw", [])):
            rows.append([symbol, nu, groups, _number(mae), _number(raw)])
    lines += _table(["estimator", "ν", "groups", "MAE (rounded)", "MAE (raw output)"], rows)
    return lines + [""] + _figure_link(figures, "fig09", "Fig. 9")


def _fig10(metrics, figures) -> list[str]:
    fig10 = metrics["fig10"]
    image, theta = fig10["per_image"], fig10["per_theta"]
    lines = ["## Fig. 10: fractal dimension", ""]
    lines += _table(["quantity", "paper", "ours"], [
        ["D̂_f(I) − D_f(A): mean", PAPER_VALUES["fractal_dimension_per_image_mean_error"],
         _number(image["mean"])],
        ["D̂_f(I) − D_f(A): IQR", PAPER_VALUES["fractal_dimension_per_image_iqr"],
         _number(image["iqr"])],
        ["D̂_f(I) − D_f(A): median / MAE / images", "—",
         f"{_number(image['median'])} / {_number(image['mae'])} / {image['count']}"],
        [f"θ̂_Df − θ_Df: MAE (ν = {fig10['nu']})", PAPER_VALUES["fractal_dimension_theta_mae"],
         _number(theta["mae"])],
        ["θ̂_Df − θ_Df: mean / groups", "—", f"{_number(theta['mean'])} / {theta['count']}"],
    ])
    lines += ["", "Per preset θ_Df (the paper: over-estimated at small θ_Df, under-estimated at "
              "large):", ""]
    lines += _table(["θ_Df", "groups", "mean error", "MAE"],
                    [[f"{row['preset']:g}", row["count"], _number(row["mean_error"]),
                      _number(row["mae"])] for row in fig10["per_theta_by_preset"]])
    return lines + [""] + _figure_link(figures, "fig10", "Fig. 10")


def _fig11(metrics, figures) -> list[str]:
    fig11 = metrics["fig11"]
    bias = fig11["bias_at_extremes"]
    paper = PAPER_VALUES
    lines = ["## Fig. 11: mixing ratio", ""]
    lines += _table(["quantity", "paper", "ours"], [
        ["ρ̂ per image MAE, regressor only", paper["mixing_ratio_per_image_mae_regressor_only"],
         _number(fig11["per_image_regressor_only"]["mae"])],
        ["ρ̂ per image MAE, with classifier", paper["mixing_ratio_per_image_mae_with_classifier"],
         _number(fig11["per_image_with_classifier"]["mae"])],
        [f"θ̂_ρ MAE, regressor only (ν = {fig11['nu']})",
         paper["mixing_ratio_theta_mae_regressor_only"],
         _number(fig11["per_theta_regressor_only"]["mae"])],
        [f"θ̂_ρ MAE, with classifier (ν = {fig11['nu']})",
         paper["mixing_ratio_theta_mae_with_classifier"],
         _number(fig11["per_theta_with_classifier"]["mae"])],
        *([[f"θ̂_ρ MAE, sample head (ν = {fig11['nu']})", "—",
            _number(fig11["per_theta"]["mae"])]]
          if metrics["settings"].get("sample_heads") else []),
        [f"θ̂_ρ MAE from the true ρ(A) of the images (Eq. 14's floor, ν = {fig11['nu']})",
         "–", _number(fig11["per_theta_true_per_image"]["mae"])],
        [f"bias for ρ(A) ≤ 0.1 ({bias['images']['rho_at_most_0.1']} images), regressor only",
         f"≈ {paper['mixing_ratio_bias_low_regressor_only']}",
         _number(bias["regressor_only"]["rho_at_most_0.1"])],
        [f"bias for ρ(A) ≥ 0.9 ({bias['images']['rho_at_least_0.9']} images), regressor only",
         f"≈ {paper['mixing_ratio_bias_high_regressor_only']}",
         _number(bias["regressor_only"]["rho_at_least_0.9"])],
        ["bias for ρ(A) ≤ 0.1, with classifier",
         f"≈ {paper['mixing_ratio_bias_low_with_classifier']}",
         _number(bias["with_classifier"]["rho_at_most_0.1"])],
        ["bias for ρ(A) ≥ 0.9, with classifier",
         f"≈ {paper['mixing_ratio_bias_high_with_classifier']}",
         _number(bias["with_classifier"]["rho_at_least_0.9"])],
    ])
    return lines + [""] + _figure_link(figures, "fig11", "Fig. 11")


def _table4(metrics, figures) -> list[str]:
    table = metrics["table4"]
    paper = PAPER_VALUES["classification_matrix"]
    ours = table["matrix"]
    lines = ["## Table 4: homogeneous/heterogeneous classification", "",
             f"CNN^ρ_class > {table['threshold']} per image against ρ(A) ∈ {{0, 1}}; rows "
             "prediction, columns truth; paper counts in brackets.", ""]
    lines += _table(["predicted \\ true", "homogeneous", "heterogeneous"], [
        ["homogeneous", f"{ours[0][0]} ({paper[0][0]})", f"{ours[0][1]} ({paper[0][1]})"],
        ["heterogeneous", f"{ours[1][0]} ({paper[1][0]})", f"{ours[1][1]} ({paper[1][1]})"],
    ])
    lines += ["", f"Accuracy {_percent(table['accuracy'], 1)} (paper ≈ "
              f"{_percent(PAPER_VALUES['classification_accuracy'])}); homogeneous images found "
              f"(recall) {_percent(table['homogeneous_recall'], 1)}, precision "
              f"{_percent(table['homogeneous_precision'], 1)}; {table['images']} images.", ""]
    return lines + _figure_link(figures, "table4", "Table 4")


def _cluster_size(metrics, figures, network: str) -> list[str]:
    key, symbol, hat, number = (("fig12", "θ_0", "θ̂_0", 12) if network == "wo3_cluster_size"
                                else ("fig13", "θ_1", "θ̂_1", 13))
    entry = metrics[key]
    paper = PAPER_VALUES
    at_six = _at_true_value(entry, 6)
    material = "WO3" if network == "wo3_cluster_size" else "TiO2"
    rows = [
        [f"{hat} exact", _percent(paper[f"{network}_exact"]), _percent(entry["exact"], 1)],
        [f"{hat} within ±1", _percent(paper[f"{network}_within_1"]),
         _percent(entry["within_1"], 1)],
        [f"{hat} MAE (all groups)", "—", _number(entry["mae"])],
        [f"relative MAE at {symbol} = 6", f"≈ {_percent(paper[f'{network}_relative_mae_at_6'])}",
         _percent(at_six["relative_mae"], 1) if at_six else "n/a"],
    ]
    if network == "tio2_cluster_size":
        rows.append([f"MAE at {symbol} = 6", paper["tio2_cluster_size_mae_at_6"],
                     _number(at_six["mae"], 2) if at_six else "n/a"])
    rows += [[f"network output − {symbol} before rounding: mean / MAE", "—",
              f"{_number(entry['raw']['mean'])} / {_number(entry['raw']['mae'])}"],
             [f"groups whose output rounds to 0 (no admissible {symbol})", "—",
              entry["rounded_to_zero"]]]
    lines = [f"## Fig. {number}: size of primary {material} clusters ({symbol})", "",
             f"{entry['groups']} groups of ν = {entry['nu']}.", ""]
    lines += _table(["quantity", "paper", "ours"], rows)
    lines += [""]
    lines += _table([symbol, "groups", "exact", "within ±1", "MAE", "relative MAE",
                     "mean raw error"],
                    [[row["true_value"], row["count"], _percent(row["exact"]),
                      _percent(row["within_1"]), _number(row["mae"], 2),
                      _percent(row["relative_mae"]), _number(row["mean_raw_error"], 2)]
                     for row in entry["by_true_value"]])
    return lines + [""] + _figure_link(figures, key, f"Fig. {number}")


def _table5(metrics, figures) -> list[str]:
    shadows = metrics.get("table5")
    lines = ["## Table 5 and Fig. 14: digital shadows", ""]
    if not shadows:
        return lines + ["Not computed (`--shadow_thetas=0`).", ""]
    lines += [f"{shadows['thetas']} configurations of E chosen at random (seed {shadows['seed']})"
              f", θ̂ from one group of ν images each (made admissible: θ̂_0, θ̂_1 ≥ 1); "
              f"{shadows['aggregates_per_theta']} aggregates drawn from θ and as many, "
              "independently, from θ̂. S_TiO2 leaves out aggregates without TiO2. MAE and "
              "R² = 1 − MSE(y, ŷ)/MSE(y, ȳ) over the pairs, y the θ means, ŷ the θ̂ means.", ""]
    if shadows["failed_pairs"]:
        lines += [f"{shadows['failed_pairs']} pair(s) could not be drawn and are left out "
                  "(see metrics.json).", ""]
    lines += _table(["", *DESCRIPTOR_SYMBOLS.values()], [
        ["MAE, paper", *(PAPER_VALUES["shadow_mae"][name] for name in DESCRIPTOR_SYMBOLS)],
        ["MAE, ours", *(_number(shadows["table5"][name]["mae"]) for name in DESCRIPTOR_SYMBOLS)],
        ["R², paper", *(PAPER_VALUES["shadow_r2"][name] for name in DESCRIPTOR_SYMBOLS)],
        ["R², ours", *(_number(shadows["table5"][name]["r2"], 2)
                       for name in DESCRIPTOR_SYMBOLS)],
        ["pairs", *(shadows["table5"][name]["pairs"] for name in DESCRIPTOR_SYMBOLS)],
    ])
    rows = []
    for pair in shadows["pairs"]:
        theta = ", ".join(f"{value:g}" for value in pair["theta"])
        hat = ", ".join(f"{value:.3g}" for value in pair["theta_hat_raw"])
        if "failed" in pair:
            rows.append([f"({theta})", f"({hat})", "failed", "", ""])
            continue
        rows.append([f"({theta})", f"({hat})", *(
            f"{_number(pair['theta_means'][name]['mean'])} / "
            f"{_number(pair['estimate_means'][name]['mean'])}" for name in DESCRIPTOR_SYMBOLS)])
    lines += ["", "Per pair: θ, θ̂ before rounding, then the means for θ / θ̂:", ""]
    lines += _table(["θ", "θ̂ (raw sizes)", *DESCRIPTOR_SYMBOLS.values()], rows)
    return lines + [""] + _figure_link(figures, "fig14", "Fig. 14")


def _fig15(metrics, figures) -> list[str]:
    fig15 = metrics["fig15"]
    names = {"fractal_dimension": "D̂_f", "mixing_ratio": "ρ̂ (with classifier)",
             "baseline_mixing_ratio_threshold": "threshold ρ̂",
             "baseline_fractal_dimension_box": "box-counting D̂_f"}
    lines = ["## Fig. 15: error against aggregate size", "",
             "Per-image errors by particle count (mean error / MAE per bin); the paper finds "
             "the CNN independent of size and the threshold baseline worse for larger, more "
             "overlapping aggregates.", ""]
    present = [name for name in names if name in fig15]
    bins = fig15[present[0]]["bins"]
    rows = []
    for number, item in enumerate(bins):
        rows.append([f"{item['low']}–{item['high'] - 1}", item["count"], *(
            f"{_number(fig15[name]['bins'][number]['mean_error'])} / "
            f"{_number(fig15[name]['bins'][number]['mae'])}" for name in present)])
    rows.append(["correlation of absolute error and N", "",
                 *(_number(fig15[name]["abs_error_size_correlation"], 2) for name in present)])
    lines += _table(["particles", "images", *(names[name] for name in present)], rows)
    return lines + [""] + _figure_link(figures, "fig15", "Fig. 15")


def _baselines(metrics) -> list[str]:
    baselines = metrics.get("baselines") or {}
    lines = ["## Classical baselines (Sec. 4)", ""]
    if not baselines:
        return lines + ["The predictions file has no baseline outputs.", ""]
    names = {"baseline_mixing_ratio_threshold": ("threshold ρ̂", "ρ(A)", "θ_ρ",
                                                 "mixing_ratio"),
             "baseline_fractal_dimension_box": ("box-counting D̂_f", "D_f(A)", "θ_Df",
                                                "fractal_dimension")}
    cnn_image = {"mixing_ratio": metrics["fig11"]["per_image_with_classifier"],
                 "fractal_dimension": metrics["fig10"]["per_image"]}
    cnn_theta = {"mixing_ratio": metrics["fig11"].get("per_theta",
                                                      metrics["fig11"]["per_theta_with_classifier"]),
                 "fractal_dimension": metrics["fig10"]["per_theta"]}
    rows = []
    for key, entry in baselines.items():
        label, truth, preset, target = names[key]
        paper = (PAPER_VALUES["threshold_baseline_per_image_mae"]
                 if key == "baseline_mixing_ratio_threshold" else "—")
        rows.append([f"{label} − {truth}: MAE (images)", paper,
                     f"{_number(entry['per_image']['mae'])} ({entry['per_image']['count']})",
                     _number(cnn_image[target]["mae"])])
        rows.append([f"{label} − {truth}: mean / IQR", "—",
                     f"{_number(entry['per_image']['mean'])} / "
                     f"{_number(entry['per_image']['iqr'])}",
                     f"{_number(cnn_image[target]['mean'])} / "
                     f"{_number(cnn_image[target]['iqr'])}"])
        rows.append([f"group mean − {preset}: MAE (groups)", "—",
                     f"{_number(entry['per_theta']['mae'])} ({entry['per_theta']['count']})",
                     _number(cnn_theta[target]["mae"])])
    return lines + _table(["quantity", "paper", "baseline (ours)", "CNN (ours)"], rows) + [""]


def robustness_section(robustness: Mapping) -> list[str]:
    """The robustness benchmark's table (:mod:`hagg_tf.evaluation.robustness`) as markdown.

    Args:
        robustness: the dict of :func:`~hagg_tf.evaluation.robustness.run_robustness` (as in
            ``metrics.json["robustness"]`` or ``robustness.json``).
    """
    from hagg_tf.evaluation.robustness import robustness_table

    settings = robustness["settings"]
    lines = ["## Robustness: the same held-out aggregates under other imaging conditions", "",
             f"{settings['thetas']} θ of E × {settings['images_per_theta']} images (selection "
             f"seed {settings['selection_seed']}), each rendered under every condition and run "
             "through `characterize` as a user's PNG would be (normalization, resampling to "
             "the networks' pixel size, fit to their input). θ̂_ρ and ρ̂ with the classifier; "
             "θ̂_0, θ̂_1 after rounding; classifier accuracy per image against ρ(A) ∈ {0, 1}; "
             "warned: samples (θ) for which characterize printed any warning (listed below); "
             "refused: samples characterize would not estimate.", ""]
    header, *rows = robustness_table(robustness)
    lines += _table(header, rows)
    lines += ["", "Conditions:", ""]
    for name in robustness["order"]:
        entry = robustness["conditions"][name]
        lines.append(f"- `{name}`: {entry['description']}")
        # each kind up to its first ";" (what is off, not the advice); whole in the JSON
        lines += [f"  - warned in {count} of {entry['metrics']['groups']} samples: "
                  f"{kind.split(';')[0]}" for kind, count in entry["warnings"].items()]
    return lines + [""]


def write_robustness_report(path, robustness: Mapping) -> Path:
    """Writes a report holding only :func:`robustness_section` (``hagg-evaluate
    --robustness`` without predictions) atomically and returns the path."""
    settings = robustness["settings"]
    lines = ["# Robustness benchmark", "",
             f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} by "
             "`hagg_tf.evaluation.robustness` (`hagg-evaluate --robustness`).", "",
             f"- model: `{settings['model']}` (model card status "
             f"{settings.get('model_card_status') or 'not given'})",
             f"- design seed {settings['design_seed']}; {settings['image_size']} px of "
             f"{settings['pixel_size_nm']:g} nm", ""]
    text = "\n".join(lines + robustness_section(robustness)).rstrip() + "\n"
    return atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


def render_report(metrics: Mapping, figures: Optional[Mapping[str, Path]] = None,
                  model_card: Optional[Mapping] = None) -> str:
    """The markdown report.

    Args:
        metrics: :func:`~hagg_tf.evaluation.paper_evaluation.evaluate_predictions` result.
        figures: figure key → PNG path (linked by file name: the report sits beside them).
        model_card: the evaluated model's card (``hagg_tf_export.json``), if known.

    Returns:
        Markdown text.
    """
    figures = figures or {}
    lines = _header(metrics, model_card)
    lines += ["## Main results (SPEC §9)", ""]
    lines += _table(["quantity", "paper", "ours", "baseline (ours)"], main_table_rows(metrics))
    lines.append("")
    for section in (_fig09(metrics, figures), _fig10(metrics, figures),
                    _fig11(metrics, figures), _table4(metrics, figures),
                    _cluster_size(metrics, figures, "wo3_cluster_size"),
                    _cluster_size(metrics, figures, "tio2_cluster_size"),
                    _table5(metrics, figures), _fig15(metrics, figures), _baselines(metrics)):
        lines += section
    if metrics.get("robustness"):
        lines += robustness_section(metrics["robustness"])
    return "\n".join(lines).rstrip() + "\n"


def write_report(path, metrics: Mapping, figures: Optional[Mapping[str, Path]] = None,
                 model_card: Optional[Mapping] = None) -> Path:
    """Writes :func:`render_report` to ``path`` atomically and returns the path."""
    text = render_report(metrics, figures, model_card)
    return atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))
