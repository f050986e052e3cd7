"""Run a measurement in a fresh process, fast.

Each measurement gets its own process, so no setting's memory, allocator cache or CUDA context
leaks into the next. The processes are forked from a multiprocessing fork server that has
imported torch, transformers, bitsandbytes and peft once (memprof/measure/_preload.py) and has
done nothing else: it never touches CUDA or allocates tensors, so every child starts as clean as a
new interpreter, without paying ~10 s of imports each.

The child calls `module:function(request, result_path, send)`; the function writes its result
JSON to result_path (atomically) and may `send(message)` progress messages to the parent.
The server's environment is the one the parent had when the first measurement started.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["memprof.measure._preload"])
    return _CONTEXT


def _child(target: str, request: dict, result_path: str, log_path: str, conn) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module, function = target.split(":")
    getattr(importlib.import_module(module), function)(request, result_path, conn.send)
    conn.close()


@dataclass(frozen=True)
class Finished:
    """How a fresh process ended: its result JSON (None if it wrote none) and its exit.

    `timed_out` is True when run_fresh itself killed the process at `timeout_s`, so that a kill
    memprof made is never blamed on the OS.
    """

    result: dict | None
    exitcode: int
    log_tail: str  # last line the process printed, for errors
    timed_out: bool = False
    timeout_s: float | None = None

    def exit_reason(self) -> str:
        if self.timed_out:
            return f"timed out after {self.timeout_s:g} s"
        if self.exitcode < 0:
            name = signal.Signals(-self.exitcode).name
            hint = " (the OS killed it: most likely out of host memory)" if name == "SIGKILL" else ""
            return f"died with {name}{hint}"
        return f"exited with code {self.exitcode}: {self.log_tail or 'no output'}"


def run_fresh(
    target: str,
    request: dict,
    *,
    on_message: Callable[[object], None] | None = None,
    timeout_s: float | None = None,
) -> Finished:
    """Run `target` ("package.module:function") in a fresh process and wait for it.

    With `timeout_s`, a child still running after that many seconds is killed and the result says
    `timed_out`. KeyboardInterrupt (and any other exception here) kills the child first, then propagates.
    """
    ctx = _context()
    with tempfile.TemporaryDirectory(prefix="memprof-run-") as tmp:
        result_path, log_path = Path(tmp) / "result.json", Path(tmp) / "log"
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_child, args=(target, request, str(result_path), str(log_path), sender))
        process.start()
        sender.close()
        try:
            killed = _pump(process, receiver, on_message or (lambda _m: None), timeout_s)
            process.join()
        except BaseException:
            process.kill()
            process.join()
            raise
        finally:
            receiver.close()
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
        log = log_path.read_text(errors="replace").strip().splitlines() if log_path.is_file() else []
        # a child that finished just as the deadline passed was not killed by us: its own exit stands
        timed_out = killed and process.exitcode == -signal.SIGKILL
        return Finished(result, process.exitcode, log[-1] if log else "", timed_out=timed_out, timeout_s=timeout_s)


def _pump(process, receiver, on_message: Callable[[object], None], timeout_s: float | None) -> bool:
    """Pass the child's messages on until it ends; True if it was killed at the deadline."""
    import time

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        if receiver.poll(0.1):
            try:
                on_message(receiver.recv())
            except EOFError:  # the child closed its end: it is finishing or dead
                return _wait(process, deadline)
        elif not process.is_alive():
            return False
        if deadline is not None and time.monotonic() > deadline:
            process.kill()
            return True


def _wait(process, deadline: float | None) -> bool:
    """Wait for a child that closed its pipe, still under the deadline; True if it was killed at it."""
    import time

    process.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    if process.is_alive():
        process.kill()
        return True
    return False
