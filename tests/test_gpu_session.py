"""scripts/gpu_session.sh gets one call on a GPU machine: everything that can trip it on set-up is
proven here, on the CPU. Its wheels fit the machine, its preflight names what is missing, every
memprof line in it parses, the NVML card is CUDA's card by UUID, not by position, and no process but
a worker initialises CUDA (on a fake GPU: torch's CUDA entry points patched to record and refuse)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

import check_gpu_wheels  # noqa: E402
import gpu_preflight  # noqa: E402
import memprof_argcheck  # noqa: E402

GIB = 1 << 30


# ---------------------------------------------------------------------------------------------
# a fake NVML with two cards; CUDA_VISIBLE_DEVICES=1 makes the second one CUDA's device 0

CARDS = (
    {"uuid": "GPU-aaaaaaaa-1111-2222-3333-444444444444", "pci": (0, 0x1A, 0), "used": 1 * GIB, "name": "NVIDIA A"},
    {"uuid": "GPU-bbbbbbbb-5555-6666-7777-888888888888", "pci": (0, 0x3B, 0), "used": 3 * GIB, "name": "NVIDIA H200"},
)


class FakeNvml:
    """What memprof uses of pynvml, over CARDS; `events` records each memory reading."""

    def __init__(self, events: list | None = None) -> None:
        self.events = [] if events is None else events

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(CARDS)

    def nvmlDeviceGetHandleByIndex(self, i):
        return CARDS[i]

    def nvmlDeviceGetUUID(self, handle):
        return handle["uuid"].encode()  # bytes, as older pynvml returns

    def nvmlDeviceGetPciInfo(self, handle):
        domain, bus, device = handle["pci"]
        return SimpleNamespace(domain=domain, bus=bus, device=device)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.events.append(f"nvml-used {handle['name']}")
        return SimpleNamespace(used=handle["used"], total=141 * GIB)

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlSystemGetDriverVersion(self):
        return "580.159.03"

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return (9, 0)


def _torch_props(card: dict, *, uuid: bool = True):
    """torch.cuda.get_device_properties(i) of `card`: torch writes the UUID without 'GPU-'."""
    domain, bus, device = card["pci"]
    return SimpleNamespace(
        uuid=card["uuid"][4:] if uuid else "", pci_domain_id=domain, pci_bus_id=bus, pci_device_id=device
    )


@pytest.fixture
def second_card_visible(monkeypatch):
    """CUDA_VISIBLE_DEVICES=1: CUDA's device 0 is NVML's device 1; torch reports its properties."""
    import torch

    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: _torch_props(CARDS[1]))
    return fake


def test_the_worker_samples_cuda_device_0_on_the_card_cuda_visible_devices_names(second_card_visible):
    from memprof.measure.nvml import NvmlPeakSampler, nvml_handle_for_cuda_device

    assert nvml_handle_for_cuda_device(second_card_visible, 0) is CARDS[1]
    with NvmlPeakSampler(0, interval_s=0.001) as sampler:
        pass
    assert sampler.peak_bytes == 3 * GIB  # NVML's card 0 holds 1 GiB: position would have picked it


def test_without_a_torch_uuid_the_pci_bus_id_picks_the_card(second_card_visible, monkeypatch):
    import torch

    from memprof.measure.nvml import nvml_handle_for_cuda_device

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: _torch_props(CARDS[1], uuid=False))
    assert nvml_handle_for_cuda_device(second_card_visible, 0) is CARDS[1]


def test_a_card_nvml_does_not_list_gives_no_nvml_peak_rather_than_another_cards(second_card_visible, monkeypatch):
    import torch

    from memprof.measure.nvml import NvmlPeakSampler

    stranger = {"uuid": "GPU-cccccccc", "pci": (0, 0x99, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: _torch_props(stranger))
    with NvmlPeakSampler(0) as sampler:
        pass
    assert sampler.peak_bytes is None


def test_on_a_one_card_machine_that_card_is_cuda_device_0_even_without_uuid_or_pci(monkeypatch):
    import torch

    from memprof.measure import nvml

    one = FakeNvml()
    monkeypatch.setattr(one, "nvmlDeviceGetCount", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: SimpleNamespace(uuid="?"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert nvml.nvml_handle_for_cuda_device(one, 0) is CARDS[0]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # CUDA sees a card NVML does not: no guess
    assert nvml.nvml_handle_for_cuda_device(one, 0) is None


@pytest.mark.parametrize(
    ("visible", "expected"),
    [(None, 0), ("1", 1), ("1,0", 1), ("GPU-bbbb", 1), ("GPU-aaaaaaaa-1111", 0), ("GPU-", None), ("2", None)],
)
def test_the_parent_names_cuda_device_0_from_cuda_visible_devices_without_cuda(monkeypatch, visible, expected):
    from memprof.measure.nvml import nvml_index_before_cuda

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert nvml_index_before_cuda(FakeNvml(), 0) == expected  # "GPU-" is a prefix of both: ambiguous


def test_the_result_files_gpu_is_cuda_device_0s_card(second_card_visible):
    from memprof.measure.nvml import gpu_info

    assert gpu_info(0).name == "NVIDIA H200"


# ---------------------------------------------------------------------------------------------
# the wheels, checked against the machine


def _wheel(directory: Path, filename: str, requires: list[str], requires_python: str = ">=3.10") -> Path:
    name, version = filename.split("-")[:2]
    path = directory / filename
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: {requires_python}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


DEVICE = {"torch": check_gpu_wheels.Version("2.11.0+cu130"), "numpy": check_gpu_wheels.Version("2.5.2"), "regex": None}


def _check(tmp_path, *wheels):
    for filename, requires, *python in wheels:
        _wheel(tmp_path, filename, requires, *python)
    return check_gpu_wheels.check(tmp_path, device=DEVICE, pyproject=None)


def test_a_wheel_that_wants_another_torch_is_one_problem_line(tmp_path):
    problems, _ = _check(tmp_path, ("oldbnb-0.1-py3-none-any.whl", ["torch<2.6", "numpy>=1.17"]))
    assert problems == ["oldbnb 0.1: needs torch<2.6; the machine has 2.11.0+cu130: carry a wheel of it"]


def test_extras_and_markers_for_other_machines_are_skipped(tmp_path):
    requires = [
        "torch>=2.4",
        'pytest; extra == "dev"',
        'tomli; python_version < "3.11"',
        'pywin32; sys_platform == "win32"',
        'numpy>=2; python_version >= "3.12"',
    ]
    assert _check(tmp_path, ("lib-1.0-py3-none-any.whl", requires)) == ([], [])


def test_tags_and_python_must_fit_cpython_3_12_manylinux_x86_64(tmp_path):
    problems, _ = _check(
        tmp_path,
        ("a-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", []),
        ("b-1.0-py3-none-macosx_11_0_arm64.whl", []),
        ("c-1.0-py3-none-manylinux_2_34_x86_64.whl", []),
        ("d-1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", []),
        ("e-1.0-py3-none-any.whl", [], ">=3.13"),
    )
    assert [p.split(":")[0] for p in problems] == ["a 1.0", "b 1.0", "c 1.0", "e 1.0"]
    assert "needs Python >=3.13" in problems[-1]


def test_a_carried_wheel_meets_a_requirement_and_a_missing_package_does_not(tmp_path):
    problems, notes = _check(
        tmp_path,
        ("peft-0.21.2-py3-none-any.whl", ["transformers>=5.20", "psutil", "regex>=2025.1"]),
        ("transformers-5.23.0-py3-none-any.whl", []),
    )
    assert problems == ["peft 0.21.2: needs psutil, which is neither carried nor on the machine: carry its wheel"]
    assert notes == ["note: peft 0.21.2: needs regex>=2025.1; the machine has regex, version unknown"]


def test_torch_itself_is_never_carried(tmp_path):
    problems, _ = _check(tmp_path, ("torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl", []))
    assert problems == ["torch 2.11.0: never carry torch: it would shadow the machine's CUDA build"]


def test_the_device_list_holds_torch_2_11_and_no_bitsandbytes():
    device = check_gpu_wheels.device_packages()
    assert device["torch"] == check_gpu_wheels.Version("2.11.0+cu130") and "bitsandbytes" not in device
    assert device["accelerate"] == check_gpu_wheels.Version("1.15.0") and "nvidia-ml-py" in device


def test_the_fetched_wheels_fit_the_machine_with_memprofs_own_requirements():
    if not list((ROOT / ".whl").glob("*.whl")):
        pytest.skip("no .whl/ here: scripts/fetch_gpu_wheels.sh fetches it")
    problems, _ = check_gpu_wheels.check(ROOT / ".whl")
    assert problems == []


def test_fetch_asks_pip_for_the_platforms_the_check_accepts():
    args = check_gpu_wheels.pip_args()
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert tuple(platforms) == check_gpu_wheels.PLATFORMS and "3.12" in args
    assert "check_gpu_wheels.py --pip-args" in (SCRIPTS / "fetch_gpu_wheels.sh").read_text()


# ---------------------------------------------------------------------------------------------
# the preflight, and the command lines


def test_preflight_names_every_module_it_cannot_import_in_one_list():
    bad, found = gpu_preflight.problems(
        {"json": None, "no_such_module_a": None, "no_such_module_b": None}, need_gpu=False
    )
    assert [b.split(" ")[0] for b in bad] == ["no_such_module_a", "no_such_module_b"]
    assert "json" in found


def test_preflight_refuses_a_version_other_than_memprofs_pin(tmp_path):
    import rich  # noqa: F401  (installed here; its version is not 0.0.1)

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["rich==0.0.1"]\n')
    bad, _ = gpu_preflight.problems({"rich": "rich"}, pyproject=pyproject, need_gpu=False)
    assert len(bad) == 1 and bad[0].endswith("memprof pins rich==0.0.1")


def test_preflight_without_a_gpu_is_one_line_and_exit_1(capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(gpu_preflight, "MODULES", {"json": None})
    assert gpu_preflight.main([]) == 1
    assert capsys.readouterr().out == "preflight FAILED: torch sees no CUDA GPU\n"


@pytest.mark.parametrize("option", ["--devcie", "--dev"])  # a typo, and an abbreviation memprof would take
def test_a_typo_or_an_abbreviated_option_does_not_parse(option):
    from memprof.cli import UsageError

    memprof_argcheck.check(["profile", "meta-llama/Llama-3.2-1B", "--device", "cuda", "--settings", "bf16"])
    with pytest.raises(UsageError, match="unrecognized arguments"):
        memprof_argcheck.check(["profile", "meta-llama/Llama-3.2-1B", option, "cuda"])


def test_a_wrong_setting_or_model_is_caught_by_the_librarys_parsers():
    from memprof.errors import MemprofError

    for argv in (
        ["profile", "meta-llama/Llama-3.2-1B", "--settings", "bf16,nf5"],
        ["profile", "meta-llama/Llama-3.2-1Bx", "--settings", "bf16"],
        ["validate", "meta-llama/Llama-3.2-1B", "--seqs", "512,x"],
    ):
        with pytest.raises(MemprofError):
            memprof_argcheck.check(argv)


def _dry_run(root: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DRY_RUN="1", OUT=str(out), PY=sys.executable, PYTHONPATH=str(ROOT))
    return subprocess.run(
        ["bash", str(root / "scripts" / "gpu_session.sh")], env=env, capture_output=True, text=True, timeout=600
    )


def _steps(script: str) -> list[str]:
    return [line.split()[1] for line in script.splitlines() if line.startswith("step ")]


@pytest.mark.slow
def test_dry_run_parses_every_memprof_line_of_the_session_and_the_preflight_imports_everything(tmp_path):
    proc = _dry_run(ROOT, tmp_path)
    log = (tmp_path / "session.log").read_text()
    assert proc.returncode == 0, log
    assert "preflight ok: " in log and "bitsandbytes 0.50.2" in log and "transformers 5.23.0" in log
    steps = _steps((SCRIPTS / "gpu_session.sh").read_text())
    assert len(steps) == 10
    for name in steps:
        assert f"== {name}: exit 0 " in log, name
    assert log.count(": parses (") == len(steps) + 1  # and the report line
    assert "dry run: 0 line(s) failed to parse" in log


@pytest.mark.slow
def test_dry_run_fails_on_a_typo_in_any_line(tmp_path):
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    for name in ("gpu_session.sh", "gpu_preflight.py", "memprof_argcheck.py"):
        shutil.copy(SCRIPTS / name, copy / "scripts" / name)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    script = copy / "scripts" / "gpu_session.sh"
    text = script.read_text()
    assert text.count("--grad-checkpointing") == 1
    script.write_text(text.replace("--grad-checkpointing", "--grad-chekpointing"))
    proc = _dry_run(copy, tmp_path / "out")
    log = (tmp_path / "out" / "session.log").read_text()
    assert proc.returncode == 1, log
    assert "== profile-llama-b4-gc: exit 2 " in log and "unrecognized arguments: --grad-chekpointing" in log
    assert "dry run: 1 line(s) failed to parse: profile-llama-b4-gc" in log


@pytest.mark.slow
def test_a_failed_preflight_stops_the_session_before_any_step(tmp_path):
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    for name in ("gpu_session.sh", "memprof_argcheck.py"):
        shutil.copy(SCRIPTS / name, copy / "scripts" / name)
    (copy / "scripts" / "gpu_preflight.py").write_text(
        "import sys\nprint('preflight FAILED: bitsandbytes (ModuleNotFoundError: no bitsandbytes)')\nsys.exit(1)\n"
    )
    proc = _dry_run(copy, tmp_path / "out")
    assert proc.returncode == 4
    assert proc.stdout.splitlines()[-1] == "preflight FAILED: bitsandbytes (ModuleNotFoundError: no bitsandbytes)"
    assert "== " not in (tmp_path / "out" / "session.log").read_text()


# ---------------------------------------------------------------------------------------------
# no process but a worker touches CUDA, on a fake GPU machine

# Run in a fresh interpreter: torch looks like a CUDA build that sees CUDA_VISIBLE_DEVICES=1 of
# FakeNvml's two cards. Initialising CUDA (torch.cuda._lazy_init, behind every context-creating
# call) records "cuda-init" and fails; the CUDA runtime's device count, which registers torch's
# fork handler and so poisons every process forked later, records "cuda-runtime-count". Measurement
# processes are stubbed: this is the parent's (or the fork server's) side only.
HARNESS = """
import json, os, sys, traceback
sys.path.insert(0, {tests!r})
events = []
import torch
from test_gpu_session import FakeNvml
sys.modules["pynvml"] = FakeNvml(events)

def cuda_init(*args, **kwargs):
    events.append("cuda-init " + " <- ".join(f"{{f.name}}" for f in traceback.extract_stack(limit=8)[-2::-1]))
    raise RuntimeError("fake GPU: CUDA may not be initialised here")

def runtime_count():
    events.append("cuda-runtime-count")
    return 1

torch._C._cuda_getDeviceCount = runtime_count  # torch.cuda._is_compiled() is True from here on
torch._C._cuda_getCurrentRawStream = lambda *args: 0  # bitsandbytes' CUDA backend takes it at import
torch.cuda._device_count_nvml = lambda: 1  # NVML answers, as on the machine
torch.cuda._lazy_init = cuda_init
torch.cuda.init = cuda_init

import memprof.measure.fresh as fresh
def run_fresh(target, request, **kwargs):  # no measurement process on this machine
    events.append("worker " + target)
    if request.get("task") == "materialize":
        return fresh.Finished(result={{}}, exitcode=0, log_tail="")
    return fresh.Finished(result={{"error": "stubbed", "done": True}}, exitcode=0, log_tail="")
fresh.run_fresh = run_fresh
try:
{body}
except BaseException as exc:
    events.append(f"raised {{type(exc).__name__}}: {{exc}}")
print(json.dumps(events))
"""


def _on_fake_gpu(body: str, tmp_path: Path, *, nvml_check: bool = True) -> list[str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="1", PYTHONPATH=str(ROOT), MEMPROF_CACHE_DIR=str(tmp_path / "cache"))
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    if nvml_check:
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # as gpu_session.sh exports it
    code = HARNESS.format(tests=str(ROOT / "tests"), body=textwrap.indent(textwrap.dedent(body), "    "))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cuda_touches(events: list[str]) -> list[str]:
    return [e for e in events if e.startswith(("cuda-init", "cuda-runtime-count"))]


@pytest.mark.slow
def test_the_harness_sees_that_a_plain_bitsandbytes_import_initialises_cuda(tmp_path):
    events = _on_fake_gpu("import bitsandbytes", tmp_path, nvml_check=False)
    assert any(e.startswith("cuda-init") and "get_device_capability" in e for e in events), events
    assert "cuda-runtime-count" in events  # is_available() without the NVML check: fork poisoned


@pytest.mark.slow
def test_the_fork_server_preloads_bitsandbytes_and_peft_without_touching_cuda(tmp_path):
    body = """
    import memprof.measure._preload
    events.append("preloaded " + " ".join(m for m in ("bitsandbytes", "peft") if m in sys.modules))
    """
    events = _on_fake_gpu(body, tmp_path, nvml_check=False)  # the server sets the NVML check itself
    assert _cuda_touches(events) == [] and "preloaded bitsandbytes peft" in events, events


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "{model}", "--device", "cuda", "--seqs", "16", "--format", "md"],
        ["profile", "{model}", "--device", "cuda", "--settings", "bf16,nf4", "--train", "lora", "--seq", "16"],
        ["profile", "{model}", "--device", "cuda", "--settings", "bf16,nf4", "--train", "none",
         "--max-gpu-memory", "1MiB", "--seq", "16"],
    ],
    ids=["validate", "profile-lora", "profile-offload"],
)  # fmt: skip
def test_the_parent_of_a_cuda_measurement_never_initialises_cuda(tiny_model_dir, tmp_path, argv):
    model = str(tiny_model_dir("llama"))
    argv = [a.format(model=model) for a in argv] + ["--out", str(tmp_path / "out.json")]
    body = f"""
    from memprof.cli import main
    events.append(f"exit {{main({argv!r})}}")
    """
    events = _on_fake_gpu(body, tmp_path)
    assert _cuda_touches(events) == [], events
    assert any(e.startswith("worker memprof.measure.profile_worker") for e in events), events  # it got that far
    assert not any(e.startswith("raised") for e in events), events


@pytest.mark.slow
def test_the_context_measurement_reads_every_card_before_cuda_exists(tmp_path):
    body = """
    from memprof.measure.context import measure_cuda_context
    measure_cuda_context(0)
    """
    events = _on_fake_gpu(body, tmp_path)
    first_init = next(i for i, e in enumerate(events) if e.startswith("cuda-init"))
    assert events[:first_init] == ["nvml-used NVIDIA A", "nvml-used NVIDIA H200"], events
