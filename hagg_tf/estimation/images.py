"""Reading, checking and preparing the STEM images of one sample for the networks.

Accepted files: PNG and TIFF, greyscale, 8-bit or 16-bit unsigned integers or 32/64-bit floats
(finite, non-negative). Everything else (colour images, other bit depths, NaN or infinite
pixels, files that are not images) is refused with an :class:`InputError` naming the file.
Microscope files (DigitalMicrograph DM3/DM4, Velox and NCEM EMD, MRC, and TIFFs with a
DigitalMicrograph, FEI or ImageJ calibration) are read through RosettaSciIO, the ``formats``
extra, by :mod:`hagg_tf.estimation.formats`: their pixel size and, where recorded, electrons per
pixel come from their metadata, and their integer pixels are detector counts.

Physics per image (needed to put foreign images on the training images' footing):

* **pixel size** (nm): from the hagg_tf metadata chunk of the package's own PNGs
  (:func:`hagg_tf.stem.read_stem_png`), else from ``pixel_size_nm=`` (``--pixel_size_nm``); an
  image without either is refused, since the networks see sizes in pixels.
* **electrons per pixel** (incident electrons per pixel, the factor between detector counts and
  the HAADF intensity as a fraction of the beam): from the metadata, else
  ``electrons_per_pixel=``, else, for 16-bit images, ``dose × (10·pixel size)²`` with
  ``dose=`` in e/Å² (default: the paper's 149 e/Å², with a warning). Only CNN^1 needs it: its
  1/p inversion (Sec. 2.3.5) must know which pixels exceed p = 0.001; the other networks scale
  each image to [-0.5, 0.5] and do not care. Only **16-bit** integers are taken for detector
  counts. **8-bit and float images** hold display grey values or intensities in units of their
  own (a float TIFF in [0, 1], say), so no dose can turn them into intensity fractions: they
  need ``electrons_per_pixel=``, the value the whole incident beam would have in the image (1
  for intensities as fractions of the beam, dose × pixel area for counts stored as floats), and
  are refused without it, with one message for both (:func:`not_counts_message`).

Preparation (:func:`prepare_images`) for networks trained at pixel size ``s`` on ``S × S``
images:

1. **Resampling** (with a warning) when an image's pixel size differs from ``s`` by more than
   0.1 %: the intensity fraction p = counts / electrons per pixel is smoothed with a Gaussian of
   σ = (s/s_image − 1)/2 pixels when shrinking (anti-aliasing), interpolated linearly
   (``scipy.ndimage.zoom``, order 1, ``grid_mode=True``: pixel areas, not centres, line up) and
   turned back into counts of the new, larger or smaller pixel (electrons per pixel scale with
   the pixel area), so p and the dose per area are unchanged. An image whose resampled side
   would fall outside 16–4096 pixels is refused (:func:`check_resampling`): its pixel size is
   almost surely wrong.
2. **Padding or cropping** to ``S × S``: the background level is the median of the image's
   outermost 4-pixel frame (vacuum around a centred aggregate; 0 counts in simulated images).
   Missing rows and columns are filled with it, on both sides equally. An image larger than
   ``S`` is cropped to the ``S × S`` window centred on the centre of mass of its
   above-background intensity (the training images have the aggregate's centre of mass at their
   centre), shifted to stay inside the image; a warning reports it if the window cuts off more
   than 1 % of that intensity.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import os
import pathlib
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from hagg_tf.estimation.formats import (MICROSCOPE_SUFFIXES, TIFF_SUFFIXES,
                                       read_microscope_pixels, tiff_calibration_hint)
# Moved down to hagg_tf.stem (the database renders at other pixel sizes and resamples alike);
# re-exported here for the callers of this module.
from hagg_tf.stem.resample import BACKGROUND_FRAME, background_level, resample  # noqa: F401

#: File name endings read as images (microscope files through the ``formats`` extra).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff") + MICROSCOPE_SUFFIXES
#: Pixel types accepted, by numpy dtype name.
SUPPORTED_DTYPES = ("uint8", "uint16", "float32", "float64")
#: Pixel types taken for detector counts (a dose converts them); the others need the beam's
#: value, ``electrons_per_pixel``.
COUNT_DTYPES = ("uint16",)
#: The paper's electron dose, e/Å² (Sec. 2.1.4), assumed when a 16-bit image says nothing.
DEFAULT_DOSE = 149.0
#: Relative pixel-size difference tolerated without resampling.
PIXEL_SIZE_TOLERANCE = 1e-3
#: Share of the above-background intensity a crop may cut off before a warning.
CROP_LOSS_WARNING = 0.01
#: Smallest image side accepted, pixels (also after resampling).
MINIMUM_SIDE = 16
#: Largest image side after resampling, pixels: 8 × the paper's 512 (a 4096² float64 copy is
#: 128 MiB); a larger one is mostly field of view that the crop to the networks' input discards.
MAXIMUM_RESAMPLED_SIDE = 4096


class InputError(ValueError):
    """A problem with the user's images or settings; the message names the file and the fix."""


@dataclasses.dataclass
class StemInput:
    """One image as read from disk, before preparation.

    Attributes:
        path: the file.
        counts: (H, W) float64 pixel values (detector counts, grey values or intensities).
        dtype: pixel type on disk (``"uint16"``, ``"uint8"``, ``"float32"``, …).
        pixel_size_nm: pixel edge, nm.
        electrons_per_pixel: incident electrons per pixel (the factor from intensity fraction to
            counts).
        sources: where pixel size and electrons per pixel came from (``"metadata"``,
            ``"flag"``, ``"dose"``).
        metadata: the hagg_tf metadata of the package's own PNGs, else None.
    """

    path: str
    counts: np.ndarray
    dtype: str
    pixel_size_nm: float
    electrons_per_pixel: float
    sources: dict
    metadata: Optional[dict] = None

    def describe(self) -> dict:
        """JSON-able summary for the report."""
        info = {"path": self.path, "shape": list(self.counts.shape), "dtype": self.dtype,
                "pixel_size_nm": self.pixel_size_nm,
                "electrons_per_pixel": self.electrons_per_pixel, "sources": dict(self.sources)}
        params = ((self.metadata or {}).get("aggregate") or {}).get("params")
        if params:
            info["simulated_theta"] = params
        if (self.metadata or {}).get("microscope_file"):
            info["microscope_file"] = self.metadata["microscope_file"]
        return info


@dataclasses.dataclass
class PreparedImages:
    """The images of one sample, ready for the composite model.

    Attributes:
        counts: (n, S, S) float32 counts at the networks' pixel size.
        electrons_per_pixel: (n,) float32 electrons per (new) pixel.
        changes: per image, what was done (``"resampled 0.6→1.2 nm"``, ``"padded"``, …).
        notes: for the console, one line per image whose size was changed by padding or
            cropping (``"a.tif: 300×300 px padded to the networks' 512×512 px …"``).
    """

    counts: np.ndarray
    electrons_per_pixel: np.ndarray
    changes: list
    notes: list = dataclasses.field(default_factory=list)


def _has_glob(pattern: str) -> bool:
    return any(character in pattern for character in "*?[")


def find_image_files(patterns: Sequence[Union[str, os.PathLike]]
                     ) -> tuple[list[pathlib.Path], list[str]]:
    """Image files named by folders, globs or file names.

    A folder contributes its image files (not recursively); other files in it (notes, JSON) are
    skipped and reported. A glob contributes its matching image files, likewise. A file named
    explicitly must be an image file.

    Returns:
        (sorted unique image paths in the order given, notes about skipped files).

    Raises:
        InputError: nothing found, a missing path, or an explicitly named non-image file.
    """
    if not patterns:
        raise InputError("no images given: name a folder, a glob or image files "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    found, notes, seen = [], [], set()

    def add(path: pathlib.Path):
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            found.append(path)

    for pattern in map(str, patterns):
        path = pathlib.Path(pattern)
        if path.is_dir():
            members = sorted(child for child in path.iterdir()
                             if child.is_file() and not child.name.startswith("."))
        elif _has_glob(pattern):
            members = sorted(pathlib.Path(item) for item in glob.glob(pattern)
                             if pathlib.Path(item).is_file())
            if not members:
                raise InputError(f"{pattern}: no files match")
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{path}: not an image file (expected "
                                 f"{', '.join(IMAGE_SUFFIXES)})")
            add(path)
            continue
        else:
            raise InputError(f"{path}: no such file or folder")
        images = [member for member in members if member.suffix.lower() in IMAGE_SUFFIXES]
        skipped = [member.name for member in members if member.suffix.lower() not in
                   IMAGE_SUFFIXES]
        if skipped:
            notes.append(f"{pattern}: skipped {len(skipped)} non-image file(s): "
                         f"{', '.join(skipped[:5])}{' …' if len(skipped) > 5 else ''}")
        if not images:
            raise InputError(f"{pattern}: no image files ({', '.join(IMAGE_SUFFIXES)}) "
                             f"{'in this folder' if path.is_dir() else 'match'}"
                             + (f"; found only {', '.join(skipped[:5])}" if skipped else ""))
        for image in images:
            add(image)
    return found, notes


def _read_pixels(path: pathlib.Path, signal: Union[str, int, None] = None
                 ) -> tuple[np.ndarray, Optional[dict]]:
    """Pixels and metadata (hagg_tf's, or a microscope file's; None for other files) of one
    image file; ``signal`` chooses among a microscope file's signals."""
    import imageio.v3 as iio

    from hagg_tf.stem.io import PNG_TEXT_KEY, read_stem_png

    microscope = read_microscope_pixels(path, signal) if path.suffix.lower() in \
        MICROSCOPE_SUFFIXES + TIFF_SUFFIXES else None
    if microscope is not None:
        return microscope
    try:
        if path.suffix.lower() == ".png":
            meta = iio.immeta(path, extension=".png")
            if PNG_TEXT_KEY in meta:
                counts, metadata = read_stem_png(path)
                return counts, metadata
            return iio.imread(path, extension=".png"), None
        return iio.imread(path), None
    except InputError:
        raise
    except Exception as error:  # imageio/pillow raise many types for corrupt or foreign files
        raise InputError(f"{path}: cannot be read as an image ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'no details'})") \
            from None


def _greyscale(pixels: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """The single channel of a greyscale image; colour images are refused."""
    if pixels.ndim == 3 and pixels.shape[-1] in (1, 2, 3, 4):
        channels = pixels.shape[-1]
        colour = pixels[..., :3] if channels >= 3 else pixels[..., :1]
        if channels >= 3 and not (np.array_equal(colour[..., 0], colour[..., 1])
                                  and np.array_equal(colour[..., 0], colour[..., 2])):
            raise InputError(f"{path}: colour image ({channels} channels that differ); HAADF-STEM "
                             "images are greyscale: save the detector signal as one channel")
        if channels in (2, 4) and not np.all(pixels[..., -1] == pixels[..., -1].flat[0]):
            raise InputError(f"{path}: image with a varying alpha channel; save the detector "
                             "signal as one greyscale channel")
        return colour[..., 0]
    if pixels.ndim != 2:
        raise InputError(f"{path}: expected one 2-D greyscale image, got an array of shape "
                         f"{pixels.shape} (a stack or multi-page file? save one image per file)")
    return pixels


def _check_values(pixels: np.ndarray, path: pathlib.Path) -> None:
    dtype = pixels.dtype.name
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(f"{path}: unsupported pixel type {dtype} ({pixels.dtype.itemsize * 8}-bit)"
                         f"; expected 8- or 16-bit unsigned integers or 32/64-bit floats")
    if min(pixels.shape) < MINIMUM_SIDE:
        raise InputError(f"{path}: image of {pixels.shape[0]}×{pixels.shape[1]} pixels is too "
                         f"small (at least {MINIMUM_SIDE}×{MINIMUM_SIDE})")
    if pixels.dtype.kind == "f":
        bad = ~np.isfinite(pixels)
        if bad.any():
            raise InputError(f"{path}: {int(bad.sum())} pixel(s) are NaN or infinite")
        if (pixels < 0).any():
            raise InputError(f"{path}: negative pixel values (min {float(pixels.min()):g}); "
                             "expected detector counts or intensities ≥ 0")
    if pixels.min() == pixels.max():
        raise InputError(f"{path}: every pixel has the value {pixels.flat[0]}: an empty image")


def not_counts_message(path: Union[str, os.PathLike], dtype: np.dtype) -> str:
    """The one message for an 8-bit or float image given without ``electrons_per_pixel``."""
    dtype = np.dtype(dtype)
    kind = "8-bit" if dtype == np.uint8 else f"{dtype.itemsize * 8}-bit float"
    return (f"{path}: {kind} image without a dose: its values are grey levels or intensities, not "
            "detector counts (only 16-bit images are taken as counts), so --dose cannot convert "
            "them, and CNN^1's intensity inversion (pixels above 0.1 % of the beam, Sec. 2.3.5) "
            "cannot be placed; give --electrons_per_pixel, the value the whole beam would have "
            "in this image (1 if the values are fractions of the beam), or use the 16-bit "
            "detector counts")


def read_stem_image(path: Union[str, os.PathLike], *, pixel_size_nm: Optional[float] = None,
                    electrons_per_pixel: Optional[float] = None,
                    dose: Optional[float] = None, signal: Union[str, int, None] = None
                    ) -> tuple[StemInput, list[str]]:
    """Reads and checks one image file (see the module docstring for the rules).

    Args:
        path: PNG, TIFF or microscope file.
        pixel_size_nm: pixel edge in nm for files without hagg_tf metadata; overrides the
            metadata if given.
        electrons_per_pixel: incident electrons per pixel (8-bit and float images: the value of
            the full beam in the image's units); overrides the metadata if given.
        dose: electron dose in e/Å² used with the pixel size when neither metadata nor
            ``electrons_per_pixel`` give the electrons per pixel (16-bit images only).
        signal: the signal of a microscope file with several (title, detector name or index;
            :func:`hagg_tf.estimation.formats.choose_signal`); other files ignore it.

    Returns:
        (the image, warnings).

    Raises:
        InputError: unreadable or unsuitable file, or missing pixel size / dose information.
    """
    path = pathlib.Path(path)
    pixels, metadata = _read_pixels(path, signal)
    pixels = _greyscale(np.asarray(pixels), path)
    _check_values(pixels, path)
    warnings = list((metadata or {}).get("warnings", ()))
    sources = {}
    meta_pixel = (metadata or {}).get("pixel_size_nm")
    meta_electrons = (metadata or {}).get("electrons_per_pixel")
    if pixel_size_nm is not None:
        if meta_pixel is not None and not math.isclose(meta_pixel, pixel_size_nm,
                                                       rel_tol=PIXEL_SIZE_TOLERANCE):
            warnings.append(f"{path.name}: --pixel_size_nm={pixel_size_nm:g} overrides the "
                            f"file's {meta_pixel:g} nm")
        pixel, sources["pixel_size_nm"] = float(pixel_size_nm), "flag"
    elif meta_pixel is not None:
        pixel, sources["pixel_size_nm"] = float(meta_pixel), "metadata"
    else:
        raise InputError((metadata or {}).get("pixel_size_problem") or (
            f"{path}: no pixel size in the file{tiff_calibration_hint(path)}; give "
            "--pixel_size_nm (nm per pixel of your images)"))
    if not (pixel > 0 and math.isfinite(pixel)):
        raise InputError(f"{path}: pixel size must be finite and positive, got {pixel:g}")

    if electrons_per_pixel is not None:
        electrons, sources["electrons_per_pixel"] = float(electrons_per_pixel), "flag"
    elif meta_electrons is not None:
        electrons, sources["electrons_per_pixel"] = float(meta_electrons), "metadata"
    elif pixels.dtype.name not in COUNT_DTYPES and not (metadata or {}).get("detector_counts"):
        raise InputError(not_counts_message(path, pixels.dtype))
    else:
        used_dose = DEFAULT_DOSE if dose is None else float(dose)
        if dose is None:
            warnings.append(f"{path.name}: no dose in the file; assuming the paper's "
                            f"{DEFAULT_DOSE:g} e/Å² (give --dose or --electrons_per_pixel)")
        electrons = used_dose * (10.0 * pixel) ** 2
        sources["electrons_per_pixel"] = "dose"
    if not (electrons > 0 and math.isfinite(electrons)):
        raise InputError(f"{path}: electrons per pixel must be finite and positive, got "
                         f"{electrons:g}")
    return StemInput(str(path), pixels.astype(np.float64), pixels.dtype.name, pixel, electrons,
                     sources, metadata), warnings


def load_stem_images(paths: Iterable[Union[str, os.PathLike]], **kwargs
                     ) -> tuple[list[StemInput], list[str]]:
    """:func:`read_stem_image` for every path; returns (images, all warnings)."""
    images, warnings = [], []
    for path in paths:
        image, image_warnings = read_stem_image(path, **kwargs)
        images.append(image)
        warnings.extend(image_warnings)
    depths = sorted({image.dtype for image in images})
    if len(depths) > 1:
        warnings.append(f"the images mix pixel types {', '.join(depths)}")
    return images, warnings


def check_resampling(images: Sequence[StemInput], pixel_size_nm: Optional[float]) -> None:
    """Refuses images whose resampling to ``pixel_size_nm`` would be absurdly small or large.

    Images within :data:`PIXEL_SIZE_TOLERANCE` of ``pixel_size_nm`` are not resampled and pass.

    Raises:
        InputError: a side would fall below :data:`MINIMUM_SIDE` or exceed
            :data:`MAXIMUM_RESAMPLED_SIDE` pixels (a wrong pixel size, most likely).
    """
    if pixel_size_nm is None:
        return
    for image in images:
        if math.isclose(image.pixel_size_nm, pixel_size_nm, rel_tol=PIXEL_SIZE_TOLERANCE):
            continue
        zoom = image.pixel_size_nm / pixel_size_nm
        sides = [int(round(side * zoom)) for side in image.counts.shape]
        if not MINIMUM_SIDE <= min(sides) <= max(sides) <= MAXIMUM_RESAMPLED_SIDE:
            raise InputError(
                f"{image.path}: at {image.pixel_size_nm:g} nm per pixel, resampling to the "
                f"networks' {pixel_size_nm:g} nm gives {sides[0]}×{sides[1]} pixels (allowed: "
                f"{MINIMUM_SIDE} to {MAXIMUM_RESAMPLED_SIDE} per side); check the pixel size")


def fit_to_size(counts: np.ndarray, size: int) -> tuple[np.ndarray, list[str]]:
    """Pads with the background level or crops around the centre of mass to ``size × size``.

    Returns:
        (the image, notes: what was done, and a warning if a crop lost > 1 % of the signal).
    """
    notes = []
    background = background_level(counts)
    signal = np.clip(counts - background, 0.0, None)
    total = float(signal.sum())
    result = counts
    for axis in (0, 1):
        length = result.shape[axis]
        if length < size:
            before = (size - length) // 2
            pad = [(0, 0), (0, 0)]
            pad[axis] = (before, size - length - before)
            result = np.pad(result, pad, constant_values=background)
            signal = np.pad(signal, pad)
            notes.append(f"padded {'rows' if axis == 0 else 'columns'} {length}→{size}")
        elif length > size:
            profile = signal.sum(axis=1 - axis)
            weight = float(profile.sum())
            center = (float(np.arange(length) @ profile) / weight if weight > 0
                      else (length - 1) / 2.0)
            start = int(round(center - (size - 1) / 2.0))
            start = min(max(start, 0), length - size)
            index = [slice(None), slice(None)]
            index[axis] = slice(start, start + size)
            result, signal = result[tuple(index)], signal[tuple(index)]
            notes.append(f"cropped {'rows' if axis == 0 else 'columns'} {length}→{size} "
                         f"from {start}")
    if total > 0:
        lost = 1.0 - float(signal.sum()) / total
        if lost > CROP_LOSS_WARNING:
            notes.append(f"warning: the {size}×{size} window cuts off {100 * lost:.1f} % of the "
                         "above-background intensity (aggregate larger than the field of view)")
    return result, notes


def prepare_images(images: Sequence[StemInput], image_size: int,
                   pixel_size_nm: Optional[float]) -> tuple[PreparedImages, list[str]]:
    """Resamples, pads or crops every image for networks of ``image_size`` px at
    ``pixel_size_nm`` (see the module docstring).

    Args:
        images: the sample's images.
        image_size: network input side, pixels.
        pixel_size_nm: the training images' pixel size; None keeps each image's own.

    Returns:
        (prepared images, warnings).

    Raises:
        InputError: an image would be resampled to an absurd size (:func:`check_resampling`).
    """
    check_resampling(images, pixel_size_nm)
    warnings, changes, size_notes = [], [], []
    prepared, electrons = [], []
    for image in images:
        counts, per_pixel, done = image.counts, image.electrons_per_pixel, []
        name = pathlib.Path(image.path).name
        if pixel_size_nm is not None and not math.isclose(
                image.pixel_size_nm, pixel_size_nm, rel_tol=PIXEL_SIZE_TOLERANCE):
            zoom = image.pixel_size_nm / pixel_size_nm
            counts, per_pixel = resample(counts, per_pixel, zoom)
            done.append(f"resampled {image.pixel_size_nm:g}→{pixel_size_nm:g} nm/px "
                        f"({image.counts.shape[0]}×{image.counts.shape[1]}→"
                        f"{counts.shape[0]}×{counts.shape[1]})")
            warnings.append(f"{name}: pixel size {image.pixel_size_nm:g} nm differs from the "
                            f"networks' {pixel_size_nm:g} nm; resampled")
        if counts.shape != (image_size, image_size):
            before = counts.shape
            counts, notes = fit_to_size(counts, image_size)
            size_notes.append(_fit_note(name, before, image_size, notes, bool(done)))
            done.extend(note for note in notes if not note.startswith("warning"))
            warnings.extend(f"{name}: {note[len('warning: '):]}" for note in notes
                            if note.startswith("warning"))
        prepared.append(counts.astype(np.float32))
        electrons.append(per_pixel)
        changes.append(done)
    return (PreparedImages(np.stack(prepared), np.asarray(electrons, np.float32), changes,
                           size_notes), warnings)


def _fit_note(name: str, shape: tuple, size: int, notes: Sequence[str], resampled: bool) -> str:
    """``"a.tif: 300×300 px, padded with its background level to the networks' 512×512 px
    input"`` (from the notes of :func:`fit_to_size`)."""
    actions = {"padded": "padded with its background level",
               "cropped": "cropped around the aggregate"}
    done = " and ".join(text for action, text in actions.items()
                        if any(note.startswith(action) for note in notes))
    return (f"{name}: {shape[0]}×{shape[1]} px{' after resampling' if resampled else ''}, "
            f"{done} to the networks' {size}×{size} px input")
