"""Command-line entry points (absl flags); each module's ``run`` is a console script.

Every tool starts through :func:`run_tool`, so that all of them keep the same contract:

* ``-h``, ``--help`` and ``--helpshort`` print the tool's module docstring, its usage line
  (with the positional arguments) and its own flags with their help, and exit 0;
  ``--helpfull`` adds absl's flags (logging, ``--flagfile``, …).
* A flag that absl cannot parse (an unknown name, with absl's "Did you mean" suggestion, a value
  of the wrong type, a value outside the flag's bounds or refused by a validator) ends the
  command like any other bad input: one ``error:`` line on stderr and exit status 2
  (:func:`fail`), before any work starts.
* Output folders and files are checked (:func:`check_output_dir`, :func:`check_output_file`)
  before the work starts, so a path that cannot be written fails in a second, not after a run.

Numeric flags are defined with bounds (:func:`define_float`, :func:`define_seed`, absl's
``lower_bound``/``upper_bound``), so that ``inf``, ``nan``, negative seeds and absurd sizes are
refused at parse time.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Callable, NoReturn, Optional, Sequence, Union

from absl import app, flags

from hagg_tf.model.parameters import MAX_SEED

# The define_* helpers below define flags for the tool module that calls them: absl then lists
# those flags under the tool (its --help), not under this module.
flags.disclaim_key_flags()

#: Pixel sizes the tools accept, nm (inclusive). From 0.1 Å, finer than atomic-resolution
#: HAADF-STEM is sampled, to 100 nm, about 80 times the networks' 1.2 nm, where a whole
#: aggregate spans a few pixels; outside it a value is a typo (e.g. Å or m for nm).
PIXEL_SIZE_RANGE_NM = (0.01, 100.0)
#: Largest image side the simulation tools render, pixels (8192² float64 pixels are 512 MiB).
MAX_IMAGE_SIZE = 8192

#: Command-line words that ask for the tool's own help (absl's ``-?`` included).
_HELP_WORDS = frozenset({"-h", "--help", "-help", "--helpshort", "-helpshort", "-?"})
#: … and for the help on every flag, absl's included.
_HELPFULL_WORDS = frozenset({"--helpfull", "-helpfull"})


def fail(message: str) -> NoReturn:
    """Ends a command with one ``error:`` line on stderr and exit status 2, no traceback."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def reject_extra_arguments(argv: Sequence[str]) -> None:
    """Fails on positional arguments, for the commands that take flags only."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")


def define_float(name: str, default: Optional[float], help_text: str, *,
                 lower_bound: Optional[float] = None, upper_bound: Optional[float] = None,
                 positive: bool = False) -> flags.FlagHolder:
    """``flags.DEFINE_float`` whose value must also be finite (and > 0 with ``positive``).

    absl's bounds let ``nan`` through, and ``inf`` through on an open side; ``positive``
    refuses 0 where absl's inclusive ``lower_bound`` cannot.
    """
    holder = flags.DEFINE_float(name, default, help_text, lower_bound=lower_bound,
                                upper_bound=upper_bound)
    requirement = "a finite number > 0" if positive else "a finite number"
    flags.register_validator(
        holder, lambda value: value is None or (math.isfinite(value) and
                                                (not positive or value > 0)),
        message=f"must be {requirement}")
    return holder


def define_pixel_size(default: Optional[float], help_text: str) -> flags.FlagHolder:
    """The ``--pixel_size_nm`` flag, bounded to :data:`PIXEL_SIZE_RANGE_NM`."""
    low, high = PIXEL_SIZE_RANGE_NM
    return define_float("pixel_size_nm", default, help_text, lower_bound=low, upper_bound=high)


def define_seed(default: Optional[int], help_text: str) -> flags.FlagHolder:
    """The ``--seed`` flag: an integer in [0, :data:`MAX_SEED`] (numpy refuses negative seeds)."""
    return flags.DEFINE_integer("seed", default, help_text, lower_bound=0, upper_bound=MAX_SEED)


def check_output_dir(path: Union[str, os.PathLike], flag: str = "--output") -> Path:
    """Fails unless ``path`` is a folder this process can write in, or one it can create.

    Creates nothing: the nearest existing folder on the path gets a probe file, removed at once.
    A real write is the only reliable test: root ignores permission bits, and folders such as
    ``/proc`` refuse new files whatever their bits say.

    Args:
        path: the output folder.
        flag: the flag that named it, for the message (``--output``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    _require_writable(path, f"{flag}={path}")
    return path


def check_output_file(path: Union[str, os.PathLike], flag: str = "--output") -> Path:
    """:func:`check_output_dir` for an output file: no folder, and in a writable folder."""
    path = Path(path)
    if path.is_dir():
        fail(f"{flag}={path}: is a folder; give a file name")
    _require_writable(path.parent, f"{flag}={path}")
    return path


def _require_writable(folder: Path, named: str) -> None:
    existing = next((candidate for candidate in (folder, *folder.parents)
                     if candidate.exists()), Path("."))
    if not existing.is_dir():
        fail(f"{named}: " + ("exists and is not a folder" if existing == folder
                             else f"{existing} is a file, not a folder"))
    try:
        handle, probe = tempfile.mkstemp(prefix=".hagg_tf-write-check-", dir=existing)
    except OSError as error:
        fail(f"{named}: cannot write in {existing} ({error.strerror or error})")
    os.close(handle)
    os.unlink(probe)


def run_tool(main: Callable[[list[str]], Optional[int]], arguments: str = "") -> None:
    """Runs a tool's ``main(argv)`` with absl under the contract of this package's tools.

    Args:
        main: the tool's ``main``; its module holds the flags and the docstring shown by
            ``--help``.
        arguments: the positional arguments for the usage line, e.g. ``"FOLDER | FILE ..."``;
            empty for tools that take flags only.
    """
    module = sys.modules[main.__module__]
    words = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    if any(word in _HELPFULL_WORDS for word in words):
        app.define_help_flags()
        _print_help(_help_text(module, arguments, flags.FLAGS.get_help()))
    if any(word in _HELP_WORDS for word in words):
        _print_help(_help_text(module, arguments, _own_flags_help(module)))
    app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with its errors as one ``error:`` line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = str(error)
        fail(f"{message[len('flag '):] if message.startswith('flag --') else message} "
             "(--help lists the flags)")


def _own_flags_help(module: types.ModuleType) -> str:
    """The help of the flags ``module`` defines, without absl's header naming the module."""
    lines = flags.FLAGS.module_help(module).splitlines()
    while lines and (not lines[0].strip() or not lines[0].startswith(" ")):
        lines.pop(0)
    return "flags:\n" + "\n".join(lines) if lines else "flags: none"


def _print_help(text: str) -> NoReturn:
    """Prints the help and exits 0, also when a pager or ``head`` closed stdout early."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def _help_text(module: types.ModuleType, arguments: str, flags_help: str) -> str:
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if main_module is module and spec is not None:
        program = f"python -m {spec.name}"
    elif sys.argv[0].endswith(".py"):
        program = f"python {sys.argv[0]}"
    else:
        program = os.path.basename(sys.argv[0])
    usage = (f"USAGE: {program} [flags] {arguments}" if arguments
             else f"USAGE: {program} [flags]   (flags only, no positional arguments)")
    return "\n\n".join(part for part in ((module.__doc__ or "").strip(), usage, flags_help)
                       if part)


def define_runner_flags(work: str) -> tuple[flags.FlagHolder, flags.FlagHolder]:
    """Defines ``--runner`` and ``--beam_args`` for the calling tool (docs/data.md: Beam).

    Beam's own options (``--project``, ``--flink_master``, ``--direct_num_workers``, …) follow a
    ``--`` on the command line, where absl leaves them alone, or go into ``--beam_args`` as one
    quoted string; both may be given.

    Args:
        work: what the runner computes, for the help text (e.g. "the shards").

    Returns:
        (runner, beam_args) flag holders; read them with :func:`runner_and_beam_args`.
    """
    from hagg_tf.data.beam import LOCAL_RUNNER

    runner = flags.DEFINE_string(
        "runner", LOCAL_RUNNER,
        f"Where {work} are computed: '{LOCAL_RUNNER}' (this machine's worker processes, "
        "--workers) or an Apache Beam runner: DirectRunner or FnApiRunner (Beam in this "
        "process), DataflowRunner, FlinkRunner, SparkRunner, … with Beam's options after '--' "
        "or in --beam_args (needs apache-beam: pip install 'hagg_tf[beam]').")
    beam_args = flags.DEFINE_string(
        "beam_args", "", "Beam pipeline options as one string, e.g. '--direct_num_workers=2 "
        "--direct_running_mode=multi_processing'; also accepted after '--'.")
    return runner, beam_args


def runner_and_beam_args(argv: Sequence[str], runner: flags.FlagHolder,
                         beam_args: flags.FlagHolder, *, positional: bool = False
                         ) -> tuple[str, list[str]]:
    """The runner and Beam's options of this command; fails on any other positional argument.

    absl drops the ``--`` and hands what follows it to ``main`` as positional arguments; those
    are Beam's. Anything before the ``--`` is an error, as for the tools without Beam.

    Args:
        argv: ``main``'s argv.
        runner, beam_args: from :func:`define_runner_flags`.
        positional: the tool takes positional arguments of its own (before the ``--``).

    Returns:
        (runner name, Beam options: ``--beam_args`` split like a shell, then those after
        ``--``).
    """
    import logging
    import shlex

    from hagg_tf.data.beam import LOCAL_RUNNER, is_beam_runner

    after_dash = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    extra = [] if positional else list(argv[1:len(argv) - len(after_dash)])
    if extra or list(argv[len(argv) - len(after_dash):]) != after_dash:
        fail(f"unexpected arguments: {' '.join(extra or argv[1:])} (Beam's options go "
             "after '--' or into --beam_args)")
    try:
        options = shlex.split(beam_args.value) + after_dash
    except ValueError as error:
        fail(f"--beam_args: {error}")
    name = runner.value.strip()
    if not name:
        fail(f"--runner must name a runner ('{LOCAL_RUNNER}' or a Beam runner)")
    if options and not is_beam_runner(name):
        fail(f"Beam options ({' '.join(options)}) need --runner=<a Beam runner>, not "
             f"'{LOCAL_RUNNER}'")
    if is_beam_runner(name):
        # Beam logs at INFO what it cannot use (BigQuery clients, …); the tool's output and
        # Beam's warnings and errors stay.
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    return name, options
