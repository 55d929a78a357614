"""Benchmark of many samples in one run (hagg_tf.estimation.batch): the time per sample.

Makes ``--samples`` sample folders (copies of the shipped examples/sample_a and sample_b, in
turn) under ``work/bench_batch/samples`` and characterizes them all with one loaded model, as
``hagg-characterize samples/*/`` does, with the tool's defaults (100 shadows, 200 bootstrap
resamples, the figure). Every sample is computed (``overwrite``: no resume).

Prints one JSON line: the first sample's time from the start of the run, TensorFlow's import
and the model's load included (``first_s``), the others' times (``others_s``: median, mean,
min, max; each from the end of the one before, so writing the files is included), the run's wall
time, its user and system CPU time, and the load average before and after (other work on the
machine inflates wall times). With --cli also the wall and CPU time of the same run as a
``hagg-characterize`` process (``cli``).

  python benchmarks/bench_batch.py
  python benchmarks/bench_batch.py --samples=20 --cli
"""
from __future__ import annotations

import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags

_SAMPLES = flags.DEFINE_integer("samples", 20, "Sample folders to characterize.", lower_bound=2)
_SHADOWS = flags.DEFINE_integer("shadows", 100, "Digital shadows per sample.", lower_bound=1)
_RESAMPLES = flags.DEFINE_integer("resamples", 200, "Bootstrap resamples per sample.",
                                  lower_bound=0)
_FIGURE = flags.DEFINE_bool("figure", True, "Write each sample's characterize.png.")
_RUNTIME = flags.DEFINE_enum("runtime", "auto", ["auto", "litert", "savedmodel"],
                             "Runtime of the networks (load_characterize_model).")
_CLI = flags.DEFINE_bool("cli", False, "Also time the same run as a hagg-characterize process.")
_WORK = flags.DEFINE_string("work", "work/bench_batch", "Scratch folder (samples and outputs).")

REPO = pathlib.Path(__file__).resolve().parents[1]


def make_samples(root: pathlib.Path, count: int) -> list[pathlib.Path]:
    """``count`` sample folders, copies of the shipped examples in turn (kept between runs)."""
    sources = [REPO / "examples" / "sample_a", REPO / "examples" / "sample_b"]
    folders = []
    for number in range(count):
        folder = root / f"sample-{number:02d}"
        if not folder.is_dir():
            shutil.copytree(sources[number % len(sources)], folder)
        folders.append(folder)
    return folders


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def main(argv):
    del argv
    work = pathlib.Path(_WORK.value)
    if not work.is_absolute():
        work = REPO / work
    folders = make_samples(work / "samples", _SAMPLES.value)
    load_before = os.getloadavg()
    started = time.perf_counter()
    cpu_started = _cpu()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from hagg_tf.estimation.batch import characterize_samples, samples_from_folders
    from hagg_tf.estimation.model import load_characterize_model

    model = load_characterize_model(None, _RUNTIME.value)
    loaded = time.perf_counter()
    stamps = []
    result = characterize_samples(
        samples_from_folders(folders), work / "run", model=model,
        options={"shadows": _SHADOWS.value, "resamples": _RESAMPLES.value, "seed": 0},
        figure=_FIGURE.value, overwrite=True, progress=False,
        on_sample=lambda *_: stamps.append(time.perf_counter()))
    finished = time.perf_counter()
    cpu_finished = _cpu()
    others = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    record = {
        "benchmark": "batch", "samples": len(folders), "failed": result.failed,
        "shadows": _SHADOWS.value, "resamples": _RESAMPLES.value, "figure": _FIGURE.value,
        "runtime": getattr(model, "runtime", type(model).__name__),
        "model_load_s": round(loaded - started, 3),
        "first_s": round(stamps[0] - started, 3),
        "first_after_load_s": round(stamps[0] - loaded, 3),
        "others_s": {"median": round(statistics.median(others), 3),
                     "mean": round(statistics.fmean(others), 3),
                     "min": round(min(others), 3), "max": round(max(others), 3)},
        "wall_s": round(finished - started, 3),
        "cpu_user_s": round(cpu_finished[0] - cpu_started[0], 3),
        "cpu_system_s": round(cpu_finished[1] - cpu_started[1], 3),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }
    if _CLI.value:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        command = [sys.executable, str(REPO / "tools" / "characterize.py"), *map(str, folders),
                   f"--output={work / 'run-cli'}", f"--shadows={_SHADOWS.value}",
                   f"--resamples={_RESAMPLES.value}", f"--runtime={_RUNTIME.value}",
                   "--overwrite", "--quiet"] + ([] if _FIGURE.value else ["--nofigure"])
        cli_started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - cli_started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        record["cli"] = {"returncode": completed.returncode, "wall_s": round(wall, 3),
                         "per_sample_s": round(wall / len(folders), 3),
                         "cpu_user_s": round(after.ru_utime - children.ru_utime, 3),
                         "cpu_system_s": round(after.ru_stime - children.ru_stime, 3)}
        if completed.returncode:
            record["cli"]["stderr_tail"] = completed.stderr[-2000:]
    print(json.dumps(record))


if __name__ == "__main__":
    app.run(main)
