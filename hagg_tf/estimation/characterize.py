"""The main job: STEM images of one sample → θ̂ → digital shadows → structural descriptors.

``characterize`` runs the whole chain of the paper's Fig. 1b–d on the images of one sample:

1. read and check the images (:mod:`hagg_tf.estimation.images`), resample them to the networks'
   pixel size and pad/crop them to their input size;
2. estimate θ̂ = (θ̂_Df, θ̂_ρ, θ̂_0, θ̂_1) with the composite SavedModel, all five networks in one
   graph (:mod:`hagg_tf.export.characterize`, estimators of :mod:`hagg_tf.estimation.estimators`);
3. draw M digital shadows from θ̂ (clipped into the model's domain, see
   :meth:`ThetaEstimate.shadow_parameters`) and report the mean ± s.d. of their S_TiO2,
   Z_hetero and Z_total (Sec. 3.4.1; S_TiO2 over the shadows that contain TiO2).

``write_outputs`` then writes ``report.json``, the shadows (``shadows.npz``, native and exact;
``shadows.xyz``, extended XYZ) and a figure ``characterize.png``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import platform
import time
from typing import Any, Optional, Sequence, Union

import numpy as np

from hagg_tf.estimation.estimators import ThetaEstimate, finite_or_none, theta_errors
from hagg_tf.estimation.images import (InputError, PreparedImages, StemInput, find_image_files,
                                       load_stem_images, prepare_images)
from hagg_tf.estimation.shadows import (DEFAULT_SHADOWS, SHADOW_DESCRIPTORS, descriptor_arrays,
                                        draw_shadows, shadow_summary)
from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.descriptors import Descriptors
from hagg_tf.model.parameters import GeneratorConfig, ModelParameters

#: Format tag of report.json.
REPORT_FORMAT = "hagg_tf characterize report/1"


@dataclasses.dataclass
class CharacterizationResult:
    """Everything ``characterize`` found for one sample.

    Attributes:
        estimate: θ̂ with every network's raw output.
        shadow_parameters: the θ the shadows were drawn from (θ̂ made admissible).
        shadows: the digital shadows.
        descriptors: their structural descriptors (same order).
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
                "wo3_cluster_size": "CNN^0 on nu-stacks (mean over the cyclic nu-subsets when "
                                    "n > nu), rounded to the nearest integer (Sec. 2.3.4)",
                "tio2_cluster_size": "CNN^1 on inverse-intensity nu-stacks, likewise "
                                     "(Sec. 2.3.5)",
            },
            "shadows": {
                "count": len(self.shadows),
                "seed": self.seed,
                "theta": self.shadow_parameters.as_dict(),
                "theta_note": "theta_hat with theta_Df clipped into [1.01, 2.99], theta_rho "
                              "into [0, 1] and cluster sizes to >= 1",
                "descriptors": {SHADOW_DESCRIPTORS.get(name, name): values
                                for name, values in self.summary.items()},
                "restarts": int(sum(aggregate.restarts for aggregate in self.shadows)),
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
            "notes": self.notes,
            "timings_s": {key: round(value, 3) for key, value in self.timings.items()},
            "versions": _versions(),
        }
        if self.simulated_theta is not None:
            errors = theta_errors(self.estimate, self.simulated_theta)
            report["simulated_theta"] = self.simulated_theta.as_dict()
            report["error_vs_simulated_theta"] = {key: finite_or_none(value)
                                                  for key, value in errors.items()}
        return report


def _versions() -> dict:
    import hagg_tf

    versions = {"hagg_tf": hagg_tf.__version__, "python": platform.python_version(),
                "numpy": np.__version__}
    import sys
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
    if images and all(isinstance(image, StemInput) for image in images):
        return list(images), [], []
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    paths, notes = find_image_files(list(images))
    inputs, warnings = load_stem_images(paths, pixel_size_nm=pixel_size_nm,
                                        electrons_per_pixel=electrons_per_pixel, dose=dose)
    return inputs, warnings, notes


def characterize(images: Union[str, os.PathLike, Sequence, np.ndarray], *, model=None,
                 pixel_size_nm: Optional[float] = None,
                 electrons_per_pixel: Optional[float] = None, dose: Optional[float] = None,
                 shadows: int = DEFAULT_SHADOWS, seed: int = 0, workers: Optional[int] = None,
                 generator_config: Optional[GeneratorConfig] = None) -> CharacterizationResult:
    """θ̂, digital shadows and their descriptors for the STEM images of one sample.

    Args:
        images: a folder, glob or file (or a list of them) of PNG/TIFF images; a list of
            :class:`StemInput`; or an (n, H, W) array of detector counts (then
            ``pixel_size_nm`` and ``electrons_per_pixel`` are required).
        model: a :class:`CharacterizeModel`, a path to a composite export, or None for the
            shipped models (``saved_models/``, or ``$HAGG_TF_MODELS``).
        pixel_size_nm: pixel size of images without hagg_tf metadata, nm.
        electrons_per_pixel: incident electrons per pixel (8-bit images: grey value of the full
            beam).
        dose: dose in e/Å² for 16-bit images without metadata (default 149 with a warning).
        shadows: number M of digital shadows.
        seed: base seed of the shadows.
        workers: processes drawing shadows (None: one up to 200 shadows, else all cores).
        generator_config: settings of the stochastic model for the shadows.

    Returns:
        The result; see :class:`CharacterizationResult`.

    Raises:
        InputError: unusable images or settings (too few, unreadable, colour, NaN, …).
        FileNotFoundError: no model found.
    """
    from hagg_tf.estimation.model import CharacterizeModel

    timings = {}
    started = time.perf_counter()
    inputs, warnings, notes = _as_inputs(images, pixel_size_nm, electrons_per_pixel, dose)
    timings["read_images"] = time.perf_counter() - started

    started = time.perf_counter()
    if not isinstance(model, CharacterizeModel):
        model = CharacterizeModel(model)
    timings["load_model"] = time.perf_counter() - started
    if len(inputs) < model.num_images:
        raise InputError(f"{len(inputs)} image(s), but the multi-image networks need at least "
                         f"nu = {model.num_images} images of the sample")
    card_warning = placeholder_warning(model.model_card)
    if card_warning:
        warnings.insert(0, card_warning)

    started = time.perf_counter()
    prepared, prepare_warnings = prepare_images(inputs, model.image_size, model.pixel_size_nm)
    warnings.extend(prepare_warnings)
    timings["prepare_images"] = time.perf_counter() - started

    started = time.perf_counter()
    estimate = model.estimate(prepared.counts, prepared.electrons_per_pixel)
    timings["networks"] = time.perf_counter() - started

    started = time.perf_counter()
    params = estimate.shadow_parameters()
    if params.as_tuple() != estimate.theta:
        warnings.append(f"θ̂ = {_format_theta(estimate.theta)} is outside the model's domain; "
                        f"shadows drawn from {_format_theta(params.as_tuple())}")
    aggregates, descriptors = draw_shadows(params, shadows, seed, workers, generator_config)
    timings["shadows"] = time.perf_counter() - started

    image_info = []
    for image, changes in zip(inputs, prepared.changes):
        info = image.describe()
        info["prepared"] = changes or ["used as is"]
        image_info.append(info)
    return CharacterizationResult(
        estimate=estimate, shadow_parameters=params, shadows=aggregates,
        descriptors=descriptors, summary=shadow_summary(descriptors), images=image_info,
        prepared=prepared, warnings=warnings, notes=notes,
        model={"version_dir": model.version_dir, "metadata": model.metadata,
               "model_card": model.model_card},
        simulated_theta=_simulated_theta(inputs), seed=seed, timings=timings)


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


def _format_theta(theta) -> str:
    df, rho, size0, size1 = theta
    return f"({df:.3f}, {rho:.3f}, {size0:g}, {size1:g})"


def _json_default(value):
    if isinstance(value, (np.floating,)):
        return finite_or_none(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pathlib.Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value


def write_outputs(result: CharacterizationResult, output_dir: Union[str, os.PathLike], *,
                  figure: bool = True, xyz: bool = True) -> dict[str, pathlib.Path]:
    """Writes the report, the shadows and the figure into ``output_dir``.

    Files: ``report.json``; ``shadows.npz`` (native aggregate file, exact);
    ``shadows.xyz`` (extended XYZ, if ``xyz``); ``characterize.png`` (if ``figure`` and
    matplotlib is installed, else a warning is added to the report).

    Returns:
        ``{"report": path, "shadows": path, ...}`` of the files written.
    """
    from hagg_tf.model.io import atomic_write, export_xyz, save_aggregates

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
    report = _nan_to_none(result.report())
    report["files"] = {key: path.name for key, path in written.items()}
    text = json.dumps(report, indent=2, default=_json_default, ensure_ascii=False) + "\n"
    written["report"] = atomic_write(output_dir / "report.json",
                                     lambda stream: stream.write(text.encode()))
    return written


def plot_characterization(result: CharacterizationResult, path: Union[str, os.PathLike]
                          ) -> pathlib.Path:
    """Figure: two input images with their per-image estimates, one shadow projected along the
    beam, and histograms of S_TiO2, Z_hetero, Z_total over the shadows.

    Raises:
        ImportError: matplotlib is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    estimate = result.estimate
    figure, axes = plt.subplots(2, 3, figsize=(13, 8.5))
    counts = result.prepared.counts
    for column in range(2):
        axis = axes[0, column]
        axis.set_axis_off()
        if column >= len(counts):
            continue
        image = counts[column]
        high = np.percentile(image, 99.8) or image.max() or 1.0
        axis.imshow(image, cmap="gray", vmin=0, vmax=high)
        axis.set_title(f"{pathlib.Path(result.images[column]['path']).name}\n"
                       f"D̂f = {estimate.fractal_dimension_per_image[column]:.3f}, "
                       f"ρ̂ = {estimate.mixing_ratio_per_image[column]:.3f}", fontsize=9)
    axis = axes[0, 2]
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
    axis.set_title(f"digital shadow 0 of {len(result.shadows)} (N = {shadow.size}; "
                   "WO3 blue, TiO2 orange)", fontsize=9)
    values = descriptor_arrays(result.descriptors)
    for column, (name, symbol) in enumerate(SHADOW_DESCRIPTORS.items()):
        axis = axes[1, column]
        data = values[name][np.isfinite(values[name])]
        stats = result.summary[name]
        if data.size:
            axis.hist(data, bins=min(30, max(5, data.size // 4)), color="tab:gray")
        mean, std = stats["mean"], stats["std"]
        axis.set_title(f"{symbol}: {_format_stat(mean)} ± {_format_stat(std)} "
                       f"({stats['count']} shadows)", fontsize=10)
        axis.set_xlabel(symbol)
        axis.set_ylabel("shadows")
    theta = estimate.theta
    title = (f"θ̂ = (θ_Df {theta[0]:.3f}, θ_ρ {theta[1]:.3f}, θ_0 {theta[2]}, θ_1 {theta[3]}) "
             f"from {estimate.num_images} images")
    if result.simulated_theta is not None:
        truth = result.simulated_theta
        title += (f"; simulated θ = ({truth.fractal_dimension:g}, {truth.mixing_ratio:g}, "
                  f"{truth.wo3_cluster_size}, {truth.tio2_cluster_size})")
    if is_placeholder(result.model.get("model_card") or {}):
        title += "\nPLACEHOLDER networks (trained briefly on CPU): numbers show the chain, " \
                 "not the paper's accuracy"
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path = pathlib.Path(path)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _format_stat(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def format_summary(result: CharacterizationResult) -> str:
    """The console summary printed by ``hagg-characterize``."""
    estimate = result.estimate
    lines = []
    per_df = estimate.fractal_dimension_per_image
    lines.append("θ̂ (paper Sec. 2.3):")
    lines.append(f"  θ_Df = {estimate.fractal_dimension:.3f}   mean of CNN^Df over "
                 f"{estimate.num_images} images (per image {per_df.min():.3f}–{per_df.max():.3f})")
    lines.append(f"  θ_ρ  = {estimate.mixing_ratio:.3f}   with CNN^ρ_class "
                 f"({estimate.homogeneous_images} of {estimate.num_images} images called "
                 f"homogeneous); regressor only {estimate.mixing_ratio_regressor_only:.3f}")
    subsets = len(estimate.wo3_cluster_size_per_subset)
    subset_text = "one ν-stack" if subsets == 1 else f"mean over {subsets} cyclic ν-stacks"
    lines.append(f"  θ_0  = {estimate.wo3_cluster_size}       CNN^0 raw "
                 f"{estimate.wo3_cluster_size_raw:.3f} ({subset_text})")
    lines.append(f"  θ_1  = {estimate.tio2_cluster_size}       CNN^1 raw "
                 f"{estimate.tio2_cluster_size_raw:.3f} ({subset_text}, inverse intensities)")
    if result.simulated_theta is not None:
        truth = result.simulated_theta
        lines.append(f"  (the images' metadata: simulated with θ = ({truth.fractal_dimension:g}, "
                     f"{truth.mixing_ratio:g}, {truth.wo3_cluster_size}, "
                     f"{truth.tio2_cluster_size}))")
    params = result.shadow_parameters
    lines.append(f"digital shadows: {len(result.shadows)} aggregates from θ = "
                 f"({params.fractal_dimension:.3f}, {params.mixing_ratio:.3f}, "
                 f"{params.wo3_cluster_size}, {params.tio2_cluster_size}), seed {result.seed}")
    for name, symbol in SHADOW_DESCRIPTORS.items():
        stats = result.summary[name]
        extra = (f"   ({stats['count']} of {len(result.shadows)} shadows contain TiO2)"
                 if name == "tio2_cluster_size" else "")
        lines.append(f"  {symbol:<8} = {_format_stat(stats['mean'])} ± "
                     f"{_format_stat(stats['std'])}{extra}")
    return "\n".join(lines)
