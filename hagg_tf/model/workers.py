"""Worker process pools whose workers never outlive the process that started them.

A pool's workers wait on pipes to their parent; when the parent is killed (SIGKILL, the OOM
killer, a closed terminal), nothing tells them to stop and they keep computing for minutes.
Every process pool of the package is therefore created through :func:`make_process_pool`, or
given :func:`bound_to_parent`'s initializer (``multiprocessing.Pool``), so that each worker

* asks Linux to send it SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and
* runs a daemon thread that checks ``os.getppid()`` every :data:`PARENT_POLL_INTERVAL_S` and
  exits when the worker has been re-parented (the portable fallback: other systems, and pools
  created off the main thread, see below).

Linux sends the death signal when the *thread* that spawned the worker ends, not the process.
Pools start their workers from the thread that creates them and submits work, so the signal is
requested only for pools created on the main thread; the others rely on the polling thread.
(``multiprocessing.Pool`` starts replacements for dead workers from its own handler thread,
which lives as long as the pool, so those replacements end with the pool at the latest.)

The worker exits with ``os._exit``: the parent that would have received its results is gone,
and the package's file writes are atomic (temporary name, then rename), so nothing half-written
is left looking complete.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import os
import sys
import threading
import time
from typing import Callable, Optional

#: How often a worker checks whether its parent still lives, seconds.
PARENT_POLL_INTERVAL_S = 1.0
# From <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1
_SIGKILL = 9
# Exit status of a worker that outlived its parent (as a shell reports death by SIGKILL).
_ORPHAN_EXIT_STATUS = 128 + _SIGKILL


def _request_death_signal() -> None:
    """Asks the Linux kernel to SIGKILL this process when its parent (thread) ends."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no usable libc: the polling thread still ends the worker


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 probes, sends nothing)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_INTERVAL_S)
        if os.getppid() != parent:
            os._exit(_ORPHAN_EXIT_STATUS)


def exit_with_parent(owner: int, death_signal: bool, initializer: Optional[Callable],
                     initargs: tuple) -> None:
    """Pool initializer (runs in each worker): end this worker when its parent process ends.

    Module-level so that "spawn" workers can import it. Use :func:`bound_to_parent` to build
    its arguments rather than calling it directly.

    Args:
        owner: pid of the process that created the pool.
        death_signal: request PR_SET_PDEATHSIG (only safe when the pool was created on the main
            thread, see the module docstring).
        initializer: the pool's own initializer, called afterwards (or None).
        initargs: its arguments.
    """
    if death_signal:
        _request_death_signal()
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="hagg_tf-exit-with-parent").start()
    # The owner may have died before the death signal was requested or the parent was read.
    if not process_alive(owner):
        os._exit(_ORPHAN_EXIT_STATUS)
    if initializer is not None:
        initializer(*initargs)


def bound_to_parent(initializer: Optional[Callable] = None, initargs: tuple = ()) -> dict:
    """``initializer``/``initargs`` keywords for a process pool whose workers die with this process.

    For ``concurrent.futures.ProcessPoolExecutor`` and ``multiprocessing.Pool`` alike; call it
    on the thread that creates the pool and submits the work.

    Args:
        initializer: the pool's own worker initializer (module-level for "spawn"), or None.
        initargs: its arguments.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    return {"initializer": exit_with_parent,
            "initargs": (os.getpid(), on_main_thread, initializer, tuple(initargs))}


def make_process_pool(workers: int, mp_context=None, initializer: Optional[Callable] = None,
                      initargs: tuple = ()) -> concurrent.futures.ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes that end when this process ends.

    Args:
        workers: worker processes.
        mp_context: multiprocessing context (e.g. ``multiprocessing.get_context("spawn")``);
            None for the platform's default.
        initializer: the workers' own initializer, or None.
        initargs: its arguments.
    """
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=mp_context, **bound_to_parent(initializer, initargs))
