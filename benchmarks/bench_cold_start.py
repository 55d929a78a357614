"""Benchmark of a cold start: ``hagg-characterize examples/sample_a`` in fresh processes.

Runs the tool ``--runs`` times (default 5), each in a new Python process with the tool's defaults
(12 images, 100 shadows, the figure and the reports), and prints every run's wall time and
user + system CPU time (of the process and its children), the median wall time, the tool's own
per-stage timing line of each run, and the load average before and after (other work on the
machine inflates wall times; CPU time less so).

  python benchmarks/bench_cold_start.py
  python benchmarks/bench_cold_start.py --runtime=savedmodel --runs=3
  python benchmarks/bench_cold_start.py -- --shadows=800      (extra flags for the tool)
"""
from __future__ import annotations

import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags

_RUNS = flags.DEFINE_integer("runs", 5, "Fresh processes to time.", lower_bound=1)
_RUNTIME = flags.DEFINE_enum("runtime", "auto", ["auto", "litert", "savedmodel"],
                             "hagg-characterize --runtime.")
_SAMPLE = flags.DEFINE_string("sample", "examples/sample_a", "Sample folder to characterize.")
_WORK = flags.DEFINE_string("work", "work/bench_cold_start", "Scratch output folder.")


def _tool() -> list[str]:
    """The console script beside this interpreter, else the module run by it."""
    script = pathlib.Path(sys.executable).with_name("hagg-characterize")
    return [str(script)] if script.is_file() else [sys.executable, "-m",
                                                   "hagg_tf.cli.characterize"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv):
    work = pathlib.Path(_WORK.value)
    extra = list(argv[1:])
    walls, cpus, lines = [], [], []
    load_before = os.getloadavg()
    for number in range(_RUNS.value):
        output = work / f"run{number}"
        shutil.rmtree(output, ignore_errors=True)
        command = _tool() + [_SAMPLE.value, f"--output={output}", f"--runtime={_RUNTIME.value}",
                             *extra]
        cpu = _children_cpu()
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        walls.append(time.perf_counter() - started)
        cpus.append(_children_cpu() - cpu)
        if result.returncode:
            sys.exit(f"run {number} failed ({result.returncode}): {result.stderr.strip()}")
        timing = [line for line in result.stdout.splitlines() if line.startswith("time: ")]
        lines.append(timing[-1] if timing else "(no timing line)")
    load_after = os.getloadavg()
    print(f"hagg-characterize {_SAMPLE.value} --runtime={_RUNTIME.value} {' '.join(extra)}")
    print(f"median wall {statistics.median(walls):.2f} s over {len(walls)} fresh runs; "
          f"wall: {', '.join(f'{value:.2f}' for value in walls)} s; user+sys CPU: "
          f"{', '.join(f'{value:.2f}' for value in cpus)} s")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} cores)")
    for number, line in enumerate(lines):
        print(f"run {number}: {line}")


if __name__ == "__main__":
    app.run(main)
