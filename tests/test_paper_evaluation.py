"""The paper's evaluation from a predictions file: statistics, shadows, report, figures, CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hagg_tf.evaluation import paper_evaluation as pe
from hagg_tf.evaluation import report
from hagg_tf.data.design import disjoint_groups
from hagg_tf.evaluation.predictions import Predictions, PredictionsError, save_predictions

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "evaluate.py"


def make_predictions(configurations: int = 6, images_per_theta: int = 24, *, nu: int = 12,
                     df_offset: float = 0.0, df_noise: float = 0.0, rho_noise: float = 0.0,
                     size_offset: float = 0.0, seed: int = 0, baselines: bool = False,
                     homogeneous_every: int = 8) -> Predictions:
    """Synthetic predictions whose truth equals θ per image (D_f(A) = θ_Df, ρ(A) = θ_ρ), so
    perfect outputs give zero error at image and θ level; except that every
    ``homogeneous_every``-th image (0: none) shows a homogeneous aggregate, ρ(A) = 1."""
    rng = np.random.default_rng(seed)
    thetas = np.array([(1.5 + 0.2 * (k % 6), 0.1 + 0.1 * (k % 9), 1 + k % 6, 1 + (k + 2) % 6)
                       for k in range(configurations)], np.float64)
    theta_id = np.repeat(np.arange(configurations), images_per_theta)
    theta = thetas[theta_id]
    count = len(theta_id)
    mixing_ratio = theta[:, 1].copy()
    homogeneous = np.zeros(count, bool)
    if homogeneous_every:
        homogeneous[::homogeneous_every] = True
    mixing_ratio[homogeneous] = 1.0
    arrays = {
        "record_index": np.arange(count) + 1000,
        "theta_id": theta_id,
        "theta": theta,
        "fractal_dimension": theta[:, 0].copy(),
        "mixing_ratio": mixing_ratio,
        "homogeneous": homogeneous,
        "num_particles": rng.integers(20, 86, count),
        "fractal_dimension_pred": theta[:, 0] + df_offset + rng.normal(0, df_noise, count),
        "mixing_ratio_regressor_pred": np.clip(mixing_ratio + rng.normal(0, rho_noise, count),
                                               0, 1),
        "homogeneous_probability_pred": np.where(homogeneous, 0.9, 0.1),
    }
    groups = disjoint_groups(theta_id, nu, seed)
    arrays[f"groups_nu{nu}"] = groups
    arrays[f"wo3_cluster_size_pred_nu{nu}"] = theta[groups[:, 0], 2] + size_offset
    arrays[f"tio2_cluster_size_pred_nu{nu}"] = theta[groups[:, 0], 3] + size_offset
    if baselines:
        arrays["baseline_mixing_ratio_threshold"] = mixing_ratio + 0.1
        arrays["baseline_fractal_dimension_box"] = theta[:, 0] - 0.2
    return Predictions(arrays, {"split": "evaluation", "dataset": "synthetic"})


def test_mae_and_r_squared_helpers_match_their_definitions():
    truth, estimate = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0]
    assert pe.mean_absolute_error(truth, estimate) == pytest.approx(0.25)
    # R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² = 1 − 1/5
    assert pe.coefficient_of_determination(truth, estimate) == pytest.approx(0.8)
    assert pe.coefficient_of_determination(truth, truth) == pytest.approx(1.0)
    # predicting the mean of y scores 0; non-finite pairs are left out
    assert pe.coefficient_of_determination(truth, [2.5] * 4) == pytest.approx(0.0)
    assert pe.mean_absolute_error([1.0, np.nan, 3.0], [2.0, 5.0, 3.0]) == pytest.approx(0.5)
    assert np.isnan(pe.coefficient_of_determination([2.0, 2.0], [1.0, 3.0]))
    summary = pe.error_summary([-1.0, 0.0, 1.0, 2.0, np.nan])
    assert summary["count"] == 4 and summary["non_finite"] == 1
    assert summary["mean"] == pytest.approx(0.5) and summary["mae"] == pytest.approx(1.0)
    assert summary["iqr"] == pytest.approx(np.quantile([-1, 0, 1, 2], 0.75)
                                           - np.quantile([-1, 0, 1, 2], 0.25))


def test_perfect_predictions_give_zero_errors_and_full_accuracy():
    metrics = pe.evaluate_predictions(make_predictions(), shadow_thetas=0)
    assert metrics["fig10"]["per_image"]["mae"] == pytest.approx(0, abs=1e-12)
    assert metrics["fig10"]["per_theta"]["mae"] == pytest.approx(0, abs=1e-12)
    assert metrics["fig11"]["per_image_with_classifier"]["mae"] == pytest.approx(0, abs=1e-6)
    assert metrics["table4"]["accuracy"] == 1.0
    assert metrics["table4"]["matrix"] == [[18, 0], [0, 126]]
    # θ_ρ is the mean of ρ(A) only without the homogeneous images mixed in
    heterogeneous = pe.evaluate_predictions(make_predictions(homogeneous_every=0),
                                            shadow_thetas=0)
    assert heterogeneous["fig11"]["per_theta_with_classifier"]["mae"] == pytest.approx(
        0, abs=1e-6)
    for key in ("fig12", "fig13"):
        assert metrics[key]["exact"] == 1.0 and metrics[key]["mae"] == 0
        assert metrics[key]["rounded_to_zero"] == 0
    assert all(value == pytest.approx(0, abs=1e-6)
               for value in metrics["fig09"]["fractal_dimension"]["mae"])
    assert metrics["table5"] is None and metrics["baselines"] == {}
    json.dumps(metrics, allow_nan=False)                    # valid JSON, NaN written as null


def test_theta_rho_floor_is_the_group_mean_of_the_true_mixing_ratios():
    # ρ(A) spreads around θ_ρ: even exact per-image outputs leave θ̂_ρ that far from θ_ρ.
    predictions = make_predictions(homogeneous_every=0)
    arrays = predictions.arrays
    rng = np.random.default_rng(5)
    arrays["mixing_ratio"] = np.clip(arrays["theta"][:, 1] + rng.normal(0, 0.1, len(
        arrays["theta"])), 0.01, 0.99)
    arrays["mixing_ratio_regressor_pred"] = arrays["mixing_ratio"].copy()
    groups = arrays["groups_nu12"]
    expected = np.mean(np.abs(arrays["mixing_ratio"][groups].mean(axis=1)
                              - arrays["theta"][groups[:, 0], 1]))
    fig11 = pe.mixing_ratio_metrics(predictions)
    assert expected > 0.01
    assert fig11["per_theta_true_per_image"]["mae"] == pytest.approx(expected)
    # perfect per-image outputs reach the floor, and do no better
    assert fig11["per_theta_with_classifier"]["mae"] == pytest.approx(expected)
    assert fig11["per_image_with_classifier"]["mae"] == pytest.approx(0, abs=1e-6)
    assert "Eq. 14's floor" in report.render_report(
        pe.evaluate_predictions(predictions, shadow_thetas=0))


def test_constant_offset_gives_that_error_everywhere():
    metrics = pe.evaluate_predictions(make_predictions(df_offset=0.05, size_offset=1.0),
                                      shadow_thetas=0)
    image, theta = metrics["fig10"]["per_image"], metrics["fig10"]["per_theta"]
    assert image["mae"] == pytest.approx(0.05) and image["mean"] == pytest.approx(0.05)
    assert image["iqr"] == pytest.approx(0.0, abs=1e-12)
    assert theta["mae"] == pytest.approx(0.05)
    assert all(row["mean_error"] == pytest.approx(0.05)
               for row in metrics["fig10"]["per_theta_by_preset"])
    for key in ("fig12", "fig13"):                          # +1 before rounding: off by one
        assert metrics[key]["exact"] == 0.0 and metrics[key]["within_1"] == 1.0
        assert metrics[key]["mae"] == pytest.approx(1.0)
        assert metrics[key]["raw"]["mean"] == pytest.approx(1.0)


def test_classifier_combination_rounds_only_confident_homogeneous_images():
    predictions = make_predictions(configurations=1, images_per_theta=12)
    arrays = dict(predictions.arrays)
    arrays["mixing_ratio_regressor_pred"] = np.array([0.3, 0.7, 0.4, 0.96] + [0.5] * 8)
    arrays["homogeneous_probability_pred"] = np.array([0.9, 0.9, 0.2, 0.5] + [0.0] * 8)
    combined = pe.per_image_mixing_ratio(Predictions(arrays, {}))
    # η rounds to {0, 1} above the 0.5 threshold; at exactly 0.5 the regressor is kept
    np.testing.assert_allclose(combined[:4], [0.0, 1.0, 0.4, 0.96], atol=1e-6)


def test_confusion_matrix_counts_rows_prediction_columns_truth():
    predictions = make_predictions(configurations=1, images_per_theta=12)
    arrays = dict(predictions.arrays)
    arrays["homogeneous"] = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], bool)
    arrays["homogeneous_probability_pred"] = np.array(
        [0.9, 0.8, 0.1, 0.7, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    table = pe.classification_metrics(Predictions(arrays, {}))
    assert table["matrix"] == [[2, 1], [1, 8]]
    assert table["accuracy"] == pytest.approx(10 / 12)
    assert table["homogeneous_recall"] == pytest.approx(2 / 3)
    assert table["homogeneous_precision"] == pytest.approx(2 / 3)


def test_cluster_sizes_are_rounded_with_eta_and_zero_is_reported():
    predictions = make_predictions(configurations=4, images_per_theta=12)
    arrays = dict(predictions.arrays)
    truth = arrays["theta"][arrays["groups_nu12"][:, 0], 2]
    # raw outputs 0.4 → 0, +0.49 → exact, +0.5 → ties to even, +1.6 → off by 2
    arrays["wo3_cluster_size_pred_nu12"] = np.array([0.4, truth[1] + 0.49, 2.5, truth[3] + 1.6])
    entry = pe.cluster_size_metrics(Predictions(arrays, {}), "wo3_cluster_size")
    rounded = pe.rounded_cluster_sizes(arrays["wo3_cluster_size_pred_nu12"])
    assert rounded[0] == 0 and rounded[2] == 2
    errors = rounded - truth
    assert entry["rounded_to_zero"] == 1
    assert entry["exact"] == pytest.approx(np.mean(errors == 0))
    assert entry["within_1"] == pytest.approx(np.mean(np.abs(errors) <= 1))
    assert entry["mae"] == pytest.approx(np.mean(np.abs(errors)))


def test_fig9_mae_of_theta_df_falls_with_nu_for_unbiased_noise():
    predictions = make_predictions(configurations=20, images_per_theta=20, df_noise=0.1,
                                   rho_noise=0.05)
    fig9 = pe.mae_versus_nu(predictions)
    mae = dict(zip(fig9["fractal_dimension"]["nu"], fig9["fractal_dimension"]["mae"]))
    assert fig9["fractal_dimension"]["nu"] == list(range(1, 21))
    assert mae[1] > mae[4] > mae[16]
    assert 2.5 < mae[1] / mae[16] < 6          # the 1/√ν of a mean: 4
    assert mae[1] == pytest.approx(0.1 * np.sqrt(2 / np.pi), rel=0.1)
    assert fig9["wo3_cluster_size"]["nu"] == [12]


def test_baselines_sit_beside_the_cnn_and_merge_by_record_index(tmp_path):
    metrics = pe.evaluate_predictions(make_predictions(baselines=True, homogeneous_every=0),
                                      shadow_thetas=0)
    threshold = metrics["baselines"]["baseline_mixing_ratio_threshold"]
    box = metrics["baselines"]["baseline_fractal_dimension_box"]
    assert threshold["per_image"]["mae"] == pytest.approx(0.1)
    assert threshold["per_theta"]["mae"] == pytest.approx(0.1)
    assert box["per_image"]["mean"] == pytest.approx(-0.2)
    assert box["per_theta"]["mae"] == pytest.approx(0.2)
    assert "baseline_mixing_ratio_threshold" in metrics["fig15"]

    predictions = make_predictions()
    records = predictions.arrays["record_index"][::2]       # half the images only
    np.savez(tmp_path / "baselines.npz", record_index=records[::-1],
             baseline_mixing_ratio_threshold=np.linspace(0, 1, len(records))[::-1])
    merged = pe.attach_baselines(predictions, tmp_path / "baselines.npz")
    values = merged.arrays["baseline_mixing_ratio_threshold"]
    np.testing.assert_allclose(values[::2], np.linspace(0, 1, len(records)))
    assert np.all(np.isnan(values[1::2]))
    np.savez(tmp_path / "empty.npz", record_index=records)
    with pytest.raises(PredictionsError, match="at least one of"):
        pe.attach_baselines(predictions, tmp_path / "empty.npz")


def test_shadow_pairs_are_admissible_and_table5_is_mae_and_r2_of_the_means(tmp_path):
    predictions = make_predictions(configurations=4, images_per_theta=12)
    arrays = dict(predictions.arrays)
    arrays["tio2_cluster_size_pred_nu12"] = np.full(4, 0.3)   # η → 0, shadows need ≥ 1
    predictions = Predictions(arrays, {})
    pairs = pe.select_shadow_pairs(predictions, count=2, seed=3)
    assert len(pairs) == 2 and len({pair.theta_id for pair in pairs}) == 2
    assert all(pair.estimate_rounded[3] == 0 and pair.estimate.tio2_cluster_size == 1
               for pair in pairs)
    assert pe.select_shadow_pairs(predictions, count=3, seed=3)[:2] == pairs

    cache = tmp_path / "shadows"
    result = pe.compare_digital_shadows(pairs, 5, cache_dir=cache, workers=1, progress=False)
    assert len(list(cache.glob("*.npz"))) == 4 and result["failed_pairs"] == 0
    for name in pe.SHADOW_DESCRIPTOR_NAMES:
        y = [row["theta_means"][name]["mean"] for row in result["pairs"]]
        y_hat = [row["estimate_means"][name]["mean"] for row in result["pairs"]]
        assert result["table5"][name]["mae"] == pytest.approx(pe.mean_absolute_error(y, y_hat))
        r2 = result["table5"][name]["r2"]
        assert r2 == pytest.approx(pe.coefficient_of_determination(y, y_hat), nan_ok=True)
    assert len(result["histograms"]) == 2
    hist = result["histograms"][0]["descriptors"]["hetero_coordination"]
    assert len(hist["edges"]) == pe.FIG14_BINS + 1 and sum(hist["theta_counts"]) == 5

    # resume: a deleted θ is redrawn identically, the cached ones are read back
    victim = sorted(cache.glob("*_estimate.npz"))[0]
    kept = sorted(cache.glob("*_theta.npz"))[0]
    kept_time = kept.stat().st_mtime_ns
    victim.unlink()
    again = pe.compare_digital_shadows(pairs, 5, cache_dir=cache, workers=1, progress=False)
    assert again["table5"] == result["table5"] and victim.is_file()
    assert kept.stat().st_mtime_ns == kept_time


def test_report_shows_the_paper_value_beside_ours_in_every_row():
    predictions = make_predictions(configurations=4, images_per_theta=12, df_noise=0.05,
                                   baselines=True)
    metrics = pe.evaluate_predictions(predictions, shadow_thetas=2, shadow_aggregates=3,
                                      progress=False)
    text = report.render_report(metrics, {"fig09": Path("fig09_mae_vs_nu.png")},
                                {"status": "placeholder", "summary": "tiny test networks"})
    rows = report.main_table_rows(metrics)
    assert len(rows) == 10                                  # every row of SPEC §9's table
    lines = text.splitlines()
    for quantity, paper, ours, _ in rows:
        line = next(line for line in lines if line.startswith(f"| {quantity} |"))
        assert f"| {paper} | {ours} |" in line
        assert ours and "n/a" not in ours.replace("n/a (no θ_1 = 6)", "")
    for paper_value in ("-0.006 / 0.118", "| 0.041 |", "0.059 → 0.053", "0.027 → 0.017",
                        "≈ 95 %", "48 % / 92 %", "32 % / 82 %; 1.44", "2.165 / 0.056 / 0.007",
                        "0.84 / 0.85 / 0.87", "| 0.078 |"):
        assert paper_value in text
    assert "threshold: 0.100" in text and "box counting: -0.200" in text
    assert "![Fig. 9](fig09_mae_vs_nu.png)" in text and "placeholders" in text


def _run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _assert_clean_failure(result, match):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]


def test_cli_writes_metrics_report_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    path = save_predictions(make_predictions(configurations=4, images_per_theta=12,
                                             df_noise=0.05, rho_noise=0.05),
                            tmp_path / "predictions.npz")
    output = tmp_path / "evaluation"
    result = _run_tool(f"--predictions={path}", f"--output={output}", "--shadow_thetas=2",
                       "--shadow_aggregates=3", "--workers=1")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["table5"]["thetas"] == 2 and metrics["settings"]["nu"] == 12
    assert "| θ̂_Df MAE | 0.041 |" in (output / "report.md").read_text()
    for name in ("fig09_mae_vs_nu", "fig10_fractal_dimension", "fig11_mixing_ratio",
                 "fig12_wo3_cluster_size", "fig13_tio2_cluster_size", "fig14_shadows",
                 "fig15_error_vs_size"):
        assert (output / f"{name}.png").stat().st_size > 1000, name
    assert "θ̂_Df MAE: paper 0.041" in result.stdout


def test_cli_bad_input_gets_one_error_line_and_exit_status_2(tmp_path):
    _assert_clean_failure(_run_tool(f"--predictions={tmp_path / 'missing.npz'}",
                                    f"--output={tmp_path}"), "no such file")
    np.savez(tmp_path / "partial.npz", record_index=np.arange(3))
    _assert_clean_failure(_run_tool(f"--predictions={tmp_path / 'partial.npz'}",
                                    f"--output={tmp_path}"), "predictions lack theta_id")
    path = save_predictions(make_predictions(configurations=1), tmp_path / "p.npz")
    _assert_clean_failure(_run_tool(f"--predictions={path}", f"--output={tmp_path}", "--nu=8"),
                          "no groups of nu = 8")
