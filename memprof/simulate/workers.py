"""A simulation's steps run side by side: forked copies of the process that built the fake models each
run a share of the (depth, batch, seq) steps and send their Simulations back.

Why fork: a step costs ~0.2 s of FakeTensor dispatch, and a first plan runs 16 of them after ~3 s of
imports that a fresh process would pay again; a forked child starts with the imports done and the fake
models built. Why it changes nothing: a simulator's step starts from state that is the same whatever
ran before it (StepSimulator.run), so a step gives the same Simulation in any process and any order
(tests/simulate/test_workers.py compares them with one process). A child that ends without its
results (killed, out of memory, an error) costs time, not the answer: the parent runs its share
itself, where an error raises as it would have without children.

Only where fork is the platform's safe default (Linux): macOS's system frameworks do not survive a
fork. MEMPROF_SIM_PROCESSES=1 runs every step in this process.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable, Hashable, Sequence

from memprof.errors import OptionError

# more processes than points gain nothing: a process runs at least one point at every depth
MAX_PROCESSES = 8
# a child still running this long after this process finished its own share (and at least
# STUCK_FACTOR times as long as that took) is taken for stuck
STUCK_AFTER_S = 60.0
STUCK_FACTOR = 10
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def step_processes() -> int:
    """How many processes run a simulation's steps: MEMPROF_SIM_PROCESSES where set (a whole number
    >= 1, else OptionError), else the CPUs this process may use (at most MAX_PROCESSES); 1 without a
    safe fork."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return 1
    wanted = os.environ.get("MEMPROF_SIM_PROCESSES", "").strip()
    if wanted:
        if not (wanted.isascii() and wanted.isdigit()) or int(wanted) < 1:  # not '²', which int() refuses
            raise OptionError(
                f"MEMPROF_SIM_PROCESSES wants a whole number of processes >= 1, not {wanted!r} "
                "(1 runs every simulated step in this process; unset, one per CPU)"
            )
        return int(wanted)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_PROCESSES))


def shares(groups: Sequence[Sequence], processes: int) -> list[list]:
    """`groups` (each a point's steps at every depth) dealt round-robin into at most `processes`
    shares, a group kept whole (its steps reuse one another's FakeTensor cache: the same shapes)."""
    count = max(1, min(processes, len(groups)))
    out: list[list] = [[] for _ in range(count)]
    for i, group in enumerate(groups):
        out[i % count].extend(group)
    return [share for share in out if share]


def run_in_processes(
    groups: Sequence[Sequence[Hashable]],
    run_one: Callable[[Hashable, bool], object],
    *,
    processes: int | None = None,
) -> dict:
    """{job: run_one(job, here)} for every job of `groups`; `here` is True in this process (where
    progress may be reported) and False in a child. The first share runs here, the others in forked
    children; a child's share that does not come back runs here after this process's own."""
    processes = step_processes() if processes is None else processes
    parts = shares(groups, processes)
    if len(parts) <= 1:
        return {job: run_one(job, True) for group in groups for job in group}
    children: list[tuple[int, int, list]] = []  # (pid, read end, share)
    try:
        here = list(parts[0])
        for share in parts[1:]:
            try:
                children.append(_fork(share, run_one))
            except OSError:  # no process to be had (a limit, no memory): this one runs the share
                here += share
        start = time.monotonic()
        results = {job: run_one(job, True) for job in here}
        # a share takes about as long as this one: a child far slower than that is stuck (a lock
        # another thread held when it was forked), and its share runs here instead
        deadline = time.monotonic() + max(STUCK_AFTER_S, STUCK_FACTOR * (time.monotonic() - start))
        for pid, fd, share in children:
            got = _collect(pid, fd, deadline)
            results.update(got if got is not None else {job: run_one(job, True) for job in share})
    finally:
        for pid, fd, _ in children:
            _end(pid, fd)
    return results


def _fork(share: list, run_one) -> tuple[int, int, list]:
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # else the child's copy of a buffer could be written twice
    parent = os.getpid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with other threads (a status line)
        pid = os.fork()
    if pid == 0:  # the child: run the share, send it, and leave without running the parent's exit code
        status = 1
        try:
            os.close(read_fd)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
            _end_with(parent)
            if "torch" in sys.modules:
                # one thread: OpenMP's thread pool does not survive a fork (GNU libgomp can hang in a
                # child whose parent ran parallel regions); fake tensors compute nothing to share out
                sys.modules["torch"].set_num_threads(1)
            payload = pickle.dumps({job: run_one(job, False) for job in share}, protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
            status = 0
        except BaseException:  # noqa: BLE001  the parent reruns the share and raises what it raises
            pass
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, read_fd, share


def _end_with(parent: int) -> None:
    """Have the kernel kill this child when its parent ends, however it ends (SIGTERM, SIGKILL, a
    crash), so that no orphan goes on simulating; Linux's PR_SET_PDEATHSIG. A parent that ended
    before this was set is seen by the child's parent id changing."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _collect(pid: int, fd: int, deadline: float) -> dict | None:
    """The child's results, or None where it ended without them or is still running at `deadline`
    (it is killed then)."""
    chunks = []
    with contextlib.suppress(OSError):
        while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            chunks = []
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not chunks:
        return None
    try:
        return pickle.loads(b"".join(chunks))  # noqa: S301  our own child's bytes, over a private pipe
    except Exception:  # noqa: BLE001  a cut-off payload: rerun the share
        return None


def _end(pid: int, fd: int) -> None:
    """Close the pipe and make sure the child is gone (it is, unless this process is being interrupted)."""
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
