"""Accuracy of a composite characterize model on a database split (for model cards).

Per image: D̂_f(I) against D_f(A), ρ̂(I) (regressor only and with the classifier) against ρ(A),
the classifier's homogeneous/heterogeneous accuracy. Per θ: the images of each θ configuration
are cut into consecutive groups of ν (stored order) and θ̂ of each group is compared with the
preset θ (Sec. 3.1–3.3 of the paper, on a small scale): MAE of θ̂_Df and θ̂_ρ, exact and ±1
rates of θ̂_0 and θ̂_1.
"""
from __future__ import annotations

import collections
import os
import pathlib
from typing import Union

import numpy as np

from hagg_tf.data.network_specs import CLASSIFIER_THRESHOLD


def evaluate_composite(model, dataset_dir: Union[str, os.PathLike], split: str = "evaluation"
                       ) -> dict:
    """Measures the accuracy of a :class:`hagg_tf.estimation.CharacterizeModel` on a split.

    Args:
        model: the loaded composite model.
        dataset_dir: database directory.
        split: split to evaluate on (``"evaluation"`` is the paper's E).

    Returns:
        JSON-able metrics (see the module docstring) with the counts they rest on.

    Raises:
        DatasetError: a shard of the split that does not match the manifest or holds a
            corrupt record (names the file).
    """
    from hagg_tf.data import verify_dataset
    from hagg_tf.data.manifest import shard_paths
    from hagg_tf.data.records import read_samples

    # sha256 of the split's shards first (seconds against minutes of inference); the record
    # CRCs are checked while reading.
    manifest = verify_dataset(dataset_dir, level="checksum", splits=[split])
    by_theta = collections.defaultdict(list)
    for path in shard_paths(manifest, [split]):
        for sample in read_samples(pathlib.Path(path)):
            by_theta[sample.theta_id].append(sample)
    nu = model.num_images
    per_image = collections.defaultdict(list)
    per_group = collections.defaultdict(list)
    for theta_id in sorted(by_theta):
        samples = sorted(by_theta[theta_id], key=lambda sample: sample.index)
        for start in range(0, len(samples) - nu + 1, nu):
            group = samples[start:start + nu]
            counts = np.stack([sample.counts for sample in group]).astype(np.float32)
            electrons = np.array([sample.electrons_per_pixel for sample in group], np.float32)
            estimate = model.estimate(counts, electrons)
            truth = group[0].theta
            for k, sample in enumerate(group):
                per_image["df_error"].append(estimate.fractal_dimension_per_image[k]
                                             - sample.descriptors.fractal_dimension)
                per_image["rho_error_regressor"].append(
                    estimate.mixing_ratio_regressor_per_image[k]
                    - sample.descriptors.mixing_ratio)
                per_image["rho_error"].append(estimate.mixing_ratio_per_image[k]
                                              - sample.descriptors.mixing_ratio)
                per_image["class_correct"].append(
                    (estimate.homogeneous_probability_per_image[k] > CLASSIFIER_THRESHOLD)
                    == sample.descriptors.homogeneous)
            per_group["df"].append(estimate.fractal_dimension - truth.fractal_dimension)
            per_group["rho"].append(estimate.mixing_ratio - truth.mixing_ratio)
            per_group["rho_regressor"].append(estimate.mixing_ratio_regressor_only
                                              - truth.mixing_ratio)
            per_group["size0"].append(estimate.wo3_cluster_size - truth.wo3_cluster_size)
            per_group["size1"].append(estimate.tio2_cluster_size - truth.tio2_cluster_size)
            per_group["size0_raw"].append(estimate.wo3_cluster_size_raw)
            per_group["size1_raw"].append(estimate.tio2_cluster_size_raw)

    def mae(values):
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        return round(float(np.abs(values).mean()), 4) if values.size else None

    def rate(values, tolerance):
        values = np.abs(np.asarray(values))
        return round(float(np.mean(values <= tolerance)), 3) if values.size else None

    return {
        "split": split,
        "images": len(per_image["df_error"]),
        "groups_of_nu": len(per_group["df"]),
        "nu": nu,
        "per_image": {
            "fractal_dimension_mae": mae(per_image["df_error"]),
            "mixing_ratio_mae_regressor_only": mae(per_image["rho_error_regressor"]),
            "mixing_ratio_mae_with_classifier": mae(per_image["rho_error"]),
            "classifier_accuracy": (round(float(np.mean(per_image["class_correct"])), 3)
                                    if per_image["class_correct"] else None),
        },
        "per_theta": {
            "fractal_dimension_mae": mae(per_group["df"]),
            "mixing_ratio_mae_regressor_only": mae(per_group["rho_regressor"]),
            "mixing_ratio_mae_with_classifier": mae(per_group["rho"]),
            "wo3_cluster_size_exact": rate(per_group["size0"], 0),
            "wo3_cluster_size_within_1": rate(per_group["size0"], 1),
            "tio2_cluster_size_exact": rate(per_group["size1"], 0),
            "tio2_cluster_size_within_1": rate(per_group["size1"], 1),
            "wo3_cluster_size_raw_range": _range(per_group["size0_raw"]),
            "tio2_cluster_size_raw_range": _range(per_group["size1_raw"]),
        },
    }


def _range(values):
    if not values:
        return None
    return [round(float(np.min(values)), 3), round(float(np.max(values)), 3)]


def accuracy_summary(metrics: dict) -> str:
    """One line with the headline numbers of :func:`evaluate_composite`."""
    image, theta = metrics["per_image"], metrics["per_theta"]
    return (f"on {metrics['images']} {metrics['split']} images / {metrics['groups_of_nu']} "
            f"groups of ν = {metrics['nu']}: θ̂_Df MAE {theta['fractal_dimension_mae']}, "
            f"θ̂_ρ MAE {theta['mixing_ratio_mae_with_classifier']}, θ̂_0 exact "
            f"{theta['wo3_cluster_size_exact']} (±1: {theta['wo3_cluster_size_within_1']}), "
            f"θ̂_1 exact {theta['tio2_cluster_size_exact']} "
            f"(±1: {theta['tio2_cluster_size_within_1']}); per image D̂_f MAE "
            f"{image['fractal_dimension_mae']}, ρ̂ MAE {image['mixing_ratio_mae_with_classifier']}"
            f", classifier accuracy {image['classifier_accuracy']}")
