"""Microscope files read through RosettaSciIO (the optional ``formats`` extra).

Formats (by file ending): DigitalMicrograph ``.dm3``/``.dm4``; EMD ``.emd``, both the Velox
(Thermo Fisher) and the NCEM (Berkeley) variant; MRC ``.mrc``; and ``.tif``/``.tiff`` whose tags
carry a DigitalMicrograph, FEI or ImageJ calibration. RosettaSciIO (``rsciio``) and the libraries
its readers need (h5py for EMD, tifffile for TIFF) come with ``pip install 'hagg_tf[formats]'``;
without them a DM/EMD/MRC file is refused with one message naming the extra, and TIFFs are read
as plain images, as before (their pixel size then comes from ``--pixel_size_nm``).

What is taken from a file (:func:`read_microscope_image`):

* **the signal**: a file may hold several (Velox: one image per detector, spectra, stacks). The
  images among them are the real-valued 2-D signals. One image is taken as it is; of several,
  the one whose title or detector name contains "HAADF"; otherwise, or with several HAADF ones,
  the file is refused with the list of its signals, and ``signal=`` (``--signal``) names one
  by its title or detector name (case-insensitive) or by its index in that list.
* **the pixel size**: the scale of the image's two axes, converted to nm from its units by
  :data:`NM_PER_UNIT` (pm, Å, nm, µm, mm, m in their usual spellings). Units that are not a
  known length are refused unless ``--pixel_size_nm`` is given; axes in pixels (no calibration)
  need ``--pixel_size_nm``; reciprocal units (a diffraction pattern or FFT) and non-square
  pixels are refused outright. RosettaSciIO reads ImageJ units only when they are "micron";
  other ImageJ units ("nm", "µm" as text) are taken from the TIFF's ImageJ description with
  tifffile.
* **electrons per pixel** where the metadata record both the beam current and the dwell time:
  I·t/e (Velox ``Optics.LastMeasuredScreenCurrent`` and ``Scan.DwellTime``; elsewhere the
  ``beam_current`` (nA) and ``dwell_time`` (s) of RosettaSciIO's metadata mapping, e.g.
  DigitalMicrograph's ``Microscope Info.Probe Current (nA)`` and ``DigiScan.Sample Time``). A
  current of 0 (DigitalMicrograph writes 0.0 when the microscope did not report one) counts as
  absent; then ``--electrons_per_pixel`` or ``--dose`` apply as for any image. The value is the
  number of incident electrons: it equals the beam's value in the image only for an
  electron-counting detector, which a warning says.
* **pixel values**: integers are detector counts. Those within 0…65535 are stored as uint16
  (exactly), so that they are treated like the 16-bit counts of any image; larger ones as
  float64 counts; negative ones are refused (dark-subtracted data: give the raw counts).
  uint8 and float images keep their type and its rules (:mod:`hagg_tf.estimation.images`).
  Stacks (more than one frame) and complex signals are refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import math
import pathlib
import re
import warnings
from typing import Optional, Sequence, Union

import numpy as np

#: How to install what this module needs.
FORMATS_INSTALL = "pip install 'hagg_tf[formats]'"
#: File ending → (RosettaSciIO reader module, format name, modules the reader imports).
READERS = {
    ".dm3": ("rsciio.digitalmicrograph", "DigitalMicrograph", ("rsciio",)),
    ".dm4": ("rsciio.digitalmicrograph", "DigitalMicrograph", ("rsciio",)),
    ".emd": ("rsciio.emd", "EMD", ("rsciio", "h5py")),
    ".mrc": ("rsciio.mrc", "MRC", ("rsciio",)),
    ".tif": ("rsciio.tiff", "TIFF", ("rsciio", "tifffile")),
    ".tiff": ("rsciio.tiff", "TIFF", ("rsciio", "tifffile")),
}
#: Endings read only through RosettaSciIO (TIFFs are also plain images).
MICROSCOPE_SUFFIXES = (".dm3", ".dm4", ".emd", ".mrc")
#: TIFF endings, read through RosettaSciIO for their calibration where it is installed.
TIFF_SUFFIXES = (".tif", ".tiff")
#: nm per unit of length, by the spellings microscope software writes (µm with the micro
#: sign or the Greek mu, Å as the letter or the ångström sign, escaped here to tell them apart).
NM_PER_UNIT = {
    "pm": 1e-3, "\u00c5": 0.1, "\u212b": 0.1, "angstrom": 0.1, "angstroms": 0.1, "nm": 1.0,
    "nanometer": 1.0, "nanometers": 1.0, "\u00b5m": 1e3, "\u03bcm": 1e3, "um": 1e3,
    "micron": 1e3, "microns": 1e3, "micrometer": 1e3, "micrometers": 1e3, "mm": 1e6, "m": 1e9,
}
#: Axis units that mean "no calibration" (the axis counts pixels).
UNCALIBRATED_UNITS = ("", "px", "pixel", "pixels", "<undefined>", "undefined", "none")
#: Text in a signal's title or detector name that marks the HAADF image.
HAADF_MARK = "haadf"
#: Largest integer stored as uint16 counts.
_UINT16_MAX = np.iinfo(np.uint16).max


def _input_error(message: str) -> ValueError:
    # images.py imports this module's suffixes while it is being imported itself, so its
    # InputError is looked up when an error is raised, not at import time.
    from hagg_tf.estimation.images import InputError

    return InputError(message)


@dataclasses.dataclass(frozen=True)
class SignalInfo:
    """One signal of a microscope file.

    Attributes:
        index: position among the file's signals (what ``signal=<int>`` selects).
        title: the signal's title ("" if none).
        detector: detector name from the metadata (Velox, DigitalMicrograph), or None.
        shape: array shape (rows, columns for an image).
        dtype: numpy dtype name of the data.
        is_image: a real-valued 2-D signal (not a stack, spectrum or complex FFT).
    """

    index: int
    title: str
    detector: Optional[str]
    shape: tuple
    dtype: str
    is_image: bool

    def names(self) -> list[str]:
        """Title and detector name, the names ``signal=`` matches."""
        return [name for name in (self.title, self.detector) if name]

    def label(self) -> str:
        """``"2 'HAADF' (64×80 uint16)"`` for messages."""
        name = self.title or "untitled"
        if self.detector and self.detector != self.title:
            name += f", detector {self.detector}"
        kind = "" if self.is_image else (", not a 2-D image" if len(self.shape) != 2
                                          else ", not real-valued")
        return f"{self.index} '{name}' ({'×'.join(map(str, self.shape))} {self.dtype}{kind})"


@dataclasses.dataclass
class MicroscopeImage:
    """The image taken from a microscope file.

    Attributes:
        path: the file.
        format: format name ("DigitalMicrograph", "EMD", "MRC", "TIFF").
        pixels: (H, W) pixel values (uint16 counts, float64 counts, uint8 or float; see the
            module docstring).
        stored_dtype: numpy dtype name of the data in the file.
        detector_counts: the values are detector counts (integers in the file).
        signal: the chosen signal; signals: all of the file's signals.
        scale, units: the file's pixel scale and its units as written (None: none).
        pixel_size_nm: the pixel edge in nm, None if the file gives none usable.
        pixel_size_problem: why there is no pixel size (the message for the user), or None.
        electrons_per_pixel: incident electrons per pixel from beam current × dwell time, or
            None when the metadata lack either.
        beam_current_a, dwell_time_s: those two, A and s (None if absent).
        warnings: for the user (e.g. how electrons per pixel were obtained).
    """

    path: str
    format: str
    pixels: np.ndarray
    stored_dtype: str
    detector_counts: bool
    signal: SignalInfo
    signals: tuple
    scale: Optional[float]
    units: Optional[str]
    pixel_size_nm: Optional[float]
    pixel_size_problem: Optional[str]
    electrons_per_pixel: Optional[float]
    beam_current_a: Optional[float] = None
    dwell_time_s: Optional[float] = None
    warnings: list = dataclasses.field(default_factory=list)

    def pixels_and_metadata(self) -> tuple[np.ndarray, dict]:
        """(pixels, :meth:`metadata`): what the image reader's hook returns."""
        return self.pixels, self.metadata()

    def metadata(self) -> dict:
        """The metadata dict :func:`hagg_tf.estimation.images.read_stem_image` takes
        (``pixel_size_nm`` and ``electrons_per_pixel`` only where known), JSON-able."""
        info = {"format": self.format, "signal_index": self.signal.index,
                "signal_title": self.signal.title, "detector": self.signal.detector,
                "signals": len(self.signals), "scale": self.scale, "units": self.units,
                "stored_dtype": self.stored_dtype}
        if self.electrons_per_pixel is not None:
            info.update(beam_current_a=self.beam_current_a, dwell_time_s=self.dwell_time_s)
        metadata = {"microscope_file": info, "detector_counts": self.detector_counts,
                    "warnings": list(self.warnings)}
        if self.pixel_size_nm is not None:
            metadata["pixel_size_nm"] = self.pixel_size_nm
        if self.pixel_size_problem is not None:
            metadata["pixel_size_problem"] = self.pixel_size_problem
        if self.electrons_per_pixel is not None:
            metadata["electrons_per_pixel"] = self.electrons_per_pixel
        return metadata


def formats_installed(suffix: str = ".emd") -> bool:
    """Whether the reader of files ending in ``suffix`` can be imported (nothing is imported)."""
    modules = READERS.get(suffix.lower(), (None, None, ("rsciio",)))[2]
    return all(importlib.util.find_spec(module) is not None for module in modules)


def missing_formats_message(path: Union[str, pathlib.Path], missing: str = "rosettasciio"
                            ) -> str:
    """The one message for a microscope file when the ``formats`` extra is not installed."""
    path = pathlib.Path(path)
    name = READERS.get(path.suffix.lower(), (None, "microscope", ()))[1]
    return (f"{path}: reading {name} files needs the 'formats' extra ({missing} is not "
            f"installed): {FORMATS_INSTALL}")


def tiff_calibration_hint(path: Union[str, pathlib.Path]) -> str:
    """For the "no pixel size" message of a TIFF read without the ``formats`` extra: how to
    read its calibration (DigitalMicrograph, FEI and ImageJ TIFFs carry one); "" otherwise."""
    path = pathlib.Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES or formats_installed(path.suffix):
        return ""
    return (f" (a DigitalMicrograph, FEI or ImageJ TIFF carries it: {FORMATS_INSTALL} "
            "reads it)")


def _file_reader(path: pathlib.Path):
    module_name, _, modules = READERS[path.suffix.lower()]
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise _input_error(missing_formats_message(
                path, "rosettasciio" if module == "rsciio" else module))
    try:
        return importlib.import_module(module_name).file_reader
    except ImportError as error:  # a dependency of the reader itself (e.g. pint, dask)
        raise _input_error(missing_formats_message(path, error.name or str(error))) from None


@contextlib.contextmanager
def _quiet_rsciio():
    """RosettaSciIO logs and warns about metadata it cannot map; the user needs none of it."""
    logger = logging.getLogger("rsciio")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _read_signals(path: pathlib.Path) -> list[dict]:
    reader = _file_reader(path)
    # EMD: Velox files also hold spectra (not needed, slow to read); NCEM files may hold
    # datasets named alike, which RosettaSciIO would otherwise stack into one signal.
    options = ({"select_type": "images", "stack_group": False}
               if path.suffix.lower() == ".emd" else {})
    try:
        with _quiet_rsciio():
            signals = reader(str(path), **options)
    except Exception as error:  # the readers raise many types for corrupt or foreign files
        first = str(error).splitlines()[0] if str(error) else "no details"
        raise _input_error(f"{path}: cannot be read as a "
                           f"{READERS[path.suffix.lower()][1]} file "
                           f"({type(error).__name__}: {first})") from None
    if isinstance(signals, dict):
        signals = [signals]
    if not signals:
        raise _input_error(f"{path}: the file holds no signal")
    return list(signals)


def _get(tree, *keys):
    """tree[k0][k1]… or None."""
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _text(value) -> Optional[str]:
    if value is None or isinstance(value, (dict, list, tuple)):
        return None
    text = str(value).strip()
    return text or None


def _detector_name(signal: dict) -> Optional[str]:
    """The detector that recorded a signal, where the metadata say it."""
    original = signal.get("original_metadata") or {}
    for keys in (("BinaryResult", "Detector"), ("DetectorMetadata", "DetectorName")):  # Velox
        name = _text(_get(original, *keys))
        if name:
            return name
    # DigitalMicrograph: the image's tags (ImageList holds the file's images, thumbnail too).
    title = _get(signal, "metadata", "General", "title")
    groups = [group for group in (_get(original, "ImageList") or {}).values()
              if isinstance(group, dict) and "ImageTags" in group]
    matching = [group for group in groups if group.get("Name") == title] or (
        groups if len(groups) == 1 else [])
    for group in matching[:1]:
        for keys in (("QuickSaved", "original name"), ("DigiScan", "Signal Name")):
            name = _text(_get(group["ImageTags"], *keys))
            if name:
                return name
    return None


def describe_signals(signals: Sequence[dict]) -> list[SignalInfo]:
    """:class:`SignalInfo` of each signal dict RosettaSciIO returned."""
    infos = []
    for index, signal in enumerate(signals):
        data = signal["data"]
        dtype = np.dtype(data.dtype)
        axes = [axis for axis in signal.get("axes", []) if not axis.get("navigate", False)]
        image = (len(data.shape) == 2 and len(axes) == 2 and dtype.kind in "uif"
                 and dtype.names is None)
        infos.append(SignalInfo(index, _text(_get(signal, "metadata", "General", "title")) or "",
                                _detector_name(signal), tuple(int(n) for n in data.shape),
                                dtype.name, image))
    return infos


def choose_signal(signals: Sequence[SignalInfo], selector: Union[str, int, None],
                  path: Union[str, pathlib.Path] = "") -> SignalInfo:
    """The signal to read (see the module docstring for the rules).

    Args:
        signals: the file's signals (:func:`describe_signals`).
        selector: None (the only image, else the HAADF one), an index, or a title or detector
            name (case-insensitive; a string of digits is an index).
        path: the file, for messages.

    Raises:
        InputError: no match, several matches, or the choice is not an image; the message
            lists the file's signals.
    """
    listing = "; ".join(signal.label() for signal in signals)
    if selector is not None:
        text = str(selector).strip()
        if isinstance(selector, (int, np.integer)) or text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(signals):
                raise _input_error(f"{path}: --signal={text}: the file has {len(signals)} "
                                   f"signal(s), indices 0 to {len(signals) - 1}: {listing}")
            chosen = [signals[index]]
        else:
            chosen = [signal for signal in signals
                      if text.lower() in (name.lower() for name in signal.names())]
            if not chosen:
                raise _input_error(f"{path}: no signal named '{text}' (by title or detector); "
                                   f"its signals: {listing}")
            if len(chosen) > 1:
                raise _input_error(f"{path}: {len(chosen)} signals are named '{text}'; choose "
                                   f"one by index with --signal: {listing}")
        if not chosen[0].is_image:
            raise _input_error(f"{path}: signal {chosen[0].label()} is not a 2-D image "
                               f"(a stack, spectrum or complex FFT); its signals: {listing}")
        return chosen[0]
    images = [signal for signal in signals if signal.is_image]
    if not images:
        raise _input_error(f"{path}: no 2-D image among its signals ({listing}); a stack must "
                           "be split into one image per file")
    if len(images) == 1:
        return images[0]
    haadf = [signal for signal in images
             if any(HAADF_MARK in name.lower() for name in signal.names())]
    if len(haadf) == 1:
        return haadf[0]
    problem = ("none is named HAADF (by title or detector)" if not haadf
               else f"{len(haadf)} are named HAADF")
    raise _input_error(f"{path}: {len(images)} images and {problem}; choose one with --signal "
                       f"(a title, detector name or index): {listing}")


def normalize_units(units) -> Optional[str]:
    """The units as text, None for an uncalibrated axis (pixels, none, undefined)."""
    text = _text(units)
    if text is None or text.lower() in UNCALIBRATED_UNITS:
        return None
    return text


def nm_per_unit(units: str) -> Optional[float]:
    """nm per ``units`` (:data:`NM_PER_UNIT`, spelling as written or lower case), None if
    the units are not a known length."""
    return NM_PER_UNIT.get(units, NM_PER_UNIT.get(units.lower()))


def _is_reciprocal(units: str) -> bool:
    compact = units.replace(" ", "")
    return "1/" in compact or "^-1" in compact or "⁻¹" in compact


def _image_axes(signal: dict) -> list[dict]:
    """The (row, column) axes of a 2-D signal."""
    axes = [axis for axis in signal.get("axes", []) if not axis.get("navigate", False)]
    if all("index_in_array" in axis for axis in axes):
        axes = sorted(axes, key=lambda axis: axis["index_in_array"])
    return axes


def _imagej_units(path: pathlib.Path) -> Optional[str]:
    """The unit of an ImageJ TIFF's description, which RosettaSciIO reads only as "micron"."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            unit = _text((tiff.imagej_metadata or {}).get("unit"))
    except Exception:  # no ImageJ description, or an unreadable one: no units
        return None
    if unit and "\\u" in unit:  # ImageJ escapes non-ASCII units: "\u00B5m" is µm
        unit = re.sub(r"\\u([0-9a-fA-F]{4})", lambda match: chr(int(match.group(1), 16)), unit)
    return normalize_units(unit)


def pixel_size_from_axes(axes: Sequence[dict], path: Union[str, pathlib.Path] = "",
                         title: str = "", units_override: Optional[str] = None
                         ) -> tuple[Optional[float], Optional[float], Optional[str],
                                    Optional[str]]:
    """Pixel size in nm from a signal's two axes.

    Args:
        axes: RosettaSciIO axis dicts (``scale``, ``units``) of the rows and the columns.
        path, title: for messages.
        units_override: units to use where the axes have none (ImageJ TIFFs).

    Returns:
        (pixel size in nm or None, the column axis' scale and units as written (units None
        for an uncalibrated axis), and when the pixel size is None the message for the user:
        uncalibrated, unknown units or a scale that is not positive; --pixel_size_nm fixes
        each).

    Raises:
        InputError: reciprocal units (a diffraction pattern or FFT) or non-square pixels.
    """
    from hagg_tf.estimation.images import PIXEL_SIZE_TOLERANCE

    where = f"{path}{f' (signal {title!r})' if title else ''}"
    scales = [abs(float(1.0 if axis.get("scale") is None else axis["scale"])) for axis in axes]
    units = [normalize_units(axis.get("units")) or normalize_units(units_override)
             for axis in axes]
    if all(unit is None for unit in units):
        problem = (f"{where}: no pixel size in the file (its axes are in pixels"
                   + (f", scale {scales[0]:g} without units" if scales[0] != 1.0 else "")
                   + "); give --pixel_size_nm (nm per pixel of your images)")
        return None, scales[0], None, problem
    shown = units[0] or units[1]
    if any(unit and _is_reciprocal(unit) for unit in units):
        raise _input_error(f"{where}: its axes are in {shown}, reciprocal space: a "
                           "diffraction pattern or FFT, not a HAADF-STEM image")
    factors = [nm_per_unit(unit) if unit else None for unit in units]
    if any(factor is None for factor in factors):
        unknown = next(unit for unit, factor in zip(units, factors) if factor is None)
        return None, scales[0], shown, (
            f"{where}: unknown units {unknown!r} for the pixel size (known: pm, Å, nm, µm, "
            f"mm, m); give --pixel_size_nm (nm per pixel)")
    sizes = [scale * factor for scale, factor in zip(scales, factors)]
    if not all(size > 0 and math.isfinite(size) for size in sizes):
        return None, scales[0], shown, (f"{where}: the file's pixel size {scales[0]:g} "
                                        f"{shown} is not positive; give --pixel_size_nm")
    if not math.isclose(sizes[0], sizes[1], rel_tol=PIXEL_SIZE_TOLERANCE):
        raise _input_error(f"{where}: non-square pixels ({sizes[1]:g} nm wide, {sizes[0]:g} nm "
                           "high); resample the image to square pixels")
    return float(sizes[1]), scales[1], units[1], None


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def beam_current_and_dwell_time(signal: dict) -> tuple[Optional[float], Optional[float]]:
    """(beam current in A, dwell time per pixel in s) from a signal's metadata, None where
    absent or not positive (see the module docstring for where they are looked up)."""
    original = signal.get("original_metadata") or {}
    current = _number(_get(original, "Optics", "LastMeasuredScreenCurrent"))  # Velox, A
    dwell = _number(_get(original, "Scan", "DwellTime"))  # Velox, s
    # RosettaSciIO's mapping (original metadata path → hyperspy metadata path, converter) and
    # hyperspy's own metadata hold beam_current in nA and dwell_time in s.
    mapped = {}
    for source, (target, convert) in (signal.get("mapping") or {}).items():
        name = target.rsplit(".", 1)[-1]
        if name in ("beam_current", "dwell_time") and name not in mapped:
            value = _get(original, *source.split("."))
            if value is not None:
                try:
                    mapped[name] = _number(convert(value) if convert else value)
                except Exception:  # a converter that fails on this file's text: absent
                    mapped[name] = None
    instruments = _get(signal, "metadata", "Acquisition_instrument") or {}
    for instrument in instruments.values():
        if isinstance(instrument, dict):
            for name in ("beam_current", "dwell_time"):
                if mapped.get(name) is None:
                    mapped[name] = _number(instrument.get(name))
    if current is None and mapped.get("beam_current") is not None:
        current = mapped["beam_current"] * 1e-9
    if dwell is None:
        dwell = mapped.get("dwell_time")
    return current, dwell


def _pixels(data, path: pathlib.Path, signal: SignalInfo) -> tuple[np.ndarray, bool]:
    """(pixels, whether they are detector counts) as the module docstring describes."""
    pixels = np.asarray(data)
    if pixels.dtype.kind in "iu" and pixels.dtype != np.uint8:
        low, high = (int(pixels.min()), int(pixels.max())) if pixels.size else (0, 0)
        if low < 0:
            raise _input_error(f"{path}: signal {signal.label()} has negative counts (min "
                               f"{low}); give the detector's raw counts, not dark-subtracted "
                               "data")
        if high <= _UINT16_MAX:
            return pixels.astype(np.uint16), True
        return pixels.astype(np.float64), True
    if pixels.dtype == np.float16:
        pixels = pixels.astype(np.float32)
    return pixels, False


def read_microscope_image(path: Union[str, pathlib.Path],
                          signal: Union[str, int, None] = None) -> MicroscopeImage:
    """Reads one image, its pixel size and (where recorded) electrons per pixel from a
    microscope file (see the module docstring for the rules).

    Args:
        path: a ``.dm3``, ``.dm4``, ``.emd``, ``.mrc``, ``.tif`` or ``.tiff`` file.
        signal: which signal of a file with several (title, detector name or index); None
            chooses the only image or the HAADF one.

    Raises:
        InputError: the ``formats`` extra is missing, the file cannot be read, the signal is
            ambiguous or not an image, or its scale is reciprocal or non-square.
    """
    path = pathlib.Path(path)
    if path.suffix.lower() not in READERS:
        raise _input_error(f"{path}: not a microscope file (expected "
                           f"{', '.join(READERS)})")
    return _image_from_signals(path, _read_signals(path), signal)


def _units_override(path: pathlib.Path, signal: dict) -> Optional[str]:
    """ImageJ units for a TIFF whose axes RosettaSciIO left without units."""
    if path.suffix.lower() not in TIFF_SUFFIXES or any(
            normalize_units(axis.get("units")) for axis in _image_axes(signal)):
        return None
    return _imagej_units(path)


def _image_from_signals(path: pathlib.Path, dictionaries: list[dict],
                        signal: Union[str, int, None]) -> MicroscopeImage:
    infos = describe_signals(dictionaries)
    chosen = choose_signal(infos, signal, path)
    data = dictionaries[chosen.index]
    size, scale, units, problem = pixel_size_from_axes(
        _image_axes(data), path, chosen.title if len(infos) > 1 else "",
        _units_override(path, data))
    pixels, counts = _pixels(data["data"], path, chosen)
    current, dwell = beam_current_and_dwell_time(data)
    electrons, notes = None, []
    if current is not None and dwell is not None:
        from scipy.constants import elementary_charge

        electrons = current * dwell / elementary_charge
        notes.append(f"{path.name}: {electrons:.4g} electrons per pixel from the file's beam "
                     f"current ({current * 1e9:.4g} nA) × dwell time ({dwell * 1e6:.4g} µs), "
                     "taken as the full beam's value in the image: right for an "
                     "electron-counting detector; for another give --electrons_per_pixel")
    return MicroscopeImage(str(path), READERS[path.suffix.lower()][1], pixels,
                           np.dtype(data["data"].dtype).name, counts, chosen, tuple(infos),
                           scale, units, size, problem, electrons, current, dwell, notes)


def read_microscope_pixels(path: Union[str, pathlib.Path],
                           signal: Union[str, int, None] = None
                           ) -> Optional[tuple[np.ndarray, dict]]:
    """The hook of :func:`hagg_tf.estimation.images.read_stem_image`: (pixels, metadata)
    of a microscope file, or None for a TIFF to be read as a plain image, as without the
    ``formats`` extra: any TIFF when it is not installed, and one that RosettaSciIO cannot
    read or that has no length scale (no calibration) when it is."""
    from hagg_tf.estimation.images import InputError

    path = pathlib.Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return read_microscope_image(path, signal).pixels_and_metadata()
    if not formats_installed(path.suffix):
        return None
    try:
        dictionaries = _read_signals(path)
    except InputError:
        return None  # the plain reader gives its own message
    if not any(normalize_units(axis.get("units")) for data in dictionaries
               for axis in _image_axes(data)) and _imagej_units(path) is None:
        return None
    return _image_from_signals(path, dictionaries, signal).pixels_and_metadata()
