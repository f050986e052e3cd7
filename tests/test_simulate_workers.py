"""A simulation's steps in forked processes give exactly what one process gives (the cache entry byte
for byte); a child that dies, fails or hangs costs time, not the answer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_config

from memprof.errors import OptionError
from memprof.simulate import StepSpec, simulate_model, workers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="steps run side by side only on Linux")


def _cache_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("spec", "batch"),
    [(StepSpec(task="lora"), 1), (StepSpec(task="full", device="cuda"), 2), (StepSpec(task="infer", new_tokens=3), 2)],
    ids=["lora-batch1", "full", "generate"],
)
def test_steps_in_two_processes_equal_steps_in_one_byte_for_byte(spec, batch, tmp_path, monkeypatch):
    config = {**tiny_config("llama"), "num_hidden_layers": 6}  # simulated at 2 and 3 layers
    answers, said = {}, []
    for processes in ("1", "2"):
        monkeypatch.setenv("MEMPROF_SIM_PROCESSES", processes)
        monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / processes))
        fitted = simulate_model(config, spec, batch=batch, seq=16, on_progress=said.append)
        answers[processes] = (fitted, _cache_files(tmp_path / processes))
    one, two = answers["1"], answers["2"]
    assert fitted.simulated_layers == (2, 3)
    assert any(" in parallel)" in m for m in said)  # the second really ran side by side
    assert two[1] == one[1] and two[1]  # the same cache entries, byte for byte
    assert two[0].direct == one[0].direct and two[0].fit_error_bytes == one[0].fit_error_bytes


def _square(job, here):
    return job * job


def test_jobs_are_dealt_in_whole_groups_and_all_come_back():
    groups = [[1, 2], [3, 4], [5, 6], [7, 8], [9]]
    assert workers.shares(groups, 2) == [[1, 2, 5, 6, 9], [3, 4, 7, 8]]
    assert workers.shares(groups, 9) == groups  # never more shares than groups
    assert workers.run_in_processes(groups, _square, processes=3) == {j: j * j for j in range(1, 10)}


def test_a_child_that_dies_has_its_share_run_here():
    def dies_in_a_child(job, here):
        if not here:
            os._exit(3)  # killed, out of memory: no results
        return -job

    assert workers.run_in_processes([[1], [2], [3]], dies_in_a_child, processes=3) == {1: -1, 2: -2, 3: -3}


def test_without_a_process_to_be_had_every_share_runs_here(monkeypatch):
    def no_fork():
        raise BlockingIOError("Resource temporarily unavailable")

    monkeypatch.setattr(workers.os, "fork", no_fork)
    said = []
    assert workers.run_in_processes([[1], [2], [3]], lambda j, here: said.append(here) or j, processes=3) == {
        1: 1,
        2: 2,
        3: 3,
    }
    assert said == [True, True, True]


def test_an_error_in_a_child_is_raised_here_as_without_children():
    def fails_on_two(job, here):
        if job == 2:
            raise ValueError(f"bad job {job} (here={here})")
        return job

    with pytest.raises(ValueError, match=r"bad job 2 \(here=True\)"):
        workers.run_in_processes([[1], [2]], fails_on_two, processes=2)


def test_a_stuck_child_is_killed_and_its_share_run_here(monkeypatch):
    monkeypatch.setattr(workers, "STUCK_AFTER_S", 0.5)
    monkeypatch.setattr(workers, "STUCK_FACTOR", 1)

    def hangs_in_a_child(job, here):
        if not here:
            time.sleep(3600)
        return job

    start = time.monotonic()
    assert workers.run_in_processes([[1], [2]], hangs_in_a_child, processes=2) == {1: 1, 2: 2}
    assert time.monotonic() - start < 30


def test_how_many_processes(monkeypatch):
    monkeypatch.setenv("MEMPROF_SIM_PROCESSES", "1")
    assert workers.step_processes() == 1
    monkeypatch.setenv("MEMPROF_SIM_PROCESSES", "3")
    assert workers.step_processes() == 3
    for bad in ("0", "-2", "two", "1.5", "²"):
        monkeypatch.setenv("MEMPROF_SIM_PROCESSES", bad)
        with pytest.raises(
            OptionError, match=f"MEMPROF_SIM_PROCESSES wants a whole number of processes >= 1, not '{re.escape(bad)}'"
        ):
            workers.step_processes()
    monkeypatch.delenv("MEMPROF_SIM_PROCESSES")
    assert 1 <= workers.step_processes() <= min(workers.MAX_PROCESSES, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(workers.sys, "platform", "darwin")  # no fork where the platform cannot take it
    monkeypatch.setenv("MEMPROF_SIM_PROCESSES", "4")
    assert workers.step_processes() == 1


def test_a_child_does_not_outlive_its_parent(tmp_path):
    """SIGTERM (or SIGKILL) to the parent alone: the kernel ends the child too (no orphan simulating)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from memprof.simulate import workers\n"
        "def run_one(job, here):\n"
        "    if not here:\n"
        "        print(os.getpid(), flush=True)\n"
        "        time.sleep(60)\n"
        "    return job\n"
        "workers.run_in_processes([[1], [2]], run_one, processes=2)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(child):
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child of init waits to be reaped as one)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
