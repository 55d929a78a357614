"""Simulate HAADF-STEM images of aggregates (paper Sec. 2.1.4) as 16-bit PNGs with metadata.

Input is either aggregate files written by hagg_tf.model.io (one or many aggregates per file,
e.g. the parts written by tools/generate_aggregates.py), or θ, from which aggregates are drawn
with the stochastic model. With --theta, aggregate and image j use (--seed, --start_index + j);
an aggregate read from a file keeps the (seed, index) it was drawn with unless --seed is given.
Either way the images do not depend on --workers. One PNG per aggregate, named after the file
(<file>.png, or <file>_<k>.png for files holding several).

Examples:
  python tools/simulate_stem.py --theta=1.8,0.5,3,2 --count=12 --seed=1 --output=work/stem/images
  python tools/simulate_stem.py --aggregates='work/aggregates/*.npz' --workers=2
  python tools/simulate_stem.py --theta=2.0,0.3,1,4 --tables=my_stemsim_tables.csv
  python tools/simulate_stem.py --theta=1.8,0.5,3,2 --conditions=film_thickness_nm=5,read_noise=3

--conditions sets the imaging conditions of hagg_tf.stem.ImagingConditions (support film,
detector gain/offset/read noise, focus, probe blur, scan jitter and drift, dose, pixel size) as
name=value pairs, e.g. --conditions=film_thickness_nm=15,dark_offset=100,drift_nm=2,-1, or as
the JSON object an image's metadata stores under "conditions". --dose, --pixel_size_nm and
--focal_plane_nm set the same things: give each in one place only.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import sys
from pathlib import Path

from absl import flags

from hagg_tf.cli import (MAX_IMAGE_SIZE, check_output_dir, define_float, define_pixel_size,
                         define_seed, fail, reject_extra_arguments, run_tool)
from hagg_tf.model.parameters import MAX_SEED
from hagg_tf.model.workers import make_process_pool
from hagg_tf.stem import render as render_module

_AGGREGATES = flags.DEFINE_list("aggregates", None,
                                "Aggregate files (.npz) or glob patterns or directories.")
_THETA = flags.DEFINE_list("theta", None,
                           "θ = theta_Df,theta_rho,theta_0,theta_1 to draw aggregates from.")
_COUNT = flags.DEFINE_integer("count", 1, "Aggregates to draw from --theta.", lower_bound=1)
_SEED = define_seed(0, "Base seed (aggregate and image j use (seed, index)).")
_START_INDEX = flags.DEFINE_integer("start_index", 0, "Index of the first image.", lower_bound=0,
                                    upper_bound=MAX_SEED)
_OUTPUT = flags.DEFINE_string("output", "work/stem/images", "Output directory.")
_TABLES = flags.DEFINE_string("tables", None,
                              "HAADF table file (default: the shipped abTEM tables).")
_DETECTOR = flags.DEFINE_enum("detector", "sensitivity", ["sensitivity", "flat"],
                              "Detector: measured sensitivity curve or flat 55-250 mrad "
                              "(table columns 'intensity' / 'intensity_flat').")
_PIXEL = define_pixel_size(render_module.DEFAULT_PIXEL_SIZE_NM, "Pixel size, nm.")
_SIZE = flags.DEFINE_integer("image_size", render_module.DEFAULT_IMAGE_SIZE, "Pixels per edge.",
                             lower_bound=8, upper_bound=MAX_IMAGE_SIZE)
_DOSE = define_float("dose", render_module.DEFAULT_DOSE, "Electron dose, e/Å², > 0.",
                     positive=True)
_FOCAL = define_float("focal_plane_nm", 0.0, "Focal plane height above the centre of mass, nm.")
_SCAN_NOISE = define_float("scan_noise_nm", render_module.DEFAULT_SCAN_NOISE_NM,
                           "Probe displacement s.d., nm.", lower_bound=0.0)
_SHOT_NOISE = flags.DEFINE_boolean("shot_noise", True, "Poisson shot noise.")
_FILM_TABLE = flags.DEFINE_string("film_table", None,
                                  "Support-film HAADF table file, used with "
                                  "--conditions=film_thickness_nm=... (default: the shipped "
                                  "abTEM amorphous-carbon table).")
_CONDITIONS = flags.DEFINE_string(
    "conditions", None,
    "Imaging conditions as name=value pairs separated by commas (drift_nm takes x,y) or a JSON "
    "object; names: film_thickness_nm, gain, dark_offset, read_noise, focal_plane_offset_nm, "
    "probe_blur_nm, line_jitter_nm, drift_nm, dose, pixel_size_nm (docs/stem.md).")
_SAVE_AGGREGATES = flags.DEFINE_boolean("save_aggregates", True,
                                        "With --theta, also save each aggregate (.npz).")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes.", lower_bound=1)

_worker_tables = None


class InputError(Exception):
    """Bad user input; reported as one line, exit status 2."""



def _load_tables(path, detector):
    from hagg_tf.stem.tables import load_tables
    column = "intensity" if detector == "sensitivity" else "intensity_flat"
    return load_tables(path, column=column)


def _init_worker(tables_path, detector):
    global _worker_tables
    _worker_tables = _load_tables(tables_path, detector)


def _render_job(job: dict) -> dict:
    """Draw (for θ input) and render one aggregate, write the PNG (and the aggregate)."""
    from hagg_tf.stem.io import write_stem_png
    out_dir = Path(job["out_dir"])
    if job["aggregate"] is not None:
        aggregate = job["aggregate"]
    else:
        from hagg_tf.model.generator import sample_aggregate
        from hagg_tf.model.parameters import ModelParameters
        aggregate = sample_aggregate(ModelParameters(*job["theta"]), job["seed"], job["index"])
        if job["save_aggregate"]:
            from hagg_tf.model.io import save_aggregate
            save_aggregate(out_dir / f"{job['name']}.npz", aggregate)
    image = render_module.render_stem(aggregate, seed=job["seed"], index=job["index"],
                                      tables=_worker_tables, **job["render"])
    path = write_stem_png(out_dir / f"{job['name']}.png", image)
    return {"path": str(path), "particles_outside": image.metadata["particles_outside"],
            "saturated": image.metadata["saturated_pixels"]}


# The flags that set a field of the imaging conditions too: (flag, render_stem argument, field).
_CONDITION_FLAGS = (("dose", "dose", "dose"), ("pixel_size_nm", "pixel_size_nm", "pixel_size_nm"),
                    ("focal_plane_nm", "focal_plane_nm", "focal_plane_offset_nm"))


def _with_conditions(render_kwargs: dict, text: str) -> dict:
    """The render arguments with --conditions parsed; --dose & co. become their defaults."""
    from hagg_tf.stem.conditions import ConditionsError, ImagingConditions, parse_condition_changes
    try:
        changes = parse_condition_changes(text)
        conditions = ImagingConditions(**{field: render_kwargs[argument]
                                          for _, argument, field in _CONDITION_FLAGS}
                                       ).replace(**changes)
    except ConditionsError as error:
        raise InputError(f"--conditions: {error}")
    for flag, _, field in _CONDITION_FLAGS:
        if flags.FLAGS[flag].present and field in changes:
            raise InputError(f"--{flag} and --conditions both set {field}; give it in one place")
    render_kwargs = {key: value for key, value in render_kwargs.items()
                     if key not in {argument for _, argument, _ in _CONDITION_FLAGS}}
    return dict(render_kwargs, conditions=conditions)


def _load_files(files: list[str]) -> list[tuple[str, object]]:
    """(image name, aggregate) for every aggregate of every file; bad files are input errors."""
    try:
        from hagg_tf.model.io import load_aggregates
    except ImportError as error:
        raise InputError(f"reading aggregate files needs hagg_tf.model.io ({error})")
    named = []
    for path in files:
        try:
            aggregates = load_aggregates(path)
        except Exception as error:  # any failure to parse is a bad input file
            message = str(error)
            raise InputError(message if str(path) in message else f"{path}: {message}")
        stem = Path(path).stem
        if len(aggregates) == 1:
            named.append((stem, aggregates[0]))
        else:
            named.extend((f"{stem}_{k:04d}", aggregate) for k, aggregate in enumerate(aggregates))
    return named


def _expand(patterns: list[str]) -> list[str]:
    files = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            files.extend(sorted(str(p) for p in path.glob("*.npz")))
        elif any(char in pattern for char in "*?["):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise InputError(f"no aggregate files match {pattern!r}")
            files.extend(matches)
        elif path.is_file():
            files.append(pattern)
        else:
            raise InputError(f"{pattern}: aggregate file not found")
    if not files:
        raise InputError("no aggregate files given")
    return files


def main(argv):
    reject_extra_arguments(argv)
    if bool(_AGGREGATES.value) == bool(_THETA.value):
        fail("give exactly one of --aggregates and --theta")
    out_dir = check_output_dir(_OUTPUT.value)
    try:
        from hagg_tf.stem.tables import TableError
        try:
            tables = _load_tables(_TABLES.value, _DETECTOR.value)
        except TableError as error:
            raise InputError(str(error))
        render_kwargs = dict(pixel_size_nm=_PIXEL.value, image_size=_SIZE.value, dose=_DOSE.value,
                             focal_plane_nm=_FOCAL.value, scan_noise_nm=_SCAN_NOISE.value,
                             shot_noise=_SHOT_NOISE.value)
        if _CONDITIONS.value is not None:
            render_kwargs = _with_conditions(render_kwargs, _CONDITIONS.value)
            if render_kwargs["conditions"].film_thickness_nm > 0:
                from hagg_tf.stem.tables import load_film_table
                column = "intensity" if _DETECTOR.value == "sensitivity" else "intensity_flat"
                try:
                    render_kwargs["film_table"] = load_film_table(_FILM_TABLE.value, column=column)
                except TableError as error:
                    raise InputError(str(error))
        elif _FILM_TABLE.value is not None:
            raise InputError("--film_table needs --conditions=film_thickness_nm=...")
        common = {"save_aggregate": _SAVE_AGGREGATES.value, "out_dir": str(out_dir),
                  "render": render_kwargs}
        jobs = []
        if _THETA.value:
            from hagg_tf.model.parameters import ModelParameters, ParameterError
            try:
                theta = ModelParameters.from_sequence(float(v) for v in _THETA.value).as_tuple()
            except (ParameterError, ValueError) as error:
                raise InputError(f"--theta: {error}")
            for position in range(_COUNT.value):
                index = _START_INDEX.value + position
                jobs.append(dict(common, aggregate=None, theta=theta, seed=_SEED.value,
                                 index=index, name=f"aggregate_{index:06d}"))
        else:
            # An aggregate drawn by the generator keeps its own (seed, index) for its image
            # unless --seed is given; hand-made ones use (--seed, --start_index + position).
            own_stream = not flags.FLAGS["seed"].present
            for position, (name, aggregate) in enumerate(_load_files(_expand(_AGGREGATES.value))):
                if own_stream and aggregate.seed is not None and aggregate.index is not None:
                    seed, index = aggregate.seed, aggregate.index
                else:
                    seed, index = _SEED.value, _START_INDEX.value + position
                jobs.append(dict(common, aggregate=aggregate, theta=None, seed=seed, index=index,
                                 name=name))
        out_dir.mkdir(parents=True, exist_ok=True)
        results = _run(jobs, tables)
    except InputError as error:
        fail(str(error))
    outside = sum(result["particles_outside"] > 0 for result in results)
    saturated = sum(result["saturated"] > 0 for result in results)
    summary = {"images": len(results), "output": str(out_dir), "aggregates_cut_by_border": outside,
               "images_with_saturated_pixels": saturated}
    print(json.dumps(summary))
    return 0


def _run(jobs: list[dict], tables) -> list[dict]:
    from tqdm import tqdm
    global _worker_tables
    results = []
    bar = tqdm(total=len(jobs), desc="STEM images", unit="img", file=sys.stderr,
               disable=len(jobs) < 2)
    if _WORKERS.value == 1:
        _worker_tables = tables
        for job in jobs:
            results.append(_render_job(job))
            bar.update()
    else:
        with make_process_pool(_WORKERS.value, initializer=_init_worker,
                               initargs=(_TABLES.value, _DETECTOR.value)) as pool:
            futures = [pool.submit(_render_job, job) for job in jobs]
            try:
                for future in concurrent.futures.as_completed(futures):
                    results.append(future.result())
                    bar.update()
            except InputError:
                for future in futures:
                    future.cancel()
                raise
    bar.close()
    return results


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
