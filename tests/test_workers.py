"""Worker processes of the package's process pools die with their parent (issue 14, point 13)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the process table from /proc")

_REPOSITORY = Path(__file__).resolve().parents[1]


def _stat(pid):
    """(state, parent pid, start time) of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[19])


def _children(pid):
    """{child pid: start time} of the live children of ``pid``."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(entry.name)
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                children[int(entry.name)] = stat[2]
    return children


def _alive(processes):
    """The processes of {pid: start time} that still run (zombies and reused pids count as gone)."""
    alive = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z" and stat[2] == started:
            alive.append(pid)
    return alive


def _wait_for(condition, timeout_s, interval_s=0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    return condition()


def _kill_parent_and_watch(parent, workers, timeout_s=10.0):
    """SIGKILLs ``parent``; returns the workers still alive ``timeout_s`` later (killing them)."""
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        # Emptiness ends the wait early; what is left after the timeout survived.
        _wait_for(lambda: not _alive(workers), timeout_s)
        return _alive(workers)
    finally:
        for pid in _alive(workers):  # never leave orphans behind, whatever the outcome
            os.kill(pid, signal.SIGKILL)


def _environment():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(_REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]))


def test_generate_aggregates_workers_die_when_the_command_is_killed(tmp_path):
    command = subprocess.Popen(
        [sys.executable, "-m", "hagg_tf.cli.generate_aggregates", "--workers=2", "--grid=random",
         "--count=100000", "--progress=false", f"--output={tmp_path / 'out'}"],
        cwd=tmp_path, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The two "spawn" workers (multiprocessing's resource tracker is a child too; it ends by
        # itself once no worker holds its pipe).
        def workers():
            children = _children(command.pid)
            spawned = {pid: started for pid, started in children.items()
                       if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}
            return spawned if len(spawned) == 2 else None

        spawned = _wait_for(workers, 60)
        assert spawned, "the command never started two worker processes"
        time.sleep(1.0)  # let them get to work
        assert command.poll() is None
        children = _children(command.pid)
    except BaseException:
        command.kill()
        raise
    survivors = _kill_parent_and_watch(command, children)
    assert survivors == [], f"processes {survivors} outlived the killed command"


_THREAD_POOL_SCRIPT = textwrap.dedent("""
    import os, threading, time
    from hagg_tf.model.workers import make_process_pool

    pools = []

    def start_pool():
        pool = make_process_pool(1)
        pools.append(pool)
        pool.submit(os.getpid).result()  # the worker starts from this thread

    thread = threading.Thread(target=start_pool)
    thread.start()
    thread.join()
    time.sleep(1.0)
    # The creating thread has ended; the worker must still serve (no death signal tied to it).
    print(pools[0].submit(os.getpid).result(), flush=True)
    time.sleep(600)
""")


def test_workers_of_a_pool_made_off_the_main_thread_outlive_that_thread_not_the_process():
    script = subprocess.Popen([sys.executable, "-c", _THREAD_POOL_SCRIPT], env=_environment(),
                              stdout=subprocess.PIPE, text=True)
    try:
        line = script.stdout.readline()
        assert line.strip().isdigit(), "the pool's worker did not survive its creating thread"
        worker = int(line)
        workers = {worker: _stat(worker)[2]}
    except BaseException:
        script.kill()
        raise
    survivors = _kill_parent_and_watch(script, workers)
    assert survivors == [], f"worker {worker} outlived the killed process"
