"""The robustness benchmark: the same held-out aggregates under named imaging conditions.

The networks were trained on the renderer's idealized images (no support film, no detector
offset or read noise, focus through the centre of mass, the paper's dose and pixel size). This
benchmark measures how much of their accuracy survives one change at a time, the way a user
meets it: every image goes through ``hagg_tf.estimation.characterize`` (the code behind
``hagg-characterize``) as a 16-bit PNG with the renderer's metadata, so it is normalized,
resampled to the networks' pixel size and padded or cropped to their input exactly as a
user's image is, and θ̂ is the characterize estimate (Eqs. 13–15, the composite SavedModel).

Held-out aggregates. ``thetas`` configurations θ are chosen at random (seeded, fixed) among
those of the evaluation split E of the database design (:mod:`hagg_tf.data.design`, the paper
preset by default), and of each the ``images_per_theta`` E draws with the smallest sample
indices (E's draws of a θ are themselves a random subset of its 50). Draw ``i`` is the E
sample itself: ``sample_aggregate(θ, seed, i, config)`` rendered with the image stream of
``(seed, i)``, so under ``clean`` the images are byte for byte those of the database's E
records, images the networks never trained on. Every aggregate is generated once and rendered
under every imaging condition; a condition that changes the stochastic model (``radii_9nm``)
draws its own aggregates from the same ``(seed, i)``. A randomized condition (``realistic``)
draws each image's imaging conditions and generator settings as the database preset of that
name draws its sample ``i`` (:func:`hagg_tf.data.randomization.draw_conditions`).

Conditions (:data:`ROBUSTNESS_CONDITIONS`) are stated for the paper's 1.2 nm pixels and
149 e/Å²; for a design rendered at another pixel size or dose (small test databases) the
pixel size and dose of every condition scale with it, so ``clean`` stays that design's E.

Metrics per condition (:func:`condition_metrics`), with the evaluation's own functions
(:mod:`hagg_tf.evaluation.paper_evaluation`) on ``ν = images_per_theta`` images per θ: θ̂_Df
and θ̂_ρ MAE (θ̂_ρ with the classifier), the per-image ρ̂ MAE against ρ(A), θ̂_0 and θ̂_1
exact and within ±1 (after η rounding), and the homogeneous-classifier accuracy per image
against the imaged aggregate's ρ(A) ∈ {0, 1}; beside them, how often ``characterize`` warned
(its out-of-domain checks among others) or refused.

Resume. Each condition's per-image and per-θ outputs are saved atomically as
``<work_dir>/<condition>.npz`` (a :class:`~hagg_tf.evaluation.predictions.Predictions` file
whose ``info`` holds the settings); a rerun with the same settings loads it instead of
rendering again, and a condition whose settings changed (model, selection, definition) is
recomputed. The settings do not cover the code: after a change to the renderer or to
``characterize``, delete the work folder.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from hagg_tf.data.design import DatasetConfig, DatasetDesign, build_design, preset
from hagg_tf.data.manifest import json_sha256
from hagg_tf.evaluation import paper_evaluation
from hagg_tf.evaluation.predictions import (SAMPLE_HEADS_PREFIX, PredictionsError, Predictions,
                                            load_predictions, save_predictions)
from hagg_tf.jsonsafe import json_safe
from hagg_tf.model.parameters import GeneratorConfig
from hagg_tf.stem.conditions import DEFAULT_DOSE, DEFAULT_PIXEL_SIZE_NM, ImagingConditions


class RobustnessCondition(NamedTuple):
    """One named condition of the benchmark.

    Attributes:
        imaging: the renderer's imaging conditions (:class:`~hagg_tf.stem.ImagingConditions`)
            for every image; None when ``randomized`` draws them per image.
        generator_overrides: fields of :class:`~hagg_tf.model.parameters.GeneratorConfig` that
            differ from the design's (empty: the E aggregates themselves).
        description: what differs from the training images, for tables and figures.
        randomized: name of the ranges of :mod:`hagg_tf.data.randomization`
            (``CONDITION_RANGES``) to draw each image's imaging conditions and generator
            settings from, as that database preset draws its sample ``i``; None: fixed.
    """

    imaging: Optional[ImagingConditions]
    generator_overrides: Mapping
    description: str
    randomized: Optional[str] = None


#: The named conditions: one change at a time against ``clean`` (the training images), then
#: combinations. Values are for the paper's 1.2 nm pixels at 149 e/Å² (≈ 21 456 incident
#: electrons per pixel, the beam level), inside the ranges of the realistic preset
#: (``hagg_tf.data.randomization.REALISTIC_RANGES``, sources in docs/data.md); docs/networks.md,
#: "Robustness", says what each stands for.
ROBUSTNESS_CONDITIONS: dict[str, RobustnessCondition] = {
    "clean": RobustnessCondition(
        ImagingConditions(), {},
        "the training images: vacuum background, focus through the centre of mass, "
        "149 e/Å², 1.2 nm pixels, radii 12 ± 3 nm"),
    "film_5nm": RobustnessCondition(
        ImagingConditions(film_thickness_nm=5.0), {},
        "5 nm amorphous carbon support film under the aggregate (its signal and shot noise "
        "over the whole field)"),
    "film_15nm": RobustnessCondition(
        ImagingConditions(film_thickness_nm=15.0), {},
        "15 nm amorphous carbon support film"),
    "dark_offset": RobustnessCondition(
        ImagingConditions(dark_offset=100.0), {},
        "detector black level of 100 counts added to every pixel (0.5 % of the beam; "
        "recorded as dark_level in the metadata)"),
    "read_noise": RobustnessCondition(
        ImagingConditions(dark_offset=100.0, read_noise=10.0), {},
        "Gaussian read noise of s.d. 10 counts on every pixel, on the 100-count black level "
        "that keeps it from clipping at 0"),
    "focus_50nm": RobustnessCondition(
        ImagingConditions(focal_plane_offset_nm=50.0), {},
        "focal plane 50 nm above the centre of mass: the defocus blur |z − z_f| tan β grows"),
    "blur_1px": RobustnessCondition(
        ImagingConditions(probe_blur_nm=DEFAULT_PIXEL_SIZE_NM), {},
        "extra Gaussian probe/source blur of s.d. 1 pixel (1.2 nm)"),
    "dose_50": RobustnessCondition(
        ImagingConditions(dose=50.0), {}, "dose 50 e/Å² instead of 149 (more shot noise)"),
    "pixel_1nm": RobustnessCondition(
        ImagingConditions(pixel_size_nm=1.0), {},
        "1.0 nm pixels (512 px, a 512 nm field), resampled to 1.2 nm by characterize"),
    "radii_9nm": RobustnessCondition(
        ImagingConditions(), {"radius_mean": 9.0, "radius_std": 2.5},
        "particle radii 9 ± 2.5 nm instead of 12 ± 3 nm (own aggregates, same draws)"),
    "combined": RobustnessCondition(
        ImagingConditions(film_thickness_nm=5.0, gain=1.5, dark_offset=100.0, read_noise=10.0,
                          focal_plane_offset_nm=20.0, probe_blur_nm=0.6, line_jitter_nm=0.2,
                          drift_nm=(1.5, 0.5), dose=100.0, pixel_size_nm=1.0), {},
        "an ordinary acquisition, everything at once: 5 nm film, gain 1.5, black level 100 "
        "and read noise 10 counts, focus 20 nm off, 0.6 nm blur, 0.2 nm line jitter, "
        "(1.5, 0.5) nm drift, 100 e/Å², 1.0 nm pixels"),
    "realistic": RobustnessCondition(
        None, {},
        "every image under its own imaging conditions, particle sizes and particle count, "
        "drawn from the realistic preset's ranges as that preset draws its sample i (film or "
        "none, detector, focus, blur, scan, dose, pixel size, radii, particles)",
        randomized="realistic"),
}

#: Defaults of the benchmark (issue 10: 150 θ × ν = 12 images).
DEFAULT_THETAS = 150
DEFAULT_IMAGES_PER_THETA = 12
#: Format tag of the per-condition cache files and of the result.
ROBUSTNESS_FORMAT = "hagg_tf robustness/3"
# SeedSequence entropy of the held-out selection ("ROBU"), apart from every other stream.
_SELECTION_STREAM = 0x524F4255
# Metric keys of a condition's row, in table order.
METRIC_KEYS = ("fractal_dimension_theta_mae", "mixing_ratio_theta_mae",
               "mixing_ratio_per_image_mae", "wo3_cluster_size_exact",
               "wo3_cluster_size_within_1", "tio2_cluster_size_exact",
               "tio2_cluster_size_within_1", "classification_accuracy")
# Seconds between progress lines within a condition.
_PROGRESS_SECONDS = 10.0


class RobustnessError(ValueError):
    """A benchmark setting that cannot be met (unknown condition, too many θ, …)."""


def check_condition_names(names: Sequence[str]) -> list[str]:
    """The names in ``names`` (duplicates dropped, order kept).

    Raises:
        RobustnessError: a name is not in :data:`ROBUSTNESS_CONDITIONS` or none is given.
    """
    names = list(dict.fromkeys(str(name).strip() for name in names if str(name).strip()))
    unknown = [name for name in names if name not in ROBUSTNESS_CONDITIONS]
    if unknown:
        raise RobustnessError(f"unknown robustness condition(s) {', '.join(unknown)}; choose "
                              f"from {', '.join(ROBUSTNESS_CONDITIONS)}")
    if not names:
        raise RobustnessError("no robustness condition given")
    return names


def held_out_samples(config: DatasetConfig, thetas: int = DEFAULT_THETAS,
                     images_per_theta: int = DEFAULT_IMAGES_PER_THETA, seed: int = 0
                     ) -> np.ndarray:
    """Sample indices of the held-out aggregates (see the module docstring).

    Args:
        config: the database design; its split E is drawn from.
        thetas: configurations θ chosen at random among those with at least
            ``images_per_theta`` E draws.
        images_per_theta: E draws per θ (their smallest sample indices).
        seed: selection seed (with ``config.seed``).

    Returns:
        (thetas, images_per_theta) int64 sample indices; rows in ascending θ id.

    Raises:
        RobustnessError: fewer eligible θ than asked for, or a non-positive count.
    """
    if thetas < 1 or images_per_theta < 1:
        raise RobustnessError(f"thetas and images_per_theta must be >= 1, got {thetas}, "
                              f"{images_per_theta}")
    design = build_design(config)
    evaluation = design.split_indices("evaluation")
    owners = design.sample_theta[evaluation]
    eligible = np.flatnonzero(design.counts_per_theta("evaluation") >= images_per_theta)
    if thetas > len(eligible):
        raise RobustnessError(f"{thetas} θ asked for, but only {len(eligible)} configurations "
                              f"of split E have {images_per_theta} draws")
    rng = np.random.default_rng(np.random.SeedSequence([int(config.seed), _SELECTION_STREAM,
                                                        int(seed)]))
    chosen = np.sort(rng.choice(eligible, thetas, replace=False))
    return np.stack([evaluation[owners == theta_id][:images_per_theta]
                     for theta_id in chosen]).astype(np.int64)


def _scaled(imaging: ImagingConditions, config: DatasetConfig) -> ImagingConditions:
    """``imaging`` for ``config``'s pixel size and dose (see the module docstring: unchanged
    for the paper's 1.2 nm and 149 e/Å²)."""
    pixel_scale = config.effective_pixel_size_nm / DEFAULT_PIXEL_SIZE_NM
    dose_scale = config.dose / DEFAULT_DOSE
    if pixel_scale == 1.0 and dose_scale == 1.0:
        return imaging
    return imaging.replace(pixel_size_nm=imaging.pixel_size_nm * pixel_scale,
                           dose=imaging.dose * dose_scale)


def sample_conditions(condition: RobustnessCondition, index: int, config: DatasetConfig
                      ) -> tuple[ImagingConditions, GeneratorConfig, int]:
    """How held-out sample ``index`` is drawn and imaged under ``condition``.

    Returns:
        (imaging conditions, generator settings, pixels per image edge). Fixed conditions
        are scaled to ``config``'s pixel size and dose and image ``config.image_size`` pixels;
        randomized ones are the draw of :func:`hagg_tf.data.randomization.draw_conditions`
        for ``(config.seed, index)``, imaged over the grid's field of view at the drawn
        acquisition pixel size.
    """
    if condition.randomized is None:
        generator = dataclasses.replace(config.generator_config,
                                        **dict(condition.generator_overrides))
        return _scaled(condition.imaging, config), generator, int(config.image_size)
    from hagg_tf.data.randomization import (acquisition_pixels, condition_ranges,
                                            draw_conditions)

    imaging, generator = draw_conditions(
        config.seed, int(index), condition_ranges(condition.randomized),
        image_size=config.image_size, grid_pixel_size_nm=config.effective_pixel_size_nm)
    if condition.generator_overrides:
        generator = dataclasses.replace(generator, **dict(condition.generator_overrides))
    field_of_view = config.image_size * config.effective_pixel_size_nm
    return imaging, generator, acquisition_pixels(field_of_view, imaging.pixel_size_nm)


def condition_record(condition: RobustnessCondition, config: DatasetConfig) -> dict:
    """JSON-safe definition of ``condition`` on ``config`` (for caches and the result)."""
    if condition.randomized is None:
        imaging = _scaled(condition.imaging, config).to_dict()
    else:
        from hagg_tf.data.randomization import condition_ranges

        imaging = {"randomized": condition.randomized,
                   "ranges": dataclasses.asdict(condition_ranges(condition.randomized))}
    return json_safe({"imaging": imaging,
                                       "generator_overrides": dict(
                                           condition.generator_overrides)})


def render_condition(aggregate, index: int, condition: RobustnessCondition,
                     config: DatasetConfig):
    """The image of held-out sample ``index`` (its aggregate given) under ``condition``.

    Returns:
        A :class:`~hagg_tf.stem.StemImage` (image stream of ``(config.seed, index)``).
    """
    from hagg_tf.stem import render_stem

    imaging, _, image_size = sample_conditions(condition, index, config)
    if imaging.replace(pixel_size_nm=DEFAULT_PIXEL_SIZE_NM, dose=DEFAULT_DOSE).is_default():
        # as the database renders (no conditions in the metadata): clean is then its records
        # byte for byte, metadata included, at any design's pixel size and dose
        return render_stem(aggregate, seed=config.seed, index=int(index),
                           image_size=image_size, pixel_size_nm=imaging.pixel_size_nm,
                           dose=imaging.dose)
    return render_stem(aggregate, seed=config.seed, index=int(index), image_size=image_size,
                       conditions=imaging)


class _Aggregates:
    """The held-out aggregates and their descriptors, drawn once per generator setting."""

    def __init__(self, design: DatasetDesign):
        self.design = design
        self._cache = {}

    def get(self, index: int, generator: GeneratorConfig):
        from hagg_tf.model.descriptors import describe
        from hagg_tf.model.generator import sample_aggregate

        key = (generator, int(index))
        if key not in self._cache:
            params = self.design.params(self.design.sample_theta[int(index)])
            aggregate = sample_aggregate(params, self.design.config.seed, int(index), generator)
            self._cache[key] = (aggregate, describe(aggregate))
        return self._cache[key]


class _LazyModel:
    """The composite model's metadata now (no TensorFlow); the model itself when first run, so
    that a rerun whose conditions are all cached loads nothing."""

    def __init__(self, model):
        from hagg_tf.estimation.model import CharacterizeModel, find_model

        self._model = model if isinstance(model, CharacterizeModel) else None
        if self._model is not None:
            self.version_dir, self.metadata = self._model.version_dir, self._model.metadata
        else:
            self.version_dir, self.metadata = find_model(model)

    @property
    def num_images(self) -> int:
        return int(self.metadata["num_images"])

    @property
    def loaded(self):
        """The :class:`~hagg_tf.estimation.model.CharacterizeModel` (loaded on first use)."""
        if self._model is None:
            from hagg_tf.estimation.model import CharacterizeModel

            self._model = CharacterizeModel(self.version_dir)
        return self._model


def _model_fingerprint(model: _LazyModel) -> dict:
    return {"version_dir": str(model.version_dir),
            "metadata_sha256": json_sha256(model.metadata)}


def _settings(name: str, condition: RobustnessCondition, config: DatasetConfig,
              samples: np.ndarray, selection_seed: int, model) -> dict:
    return {"format": ROBUSTNESS_FORMAT, "condition": name,
            **condition_record(condition, config), "design": config.to_dict(),
            "selection_seed": int(selection_seed),
            "samples_sha256": json_sha256(samples.tolist()), "model": _model_fingerprint(model)}


def _strip_file_name(warning: str) -> str:
    """``"03.png: pixel size …"`` → ``"pixel size …"`` (the benchmark's file names are
    meaningless); other warnings unchanged."""
    name, separator, message = warning.partition(": ")
    return message if separator and name.endswith(".png") and " " not in name else warning


def warning_kind(message: str) -> str:
    """What a warning says, without what varies between samples: numbers masked as ``#``
    (θ̂ values, pixel sizes, counts; not the digits of names such as WO3 or θ_0) and the
    lists of image names left out, so that the same check firing on two samples gives the
    same kind."""
    kind = _strip_file_name(message)
    kind = re.sub(r"\s*\([^()]*\.png[^()]*\)", "", kind)
    kind = re.sub(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?!\w)", "#", kind)
    kind = kind.replace("#–#", "#")    # a range over the images or a single value
    return re.sub(r" in (?:# images|#\.png)", "", kind)


def warning_kinds(sample_warnings: Sequence[Sequence[str]]) -> dict[str, int]:
    """Kind of warning (:func:`warning_kind`) → samples whose warnings include it, most
    frequent first.

    Args:
        sample_warnings: per characterized sample, the warnings ``characterize`` gave.
    """
    kinds = {}
    for warnings in sample_warnings:
        for kind in {warning_kind(message) for message in warnings}:
            kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda item: (-item[1], item[0])))


def _run_condition(name: str, condition: RobustnessCondition, samples: np.ndarray,
                   aggregates: _Aggregates, model, config: DatasetConfig, settings: dict,
                   progress: bool, position: str) -> Predictions:
    """Renders, characterizes and collects one condition (see :func:`run_robustness`)."""
    from hagg_tf.estimation.characterize import characterize
    from hagg_tf.estimation.images import InputError
    from hagg_tf.stem import write_stem_png

    design = aggregates.design
    nu = samples.shape[1]
    per_image = {key: [] for key in ("record_index", "theta_id", "theta", "fractal_dimension",
                                     "mixing_ratio", "homogeneous", "num_particles",
                                     "fractal_dimension_pred", "mixing_ratio_regressor_pred",
                                     "homogeneous_probability_pred")}
    per_group = {key: [] for key in ("wo3_cluster_size_raw", "tio2_cluster_size_raw",
                                     "theta_hat")}
    refused, sample_warnings = [], []
    started = last = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hagg_robustness_") as scratch:
        for number, indices in enumerate(samples):
            paths = []
            truths = []
            for slot, index in enumerate(indices):
                _, generator, _ = sample_conditions(condition, index, config)
                aggregate, descriptors = aggregates.get(index, generator)
                image = render_condition(aggregate, index, condition, config)
                paths.append(write_stem_png(pathlib.Path(scratch) / f"{slot:03d}.png", image))
                truths.append((int(index), aggregate, descriptors))
            theta_id = int(design.sample_theta[indices[0]])
            try:
                # shadows=1: the benchmark needs θ̂ only; one shadow is the least characterize
                # draws (milliseconds).
                result = characterize(paths, model=model.loaded, shadows=1, seed=0)
            except InputError as error:
                refused.append({"theta_id": theta_id, "error": _strip_file_name(str(error))})
                continue
            sample_warnings.append([_strip_file_name(warning) for warning in result.warnings])
            estimate = result.estimate
            theta = design.thetas[theta_id]
            for slot, (index, aggregate, descriptors) in enumerate(truths):
                per_image["record_index"].append(index)
                per_image["theta_id"].append(theta_id)
                per_image["theta"].append(theta)
                per_image["fractal_dimension"].append(descriptors.fractal_dimension)
                per_image["mixing_ratio"].append(descriptors.mixing_ratio)
                per_image["homogeneous"].append(descriptors.homogeneous)
                per_image["num_particles"].append(aggregate.size)
                per_image["fractal_dimension_pred"].append(
                    estimate.fractal_dimension_per_image[slot])
                per_image["mixing_ratio_regressor_pred"].append(
                    estimate.mixing_ratio_regressor_per_image[slot])
                per_image["homogeneous_probability_pred"].append(
                    estimate.homogeneous_probability_per_image[slot])
            per_group["wo3_cluster_size_raw"].append(estimate.wo3_cluster_size_raw)
            per_group["tio2_cluster_size_raw"].append(estimate.tio2_cluster_size_raw)
            per_group["theta_hat"].append(estimate.theta)
            now = time.perf_counter()
            if progress and (now - last >= _PROGRESS_SECONDS or number + 1 == len(samples)):
                last = now
                print(f"robustness {position} {name}: {number + 1}/{len(samples)} θ × {nu} "
                      f"images, {now - started:.0f} s", file=sys.stderr, flush=True)
    groups = len(per_group["theta_hat"])
    arrays = {
        "record_index": np.asarray(per_image["record_index"], np.int64),
        "theta_id": np.asarray(per_image["theta_id"], np.int64),
        "theta": np.asarray(per_image["theta"], np.float64).reshape(-1, 4),
        "fractal_dimension": np.asarray(per_image["fractal_dimension"], np.float64),
        "mixing_ratio": np.asarray(per_image["mixing_ratio"], np.float64),
        "homogeneous": np.asarray(per_image["homogeneous"], bool),
        "num_particles": np.asarray(per_image["num_particles"], np.int64),
        **{key: np.asarray(per_image[key], np.float32)
           for key in ("fractal_dimension_pred", "mixing_ratio_regressor_pred",
                       "homogeneous_probability_pred")},
        f"groups_nu{nu}": np.arange(groups * nu, dtype=np.int64).reshape(groups, nu),
        f"wo3_cluster_size_pred_nu{nu}": np.asarray(per_group["wo3_cluster_size_raw"],
                                                    np.float64),
        f"tio2_cluster_size_pred_nu{nu}": np.asarray(per_group["tio2_cluster_size_raw"],
                                                     np.float64),
        # characterize's own θ̂ (rounded sizes), beside the raw outputs the metrics use
        "theta_hat": np.asarray(per_group["theta_hat"], np.float64).reshape(groups, 4),
    }
    # The groups are the samples themselves (n = ν), so the heads give characterize's θ̂.
    heads = getattr(model.loaded, "sample_heads", None)
    if heads is not None:
        arrays.update(heads.to_arrays(SAMPLE_HEADS_PREFIX))
    info = {"settings": settings, "seconds": round(time.perf_counter() - started, 1),
            "refused": refused, "sample_warnings": sample_warnings, "nu": nu,
            "thetas": int(len(samples))}
    return Predictions(arrays, info)


def condition_metrics(predictions: Predictions, nu: int) -> dict:
    """The benchmark's metrics of one condition (see the module docstring).

    Returns:
        JSON-safe dict: every key of :data:`METRIC_KEYS` (shares in [0, 1]), plus
        ``fractal_dimension_theta_bias`` (mean θ̂_Df − θ_Df), ``wo3_cluster_size_mae``,
        ``tio2_cluster_size_mae``, ``groups``, ``images``; all None when every sample was
        refused.
    """
    groups = len(predictions.groups(nu)) if nu in predictions.group_sizes else 0
    if not groups:
        return {key: None for key in METRIC_KEYS} | {"groups": 0, "images": 0}
    fig10 = paper_evaluation.fractal_dimension_metrics(predictions, nu)
    fig11 = paper_evaluation.mixing_ratio_metrics(predictions, nu)
    table4 = paper_evaluation.classification_metrics(predictions)
    sizes = {network: paper_evaluation.cluster_size_metrics(predictions, network, nu)
             for network in paper_evaluation.CLUSTER_SIZE_NETWORKS}
    metrics = {
        "fractal_dimension_theta_mae": fig10["per_theta"]["mae"],
        "fractal_dimension_theta_bias": fig10["per_theta"]["mean"],
        "mixing_ratio_theta_mae": fig11["per_theta"]["mae"],
        "mixing_ratio_per_image_mae": fig11["per_image_with_classifier"]["mae"],
        "classification_accuracy": table4["accuracy"],
        "groups": groups, "images": predictions.num_images,
    }
    for network, entry in sizes.items():
        metrics[f"{network}_exact"] = entry["exact"]
        metrics[f"{network}_within_1"] = entry["within_1"]
        metrics[f"{network}_mae"] = entry["mae"]
    return json_safe(metrics)


def _load_cached(path: pathlib.Path, settings: dict) -> Optional[Predictions]:
    """The cached predictions of a condition when they were made with ``settings``."""
    if not path.is_file():
        return None
    try:
        cached = load_predictions(path)
    except PredictionsError:
        return None
    return cached if cached.info.get("settings") == json.loads(json.dumps(settings)) else None


def run_robustness(model=None, *, conditions: Sequence[str] = tuple(ROBUSTNESS_CONDITIONS),
                   thetas: int = DEFAULT_THETAS,
                   images_per_theta: int = DEFAULT_IMAGES_PER_THETA, seed: int = 0,
                   config: Optional[DatasetConfig] = None,
                   work_dir: Optional[Union[str, os.PathLike]] = None,
                   progress: bool = True) -> dict:
    """Runs the benchmark (see the module docstring) and returns its table.

    Args:
        model: a :class:`~hagg_tf.estimation.model.CharacterizeModel`, a composite export
            path, or None for the shipped networks.
        conditions: names of :data:`ROBUSTNESS_CONDITIONS`, in table order.
        thetas: held-out configurations θ.
        images_per_theta: images per θ (ν of the θ-level metrics; at least the networks' ν).
        seed: seed of the held-out selection.
        config: the database design (default: the paper preset).
        work_dir: folder of the per-condition caches (resume); None: nothing cached.
        progress: progress lines on stderr.

    Returns:
        JSON-safe dict: ``format``, ``settings`` (selection, model, design seed), ``order``
        (condition names), ``conditions`` (name → ``description``, ``imaging`` (the
        conditions' fields), ``generator_overrides``, ``metrics`` (:func:`condition_metrics`),
        ``refused`` (samples characterize refused), ``warned`` (share of the others with
        at least one characterize warning), ``warnings`` (kind of warning characterize
        printed → samples, :func:`warning_kinds`),
        ``seconds``, ``cached``).

    Raises:
        RobustnessError: unknown conditions, too many θ, or fewer images than the networks' ν.
        FileNotFoundError, ValueError: no composite export there, or unreadable metadata
            (:func:`hagg_tf.estimation.model.find_model`).
    """
    names = check_condition_names(conditions)
    config = preset("paper") if config is None else config
    model = _LazyModel(model)
    if images_per_theta < model.num_images:
        raise RobustnessError(f"images_per_theta={images_per_theta} is fewer than the "
                              f"multi-image networks' nu = {model.num_images}")
    samples = held_out_samples(config, thetas, images_per_theta, seed)
    work = None if work_dir is None else pathlib.Path(work_dir)
    aggregates = _Aggregates(build_design(config))
    result = {"format": ROBUSTNESS_FORMAT,
              "settings": {"thetas": int(thetas), "images_per_theta": int(images_per_theta),
                           "selection_seed": int(seed), "design_seed": int(config.seed),
                           "image_size": int(config.image_size),
                           "pixel_size_nm": config.effective_pixel_size_nm,
                           "model": _model_fingerprint(model)["version_dir"],
                           "model_card_status": (model.metadata.get("model_card")
                                                 or {}).get("status"),
                           "work_dir": None if work is None else str(work)},
              "order": names, "conditions": {}}
    for number, name in enumerate(names):
        condition = ROBUSTNESS_CONDITIONS[name]
        settings = _settings(name, condition, config, samples, seed, model)
        path = None if work is None else work / f"{name}.npz"
        position = f"[{number + 1}/{len(names)}]"
        predictions = None if path is None else _load_cached(path, settings)
        cached = predictions is not None
        if cached and progress:
            print(f"robustness {position} {name}: cached in {path}", file=sys.stderr,
                  flush=True)
        if not cached:
            predictions = _run_condition(name, condition, samples, aggregates, model, config,
                                         settings, progress, position)
            if path is not None:
                save_predictions(predictions, path)
        info = predictions.info
        sample_warnings = info.get("sample_warnings", [])
        result["conditions"][name] = json_safe({
            "description": condition.description, **condition_record(condition, config),
            "metrics": condition_metrics(predictions, images_per_theta),
            "refused": info.get("refused", []),
            "warned": (sum(map(bool, sample_warnings)) / len(sample_warnings)
                       if sample_warnings else None),
            "warnings": warning_kinds(sample_warnings),
            "seconds": info.get("seconds"), "cached": cached})
    return result


def robustness_table(result: Mapping) -> list[list[str]]:
    """Rows of the conditions × metrics table (header first), plain text cells.

    Columns: condition, θ̂_Df MAE, θ̂_ρ MAE, ρ̂ per image MAE, θ̂_0 exact / ±1, θ̂_1 exact / ±1,
    classifier accuracy, samples characterize warned about (any warning) and refused.
    """
    def number(value, digits=3):
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    def percent(value):
        return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.0f} %"

    rows = [["condition", "θ̂_Df MAE", "θ̂_ρ MAE", "ρ̂ per image MAE", "θ̂_0 exact / ±1",
             "θ̂_1 exact / ±1", "classifier accuracy", "warned", "refused"]]
    for name in result["order"]:
        entry = result["conditions"][name]
        metrics = entry["metrics"]
        rows.append([name, number(metrics["fractal_dimension_theta_mae"]),
                     number(metrics["mixing_ratio_theta_mae"]),
                     number(metrics["mixing_ratio_per_image_mae"]),
                     f"{percent(metrics['wo3_cluster_size_exact'])} / "
                     f"{percent(metrics['wo3_cluster_size_within_1'])}",
                     f"{percent(metrics['tio2_cluster_size_exact'])} / "
                     f"{percent(metrics['tio2_cluster_size_within_1'])}",
                     percent(metrics["classification_accuracy"]), percent(entry["warned"]),
                     str(len(entry["refused"]))])
    return rows


def plot_condition_gallery(path: Union[str, os.PathLike], *,
                           conditions: Sequence[str] = tuple(ROBUSTNESS_CONDITIONS),
                           config: Optional[DatasetConfig] = None, seed: int = 0,
                           thetas: int = DEFAULT_THETAS,
                           images_per_theta: int = DEFAULT_IMAGES_PER_THETA,
                           sample: int = 0, field_nm: float = 240.0, columns: int = 4,
                           dpi: int = 90) -> pathlib.Path:
    """Figure: one held-out aggregate under every condition, ``clean`` first (docs figure).

    Each panel shows the central ``field_nm`` × ``field_nm`` of the image as stored (detector
    counts on a square-root grey scale from 0 counts to the 99.8th percentile of the panel, so
    that a film, an offset or background noise shows), with a scale bar in nm and the
    condition's name.

    Args:
        path: output PNG.
        conditions: names of :data:`ROBUSTNESS_CONDITIONS` (``clean`` is put first).
        config: the design (default: the paper preset).
        seed, thetas, images_per_theta: the held-out selection (:func:`held_out_samples`),
            the benchmark's by default.
        sample: which held-out θ (row of the selection); its first image is shown.
        field_nm: side of the shown window, nm.
        columns: panels per row.
        dpi: resolution of the saved figure.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is missing.
    """
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from hagg_tf.estimation.characterize import scale_bar_length
    from hagg_tf.evaluation.figures import save_png

    names = check_condition_names(conditions)
    names = ["clean"] + [name for name in names if name != "clean"]
    config = preset("paper") if config is None else config
    design = build_design(config)
    index = int(held_out_samples(config, thetas, images_per_theta, seed)[sample, 0])
    aggregates = _Aggregates(design)
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(2.3 * columns, 2.55 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    theta = design.params(design.sample_theta[index])
    for axis, name in zip(axes.ravel(), names):
        condition = ROBUSTNESS_CONDITIONS[name]
        aggregate, _ = aggregates.get(index, sample_conditions(condition, index, config)[1])
        image = render_condition(aggregate, index, condition, config)
        pixel = float(image.metadata["pixel_size_nm"])
        counts = image.counts.astype(np.float64)
        half = min(int(round(field_nm / pixel / 2)), counts.shape[0] // 2)
        middle_row, middle_column = counts.shape[0] // 2, counts.shape[1] // 2
        window = counts[middle_row - half:middle_row + half,
                        middle_column - half:middle_column + half]
        high = float(np.percentile(window, 99.8))
        extent = 2 * half * pixel
        axis.imshow(window, cmap="gray", norm=PowerNorm(0.5, vmin=0.0, vmax=max(high, 1.0)),
                    extent=(0.0, extent, extent, 0.0), interpolation="antialiased")
        length = scale_bar_length(extent)
        axis.add_artist(AnchoredSizeBar(axis.transData, length, f"{length:g} nm",
                                        "lower right", color="yellow", frameon=False,
                                        size_vertical=extent / 100,
                                        fontproperties={"size": 7}, pad=0.3))
        axis.set_title(name, fontsize=9)
    figure.suptitle(f"one held-out aggregate (E sample {index}, θ = "
                    f"({theta.fractal_dimension:g}, {theta.mixing_ratio:g}, "
                    f"{theta.wo3_cluster_size}, {theta.tio2_cluster_size})) under every "
                    f"condition; central {field_nm:g} nm, √counts", fontsize=9)
    return save_png(figure, path, dpi=dpi, bbox_inches=None)
