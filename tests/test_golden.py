"""Golden outputs: the JSON (and Markdown) of a fixed set of commands, recorded before the package
was reshaped (issue 11), so a restructure that changes behaviour fails here, by command.

Each case is a command line run in-process from tests/golden/, its stdout compared byte for byte
with tests/golden/<name>.<ext>, after dropping only what changes from run to run by nature: the
time a result was made and the machine it ran on (`created`, `env`), timings, and the command line
as the shell saw it. `MEMPROF_REGEN_GOLDEN=1 pytest tests/test_golden.py` writes the files anew
(review the diff: that is the behaviour change).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from memprof.cli import main

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("MEMPROF_REGEN_GOLDEN") == "1"
# What differs between two runs of the same command on the same code: not behaviour.
VOLATILE_KEYS = {"created", "env", "command", "from_cache", "from_fit"}  # from_*: the cache's state
VOLATILE_SUFFIXES = ("_ms", "_s", "_ms_iqr", "_s_iqr")
# a measured run's timeline: every tensor event of the step (its peak equals the step's, tested in
# tests/test_timeline.py and tests/test_profile_modes.py); kept out so the golden files stay readable
MEASURED_DETAIL = {"timeline", "measured_timeline"}

# A CPU plan's one row is this machine, sized by /proc/meminfo's MemTotal, which a VM's balloon
# driver moves between runs (by ~200 KiB here): pinned to the value the files were recorded with.
RECORDED_HOST_MEMORY_BYTES = 25_275_973_632

TINY = ["--batch", "2", "--seq", "64", "--no-cache"]
CASES = {
    # the catalog, footprint and LoRA counts: no torch on their path
    "models": ["models", "--json"],
    "gpus": ["gpus", "--json"],
    "footprint-llama-3.1-8b": ["footprint", "--json"],
    "footprint-bloom-3b": [
        "footprint",
        "bigscience/bloom-3b",
        "--settings",
        "fp32,fp16,bf16,int8,nf4,nf4-dq,fp4",
        "--json",
    ],
    "lora-params-qlora-course": [
        "lora-params",
        "--r",
        "32",
        "--alpha",
        "64",
        "--target",
        "q_proj,k_proj,v_proj,o_proj",
        "--setting",
        "nf4-dq",
        "--json",
    ],
    "lora-params-bloom-3b": ["lora-params", "bigscience/bloom-3b", "--r", "8", "--target", "query_key_value", "--json"],
    "lora-params-sweep": ["lora-params", "llama-3.2-1b", "--sweep", "8,16,32", "--target", "all-linear", "--json"],
    # plan for each task, on a tiny config (the simulation runs, uncached)
    "plan-infer": ["plan", "tiny-llama", "--task", "infer", "--new-tokens", "16", "--gpus", "T4,H100", *TINY, "--json"],
    "plan-lora": [
        "plan",
        "tiny-llama",
        "--task",
        "lora",
        "--target",
        "all-linear",
        "--gpus",
        "T4,H100",
        *TINY,
        "--json",
    ],
    "plan-qlora": ["plan", "tiny-llama", "--task", "qlora", "--gpus", "T4,H100", *TINY, "--json"],
    "plan-full": ["plan", "tiny-llama", "--task", "full", "--gpus", "T4,H100", *TINY, "--json"],
    "plan-full-fsdp-auto": [
        "plan",
        "tiny-gpt2",
        "--task",
        "full",
        "--num-gpus",
        "auto",
        "--shard",
        "fsdp",
        *TINY,
        "--json",
    ],
    "plan-qlora-cpu": ["plan", "tiny-llama", "--task", "qlora", "--device", "cpu", *TINY, "--json"],
    "plan-lora-md": ["plan", "tiny-gpt2", "--task", "lora", "--gpus", "T4", *TINY, "--format", "md"],
    # re-rendering and comparing committed results
    "report-validate-md": ["report", "../../reports/validate-cpu-gpt2.json", "--format", "md"],
    "report-footprint-md": ["report", "../../reports/footprint-cpu-openai-community__gpt2.json", "--format", "md"],
    "report-profile-md": ["report", "inputs/profile-a.json", "--format", "md"],
    "report-profile-json": ["report", "inputs/profile-a.json", "--json"],
    "compare-json": ["compare", "inputs/profile-a.json", "inputs/profile-b.json", "--json"],
    "compare-md": ["compare", "inputs/profile-a.json", "inputs/profile-b.json", "--format", "md"],
}
SLOW_CASES = {
    # real loads and steps in worker processes: the measured peaks are exact on the CPU
    "validate-gpt2-cpu": ["validate", "tiny-gpt2", "--device", "cpu", "--seqs", "16,32", "--json"],
}


def _normalized(text: str, fmt: str, *, measured: bool) -> str:
    if fmt != "json":
        return text
    return json.dumps(_drop_volatile(json.loads(text), measured), indent=2, sort_keys=True) + "\n"


# plan --device cpu plans for this machine's RAM: its size, and what follows from it, differ by machine
MACHINE_ROW = "cpu (this machine)"
MACHINE_KEYS = {"memory_bytes", "headroom_bytes", "max_batch"}


def _drop_volatile(value, measured: bool):
    """`measured`: a result of real runs, whose timings vary (plan's estimated times do not)."""
    if isinstance(value, dict) and value.get("name") == MACHINE_ROW:
        value = {k: v for k, v in value.items() if k not in MACHINE_KEYS}
    if isinstance(value, dict):
        return {
            k: _drop_volatile(v, measured)
            for k, v in value.items()
            if k not in VOLATILE_KEYS and not (measured and (k.endswith(VOLATILE_SUFFIXES) or k in MEASURED_DETAIL))
        }
    if isinstance(value, list):
        return [_drop_volatile(v, measured) for v in value]
    return value


def _check(name: str, argv: list[str], capsys, monkeypatch) -> None:
    monkeypatch.chdir(GOLDEN)
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(
        importlib.import_module("memprof.analyses.plan.options"),
        "host_memory_bytes",
        lambda: RECORDED_HOST_MEMORY_BYTES,
    )
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, (name, out)
    fmt = "json" if "--json" in argv else argv[argv.index("--format") + 1]
    got = _normalized(out, fmt, measured=argv[0] in ("validate", "report", "compare"))
    path = GOLDEN / f"{name}.{fmt}"
    if REGEN:
        path.write_text(got)
    assert path.exists(), f"no golden file {path.name}: run with MEMPROF_REGEN_GOLDEN=1 and review it"
    assert got == path.read_text(), f"{name}: `memprof {' '.join(argv)}` no longer prints {path.name}"


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name, capsys, monkeypatch):
    _check(name, CASES[name], capsys, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_golden_measured(name, capsys, monkeypatch):
    _check(name, SLOW_CASES[name], capsys, monkeypatch)
