"""Does the input lie within what the networks know? Out-of-domain checks of ``characterize``.

The networks were trained on simulated images of one kind (the paper preset: vacuum around the
aggregate, no support film, no detector offset or read noise, focal plane through the centre
of mass, 1.2 nm pixels, whole aggregates in a 614 nm field of view) and on θ from Table 2.
Outside that domain they still return numbers, and nothing in the numbers says that they are
wrong (issue 10: a background with 1 % of the peak count gave θ̂_0 = 11–15). So ``characterize``
compares every input with the **training domain**, the ranges of the same statistics over
the training database, and warns, naming the images, the statistic, its value and the
training range. Every image is measured as the networks see it: resampled to their pixel
size (not padded), as an intensity p = counts / electrons per pixel, a fraction of the beam.

* **background level** (per image): median of the outer
  :data:`~hagg_tf.estimation.images.BACKGROUND_FRAME`-pixel frame
  (:func:`~hagg_tf.estimation.images.background_level`);
* **background noise** (per image): s.d. of p on the quietest of the frame's four sides, so
  that an aggregate touching one side does not count as noise;
* **width of the sharpest edges** (per sample: the median over its images): at the edge pixels
  (smoothed p between 40 and 60 % of its maximum over :data:`EDGE_WINDOW_PX` pixels), that
  maximum over the gradient, nm, at the :data:`EDGE_PERCENTILE`-th percentile; blur (focus,
  probe, drift) widens it;
* **pixel size** (per image): only pixels coarser than the training images' warn (finer ones
  are anti-aliased by the resampling);
* **border cut** (per image): length of the aggregate on the outermost rows and columns, nm,
  the aggregate being p smoothed over :data:`SMOOTHING_SIGMA_PX` px above the background by
  :data:`OUTLINE_THRESHOLD` (or by :data:`OUTLINE_NOISE_MULTIPLE` s.d. of the smoothed
  background where that is more); **wider than the field** where it reaches opposite borders
  or covers the whole frame (:data:`FRAME_STRUCTURE`);

and the networks' raw θ̂ (θ̂_Df, θ̂_ρ, θ̂_0 and θ̂_1 before rounding and clipping) against the
θ they were trained on, widened by half a grid step (outside: the networks extrapolate).

The training domain is measured by :func:`measure_training_domain` (over rendered samples of
a preset, whole θ groups of ν images each, or over a database directory) and stored as
``training_domain.json`` beside the composite model (:func:`write_training_domain`,
:func:`load_training_domain`). A model without one is run with a warning that no domain is
known; θ̂ is then checked against Table 2.

Images that cannot show an aggregate at all, whatever the networks, are refused
(:func:`refuse_if_cannot_show_aggregate`): a field of view below
:data:`MINIMUM_FIELD_OF_VIEW_NM`, e.g. an atomic-resolution image.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from hagg_tf.estimation.estimators import ThetaEstimate
from hagg_tf.estimation.images import (BACKGROUND_FRAME, PIXEL_SIZE_TOLERANCE, InputError,
                                       StemInput, background_level, resample)
from hagg_tf.model.io import read_json_record
from hagg_tf.model.parameters import (TABLE2_CLUSTER_SIZES, TABLE2_FRACTAL_DIMENSIONS,
                                      TABLE2_MIXING_RATIOS)

#: The training domain's file in a composite model's version directory.
TRAINING_DOMAIN_FILENAME = "training_domain.json"
#: Format tag of that file.
TRAINING_DOMAIN_FORMAT = "hagg_tf training domain/1"
#: θ groups rendered by :func:`measure_training_domain` from a preset (ν images each).
DEFAULT_DOMAIN_GROUPS = 60

#: Smallest field of view (shorter side, nm) that can show an aggregate: the smallest of the 16
#: real TiO2–WO3 aggregates measured for issue 10 (EDX maps of the Bremen study) spans 55 nm,
#: and a single primary particle of the model is 24 ± 6 nm wide.
MINIMUM_FIELD_OF_VIEW_NM = 50.0
#: Pixels finer than this resolve the atomic columns of TiO2 and WO3 (lattice spacings
#: 0.2–0.4 nm): named in the refusal, since such an image is a lattice image, not an aggregate's.
ATOMIC_RESOLUTION_PIXEL_NM = 0.1

#: Gaussian smoothing (σ, pixels at the networks' pixel size) before edges and the outline are
#: found: it tames the shot noise (at the paper's dose a single pixel's is ~6 % of a particle's
#: signal) while adding less blur than the defocus of most particles.
SMOOTHING_SIGMA_PX = 0.7
#: The aggregate's outline: smoothed intensity above the background by this fraction of the
#: beam, the signal of ~2 nm of TiO2 or ~0.5 nm of WO3 (shipped HAADF tables).
OUTLINE_THRESHOLD = 1e-3
#: Noise multiples a pixel must exceed the background by to count as aggregate: at 6 s.d.,
#: Gaussian noise reaches it on one of an image's ~2000 border pixels once in ~500 000 images.
OUTLINE_NOISE_MULTIPLE = 6.0
#: Side of the window over which an edge's local maximum and steepest gradient are taken,
#: pixels: about a quarter of a particle (radius 12 nm at 1.2 nm/px).
EDGE_WINDOW_PX = 5
#: Edge pixels: smoothed intensity between these fractions of the local maximum.
EDGE_BAND = (0.4, 0.6)
#: Edges are only measured where the local maximum exceeds this fraction of the beam (~5 nm of
#: TiO2), so that shot noise does not make up gradients.
EDGE_MINIMUM_SIGNAL = 3e-3
#: The edge width reported is this percentile over the edge pixels: the sharpest edges, those of
#: the particles in focus, which every training image has (focal plane through the centre of
#: mass) and which any extra blur widens. Higher percentiles mix in the defocused particles,
#: whose share grows with the aggregate's depth: at the 10th, sparse aggregates (θ_Df = 1.5)
#: looked as blurred as compact ones with 1 pixel of extra blur (docs/learning.md).
EDGE_PERCENTILE = 2
#: The frame counts as covered by the aggregate (not as background) where even its quietest
#: side has structure: its s.d. above this multiple of its pixel-to-pixel noise
#: (:func:`_structure`). A background, whatever its level (film, detector offset) and noise
#: (shot, read), is flat: about 1; particles vary by tens of % over a few pixels.
FRAME_STRUCTURE = 3.0
#: Coarser pixels than the training images' by more than this factor warn (upsampled images
#: hold less detail than the networks were trained on).
COARSE_PIXEL_FACTOR = 1.25


class FieldOfViewError(InputError):
    """The images cannot show an aggregate at all (field of view far below one)."""


@dataclasses.dataclass(frozen=True)
class Statistic:
    """One statistic of the training domain.

    Attributes:
        key: its name in ``training_domain.json`` and ``report.json``.
        name: plain words for the console.
        unit: unit in words (``"of the beam"``, ``"nm"``; ``{pixel}`` stands for the pixel
            size the images are measured at).
        level: ``"image"`` (every image is checked) or ``"sample"`` (the median over the
            sample's images is checked against the training samples' medians).
        floor: smallest tolerance beyond the training range, in the statistic's unit.
        relative: tolerance as a fraction of the training range's width (if more than floor).
        consequence: what it means for the estimates, in words.
        zero_means: what a training range of exactly 0 says, in words (None: just "0").
    """

    key: str
    name: str
    unit: str
    level: str
    floor: float
    relative: float
    consequence: str
    zero_means: Optional[str] = None


#: The checked statistics. The background floors: 1e-4 of the beam is a tenth of the
#: outline threshold and a quarter of one of the networks' 256 grey levels on a typical
#: training image (brightest pixel ≈ 0.11 of the beam); the issue's failing case, a background
#: of 1 % of the peak count, is 0.0003–0.003 of the beam with noise of 0.0001–0.0004. The
#: edge-width floor, 0.5 nm: clean samples of sparse aggregates (θ_Df = 1.5) reach medians of
#: 4.0 nm and resampling clean images from 0.3–1.0 nm pixels adds up to 0.25 nm, while the
#: random training samples span 3.5–3.8 nm; one pixel of extra blur gives 4.36–4.78 nm
#: (docs/learning.md).
STATISTICS = (
    Statistic("background_level", "background level", "of the beam", "image", 1e-4, 0.25,
              "estimates may be biased",
              "a vacuum background (no support film, no detector offset)"),
    Statistic("background_noise", "background noise", "of the beam per {pixel:g} nm pixel",
              "image", 1e-4, 0.25, "estimates may be biased", "a noise-free background"),
    Statistic("edge_width_nm", "width of the sharpest edges", "nm", "sample", 0.5, 0.25,
              "the images are more blurred than the training images (focus, probe, drift); "
              "estimates may be biased"),
)


# ------------------------------------------------------------------------ image statistics

def _frame_sides(image: np.ndarray, frame: int) -> list[np.ndarray]:
    """Top, bottom, left and right strips of the outer ``frame`` pixels (corners once)."""
    return [image[:frame], image[-frame:], image[frame:-frame, :frame],
            image[frame:-frame, -frame:]]


def _structure(strip: np.ndarray, axis: int) -> float:
    """s.d. of a strip over its white noise, estimated from neighbour differences along
    ``axis`` (s.d. of the differences / √2): 1 for a flat, noisy strip, large for a structured
    one; infinite for a structured strip without noise, 0 for a constant one."""
    spread = float(np.std(strip))
    noise = float(np.std(np.diff(strip, axis=axis))) / math.sqrt(2.0)
    if noise == 0.0:
        return math.inf if spread > 0.0 else 0.0
    return spread / noise


def image_statistics(intensity: np.ndarray, pixel_size_nm: float) -> dict[str, Any]:
    """The domain statistics of one image at the networks' pixel size (see module docstring).

    Args:
        intensity: (H, W) HAADF intensity as a fraction of the beam (counts / electrons per
            pixel).
        pixel_size_nm: its pixel edge, nm.

    Returns:
        ``background_level``, ``background_noise`` (fractions of the beam; None where the
        aggregate covers the frame), ``edge_width_nm`` (None when no edge is bright enough),
        ``border_cut_nm`` (0 if the aggregate is wholly inside), ``wider_than_field``,
        ``frame_covered`` and ``aggregate_found`` (bools).
    """
    from scipy import ndimage

    intensity = np.asarray(intensity, dtype=np.float64)
    frame = max(1, min(BACKGROUND_FRAME, min(intensity.shape) // 4))
    level = background_level(intensity, frame)
    noise = min(float(np.std(side)) for side in _frame_sides(intensity, frame))
    smooth = ndimage.gaussian_filter(intensity, SMOOTHING_SIGMA_PX)
    if min(_structure(side, axis) for side, axis in zip(_frame_sides(intensity, frame),
                                                       (1, 1, 0, 0))) > FRAME_STRUCTURE:
        # The frame is aggregate, not background: the aggregate fills the field of view.
        return {"background_level": None, "background_noise": None, "edge_width_nm": None,
                "border_cut_nm": 2 * sum(intensity.shape) * pixel_size_nm,
                "wider_than_field": True, "frame_covered": True, "aggregate_found": True}
    smooth -= level
    # On the outermost ring, where the border cut is read: the smoothing reflects the image
    # there, which leaves more noise on the ring than inside the frame.
    smooth_noise = min(float(np.std(side)) for side in _frame_sides(smooth, 1))
    mask = smooth > max(OUTLINE_THRESHOLD, OUTLINE_NOISE_MULTIPLE * smooth_noise)

    local_max = ndimage.maximum_filter(smooth, size=EDGE_WINDOW_PX)
    low, high = EDGE_BAND
    edges = ((smooth > low * local_max) & (smooth < high * local_max)
             & (local_max > max(EDGE_MINIMUM_SIGNAL, OUTLINE_NOISE_MULTIPLE * smooth_noise)))
    edge_width = None
    if edges.any():
        gradient = np.hypot(*np.gradient(smooth))[edges]
        widths = local_max[edges] / np.maximum(gradient, np.finfo(np.float64).tiny)
        edge_width = float(np.percentile(widths, EDGE_PERCENTILE)) * pixel_size_nm

    top, bottom, left, right = mask[0], mask[-1], mask[:, 0], mask[:, -1]
    cut_pixels = int(top.sum() + bottom.sum() + left[1:-1].sum() + right[1:-1].sum())
    return {"background_level": level, "background_noise": noise,
            "edge_width_nm": edge_width, "border_cut_nm": cut_pixels * pixel_size_nm,
            "wider_than_field": bool((top.any() and bottom.any())
                                     or (left.any() and right.any())),
            "frame_covered": False, "aggregate_found": bool(mask.any())}


def input_statistics(image: StemInput, network_pixel_size_nm: Optional[float]
                     ) -> dict[str, Any]:
    """:func:`image_statistics` of one input as the networks see it: resampled to their pixel
    size (as :func:`~hagg_tf.estimation.images.prepare_images` does), not padded or cropped
    (padding would hide the border and the noise). Adds ``pixel_size_nm`` (the image's own)
    and ``field_of_view_nm`` ([height, width])."""
    counts, electrons = image.counts, image.electrons_per_pixel
    pixel = image.pixel_size_nm
    if network_pixel_size_nm is not None and not math.isclose(
            pixel, network_pixel_size_nm, rel_tol=PIXEL_SIZE_TOLERANCE):
        counts, electrons = resample(counts, electrons, pixel / network_pixel_size_nm)
        pixel = network_pixel_size_nm
    statistics = image_statistics(counts / electrons, pixel)
    statistics["pixel_size_nm"] = float(image.pixel_size_nm)
    statistics["field_of_view_nm"] = [side * float(image.pixel_size_nm)
                                      for side in image.counts.shape]
    return statistics


# -------------------------------------------------------------------------------- refusal

def _image_names(names: Sequence[str]) -> str:
    """``a.png`` / ``2 images (a.png, b.png)`` / ``12 images (a.png … l.png)``."""
    names = [pathlib.Path(name).name for name in names]
    if len(names) == 1:
        return names[0]
    if len(names) == 2:
        return f"2 images ({names[0]}, {names[1]})"
    return f"{len(names)} images ({names[0]} … {names[-1]})"


def refuse_if_cannot_show_aggregate(images: Sequence[StemInput]) -> None:
    """Refuses images whose field of view cannot show an aggregate at all.

    The shorter side of the field of view (pixels × pixel size) must be at least
    :data:`MINIMUM_FIELD_OF_VIEW_NM`; below it an image holds at most a particle or two (e.g.
    an atomic-resolution image at 0.02 nm per pixel, or 68 pixels at 0.25 nm). Needs no model
    and no TensorFlow, so the command line calls it before loading either.

    Raises:
        FieldOfViewError: naming the first such image, its field of view and pixel size, and how
            many images are affected.
    """
    from hagg_tf.stem import DEFAULT_IMAGE_SIZE, DEFAULT_PIXEL_SIZE_NM

    small = [image for image in images
             if min(image.counts.shape) * image.pixel_size_nm < MINIMUM_FIELD_OF_VIEW_NM]
    if not small:
        return
    first = small[0]
    height, width = first.counts.shape
    pixel = first.pixel_size_nm
    atomic = ": an atomic-resolution image" if pixel < ATOMIC_RESOLUTION_PIXEL_NM else ""
    others = f" (and {len(small) - 1} more of the {len(images)} images)" if len(small) > 1 else ""
    training_field = DEFAULT_IMAGE_SIZE * DEFAULT_PIXEL_SIZE_NM
    raise FieldOfViewError(
        f"{first.path}: field of view {height * pixel:.3g} × {width * pixel:.3g} nm "
        f"({height}×{width} px at {pixel:g} nm per pixel{atomic}) cannot show an aggregate"
        f"{others}: it must be at least {MINIMUM_FIELD_OF_VIEW_NM:g} nm across (the smallest "
        "real TiO2–WO3 aggregates span ~55 nm, one particle ~24 nm); use overview images that "
        f"hold whole aggregates (the training images: {training_field:g} nm at "
        f"{DEFAULT_PIXEL_SIZE_NM:g} nm per pixel), or check --pixel_size_nm")


# ---------------------------------------------------------------------- the training domain

def _summary(values: Iterable[float]) -> dict[str, Any]:
    values = np.asarray([value for value in values if value is not None], dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    low, median, high = np.percentile(values, [1, 50, 99])
    return {"count": int(values.size), "min": float(values.min()), "p01": float(low),
            "p50": float(median), "p99": float(high), "max": float(values.max())}


def _theta_record(thetas: np.ndarray) -> dict[str, Any]:
    thetas = np.asarray(thetas, dtype=np.float64)
    record = {}
    for column, key in enumerate(("fractal_dimension", "mixing_ratio", "wo3_cluster_size",
                                  "tio2_cluster_size")):
        values = sorted({round(float(value), 6) for value in thetas[:, column]})
        record[key] = {"min": values[0], "max": values[-1], "values": values}
    return record


def _domain_from_statistics(per_image: list[dict], groups: list[list[int]], thetas: np.ndarray,
                            source: dict, pixel_size_nm: float) -> dict[str, Any]:
    """Summarises per-image statistics (and per-group medians) into the domain record."""
    cut = [item["border_cut_nm"] > 0 for item in per_image]
    ranges = {key: _summary(item[key] for item in per_image)
              for key in ("background_level", "background_noise", "edge_width_nm",
                          "border_cut_nm")}
    ranges["pixel_size_nm"] = _summary(item["pixel_size_nm"] for item in per_image)
    ranges["field_of_view_nm"] = _summary(min(item["field_of_view_nm"]) for item in per_image)
    sample_statistics = {}
    for statistic in STATISTICS:
        if statistic.level == "sample":
            medians = []
            for members in groups:
                values = [per_image[k][statistic.key] for k in members
                          if per_image[k][statistic.key] is not None]
                if values:
                    medians.append(float(np.median(values)))
            sample_statistics[statistic.key] = _summary(medians)
    return {
        "format": TRAINING_DOMAIN_FORMAT,
        "source": source,
        "images": len(per_image),
        "samples": len(groups),
        "images_per_sample": max((len(members) for members in groups), default=0),
        "pixel_size_nm": pixel_size_nm,
        "theta": _theta_record(thetas),
        "image_statistics": ranges,
        "sample_statistics": sample_statistics,
        "border_cut_share": float(np.mean(cut)) if cut else 0.0,
        "wider_than_field_share": float(np.mean([item["wider_than_field"]
                                                 for item in per_image])) if per_image else 0.0,
        "frame_covered_share": float(np.mean([item["frame_covered"]
                                              for item in per_image])) if per_image else 0.0,
        "no_aggregate_share": float(np.mean([not item["aggregate_found"]
                                             for item in per_image])) if per_image else 0.0,
    }


class _DatabaseImages:
    """Turns database images into :class:`StemInput` through the very reader ``characterize``
    uses for the package's own PNGs (:func:`~hagg_tf.estimation.images.read_stem_image`), so
    that the training images are measured exactly as a user's would be."""

    def __init__(self):
        import tempfile

        self._folder = tempfile.TemporaryDirectory(prefix="hagg_tf_domain_")
        self._path = pathlib.Path(self._folder.name) / "image.png"

    def __call__(self, counts: np.ndarray, metadata: dict) -> StemInput:
        from hagg_tf.estimation.images import read_stem_image
        from hagg_tf.stem import StemImage, write_stem_png

        write_stem_png(self._path, StemImage(np.asarray(counts, np.uint16), None, metadata))
        image, _ = read_stem_image(self._path)
        return image

    def close(self):
        self._folder.cleanup()


def measure_training_domain(source, *, groups: int = DEFAULT_DOMAIN_GROUPS,
                            images_per_group: int = 12, seed: int = 0, split: str = "train",
                            max_images: Optional[int] = None) -> dict[str, Any]:
    """The training domain: ranges of the domain statistics over a training database.

    Args:
        source: a :class:`~hagg_tf.data.DatasetConfig` (or a preset name such as ``"paper"``):
            its samples are rendered exactly as the database writer renders them (a database is
            a function of its config, so this is a faithful sample of it); or a database
            directory (its records are read, which needs TensorFlow).
        groups: from a config: the number of θ configurations drawn at random from ``split``
            (each a "sample" of ``images_per_group`` draws, as ``characterize`` sees one).
        images_per_group: images per θ group, the networks' ν.
        seed: seed of the random choice of θ groups and draws.
        split: the database split measured.
        max_images: from a directory: read at most this many records of ``split`` (None: all);
            groups are then the records of one θ, ``images_per_group`` at a time.

    Returns:
        The JSON-able domain record (see :func:`write_training_domain`).

    Raises:
        ValueError: ``source`` is neither, or has no θ with ``images_per_group`` draws.
    """
    from hagg_tf.data import PRESETS, DatasetConfig, preset

    if isinstance(source, DatasetConfig):
        return _measure_config(source, groups, images_per_group, seed, split)
    if os.path.isdir(source):
        return _measure_directory(pathlib.Path(source), images_per_group, split, max_images)
    if source in PRESETS:
        return _measure_config(preset(source), groups, images_per_group, seed, split)
    raise ValueError(f"{source}: neither a database directory nor a preset "
                     f"({', '.join(sorted(PRESETS))})")


def _measure_config(config, groups: int, images_per_group: int, seed: int,
                    split: str) -> dict[str, Any]:
    from hagg_tf.data import build_design
    from hagg_tf.data.records import compute_sample, decode_png16
    from hagg_tf.data.writer import sample_tasks

    design = build_design(config)
    indices = design.split_indices(split)
    by_theta = {}
    for index in indices:
        by_theta.setdefault(int(design.sample_theta[index]), []).append(int(index))
    eligible = sorted(theta for theta, members in by_theta.items()
                      if len(members) >= images_per_group)
    if not eligible:
        raise ValueError(f"no θ has {images_per_group} draws in split {split!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x444F4D41]))  # "DOMA"
    chosen = rng.choice(eligible, size=min(groups, len(eligible)), replace=False)
    selected = [sorted(rng.choice(by_theta[int(theta)], images_per_group, replace=False))
                for theta in chosen]
    per_image, group_members = [], []
    as_input = _DatabaseImages()
    try:
        for members in selected:
            group_members.append(list(range(len(per_image), len(per_image) + len(members))))
            for task in sample_tasks(design, members, None):
                payload = compute_sample(task)
                image = as_input(decode_png16(payload["png"]), json.loads(payload["metadata_json"]))
                per_image.append(input_statistics(image, config.effective_pixel_size_nm))
    finally:
        as_input.close()
    source = {"kind": "preset config", "config": config.to_dict(), "split": split,
              "seed": int(seed),
              "measured_with": f"measure_training_domain({_config_call(config)}, groups={groups}, "
                               f"images_per_group={images_per_group}, seed={seed}, "
                               f"split={split!r})"}
    return _domain_from_statistics(per_image, group_members, design.thetas, source,
                                   config.effective_pixel_size_nm)


def _config_call(config) -> str:
    """``preset('paper')`` for a preset, else ``DatasetConfig(...)`` with its changed fields."""
    from hagg_tf.data.design import PRESETS

    for name, value in PRESETS.items():
        if value == config:
            return f"preset({name!r})"
    return repr(config)


def _measure_directory(directory: pathlib.Path, images_per_group: int, split: str,
                       max_images: Optional[int]) -> dict[str, Any]:
    from hagg_tf.data import load_manifest
    from hagg_tf.data.manifest import shard_paths
    from hagg_tf.data.records import read_samples

    manifest = load_manifest(directory)
    pixel_size_nm = float(manifest["image"]["pixel_size_nm"])
    per_image, by_theta = [], {}
    as_input = _DatabaseImages()
    try:
        for path in shard_paths(manifest, split):
            for sample in read_samples(path):
                if max_images is not None and len(per_image) >= max_images:
                    break
                by_theta.setdefault(sample.theta_id, []).append(len(per_image))
                per_image.append(input_statistics(as_input(sample.counts, sample.metadata),
                                                  pixel_size_nm))
    finally:
        as_input.close()
    if not per_image:
        raise ValueError(f"{directory}: split {split!r} holds no records")
    group_members = [members[start:start + images_per_group]
                     for members in by_theta.values()
                     for start in range(0, len(members) - images_per_group + 1,
                                        images_per_group)]
    source = {"kind": "database", "path": str(directory), "split": split,
              "settings_sha256": manifest.get("settings_sha256"),
              "records_read": len(per_image),
              "measured_with": f"measure_training_domain({str(directory)!r}, "
                               f"images_per_group={images_per_group}, split={split!r}, "
                               f"max_images={max_images})"}
    return _domain_from_statistics(per_image, group_members, np.asarray(manifest["thetas"]),
                                   source, pixel_size_nm)


def write_training_domain(domain: dict, model_path: Union[str, os.PathLike]) -> pathlib.Path:
    """Writes ``training_domain.json`` into a composite model's version directory (atomic).

    Args:
        domain: the record of :func:`measure_training_domain`.
        model_path: export base, model or version directory (resolved as ``find_model`` does).

    Returns:
        The file written.
    """
    from hagg_tf.estimation.model import resolve_version_dir
    from hagg_tf.model.io import write_json_atomic

    domain = {key: value for key, value in domain.items() if not key.startswith("_")}
    return write_json_atomic(resolve_version_dir(model_path) / TRAINING_DOMAIN_FILENAME,
                             domain, indent=1)


def load_training_domain(model_path: Union[str, os.PathLike]) -> Optional[dict]:
    """The training domain stored beside a composite model, or None if it has none.

    Args:
        model_path: the model's version directory, or a directory above it (resolved as
            ``find_model`` does).

    Raises:
        FileNotFoundError: ``model_path`` holds neither the file nor a model.
        ValueError: the file exists but is unreadable or of another format (names the file).
    """
    from hagg_tf.estimation.model import resolve_version_dir

    version_dir = pathlib.Path(model_path)
    if not ((version_dir / "saved_model.pb").is_file()
            or (version_dir / TRAINING_DOMAIN_FILENAME).is_file()):
        version_dir = resolve_version_dir(version_dir)
    path = version_dir / TRAINING_DOMAIN_FILENAME
    if not path.is_file():
        return None
    domain = read_json_record(path, TRAINING_DOMAIN_FORMAT, "training domain")
    domain["_path"] = str(path)
    return domain


# -------------------------------------------------------------------------------- checks

#: θ of Table 2, the design of every preset: what θ̂ is checked against without a domain file.
TABLE2_THETA = {"fractal_dimension": TABLE2_FRACTAL_DIMENSIONS,
                "mixing_ratio": TABLE2_MIXING_RATIOS,
                "wo3_cluster_size": TABLE2_CLUSTER_SIZES,
                "tio2_cluster_size": TABLE2_CLUSTER_SIZES}


@dataclasses.dataclass
class DomainCheck:
    """What :func:`check_domain` found.

    Attributes:
        warnings: one line per statistic out of the training domain, naming the images.
        record: the ``domain`` section of ``report.json``.
    """

    warnings: list[str]
    record: dict


def _format_value(value: float) -> str:
    return "0" if value == 0 else f"{value:.2g}" if abs(value) < 0.01 else f"{value:.3g}"


def _format_range(low: float, high: float, zero_means: Optional[str] = None) -> str:
    """``0.0012–0.0031``; one value where both print alike (``0, a noise-free background``)."""
    if _format_value(low) == _format_value(high):
        text = _format_value(low)
        return f"{text}, {zero_means}" if zero_means and low == 0 else text
    return f"{_format_value(low)}–{_format_value(high)}"


def _allowed(statistic: Statistic, summary: dict) -> tuple[float, float]:
    low, high = summary["min"], summary["max"]
    margin = max(statistic.floor, statistic.relative * (high - low))
    return low - margin, high + margin


def _theta_checks(estimate: ThetaEstimate, domain: Optional[dict]) -> tuple[list[str], dict]:
    from hagg_tf.estimation.quantities import THETA_QUANTITIES

    theta = (domain or {}).get("theta")
    origin = "the training database" if theta else "Table 2"
    warnings, record = [], {}
    for quantity, value in zip(THETA_QUANTITIES, estimate.theta_raw):
        values = (theta[quantity.key]["values"] if theta
                  else sorted(TABLE2_THETA[quantity.key]))
        low, high = float(min(values)), float(max(values))
        steps = np.diff(sorted(values))
        margin = float(steps.min()) / 2.0 if steps.size else 0.0
        outside = not (low - margin <= value <= high + margin)
        record[quantity.key] = {"raw": float(value), "trained": [low, high],
                                "allowed": [low - margin, high + margin], "outside": outside}
        if outside:
            warnings.append(
                f"{quantity.name} {quantity.symbol}: the networks give {value:.3g} (before "
                f"rounding), outside the {low:g}–{high:g} they were trained on ({origin}); "
                "they extrapolate there: do not trust this value")
    return warnings, record


def check_domain(images: Sequence[StemInput], estimate: Optional[ThetaEstimate] = None,
                 domain: Optional[dict] = None,
                 *, network_pixel_size_nm: Optional[float] = None,
                 model_dir: Optional[Union[str, os.PathLike]] = None) -> DomainCheck:
    """Compares the images of one sample (and the networks' raw θ̂) with the training domain.

    Args:
        images: the sample's images as read.
        estimate: the :class:`~hagg_tf.estimation.estimators.ThetaEstimate` (None: θ̂ is not
            checked).
        domain: the training domain (:func:`load_training_domain`); None: only θ̂ is checked
            (against Table 2) and a warning says that no domain is known.
        network_pixel_size_nm: the networks' pixel size (images are measured resampled to it).
        model_dir: the model's directory, named in the warning when no domain is known.

    Returns:
        The warnings (one line each) and the ``domain`` section of the report.
    """
    warnings, record = [], {"training_domain": None, "checks": []}
    if estimate is not None:
        theta_warnings, record["theta_raw"] = _theta_checks(estimate, domain)
    else:
        theta_warnings = []
    if domain is None:
        warnings.append(
            f"no training domain is known for the networks in {model_dir or 'this model'} (no "
            f"{TRAINING_DOMAIN_FILENAME}): the images were not compared with the training "
            "images, so nothing says whether the networks know images like these")
        warnings.extend(theta_warnings)
        return DomainCheck(warnings, record)

    record["training_domain"] = {"path": domain.get("_path"), "source": domain.get("source"),
                                 "images": domain.get("images"),
                                 "samples": domain.get("samples")}
    names = [image.path for image in images]
    per_image = [input_statistics(image, network_pixel_size_nm) for image in images]
    record["images"] = [{"path": name, **statistics}
                        for name, statistics in zip(names, per_image)]
    trained = domain.get("image_statistics", {})
    for statistic in STATISTICS:
        summary = (domain.get("sample_statistics", {}) if statistic.level == "sample"
                   else trained).get(statistic.key)
        if not summary or not summary.get("count"):
            continue
        allowed = _allowed(statistic, summary)
        values = [item[statistic.key] for item in per_image]
        check = {"statistic": statistic.key, "level": statistic.level,
                 "trained": [summary["min"], summary["max"]], "allowed": list(allowed)}
        training = _format_range(summary["min"], summary["max"], statistic.zero_means)
        unit = statistic.unit.format(pixel=network_pixel_size_nm or domain.get("pixel_size_nm"))
        if statistic.level == "sample":
            measured = [value for value in values if value is not None]
            if not measured:
                continue
            value = float(np.median(measured))
            check.update(value=value, outside=not allowed[0] <= value <= allowed[1])
            if check["outside"]:
                warnings.append(
                    f"{statistic.name} {_format_value(value)} {unit}, the median of "
                    f"{_image_names(names)}; training samples: {training} {unit}; "
                    f"{statistic.consequence}")
        else:
            outside = [k for k, value in enumerate(values)
                       if value is not None and not allowed[0] <= value <= allowed[1]]
            check.update(outside=[pathlib.Path(names[k]).name for k in outside])
            if outside:
                shown = [values[k] for k in outside]
                warnings.append(
                    f"{statistic.name} {_format_range(min(shown), max(shown))} {unit} in "
                    f"{_image_names([names[k] for k in outside])}; training images: "
                    f"{training}; {statistic.consequence}")
        record["checks"].append(check)
    warnings.extend(_geometry_warnings(names, per_image, domain))
    warnings.extend(theta_warnings)
    return DomainCheck(warnings, record)


def _geometry_warnings(names: list[str], per_image: list[dict], domain: dict) -> list[str]:
    """Pixel size, aggregates cut by the border or wider than the field, none found."""
    def where(condition):
        return [k for k, item in enumerate(per_image) if condition(item)]

    warnings = []
    trained = domain.get("image_statistics", {})
    pixel = trained.get("pixel_size_nm") or {}
    if pixel.get("count"):
        coarse = where(lambda item: item["pixel_size_nm"] > pixel["max"] * COARSE_PIXEL_FACTOR)
        if coarse:
            sizes = [per_image[k]["pixel_size_nm"] for k in coarse]
            warnings.append(
                f"pixel size {_format_range(min(sizes), max(sizes))} nm in "
                f"{_image_names([names[k] for k in coarse])} (training images: "
                f"{_format_range(pixel['min'], pixel['max'])} nm): upsampled, the images hold "
                "less detail than the networks were trained on; estimates may be biased")
    share = 100.0 * float(domain.get("border_cut_share", 0.0))
    wide = where(lambda item: item["wider_than_field"])
    cut = where(lambda item: item["border_cut_nm"] > 0 and not item["wider_than_field"])
    if cut:
        longest = max(per_image[k]["border_cut_nm"] for k in cut)
        warnings.append(
            f"aggregate cut by the image border in {_image_names([names[k] for k in cut])} "
            f"({longest:.0f} nm of it on the border{' at most' if len(cut) > 1 else ''}; "
            f"training images: whole aggregates, {share:.1f} % cut): the part outside the image "
            "is missing from every estimate")
    if wide:
        field = min(min(per_image[k]["field_of_view_nm"]) for k in wide)
        trained_field = _format_value((trained.get("field_of_view_nm") or {}).get("max", 0))
        warnings.append(
            f"aggregate wider than the field of view ({field:.0f} nm) in "
            f"{_image_names([names[k] for k in wide])}: it reaches opposite borders (training "
            f"images: whole aggregates in a {trained_field} nm field); use images that hold the "
            "whole aggregate")
    empty = where(lambda item: not item["aggregate_found"])
    if empty:
        warnings.append(
            f"no aggregate found in {_image_names([names[k] for k in empty])}: nothing rises "
            f"above the background by {OUTLINE_THRESHOLD:g} of the beam (check the dose or "
            "--electrons_per_pixel)")
    return warnings
