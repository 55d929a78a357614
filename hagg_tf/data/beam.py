"""The training database built by an Apache Beam pipeline (local runners or a cluster).

The design is cut into work items, one per shard file (split, shard k): a pure function of
(settings, shard) that computes the shard's samples and writes the shard and its sidecar with
the package's own writer (`hagg_tf.data.writer.write_one_shard`: temporary name, then rename,
then sidecar). The pipeline is ``Create(work items) → Map(write one shard)`` (Create
reshuffles, so that a runner does not fuse all items into one worker). When the pipeline has
finished, the driver writes ``manifest.json`` from the sidecars, as the local writer does. Hence:

* the shards are byte-identical to those of `hagg_tf.data.generate_dataset` for the same
  settings (same records, same order, same TFRecord writer), so a database built on a cluster
  passes ``hagg-generate-dataset --verify_only`` like a local one;
* rerunning resumes: finished shards are skipped by the driver and, should a runner retry an
  item, again by the worker.

The output folder must be a filesystem path that the driver and every worker see (a local
folder for the local runners; NFS, Lustre, a mounted bucket on a cluster). Object-store URLs
(``gs://``, ``s3://``) are not supported yet: the writer uses local file operations
(rename, fsync).

Runners: ``"local"`` (`LOCAL_RUNNER`) is not Beam but the package's process pool; any other
name is a Beam runner. ``DirectRunner`` and ``FnApiRunner`` both run Beam's Python
``FnApiRunner`` in this process (add ``--direct_num_workers=N
--direct_running_mode=multi_processing`` for N processes): Beam 2.77's ``DirectRunner`` would
first try the Prism runner, which downloads a binary from GitHub, and that fails offline.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

from hagg_tf.data.design import DatasetConfig
from hagg_tf.data.writer import (GenerationReport, plan_shards, prepare_output,
                                 write_manifest_if_complete, write_one_shard)

#: The runner name that means "no Beam: this machine's process pool".
LOCAL_RUNNER = "local"
#: Runner names that run Beam's Python FnApiRunner in this process (no Prism download).
IN_PROCESS_RUNNERS = ("DirectRunner", "FnApiRunner")
#: What to install when Beam is missing.
BEAM_INSTALL_HINT = "pip install 'hagg_tf[beam]' (apache-beam>=2.50)"

_LOGGER = logging.getLogger(__name__)


def is_beam_runner(runner: str) -> bool:
    """Whether ``runner`` names a Beam runner (anything but `LOCAL_RUNNER`)."""
    return runner != LOCAL_RUNNER


def beam_pipeline(runner: str, beam_args: Sequence[str] = ()):
    """A Beam pipeline on ``runner`` with the pipeline options ``beam_args``.

    Args:
        runner: a Beam runner name: ``DirectRunner`` / ``FnApiRunner`` (Beam's Python
            FnApiRunner, in this process), or any runner Beam knows (``DataflowRunner``,
            ``FlinkRunner``, ``SparkRunner``, ``PrismRunner``, …), which then reads its
            options (project, region, master, environment, …) from ``beam_args``.
        beam_args: Beam's command-line options, e.g. ``["--direct_num_workers=2"]``.

    Returns:
        An ``apache_beam.Pipeline`` (use it in a ``with`` block or call ``run``).

    Raises:
        ImportError: apache-beam is not installed (the message says how to install it).
        ValueError: ``runner`` is `LOCAL_RUNNER` or a name Beam does not know.
    """
    if not is_beam_runner(runner):
        raise ValueError(f"runner {LOCAL_RUNNER!r} is the local process pool, not a Beam runner")
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as error:
        raise ImportError(f"the Beam runners need apache-beam ({error}); "
                          f"{BEAM_INSTALL_HINT}") from None
    options = PipelineOptions(list(beam_args))
    if runner in IN_PROCESS_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    try:
        return beam.Pipeline(runner=runner, options=options)
    except ValueError as error:
        raise ValueError(f"unknown Beam runner {runner!r} ({error})") from None


class _ShardWriter:
    """Writes one shard work item (picklable: Beam ships it to the workers)."""

    def __init__(self, output: str, design, settings_sha256: str, tables_path: str | None):
        self.output = output
        self.design = design
        self.settings_sha256 = settings_sha256
        self.tables_path = tables_path

    def __call__(self, item: tuple[str, str, list[int]]) -> str:
        import numpy as np

        name, split, indices = item
        # The samples are computed without TensorFlow; TensorFlow only serialises the records,
        # and its C++ start-up notices are noise in a worker's log.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        write_one_shard(Path(self.output), name, split, np.asarray(indices, dtype=np.int64),
                        self.design, self.settings_sha256, self.tables_path)
        return name


def generate_dataset_beam(output: str | os.PathLike, config: DatasetConfig, *,
                          runner: str = "DirectRunner", beam_args: Sequence[str] = (),
                          shard_indices: Sequence[int] | None = None,
                          tables_path: str | None = None,
                          command: str | None = None) -> GenerationReport:
    """`hagg_tf.data.generate_dataset` as a Beam pipeline: same shards, same manifest.

    Args:
        output: database directory (created), a path the driver and all workers share.
        config: the database settings.
        runner: the Beam runner (see `beam_pipeline`).
        beam_args: Beam pipeline options.
        shard_indices: which shards k to write (each with its three split parts); None: all.
        tables_path: HAADF table file; None: the shipped one. Every worker must read it under
            this name (an absolute path on the shared filesystem): the records name it, so the
            same name gives the same bytes as the local writer.
        command: the command line, stored in the manifest.

    Returns:
        A `GenerationReport` (``written``: the shard files that were unfinished before the
        run; every worker writes one shard, so ``workers`` in the sidecars is 1).

    Raises:
        DatasetError: the directory holds a database with other settings.
        TableError: the HAADF tables cannot be loaded.
        ValueError: a shard index out of range, or an unknown runner.
        ImportError: apache-beam is not installed.
    """
    started = time.perf_counter()
    pipeline = beam_pipeline(runner, beam_args)  # an unknown runner fails before any write
    output, design, settings = prepare_output(output, config, tables_path)
    settings_sha256 = settings["settings_sha256"]
    todo, skipped, removed = plan_shards(output, design, settings_sha256, shard_indices)
    if todo:
        import apache_beam as beam

        items = [(name, split, [int(index) for index in indices])
                 for name, split, indices in todo]
        # tables_path as given, like the local writer: the records' renderer metadata names it.
        writer = _ShardWriter(str(output.resolve()), design, settings_sha256, tables_path)
        _LOGGER.info("writing %d shard files on %s", len(items), runner)
        # Create reshuffles its elements (more than one), so that a runner spreads the shards
        # over its workers instead of fusing them into one.
        _ = (pipeline
             | "shard work items" >> beam.Create(items)
             | "write shard" >> beam.Map(writer))
        result = pipeline.run()
        result.wait_until_finish()
    manifest = write_manifest_if_complete(output, design, settings, command)
    return GenerationReport(written=[name for name, _, _ in todo], skipped=skipped,
                            records_written=int(sum(len(indices) for _, _, indices in todo)),
                            wall_s=time.perf_counter() - started,
                            complete=manifest is not None, manifest=manifest,
                            removed_temporaries=removed)
