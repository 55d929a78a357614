"""The main job: STEM images of one sample → θ̂ → digital shadows → structural descriptors.

``characterize`` runs the whole chain of the paper's Fig. 1b–d on the images of one sample:

1. read and check the images (:mod:`hagg_tf.estimation.images`), resample them to the networks'
   pixel size and pad/crop them to their input size;
2. estimate θ̂ = (θ̂_Df, θ̂_ρ, θ̂_0, θ̂_1) with the composite SavedModel, all five networks in one
   graph (:mod:`hagg_tf.export.characterize`, estimators of :mod:`hagg_tf.estimation.estimators`),
   and compare the images and the raw θ̂ with the networks' training domain, with a warning for
   whatever lies outside it (:mod:`hagg_tf.estimation.domain`);
   with its uncertainty: a bootstrap over the images (:mod:`hagg_tf.estimation.uncertainty`;
   the networks' per-image part runs once per image, only the tiny ν-image heads see the
   resamples);
3. draw M digital shadows over θ̂'s uncertainty (shadow k from bootstrap replicate k mod B) or
   from θ̂ alone (each θ clipped into the model's domain, see
   :meth:`ThetaEstimate.shadow_parameters`), with the sample's particle radius distribution
   and particles per aggregate, measured on the images or given
   (:mod:`hagg_tf.estimation.sample_size`), and report the mean ± s.d. of their S_TiO2,
   Z_hetero and Z_total (Sec. 3.4.1; S_TiO2 over the shadows that contain TiO2). The shadows
   are streamed: every shadow's descriptors are kept, the aggregates themselves only for the
   first :data:`~hagg_tf.estimation.shadows.SAVED_SHADOWS`.

``write_outputs`` then writes ``report.json`` and ``report.html`` (the same as a page to look
at), the shadows (``shadows.npz``, native and exact; ``shadows.xyz``, extended XYZ) and a figure
``characterize.png``. What each reported number means, and how accurate it is, is said once in
:mod:`hagg_tf.estimation.quantities`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import platform
import sys
import time
from typing import Any, Optional, Sequence, Union

import numpy as np

from hagg_tf.estimation.domain import (DomainCheck, check_domain, load_training_domain,
                                       refuse_if_cannot_show_aggregate)
from hagg_tf.estimation.estimators import ThetaEstimate, theta_errors
from hagg_tf.estimation.images import (InputError, PreparedImages, StemInput, find_image_files,
                                       load_stem_images, prepare_images)
from hagg_tf.estimation.quantities import (DESCRIPTOR_QUANTITIES, THETA_QUANTITIES,
                                           format_typical_error, quantities_record,
                                           typical_error, unresolved_parameter_warnings)
from hagg_tf.estimation.sample_size import (SampleSize, SampleSizeError, check_radius,
                                           parse_particles, size_for_shadows)
from hagg_tf.estimation.shadows import (DEFAULT_SHADOWS, SAVED_SHADOWS, SHADOW_DESCRIPTORS,
                                        ShadowParameters, check_shadow_count, collect_shadows,
                                        descriptor_arrays, shadow_summary)
from hagg_tf.estimation.uncertainty import (DEFAULT_RESAMPLES, PARAMETER_KEYS, ThetaUncertainty,
                                            check_resamples, estimate_with_uncertainty)
from hagg_tf.jsonsafe import finite_or_none, json_safe
from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.descriptors import Descriptors
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters

#: Format tag of report.json.
REPORT_FORMAT = "hagg_tf characterize report/1"
#: The report's file name in the output folder (written last: its presence means complete).
REPORT_FILENAME = "report.json"
#: Where the digital shadows' θ comes from: θ̂'s bootstrap replicates (shadow k from replicate
#: k mod B, so the descriptors' spread includes θ̂'s uncertainty) or θ̂ alone.
SHADOW_THETA_SOURCES = ("bootstrap", "estimate")


@dataclasses.dataclass
class CharacterizationResult:
    """Everything ``characterize`` found for one sample.

    Attributes:
        estimate: θ̂ with every network's raw output.
        shadow_parameters: the θ the shadows were drawn from (θ̂ made admissible).
        shadows: the first :data:`~hagg_tf.estimation.shadows.SAVED_SHADOWS` digital shadows
            (all of them when there are no more), the ones written to shadows.npz /
            shadows.xyz.
        descriptors: the structural descriptors of every shadow, in order (``shadows[k]`` is
            described by ``descriptors[k]``).
        summary: mean / s.d. / count of every descriptor over the shadows (NaN-aware).
        images: per input image: file, shape, pixel type, pixel size, dose, what was done.
        prepared: the images as the networks saw them (before preprocessing).
        warnings: everything the user should know (resampling, assumed dose, placeholder
            models, crops).
        notes: informational messages (skipped files).
        model: the model used: version directory, metadata (model card included).
        simulated_theta: the θ recorded in the images' metadata when all images are simulated
            from one θ (the shipped examples), else None.
        seed: base seed of the shadows.
        timings: seconds per stage.
        shadow_count: number M of shadows drawn (``len(descriptors)``).
        shadow_restarts: generator restarts summed over all M shadows.
        domain: how the images and raw θ̂ compare with the networks' training domain
            (:func:`hagg_tf.estimation.domain.check_domain`; its warnings are in ``warnings``).
        sample_size: the particle radius distribution and particles per aggregate the shadows
            were drawn with, and where they came from (:mod:`hagg_tf.estimation.sample_size`).
        uncertainty: θ̂'s bootstrap uncertainty (:class:`~hagg_tf.estimation.uncertainty.
            ThetaUncertainty`), None when switched off or the model has no per-image outputs.
        shadow_theta: where the shadows' θ came from, one of :data:`SHADOW_THETA_SOURCES`:
            ``"bootstrap"`` (shadow k from ``uncertainty.shadow_thetas[k mod B]``) or
            ``"estimate"`` (every shadow from ``shadow_parameters``).
    """

    estimate: ThetaEstimate
    shadow_parameters: ModelParameters
    shadows: list[Aggregate]
    descriptors: list[Descriptors]
    summary: dict
    images: list[dict]
    prepared: PreparedImages
    warnings: list[str]
    notes: list[str]
    model: dict
    simulated_theta: Optional[ModelParameters]
    seed: int
    timings: dict
    shadow_count: int
    shadow_restarts: int
    domain: Optional[dict] = None
    sample_size: Optional[SampleSize] = None
    uncertainty: Optional[ThetaUncertainty] = None
    shadow_theta: str = "estimate"

    def report(self) -> dict[str, Any]:
        """JSON-able report (the content of ``report.json``)."""
        card = self.model.get("model_card") or {}
        report = {
            "format": REPORT_FORMAT,
            "theta_hat": self.estimate.as_dict(),
            "theta_hat_rounded": list(self.estimate.theta),
            "estimators": {
                "fractal_dimension": "mean of CNN^Df over the images (Eq. 13)",
                "mixing_ratio": "mean of rho_hat(I): CNN^rho_reg, rounded to 0/1 where "
                                "CNN^rho_class > 0.5 (Eq. 14)",
                "mixing_ratio_regressor_only": "mean of CNN^rho_reg",
                "wo3_cluster_size": "CNN^0 on nu-stacks (mean over the n cyclic nu-subsets, "
                                    "the nu rotations of the stack when n = nu), rounded to "
                                    "the nearest integer (Sec. 2.3.4)",
                "tio2_cluster_size": "CNN^1 on inverse-intensity nu-stacks, likewise "
                                     "(Sec. 2.3.5)",
            },
            "quantities": quantities_record(card),
            "uncertainty": None if self.uncertainty is None else self.uncertainty.as_dict(),
            "shadows": {
                "count": self.shadow_count,
                "saved": len(self.shadows),
                "seed": self.seed,
                "theta_from": self.shadow_theta,
                "theta": self.shadow_parameters.as_dict(),
                "theta_note": _shadow_theta_note(self.shadow_theta, self.uncertainty),
                "descriptors": {SHADOW_DESCRIPTORS.get(name, name): values
                                for name, values in self.summary.items()},
                "restarts": self.shadow_restarts,
            },
            "images": self.images,
            "model": {"path": str(self.model["version_dir"]),
                      "version": self.model["metadata"].get("version"),
                      "image_size": self.model["metadata"].get("image_size"),
                      "num_images": self.model["metadata"].get("num_images"),
                      "pixel_size_nm": self.model["metadata"].get("pixel_size_nm"),
                      "kernel_dtype": self.model["metadata"].get("kernel_dtype"),
                      "model_card": card},
            "warnings": self.warnings,
            "domain": self.domain,
            "notes": self.notes,
            "timings_s": {key: round(value, 3) for key, value in self.timings.items()},
            "versions": _versions(),
        }
        if self.sample_size is not None:
            report["shadows"]["size_distribution"] = self.sample_size.as_dict()
        if self.simulated_theta is not None:
            errors = theta_errors(self.estimate, self.simulated_theta)
            report["simulated_theta"] = self.simulated_theta.as_dict()
            report["error_vs_simulated_theta"] = {key: finite_or_none(value)
                                                  for key, value in errors.items()}
        return report


def _shadow_theta_note(source: str, uncertainty: Optional[ThetaUncertainty]) -> str:
    """What report.json says about the shadows' θ."""
    admissible = ("theta_Df clipped into [1.01, 2.99], theta_rho into [0, 1] and cluster sizes "
                  "to >= 1")
    if source == "bootstrap" and uncertainty is not None:
        return (f"shadow k drawn from bootstrap replicate k mod {uncertainty.resamples} of "
                f"theta_hat (see uncertainty), with {admissible}, so that the descriptors' "
                "spread includes theta_hat's uncertainty; 'theta' is theta_hat made admissible "
                "likewise")
    return f"every shadow drawn from theta_hat with {admissible}"


def _versions() -> dict:
    import hagg_tf

    versions = {"hagg_tf": hagg_tf.__version__, "python": platform.python_version(),
                "numpy": np.__version__}
    if "tensorflow" in sys.modules:
        versions["tensorflow"] = sys.modules["tensorflow"].__version__
    return versions


def is_placeholder(model_card: dict) -> bool:
    """True if the model card marks the networks as placeholders (not the paper-scale ones)."""
    return str(model_card.get("status", "")).lower() == "placeholder"


def placeholder_warning(model_card: dict) -> Optional[str]:
    """One-line warning for placeholder networks, with their measured accuracy, or None."""
    if not is_placeholder(model_card):
        return None
    accuracy = model_card.get("accuracy_summary") or "accuracy not measured"
    return ("PLACEHOLDER networks: " + str(model_card.get("summary", "trained briefly on CPU"))
            + f"; measured: {accuracy}. θ̂ and the shadows only show that the chain runs, not "
              "the paper's accuracy.")


def _simulated_theta(images: Sequence[StemInput]) -> Optional[ModelParameters]:
    thetas = set()
    for image in images:
        params = ((image.metadata or {}).get("aggregate") or {}).get("params")
        if not params:
            return None
        thetas.add((params["fractal_dimension"], params["mixing_ratio"],
                    params["wo3_cluster_size"], params["tio2_cluster_size"]))
    if len(thetas) != 1:
        return None
    return ModelParameters(*thetas.pop())


def _as_inputs(images, pixel_size_nm, electrons_per_pixel, dose):
    """StemInputs (plus warnings and notes) from paths, StemInputs or an array."""
    if isinstance(images, np.ndarray):
        if images.ndim != 3:
            raise InputError(f"an image array must be (n, H, W), got shape {images.shape}")
        if pixel_size_nm is None or electrons_per_pixel is None:
            raise InputError("an image array needs pixel_size_nm and electrons_per_pixel")
        electrons = np.broadcast_to(np.asarray(electrons_per_pixel, np.float64),
                                    (images.shape[0],))
        if not np.all(np.isfinite(images)) or (images < 0).any():
            raise InputError("image array holds NaN, infinite or negative values")
        return [StemInput(f"array[{k}]", np.asarray(image, np.float64), images.dtype.name,
                          float(pixel_size_nm), float(electrons[k]),
                          {"pixel_size_nm": "argument", "electrons_per_pixel": "argument"})
                for k, image in enumerate(images)], [], []
    # A single path first: a str is iterable (its characters) and a Path is not.
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if images and all(isinstance(image, StemInput) for image in images):
        return list(images), [], []
    paths, notes = find_image_files(list(images))
    inputs, warnings = load_stem_images(paths, pixel_size_nm=pixel_size_nm,
                                        electrons_per_pixel=electrons_per_pixel, dose=dose)
    return inputs, warnings, notes


def characterize(images: Union[str, os.PathLike, Sequence, np.ndarray], *, model=None,
                 pixel_size_nm: Optional[float] = None,
                 electrons_per_pixel: Optional[float] = None, dose: Optional[float] = None,
                 shadows: int = DEFAULT_SHADOWS, seed: int = 0, workers: Optional[int] = None,
                 generator_config: Optional[GeneratorConfig] = None,
                 radius_mean_nm: Optional[float] = None, radius_sd_nm: Optional[float] = None,
                 particles=None, progress: bool = False, runner: str = "local",
                 beam_args: Sequence[str] = (),
                 shadow_work_dir: Optional[Union[str, os.PathLike]] = None,
                 resamples: int = DEFAULT_RESAMPLES, shadow_theta: Optional[str] = None
                 ) -> CharacterizationResult:
    """θ̂, digital shadows and their descriptors for the STEM images of one sample.

    Args:
        images: a folder, glob or file (or a list of them) of PNG/TIFF images; a list of
            :class:`StemInput`; or an (n, H, W) array of detector counts (then
            ``pixel_size_nm`` and ``electrons_per_pixel`` are required).
        model: a loaded model (:class:`CharacterizeModel`, or a lighter runtime with the same
            methods), a path to a composite export, or None for the shipped models
            (``saved_models/``, or ``$HAGG_TF_MODELS``).
        pixel_size_nm: pixel size of images without hagg_tf metadata, nm.
        electrons_per_pixel: incident electrons per pixel (8-bit images: grey value of the full
            beam).
        dose: dose in e/Å² for 16-bit images without metadata (default 149 with a warning).
        shadows: number M of digital shadows, 1 to
            :data:`~hagg_tf.estimation.shadows.MAX_SHADOWS`.
        seed: base seed of the shadows and of the bootstrap's resampling.
        workers: processes drawing shadows (None: :func:`~hagg_tf.estimation.shadows.default_shadow_workers`).
        generator_config: settings of the stochastic model for the shadows; given, its radius
            distribution and particle range are used as they are (nothing is estimated).
        radius_mean_nm, radius_sd_nm: mean and s.d. of the shadows' particle radius, nm
            (default: estimated from the images, :mod:`hagg_tf.estimation.sample_size`).
        particles: the shadows' particles per aggregate: a count, ``(min, max)`` or
            ``"min-max"`` (default: estimated from the images). The paper's model:
            ``radius_mean_nm=12, radius_sd_nm=3, particles=(20, 80)``.
        progress: show a progress bar on stderr while drawing more than
            :data:`~hagg_tf.estimation.shadows.PROGRESS_SHADOWS` shadows.
        runner: ``"local"`` (this machine's worker processes) or an Apache Beam runner that
            computes every shadow's descriptors (:func:`~hagg_tf.estimation.beam_shadows.
            beam_shadow_descriptors`, the same values as the local path); the shadows kept for
            the output files are then drawn here.
        beam_args: Beam pipeline options.
        shadow_work_dir: the Beam runner's folder of finished blocks (a rerun resumes from
            it); a runner outside this process needs one its workers share. None: a temporary
            folder.
        resamples: bootstrap resamples B of the images for θ̂'s uncertainty
            (:mod:`hagg_tf.estimation.uncertainty`); 0 switches it off.
        shadow_theta: ``"bootstrap"`` (shadow k from bootstrap replicate k mod B, so that the
            descriptors' spread includes θ̂'s uncertainty), ``"estimate"`` (every shadow from
            θ̂) or None: ``"bootstrap"`` when there is an uncertainty, else ``"estimate"``.

    Returns:
        The result; see :class:`CharacterizationResult`.

    Raises:
        InputError: unusable images or settings (too few, unreadable, colour, NaN, a field of
            view that cannot show an aggregate, …).
        FileNotFoundError: no model found.
    """
    try:
        shadows = check_shadow_count(shadows)
        resamples = check_resamples(resamples)
        if shadow_theta not in (None, *SHADOW_THETA_SOURCES):
            raise ValueError(f"shadow_theta must be one of {', '.join(SHADOW_THETA_SOURCES)}, "
                             f"got {shadow_theta!r}")
        if shadow_theta == "bootstrap" and not resamples:
            raise ValueError("shadows drawn over the bootstrap need resamples > 0")
        check_radius(radius_mean_nm, radius_sd_nm)
        if particles is not None:
            particles = parse_particles(particles)
    except ValueError as error:
        raise InputError(str(error)) from None
    timings = {}
    started = time.perf_counter()
    inputs, warnings, notes = _as_inputs(images, pixel_size_nm, electrons_per_pixel, dose)
    refuse_if_cannot_show_aggregate(inputs)
    timings["read_images"] = time.perf_counter() - started

    started = time.perf_counter()
    if model is None or isinstance(model, (str, os.PathLike)):
        from hagg_tf.estimation.model import load_characterize_model

        model = load_characterize_model(model)
    timings["load_model"] = time.perf_counter() - started
    if len(inputs) < model.num_images:
        raise InputError(f"{len(inputs)} image(s), but the multi-image networks need at least "
                         f"nu = {model.num_images} images of the sample")
    card_warning = placeholder_warning(model.model_card)
    if card_warning:
        warnings.insert(0, card_warning)
    warnings.extend(unresolved_parameter_warnings(model.model_card))

    started = time.perf_counter()
    prepared, prepare_warnings = prepare_images(inputs, model.image_size, model.pixel_size_nm)
    warnings.extend(prepare_warnings)
    notes.extend(prepared.notes)
    timings["prepare_images"] = time.perf_counter() - started

    started = time.perf_counter()
    uncertainty = None
    # Duck-typed models (stand-ins) without the attribute are used through ``estimate``.
    if getattr(model, "has_per_image_outputs", False):
        estimate, uncertainty = estimate_with_uncertainty(
            model, prepared.counts, prepared.electrons_per_pixel, resamples=resamples, seed=seed)
    else:
        estimate = model.estimate(prepared.counts, prepared.electrons_per_pixel)
        if resamples:
            notes.append(f"{model.version_dir}: the model has no per-image outputs "
                         "(signature serving_per_image; exported before it existed): θ̂ without "
                         "a bootstrap uncertainty")
    timings["networks"] = time.perf_counter() - started

    started = time.perf_counter()
    domain = _check_domain(inputs, estimate, model)
    warnings.extend(domain.warnings)
    timings["domain_checks"] = time.perf_counter() - started

    started = time.perf_counter()
    try:
        sample_size = size_for_shadows(inputs, generator_config=generator_config,
                                       radius_mean_nm=radius_mean_nm,
                                       radius_sd_nm=radius_sd_nm, particles=particles)
    except SampleSizeError as error:  # an estimate outside the allowed ranges
        raise InputError(str(error)) from None
    warnings.extend(sample_size.warnings)
    shadow_config = sample_size.generator_config(generator_config)
    timings["sample_size"] = time.perf_counter() - started

    started = time.perf_counter()
    params = estimate.shadow_parameters()
    if params.as_tuple() != estimate.theta:
        warnings.append(f"θ̂ = {format_theta(estimate.theta)} is outside the model's domain; "
                        f"shadows drawn from {format_theta(params.as_tuple())}")
    source = shadow_theta or ("bootstrap" if uncertainty is not None else "estimate")
    if source == "bootstrap" and uncertainty is None:
        warnings.append("the model has no per-image outputs, so there is no bootstrap to draw "
                        "the shadows over: every shadow is drawn from θ̂")
        source = "estimate"
    shadow_params = uncertainty.shadow_thetas if source == "bootstrap" else params
    from hagg_tf.data.beam import is_beam_runner  # the writer behind it is not needed otherwise

    if is_beam_runner(runner):
        aggregates, descriptors, restarts = _beam_shadows(
            shadow_params, shadows, seed, workers, shadow_config, runner, beam_args,
            shadow_work_dir)
    else:
        aggregates, descriptors, restarts = collect_shadows(shadow_params, shadows, seed,
                                                            workers, shadow_config,
                                                            progress=progress)
    if shadows > len(aggregates):
        drawn = "θ_k" if source == "bootstrap" else "θ"
        notes.append(f"shadows.npz and shadows.xyz hold the first {len(aggregates)} of the "
                     f"{shadows} shadows; all {shadows} enter the descriptors (shadow k is "
                     f"sample_aggregate({drawn}, seed, k), so any of them can be drawn again)")
    timings["shadows"] = time.perf_counter() - started

    return CharacterizationResult(
        estimate=estimate, shadow_parameters=params, shadows=aggregates,
        descriptors=descriptors, summary=shadow_summary(descriptors),
        images=describe_inputs(inputs, prepared),
        prepared=prepared, warnings=warnings, notes=notes,
        model={"version_dir": model.version_dir, "metadata": model.metadata,
               "model_card": model.model_card},
        simulated_theta=_simulated_theta(inputs), seed=seed, timings=timings,
        shadow_count=len(descriptors), shadow_restarts=restarts, domain=domain.record,
        sample_size=sample_size, uncertainty=uncertainty, shadow_theta=source)


def describe_inputs(inputs: Sequence[StemInput], prepared: PreparedImages) -> list[dict]:
    """report.json's ``images``: each input's description (:meth:`StemInput.describe`) with
    what :func:`~hagg_tf.estimation.images.prepare_images` did to it (``"prepared"``)."""
    described = []
    for image, changes in zip(inputs, prepared.changes):
        info = image.describe()
        info["prepared"] = changes or ["used as is"]
        described.append(info)
    return described


def _check_domain(inputs: Sequence[StemInput], estimate: ThetaEstimate, model) -> DomainCheck:
    """:func:`check_domain` against the training domain stored beside ``model``; an unreadable
    domain file is a warning, not a failure (the estimate itself does not depend on it), and a
    stand-in model without a folder has no domain."""
    try:
        domain = load_training_domain(model.version_dir)
    except FileNotFoundError:
        domain = None
    except ValueError as error:
        check = check_domain(inputs, estimate, None, model_dir=model.version_dir)
        check.warnings[0] = f"{error}: the images were not compared with the training images"
        return check
    return check_domain(inputs, estimate, domain, network_pixel_size_nm=model.pixel_size_nm,
                        model_dir=model.version_dir)


def _beam_shadows(params: ShadowParameters, shadows: int, seed: int, workers: Optional[int],
                  generator_config: Optional[GeneratorConfig], runner: str,
                  beam_args: Sequence[str], work_dir
                  ) -> tuple[list[Aggregate], list[Descriptors], int]:
    """:func:`collect_shadows` with the descriptors computed on a Beam runner.

    Only the first :data:`SAVED_SHADOWS` aggregates are needed as aggregates (for the output
    files); they are drawn here, and every shadow's descriptors come from the pipeline. With
    one θ per shadow (``params`` a sequence, see
    :func:`~hagg_tf.estimation.beam_shadows.shadow_jobs`), the pipeline gets one job per
    distinct θ holding its shadows' indices: the same aggregates, so the same descriptors.
    """
    from hagg_tf.estimation.beam_shadows import beam_shadow_descriptors, merge_jobs, shadow_jobs
    from hagg_tf.model.generator import GenerationError

    kept, _, _ = collect_shadows(params, min(shadows, SAVED_SHADOWS), seed, workers,
                                 generator_config)
    jobs = shadow_jobs(params, shadows, seed)
    outcomes = beam_shadow_descriptors(jobs, None if work_dir is None else str(work_dir),
                                       runner=runner, beam_args=beam_args,
                                       config=generator_config)
    error = next((outcome.error for outcome in outcomes if outcome.error), None)
    if error:
        raise GenerationError(error)
    descriptors, restarts = merge_jobs(jobs, outcomes, shadows)
    return kept, descriptors, restarts


def collapse_warnings(warnings: Sequence[str]) -> list[str]:
    """Merges per-image warnings that say the same thing ("a.png: msg", "b.png: msg" → one
    line naming the count and the first and last image), keeping the order of first
    appearance."""
    groups, order = {}, []
    for warning in warnings:
        name, separator, message = warning.partition(": ")
        key = message if separator and "." in name and " " not in name else warning
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(name if key == message else None)
    lines = []
    for key in order:
        names = groups[key]
        if len(names) == 1 or names[0] is None:
            lines.append(key if names[0] is None else f"{names[0]}: {key}")
        else:
            lines.append(f"{len(names)} images ({names[0]} … {names[-1]}): {key}")
    return lines


def format_known_theta(params: ModelParameters) -> str:
    """A θ given by the user or metadata, as written there: ``(1.8, 0.5, 3, 2)``."""
    return "(" + ", ".join(f"{value:g}" for value in params.as_tuple()) + ")"


def format_theta(theta) -> str:
    """An estimated θ (θ_Df, θ_ρ, θ_0, θ_1) for text: ``(1.812, 0.473, 3, 2)``."""
    df, rho, size0, size1 = theta
    return f"({df:.3f}, {rho:.3f}, {size0:g}, {size1:g})"


def write_outputs(result: CharacterizationResult, output_dir: Union[str, os.PathLike], *,
                  figure: bool = True, xyz: bool = True,
                  extra_report: Optional[dict] = None) -> dict[str, pathlib.Path]:
    """Writes the report, the shadows and the figure into ``output_dir``.

    Files: ``report.json``; ``report.html`` (the report as a self-contained page to look at,
    :mod:`hagg_tf.estimation.html_report`); ``shadows.npz`` (native aggregate file, exact)
    and ``shadows.xyz`` (extended XYZ, if ``xyz``) with ``result.shadows``, the first
    :data:`~hagg_tf.estimation.shadows.SAVED_SHADOWS` shadows; ``characterize.png`` (if
    ``figure`` and matplotlib is installed, else a warning is added to the report).
    ``extra_report`` entries are added to report.json's top level (e.g. a batch run's
    settings, :mod:`hagg_tf.estimation.batch`).

    Returns:
        ``{"report": path, "shadows": path, ...}`` of the files written.
    """
    from hagg_tf.model.io import export_xyz, save_aggregates, write_json_atomic

    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = {"shadows": save_aggregates(output_dir / "shadows.npz", result.shadows)}
    if xyz:
        written["shadows_xyz"] = export_xyz(output_dir / "shadows.xyz", result.shadows)
    if figure:
        try:
            written["figure"] = plot_characterization(result, output_dir / "characterize.png")
        except ImportError:
            result.warnings.append("no figure: matplotlib is not installed "
                                   "(pip install -e '.[plot]')")
    report = json_safe(result.report())
    report.update(extra_report or {})
    report["files"] = {key: path.name for key, path in written.items()}
    from hagg_tf.estimation.html_report import HTML_REPORT_NAME, write_html_report

    written["html"] = write_html_report(result, output_dir / HTML_REPORT_NAME, report)
    report["files"]["html"] = written["html"].name
    written["report"] = write_json_atomic(output_dir / REPORT_FILENAME, report, indent=2,
                                          ensure_ascii=False)
    return written


def plot_characterization(result: CharacterizationResult, path: Union[str, os.PathLike]
                          ) -> pathlib.Path:
    """Writes :func:`characterization_figure` to ``path`` (PNG).

    Raises:
        ImportError: matplotlib is missing.
    """
    figure = characterization_figure(result)
    path = pathlib.Path(path)
    figure.savefig(path, dpi=90)
    return path


#: Largest side of a contact-sheet thumbnail, pixels (a 512-px image is shown at half size).
THUMBNAIL_SIDE = 256


def characterization_figure(result: CharacterizationResult):
    """Figure: every input image as the networks saw it (a contact sheet with a scale bar in nm
    and each image's D̂_f and ρ̂), one shadow projected along the beam, and histograms of S_TiO2,
    Z_hetero and Z_total over the shadows with their means marked.

    Built on a bare :class:`matplotlib.figure.Figure` (no pyplot, no global backend change),
    with fixed margins in inches (:data:`FIGURE_MARGINS_IN`) rather than a layout engine:
    constrained layout measured every text of the figure twice and took more time than all the
    drawing (docs/learning.md, "Runtimes of hagg-characterize").

    Returns:
        The figure.

    Raises:
        ImportError: matplotlib is missing.
    """
    from matplotlib.figure import Figure

    estimate = result.estimate
    counts = result.prepared.counts
    count = len(counts)
    columns = min(count, max(6, math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    width = max(13.0, 2.2 * columns)

    theta = ", ".join(f"{quantity.tex} = {format_value(value)}"
                      for quantity, value in zip(THETA_QUANTITIES, estimate.theta))
    title = r"$\hat\theta$ from " + f"{estimate.num_images} images: {theta}"
    if result.simulated_theta is not None:
        title += ("; simulated with " + r"$\theta$ = "
                  + format_known_theta(result.simulated_theta))
    if is_placeholder(result.model.get("model_card") or {}):
        title += "\nPLACEHOLDER networks (trained briefly on CPU): numbers show the chain, " \
                 "not the paper's accuracy"
    margin = FIGURE_MARGINS_IN
    title_height = margin["title_line"] * (title.count("\n") + 1)
    sheet_height = margin["sheet_title"] + rows * margin["thumbnail_row"]
    height = title_height + sheet_height + margin["bottom_row"]
    figure = Figure(figsize=(width, height))
    figure.suptitle(title, fontsize=11, y=1.0 - margin["edge"] / height, va="top")
    sheet_top = 1.0 - title_height / height
    figure.text(0.5, sheet_top, f"the {count} images as the networks saw them ({counts.shape[1]}"
                f"×{counts.shape[2]} px); per image: " + r"$\hat D_f$, $\hat\rho$",
                fontsize=10, ha="center", va="top")
    sheet = figure.add_gridspec(
        rows, columns, left=margin["edge"] / width, right=1.0 - margin["edge"] / width,
        top=sheet_top - (margin["sheet_title"] + margin["thumbnail_title"]) / height,
        bottom=margin["bottom_row"] / height,
        wspace=0.1, hspace=margin["thumbnail_title"] / (margin["thumbnail_row"]
                                                         - margin["thumbnail_title"]))
    for number in range(count):
        axis = figure.add_subplot(sheet[number // columns, number % columns])
        axis.set_axis_off()
        _plot_thumbnail(axis, result, number)

    panels = figure.add_gridspec(
        1, 4, left=margin["panel_left"] / width, right=1.0 - margin["edge"] / width,
        top=(margin["bottom_row"] - margin["panel_title"]) / height,
        bottom=margin["panel_bottom"] / height, wspace=0.3)
    axes = [figure.add_subplot(panels[0, column]) for column in range(4)]
    _plot_shadow(axes[0], result)
    values = descriptor_arrays(result.descriptors)
    for axis, quantity in zip(axes[1:], DESCRIPTOR_QUANTITIES):
        data = values[quantity.key][np.isfinite(values[quantity.key])]
        stats = result.summary[quantity.key]
        if data.size:
            axis.hist(data, bins=min(30, max(5, data.size // 4)), color="tab:gray")
        if stats["mean"] is not None:
            axis.axvline(stats["mean"], color="tab:red", linewidth=1.5,
                         label=f"mean {format_stat(stats['mean'])}")
            axis.legend(fontsize=8, loc="upper right")
        axis.set_title(f"{quantity.tex} = {format_stat(stats['mean'])} ± "
                       f"{format_stat(stats['std'])} (s.d.), {stats['count']} shadows",
                       fontsize=9, y=TITLE_Y)
        axis.set_xlabel(_tex_formulas(f"{quantity.tex}, {quantity.name}:\n{quantity.meaning}"),
                        fontsize=8)
        axis.set_ylabel("shadows")
    return figure


#: Height of the panels' titles, in axes units: where matplotlib puts them anyway (none of the
#: panels has ticks on top), given explicitly so that it does not measure every tick label of
#: every panel to find out (a third of the figure's drawing time).
TITLE_Y = 1.0
#: Fixed parts of :func:`characterization_figure`'s layout, inches: the gap at the figure's
#: edges, one line of the main title, the contact sheet's title, a row of thumbnails (its
#: two-line title included), the bottom row of panels (shadow and histograms, their titles and
#: two-line axis labels included), and within that row the room above the axes for two title
#: lines, below them for tick labels and the two-line x label, and left of them for the y label.
FIGURE_MARGINS_IN = {"edge": 0.1, "title_line": 0.35, "sheet_title": 0.3, "thumbnail_row": 2.5,
                     "thumbnail_title": 0.32, "bottom_row": 4.0, "panel_title": 0.5,
                     "panel_bottom": 0.75, "panel_left": 0.75}


def _plot_thumbnail(axis, result: CharacterizationResult, number: int) -> None:
    """One image of the contact sheet, in nm, with a scale bar and its per-image estimates."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    image = result.prepared.counts[number]
    pixel = (result.model["metadata"].get("pixel_size_nm")
             or result.images[number]["pixel_size_nm"])
    step = max(1, math.ceil(max(image.shape) / THUMBNAIL_SIDE))
    high = float(np.percentile(image, 99.8)) or float(image.max()) or 1.0
    field = (image.shape[1] * pixel, image.shape[0] * pixel)
    axis.imshow(image[::step, ::step], cmap="gray", vmin=0, vmax=high,
                extent=(0.0, field[0], field[1], 0.0), interpolation="antialiased")
    length = scale_bar_length(field[0])
    axis.add_artist(AnchoredSizeBar(axis.transData, length, f"{length:g} nm", "lower right",
                                    color="white", frameon=False, size_vertical=field[1] / 120,
                                    fontproperties={"size": 7}, pad=0.3))
    estimate = result.estimate
    name = pathlib.Path(result.images[number]["path"]).name.replace("$", r"\$")
    axis.set_title(f"{name}\n" + r"$\hat D_f$"
                   + f" {estimate.fractal_dimension_per_image[number]:.2f}, " + r"$\hat\rho$"
                   + f" {estimate.mixing_ratio_per_image[number]:.2f}", fontsize=7, y=TITLE_Y)


def _plot_shadow(axis, result: CharacterizationResult) -> None:
    """Shadow 0 projected along the beam (z), far particles drawn first."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    shadow = result.shadows[0]
    colours = np.where(shadow.labels == 0, "tab:blue", "tab:orange")
    order = np.argsort(shadow.positions[:, 2])  # far particles first, near ones on top
    patches = [Circle((shadow.positions[k, 0], shadow.positions[k, 1]), shadow.radii[k])
               for k in order]
    axis.add_collection(PatchCollection(patches, facecolors=colours[order], edgecolors="k",
                                        linewidths=0.3, alpha=0.9))
    extent = float(np.max(np.abs(shadow.positions[:, :2]) + shadow.radii[:, None])) * 1.05
    center = shadow.positions[:, :2].mean(axis=0)
    axis.set_xlim(center[0] - extent, center[0] + extent)
    axis.set_ylim(center[1] - extent, center[1] + extent)
    axis.set_aspect("equal")
    axis.set_xlabel("x / nm")
    axis.set_ylabel("y / nm")
    axis.set_title(f"digital shadow 0 of {result.shadow_count} ({shadow.size} particles)\n"
                   + _tex_formulas("WO3 blue, TiO2 orange"), fontsize=9, y=TITLE_Y)


def scale_bar_length(field_nm: float) -> float:
    """A round length (1, 2 or 5 × 10^k nm) of at most a quarter of the field of view."""
    target = field_nm / 4.0
    power = 10.0 ** math.floor(math.log10(target))
    return max(factor * power for factor in (1.0, 2.0, 5.0) if factor * power <= target)


def _tex_formulas(text: str) -> str:
    """WO3 and TiO2 with their subscripts in mathtext."""
    return text.replace("WO3", r"WO$_3$").replace("TiO2", r"TiO$_2$")


def format_stat(value) -> str:
    """A mean or s.d. over the shadows with three decimals; ``n/a`` for None or NaN."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def format_value(value) -> str:
    """θ̂ entries: cluster sizes as integers, the rest with three decimals."""
    return str(value) if isinstance(value, (int, np.integer)) else f"{value:.3f}"


def format_uncertainty(uncertainty: Optional[ThetaUncertainty], key: str) -> str:
    """`` ± 0.021 (68 %: 1.796–1.838)`` for θ̂'s ``key``: bootstrap s.d. and 68 % percentile
    interval (cluster sizes: `` ± 0.46 (68 %: 3–4)``); empty without an uncertainty."""
    if uncertainty is None or key not in PARAMETER_KEYS:
        return ""
    sd = uncertainty.sd(key)
    low, high = uncertainty.interval(key, 68)
    if isinstance(low, int):
        return f" ± {sd:.2f} (68 %: {low}–{high})"
    return f" ± {sd:.3f} (68 %: {low:.3f}–{high:.3f})"


def format_summary(result: CharacterizationResult) -> str:
    """The console summary printed by ``hagg-characterize``: one plain line per reported
    quantity (name, symbol, value, typical error or spread, meaning; see
    :mod:`hagg_tf.estimation.quantities`)."""
    estimate = result.estimate
    card = result.model.get("model_card") or {}
    names = [quantity.name for quantity in THETA_QUANTITIES + DESCRIPTOR_QUANTITIES]
    symbols = [quantity.symbol for quantity in THETA_QUANTITIES + DESCRIPTOR_QUANTITIES]
    name_width, symbol_width = max(map(len, names)), max(map(len, symbols))
    rows = []
    for quantity, value in zip(THETA_QUANTITIES, estimate.theta):
        rows.append((quantity, format_value(value) + format_uncertainty(result.uncertainty,
                                                                         quantity.key),
                     format_typical_error(typical_error(quantity.key, card)), ""))
    shadow_rows = []
    for quantity in DESCRIPTOR_QUANTITIES:
        stats = result.summary[quantity.key]
        extra = ""
        if quantity.key == "tio2_cluster_size" and stats["count"] < result.shadow_count:
            extra = f" ({stats['count']} of {result.shadow_count} shadows contain TiO2)"
        shadow_rows.append((quantity, format_stat(stats["mean"]),
                            f"spread ±{format_stat(stats['std'])} (s.d.)", extra))
    value_width = symbol_width + 3 + max(len(row[1]) for row in rows + shadow_rows)
    error_width = max(len(row[2]) for row in rows + shadow_rows)

    def line(row):
        quantity, value, error, extra = row
        equation = f"{quantity.symbol} = {value}"
        return (f"  {quantity.name:<{name_width}}  {equation:<{value_width}}  "
                f"{error:<{error_width}}  {quantity.meaning}{extra}")

    lines = [f"Estimated from the {estimate.num_images} images: θ̂, the parameters of the 3D "
             "model of the aggregates"]
    lines.extend(line(row) for row in rows)
    accuracy = card.get("accuracy") or {}
    if any(typical_error(quantity.key, card) for quantity in THETA_QUANTITIES):
        samples = accuracy.get("groups_of_nu")
        lines.append("  (typical error: mean absolute error on "
                     + (f"{samples} " if samples else "")
                     + "simulated test samples; sizes: how often exact / within ±1)")
    if result.uncertainty is not None:
        lines.append(f"  (± s.d. and 68 % interval of θ̂ over {result.uncertainty.resamples} "
                     "bootstrap resamples of the images: how much θ̂ would change with other "
                     "images of the sample; the typical error is the networks' own)")
    if result.simulated_theta is not None:
        lines.append("  (the images' metadata: simulated with θ = "
                     f"{format_known_theta(result.simulated_theta)})")
    if result.sample_size is not None:
        lines.append(f"Particles of the digital shadows: {result.sample_size.describe()}")
    if result.shadow_theta == "bootstrap" and result.uncertainty is not None:
        lines.append(f"{result.shadow_count} digital shadows, new aggregates drawn over θ̂'s "
                     f"uncertainty (shadow k from bootstrap replicate k mod "
                     f"{result.uncertainty.resamples}; seed {result.seed}); mean over the "
                     "shadows:")
    else:
        lines.append(f"{result.shadow_count} digital shadows, new aggregates drawn from θ = "
                     f"{format_theta(result.shadow_parameters.as_tuple())} (seed "
                     f"{result.seed}); mean over the shadows:")
    lines.extend(line(row) for row in shadow_rows)
    return "\n".join(lines)
