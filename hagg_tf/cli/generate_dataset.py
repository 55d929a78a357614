"""Generate the training database (aggregates + HAADF-STEM images + labels) as TFRecord shards.

Examples:
  hagg-generate-dataset --preset=paper --output=work/datasets/paper --workers=2
  hagg-generate-dataset --preset=realistic --output=work/datasets/realistic --workers=2
  hagg-generate-dataset --preset=paper --output=/shared/paper --shard_index=7   # one shard
  hagg-generate-dataset --preset=tiny --output=work/datasets/tiny --tables=my_tables.csv
  hagg-generate-dataset --output=work/datasets/paper --verify_only
  hagg-generate-dataset --preset=tiny --runner=DirectRunner      # Apache Beam, in this process
  hagg-generate-dataset --output=/shared/paper --runner=FlinkRunner -- --flink_master=HOST:8081

Presets: paper (324 triples × 2 θ_Df × 50 = 32 400 samples; train 17 490, validation 1 950
(all T-draws of 65 whole θ), evaluation 12 960; 512 px), realistic (the paper's design, each
image under imaging conditions and particle sizes drawn from documented ranges: support film,
detector gain/offset/read noise, focus, blur, scan jitter and drift, dose, pixel size, radius,
particles per aggregate; stored in each record; see docs/data.md), small (288 samples at
512 px, for benchmarks), tiny (48 samples at 64 px, for tests). Sample i is a function of (--seed, i) alone, so the same settings give
byte-identical shards for any --workers and any split of the shards over runs or machines.
Rerunning the same command resumes: finished shards are kept, unfinished ones are redone. The
run that finds every shard finished writes manifest.json.

--runner=<a Beam runner> builds the shards with an Apache Beam pipeline (one work item per
shard file, written by the same writer: the same bytes as a local run, so --verify_only passes
alike); the output must be a folder that every worker sees. Beam's options follow '--' (see
docs/data.md, "Apache Beam").
"""

import os
import sys
import time
from pathlib import Path

from absl import flags

from hagg_tf.cli import (MAX_IMAGE_SIZE, check_output_dir, define_pixel_size,
                         define_runner_flags, define_seed, fail, run_tool,
                         runner_and_beam_args)

from hagg_tf.model.batch import default_workers

_PRESET = flags.DEFINE_enum("preset", "paper", ["paper", "realistic", "small", "tiny"],
                            "Database settings (see hagg_tf.data.design.PRESETS).")
_OUTPUT = flags.DEFINE_string("output", None,
                              "Database directory (default: work/datasets/<preset>).")
_SEED = define_seed(None, "Base seed (default: the preset's, 0).")
_WORKERS = flags.DEFINE_integer("workers", default_workers(),
                                "Processes computing samples (--runner=local).", lower_bound=1)
_RUNNER, _BEAM_ARGS = define_runner_flags("the shards")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None,
                                   "Shards per split (default: the preset's; paper: 32).",
                                   lower_bound=1)
_SHARD_INDEX = flags.DEFINE_integer(
    "shard_index", -1, "Write only shard k (0 ≤ k < num_shards, with its train, validation and "
    "evaluation parts), e.g. one cluster job per k; -1 writes all.", lower_bound=-1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None,
                                   "Pixels per image edge (default: the preset's; the field of "
                                   "view stays 614.4 nm unless --pixel_size_nm is given).",
                                   lower_bound=8, upper_bound=MAX_IMAGE_SIZE)
_PIXEL_SIZE = define_pixel_size(None, "Pixel edge, nm.")
_TABLES = flags.DEFINE_string("tables", None,
                              "HAADF table file (default: the tables shipped with hagg_tf).")
_VERIFY_ONLY = flags.DEFINE_bool("verify_only", False,
                                 "Only check an existing database against its manifest "
                                 "(sizes, sha256, record counts) and exit.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar (--runner=local).")



def _disk_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir() if path.is_file())


def _print_manifest(manifest: dict, directory: Path) -> None:
    for split, info in manifest["splits"].items():
        print(f"  {split:<10} {info['records']:>6} records ({info['homogeneous']} homogeneous) "
              f"in {len(info['shards'])} shards; per θ {min(info['per_theta'])}–"
              f"{max(info['per_theta'])}")
    print(f"  {len(manifest['thetas'])} θ configurations; {_disk_bytes(directory) / 1e6:.1f} MB "
          f"on disk in {directory}")


def main(argv):
    runner, beam_args = runner_and_beam_args(argv, _RUNNER, _BEAM_ARGS)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the writer imports TensorFlow
    from hagg_tf.data import DatasetError, design, generate_dataset, verify_dataset
    from hagg_tf.data.beam import LOCAL_RUNNER, generate_dataset_beam
    from hagg_tf.stem import TableError

    output = Path(_OUTPUT.value or f"work/datasets/{_PRESET.value}")
    if _VERIFY_ONLY.value:
        try:
            manifest = verify_dataset(output, level="checksum")
        except DatasetError as error:
            fail(str(error))
        print(f"{output}: {manifest['records']} records, every shard matches the manifest")
        _print_manifest(manifest, output)
        return

    check_output_dir(output)
    overrides = {key: flag.value for key, flag in (
        ("seed", _SEED), ("num_shards", _NUM_SHARDS), ("image_size", _IMAGE_SIZE),
        ("pixel_size_nm", _PIXEL_SIZE)) if flag.value is not None}
    try:
        config = design.preset(_PRESET.value, **overrides)
    except ValueError as error:
        fail(str(error))
    if not -1 <= _SHARD_INDEX.value < config.num_shards:
        fail(f"--shard_index must be -1 (all) or in 0..{config.num_shards - 1}, "
              f"got {_SHARD_INDEX.value}")
    if _TABLES.value is not None and not Path(_TABLES.value).is_file():
        fail(f"--tables: no such file: {_TABLES.value}")
    shards = None if _SHARD_INDEX.value < 0 else [_SHARD_INDEX.value]

    started = time.perf_counter()
    try:
        if runner == LOCAL_RUNNER:
            report = generate_dataset(output, config, shard_indices=shards,
                                      workers=_WORKERS.value, tables_path=_TABLES.value,
                                      progress=_PROGRESS.value, command=" ".join(sys.argv))
            ran_on = f"{_WORKERS.value} workers"
        else:
            report = generate_dataset_beam(output, config, runner=runner, beam_args=beam_args,
                                           shard_indices=shards, tables_path=_TABLES.value,
                                           command=" ".join(sys.argv))
            ran_on = f"Beam {runner}"
    except (DatasetError, TableError, ValueError, OSError, ImportError) as error:
        fail(str(error))
    elapsed = time.perf_counter() - started
    print(f"{report.records_written} samples in {len(report.written)} shard files written, "
          f"{len(report.skipped)} already complete ({elapsed:.1f} s, {ran_on})")
    if report.complete:
        print(f"database complete: {output / 'manifest.json'}")
        _print_manifest(report.manifest, output)
    else:
        print("database not complete yet: run the remaining shards (same command, other "
              "--shard_index, or -1 for all); the last run writes manifest.json")


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
