"""Many samples in one run: each folder one sample, the networks loaded once, one summary table.

:func:`characterize_samples` runs :func:`~hagg_tf.estimation.characterize.characterize` on
every sample with one loaded model, writes each sample's usual outputs (report.json, shadows,
figure) into ``<output>/<sample name>/`` and one table ``<output>/summary.csv`` with a row per
sample (:data:`SUMMARY_COLUMNS`: θ̂ with its bootstrap s.d. and 95 % interval, the shadows'
descriptor means and s.d., warnings, status). The table is rewritten (atomically) after every
sample, so an interrupted run leaves a table of what is done; samples not reached yet are
``pending``.

A sample that fails (unreadable or unusable images, too few of them, shadows that cannot be
drawn) gets the status ``error`` and its message in the row; the run goes on. A rerun with the
same output folder resumes: a sample whose report.json is complete (every file it lists is
there) and was written with the same settings (:func:`sample_settings`: the images' names,
sizes and modification times, the model, every option) is not computed again; ``overwrite``
redoes it.

The samples come from folders (:func:`samples_from_folders`) or from a CSV list
(:func:`read_sample_list`, columns :data:`SAMPLE_LIST_COLUMNS`). Sample names are the folders'
names; two folders of the same name get distinct output folders (``a``, ``a-2``, …) in the
order given.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Optional, Sequence, Union

from hagg_tf.estimation.images import InputError
from hagg_tf.estimation.quantities import THETA_QUANTITIES
from hagg_tf.estimation.shadows import SHADOW_DESCRIPTORS

#: The summary table of a batch run, in its output folder.
SUMMARY_FILENAME = "summary.csv"
#: Tag of the batch settings recorded in each sample's report.json (key ``batch``).
BATCH_FORMAT = "hagg_tf characterize batch/1"
#: Columns of a sample list (``--samples_from``): ``folder`` (required: the sample's folder of
#: images; relative paths are relative to the CSV file) and, optional, ``name`` (its output
#: folder; default the folder's name) and per-sample ``pixel_size_nm``, ``electrons_per_pixel``
#: and ``dose`` (empty: the run's own settings).
SAMPLE_LIST_COLUMNS = ("folder", "name", "pixel_size_nm", "electrons_per_pixel", "dose")
#: Status of a sample in the summary: done, failed, not reached yet.
STATUSES = ("ok", "error", "pending")
#: θ̂ columns of the summary: ``theta_<key>``, its bootstrap s.d. and 95 % interval.
THETA_COLUMNS = tuple(f"theta_{quantity.key}{suffix}" for quantity in THETA_QUANTITIES
                      for suffix in ("", "_sd", "_95_low", "_95_high"))
#: Descriptor columns: mean and s.d. over the shadows (``S_TiO2_mean``, ``S_TiO2_sd``, …).
DESCRIPTOR_COLUMNS = tuple(f"{symbol}_{statistic}" for symbol in SHADOW_DESCRIPTORS.values()
                           for statistic in ("mean", "sd"))
#: Every column of summary.csv, in order.
SUMMARY_COLUMNS = (("sample", "folder", "status", "images") + THETA_COLUMNS + DESCRIPTOR_COLUMNS
                   + ("shadows", "warnings", "error", "seconds", "output"))
# Per-sample imaging settings a sample list may give.
_SAMPLE_SETTINGS = ("pixel_size_nm", "electrons_per_pixel", "dose")
# Options that change how, not what, is computed (the shadows are the same on any number of
# workers and on a Beam runner): left out of the settings a resume compares.
_HOW_NOT_WHAT = ("workers", "runner", "beam_args", "progress", "shadow_work_dir")
# Where csv.DictReader puts the cells of a row beyond the header's columns.
_EXTRA_CELLS = "\0extra"


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """One sample of a batch run.

    Attributes:
        folder: its folder of images.
        name: its output folder's name, unique in the run.
        pixel_size_nm, electrons_per_pixel, dose: its own imaging settings (None: the run's).
    """

    folder: pathlib.Path
    name: str
    pixel_size_nm: Optional[float] = None
    electrons_per_pixel: Optional[float] = None
    dose: Optional[float] = None


@dataclasses.dataclass
class BatchResult:
    """What a batch run did.

    Attributes:
        rows: one summary row per sample, in order (:data:`SUMMARY_COLUMNS`).
        summary_path: the summary table.
        computed: samples computed in this run.
        resumed: samples taken from an earlier run's complete outputs.
        failed: samples that failed.
    """

    rows: list[dict]
    summary_path: pathlib.Path
    computed: int = 0
    resumed: int = 0
    failed: int = 0

    @property
    def all_failed(self) -> bool:
        """True if no sample has a result."""
        return bool(self.rows) and self.failed == len(self.rows)


def _folder_name(folder: pathlib.Path) -> str:
    return folder.name or folder.resolve().name or "sample"


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` made distinct: the second ``a`` becomes ``a-2``, the third ``a-3`` (compared
    without case, for case-insensitive file systems; never the summary table's name)."""
    taken = {SUMMARY_FILENAME.lower()}
    unique = []
    for name in names:
        candidate, number = name, 1
        while candidate.lower() in taken:
            number += 1
            candidate = f"{name}-{number}"
        taken.add(candidate.lower())
        unique.append(candidate)
    return unique


def _check_name(name: str, where: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"{where}: sample name {name!r} is not a plain folder name")
    return name


def samples_from_folders(folders: Sequence[Union[str, os.PathLike]]) -> list[SampleSpec]:
    """One sample per folder, named after it (made unique, :func:`unique_names`).

    Raises:
        InputError: no folders.
    """
    folders = [pathlib.Path(folder) for folder in folders]
    if not folders:
        raise InputError("no sample folders given")
    names = unique_names([_folder_name(folder) for folder in folders])
    return [SampleSpec(folder, name) for folder, name in zip(folders, names)]


def _optional_float(text: Optional[str], column: str, where: str) -> Optional[float]:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {column} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{where}: {column} must be a finite number > 0, got {text!r}")
    return value


def read_sample_list(path: Union[str, os.PathLike]) -> list[SampleSpec]:
    """The samples of a CSV list (header row with :data:`SAMPLE_LIST_COLUMNS`; ``folder``
    required, the others optional; blank rows skipped). Relative folders are relative to the
    CSV's folder.

    Raises:
        InputError: unreadable file, no ``folder`` column, an unknown column, a bad number or
            name, or no samples (the message names the file and line).
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is fine
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the sample list ({error})") from None
    reader = csv.DictReader(io.StringIO(text), restkey=_EXTRA_CELLS)
    columns = [name.strip() for name in reader.fieldnames or [] if name.strip()]
    if "folder" not in columns:
        raise InputError(f"{path}: a sample list needs a header row with a 'folder' column "
                         f"(and optionally {', '.join(SAMPLE_LIST_COLUMNS[1:])})")
    unknown = [name for name in columns if name not in SAMPLE_LIST_COLUMNS]
    if unknown:
        raise InputError(f"{path}: unknown column(s) {', '.join(unknown)}; the columns are "
                         f"{', '.join(SAMPLE_LIST_COLUMNS)}")
    rows = []
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        extra = [cell for cell in row.pop(_EXTRA_CELLS, []) if cell.strip()]
        row = {key.strip(): (value or "").strip() for key, value in row.items() if key.strip()}
        if extra:
            raise InputError(f"{where}: more cells than columns ({', '.join(extra)})")
        if not any(row.get(column) for column in columns):
            continue
        if not row.get("folder"):
            raise InputError(f"{where}: no folder")
        folder = pathlib.Path(row["folder"]).expanduser()
        if not folder.is_absolute():
            folder = path.parent / folder
        name = _check_name(row["name"], where) if row.get("name") else _folder_name(folder)
        settings = {column: _optional_float(row.get(column), column, where)
                    for column in _SAMPLE_SETTINGS}
        rows.append((folder, name, settings))
    if not rows:
        raise InputError(f"{path}: the sample list names no samples")
    names = unique_names([name for _, name, _ in rows])
    return [SampleSpec(folder, name, **settings)
            for (folder, _, settings), name in zip(rows, names)]


def _image_fingerprint(folder: pathlib.Path) -> list:
    """The images a sample consists of: names, sizes and modification times (what a resume
    compares; reading them all again would cost more than a re-run's networks)."""
    from hagg_tf.estimation.images import find_image_files

    paths, _ = find_image_files([folder])
    records = []
    for image in paths:
        stat = pathlib.Path(image).stat()
        records.append([pathlib.Path(image).name, stat.st_size, stat.st_mtime_ns])
    return records


def sample_settings(spec: SampleSpec, options: dict, model, output: dict) -> dict:
    """What a sample's result depends on, as JSON values: compared on a rerun (resume).

    Args:
        spec: the sample.
        options: the keyword arguments given to ``characterize`` (shadows, seed, resamples, …),
            and ``signal``.
        model: the loaded model (its folder and version are recorded).
        output: the output options (figure, xyz).

    Raises:
        InputError: the folder holds no images (from :func:`find_image_files`).
    """
    import hagg_tf

    sample = {key: getattr(spec, key) for key in _SAMPLE_SETTINGS}
    for key in _SAMPLE_SETTINGS:
        if sample[key] is None:
            sample[key] = options.get(key)
    settings = {
        "format": BATCH_FORMAT,
        "folder": str(spec.folder.resolve()),
        "images": _image_fingerprint(spec.folder),
        "imaging": sample,
        "options": {key: value for key, value in sorted(options.items())
                    if key not in _SAMPLE_SETTINGS and key not in _HOW_NOT_WHAT},
        "output": dict(sorted(output.items())),
        "model": {"path": str(pathlib.Path(model.version_dir).resolve()),
                  "version": (getattr(model, "metadata", None) or {}).get("version")},
        "hagg_tf": hagg_tf.__version__,
    }
    return json.loads(json.dumps(settings, default=str))


def finished_report(folder: pathlib.Path, settings: dict) -> Optional[dict]:
    """The sample's report.json if it is complete and was written with ``settings``, else None.

    Complete: it parses, is a characterize report, and every file it lists exists (report.json
    is written last, atomically, so an interrupted sample has none).
    """
    from hagg_tf.estimation.characterize import REPORT_FILENAME, REPORT_FORMAT

    path = folder / REPORT_FILENAME
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        return None
    if (report.get("batch") or {}).get("settings") != settings:
        return None
    files = report.get("files") or {}
    if not all((folder / str(name)).is_file() for name in files.values()):
        return None
    return report


def _blank_row(spec: SampleSpec, status: str) -> dict:
    row = {column: "" for column in SUMMARY_COLUMNS}
    row.update(sample=spec.name, folder=str(spec.folder), status=status, output=spec.name)
    return row


def summary_row(spec: SampleSpec, report: dict) -> dict:
    """The summary row of a finished sample, from its report.json."""
    from hagg_tf.estimation.characterize import collapse_warnings

    row = _blank_row(spec, "ok")
    row["images"] = len(report.get("images") or [])
    theta = report.get("theta_hat") or {}
    parameters = (report.get("uncertainty") or {}).get("parameters") or {}
    for quantity in THETA_QUANTITIES:
        key = quantity.key
        entry = parameters.get(key) or {}
        low, high = entry.get("interval_95") or ("", "")
        row.update({f"theta_{key}": theta.get(key, ""), f"theta_{key}_sd": entry.get("sd", ""),
                    f"theta_{key}_95_low": low, f"theta_{key}_95_high": high})
    descriptors = (report.get("shadows") or {}).get("descriptors") or {}
    for symbol in SHADOW_DESCRIPTORS.values():
        values = descriptors.get(symbol) or {}
        row[f"{symbol}_mean"] = values.get("mean", "")
        row[f"{symbol}_sd"] = values.get("std", "")
    row["shadows"] = (report.get("shadows") or {}).get("count", "")
    row["warnings"] = " | ".join(collapse_warnings(report.get("warnings") or []))
    row["seconds"] = (report.get("batch") or {}).get("seconds", "")
    return {key: "" if value is None else value for key, value in row.items()}


def error_row(spec: SampleSpec, error: BaseException) -> dict:
    """The summary row of a sample that failed: its message in ``error``."""
    row = _blank_row(spec, "error")
    row["error"] = " ".join(str(error).split())
    return row


def write_summary(path: Union[str, os.PathLike], rows: Sequence[dict]) -> pathlib.Path:
    """Writes the summary table (UTF-8 CSV, :data:`SUMMARY_COLUMNS`) atomically."""
    from hagg_tf.model.io import atomic_write

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    return atomic_write(path, lambda stream: stream.write(data))


def read_summary(path: Union[str, os.PathLike]) -> list[dict]:
    """The rows of a summary table (every value a string)."""
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _sample_errors() -> tuple:
    """The failures that end one sample, not the run: bad images or settings, shadows that
    cannot be drawn, files that cannot be read."""
    from hagg_tf.model.generator import GenerationError

    return (InputError, GenerationError, OSError)


def characterize_samples(samples: Sequence[SampleSpec], output_dir: Union[str, os.PathLike], *,
                         model, options: Optional[dict] = None, signal: Optional[str] = None,
                         figure: bool = True, xyz: bool = True, overwrite: bool = False,
                         progress: bool = True,
                         on_sample: Optional[Callable[[int, SampleSpec, dict], None]] = None
                         ) -> BatchResult:
    """Characterizes every sample with one loaded model; writes their outputs and the summary.

    Args:
        samples: the samples (:func:`samples_from_folders`, :func:`read_sample_list`).
        output_dir: the run's folder: ``<output_dir>/<sample name>/`` per sample and
            ``<output_dir>/summary.csv``.
        model: the loaded model (``hagg_tf.estimation.model.load_characterize_model``), used
            for every sample.
        options: keyword arguments of ``characterize`` for every sample (``shadows``, ``seed``,
            ``resamples``, ``shadow_theta``, ``workers``, ``radius_mean_nm``, …,
            ``pixel_size_nm``, ``electrons_per_pixel``, ``dose`` — the last three unless the
            sample gives its own). A Beam runner outside this process gets
            ``<sample folder>/shadow-blocks`` as its shared work folder.
        signal: the signal of multi-signal microscope files (as ``hagg-characterize --signal``).
        figure, xyz: write characterize.png, shadows.xyz.
        overwrite: compute every sample again, also those finished with the same settings.
        progress: a progress bar on stderr (sample i/N, elapsed, remaining).
        on_sample: called after each sample with (its number, the sample, its summary row).

    Returns:
        The rows and counts; see :class:`BatchResult`.
    """
    from tqdm import tqdm

    from hagg_tf.data.beam import IN_PROCESS_RUNNERS, is_beam_runner
    from hagg_tf.estimation.characterize import REPORT_FILENAME, characterize, write_outputs
    from hagg_tf.estimation.images import find_image_files, load_stem_images

    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    options = dict(options or {})
    options.pop("progress", None)  # one bar for the run; the shadows' own would interleave
    recorded_options = dict(options, signal=signal)
    runner = options.get("runner", "local")
    errors = _sample_errors()
    rows = [_blank_row(spec, "pending") for spec in samples]
    summary_path = output_dir / SUMMARY_FILENAME
    result = BatchResult(rows, summary_path)
    write_summary(summary_path, rows)
    interval = 0.5 if sys.stderr.isatty() else 10.0
    with tqdm(total=len(samples), desc="samples", unit="sample", file=sys.stderr,
              mininterval=interval, disable=not progress) as bar:
        for number, spec in enumerate(samples):
            bar.set_postfix_str(spec.name, refresh=False)
            folder = output_dir / spec.name
            started = time.perf_counter()
            try:
                settings = sample_settings(spec, recorded_options, model,
                                           {"figure": figure, "xyz": xyz})
                report = None if overwrite else finished_report(folder, settings)
                if report is not None:
                    result.resumed += 1
                else:
                    paths, notes = find_image_files([spec.folder])
                    imaging = {key: (getattr(spec, key) if getattr(spec, key) is not None
                                     else options.get(key)) for key in _SAMPLE_SETTINGS}
                    inputs, warnings = load_stem_images(paths, signal=signal, **imaging)
                    run_options = {key: value for key, value in options.items()
                                   if key not in _SAMPLE_SETTINGS}
                    if is_beam_runner(runner) and runner not in IN_PROCESS_RUNNERS:
                        run_options["shadow_work_dir"] = folder / "shadow-blocks"
                    outcome = characterize(inputs, model=model, progress=False, **run_options)
                    outcome.warnings[:0] = warnings
                    outcome.notes[:0] = notes
                    seconds = time.perf_counter() - started
                    # An earlier run's report would vouch for the files about to be replaced:
                    # gone first, so that an interruption here leaves no complete-looking mix.
                    (folder / REPORT_FILENAME).unlink(missing_ok=True)
                    written = write_outputs(outcome, folder, figure=figure, xyz=xyz,
                                            extra_report={"batch": {
                                                "settings": settings, "sample": spec.name,
                                                "seconds": round(seconds, 3)}})
                    report = json.loads(written["report"].read_text(encoding="utf-8"))
                    result.computed += 1
                rows[number] = summary_row(spec, report)
            except errors as error:
                rows[number] = error_row(spec, error)
                result.failed += 1
                bar.write(f"warning: sample {spec.name} ({spec.folder}) failed: "
                          f"{rows[number]['error']}", file=sys.stderr)
            write_summary(summary_path, rows)
            if on_sample is not None:
                on_sample(number, spec, rows[number])
            bar.update(1)
    return result


def default_batch_output(samples_from: Optional[Union[str, os.PathLike]],
                         folders: Sequence[Union[str, os.PathLike]]) -> pathlib.Path:
    """``work/characterize/<name>``: the sample list's name, else the name of the folder holding
    the first sample folder (``samples/*/`` → ``samples``)."""
    if samples_from is not None:
        name = pathlib.Path(samples_from).stem
    else:
        name = _folder_name(pathlib.Path(folders[0]).resolve().parent)
    return pathlib.Path("work") / "characterize" / (name or "batch")


def describe_row(row: dict) -> str:
    """One console line for a sample's summary row."""
    if row["status"] != "ok":
        return f"{row['sample']}: {row['status']}" + (f": {row['error']}" if row["error"]
                                                      else "")
    parts = []
    for quantity in THETA_QUANTITIES:
        value, sd = row[f"theta_{quantity.key}"], row[f"theta_{quantity.key}_sd"]
        text = _number(value)
        if sd != "":
            text += f" ± {_number(sd)}"
        parts.append(f"{quantity.symbol} = {text}")
    for symbol in SHADOW_DESCRIPTORS.values():
        parts.append(f"{symbol} = {_number(row[f'{symbol}_mean'])}")
    return f"{row['sample']}: " + ", ".join(parts)


def _number(value: Any) -> str:
    if value == "" or value is None:
        return "n/a"
    if isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit()):
        return str(value)
    return f"{float(value):.3f}"
