"""From STEM images of one sample to θ̂, digital shadows and their descriptors (paper Sec. 2.3,
3.4; SPEC §9).

Example::

    from hagg_tf.estimation import characterize, write_outputs

    result = characterize("examples/sample_a")           # shipped models by default
    result.estimate.theta                                # (θ̂_Df, θ̂_ρ, θ̂_0, θ̂_1)
    result.estimate.fractal_dimension_per_image          # raw CNN^Df output per image
    result.summary["hetero_coordination"]                # mean, std, count over the shadows
    write_outputs(result, "work/characterize/sample_a")  # report.json, shadows, figure

Nothing here imports TensorFlow until a model is loaded, so image checks and the estimators run
without it.
"""
from hagg_tf.estimation.characterize import (CharacterizationResult, characterization_figure,
                                             characterize, format_summary,
                                             plot_characterization, write_outputs)
from hagg_tf.estimation.estimators import (CLASSIFIER_THRESHOLD, ThetaEstimate,
                                           combine_mixing_ratio, cyclic_subsets, estimate_theta,
                                           estimate_with_networks, round_cluster_size)
from hagg_tf.estimation.images import (InputError, PreparedImages, StemInput, find_image_files,
                                       load_stem_images, prepare_images, read_stem_image)
from hagg_tf.estimation.model import CharacterizeModel, default_model_dir, find_model
from hagg_tf.estimation.quantities import DESCRIPTOR_QUANTITIES, THETA_QUANTITIES, Quantity
from hagg_tf.estimation.shadows import (DEFAULT_SHADOWS, MAX_SHADOWS, SAVED_SHADOWS,
                                        SHADOW_DESCRIPTORS, draw_shadows, iter_shadows,
                                        shadow_summary)

__all__ = [
    "CharacterizationResult", "characterization_figure", "characterize", "format_summary",
    "plot_characterization", "write_outputs", "DESCRIPTOR_QUANTITIES", "THETA_QUANTITIES",
    "Quantity", "CLASSIFIER_THRESHOLD", "ThetaEstimate", "combine_mixing_ratio",
    "cyclic_subsets", "estimate_theta", "estimate_with_networks", "round_cluster_size",
    "InputError", "PreparedImages", "StemInput", "find_image_files", "load_stem_images",
    "prepare_images", "read_stem_image", "CharacterizeModel", "default_model_dir", "find_model",
    "DEFAULT_SHADOWS", "MAX_SHADOWS", "SAVED_SHADOWS", "SHADOW_DESCRIPTORS", "draw_shadows",
    "iter_shadows", "shadow_summary",
]
