"""memprof's numbers are the same on every CPU: each branch bitsandbytes takes on the CPU, forced.

bitsandbytes 0.50 asks the CPU two questions. `has_avx512bf16()` (read by `Linear4bit.__init__`)
decides whether a 4-bit layer in eval mode repacks its weight into a CPU-only layout; memprof
turns that off on every load and every simulated model (memprof.settings.keep_gpu_weight_layout).
torch's CPU capability ("AVX512" or less, read when bitsandbytes is imported) decides which kernel
runs LLM.int8()'s int8 matmul on the CPU. Both are forced here, so the suite covers each branch
whatever CPU runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import tiny_config

# A decoder whose projections are 40 and 420 wide: not multiples of the repacking's 32-row blocks.
ODD_WIDTHS = "llama"


def _tiny_dir(tmp_path: Path, arch: str, **overrides) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = {**tiny_config(arch), **overrides}
    values = dict(config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **values))
    path = tmp_path / f"tiny-{arch}"
    model.save_pretrained(path, safe_serialization=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def cpu_has_avx512bf16(monkeypatch):
    """Make bitsandbytes' 4-bit layers believe the CPU has AVX512-BF16 (or not): `True`/`False`."""
    import bitsandbytes.nn.modules as modules

    def force(value: bool) -> None:
        monkeypatch.setattr(modules, "has_avx512bf16", lambda: value)

    return force


def _load(path: Path, setting_name: str, *, via_memprof: bool):
    import torch
    from transformers import AutoModelForCausalLM

    from memprof.measure.worker import load_pretrained
    from memprof.settings import bnb_config, get_setting

    setting = get_setting(setting_name)
    if via_memprof:
        return load_pretrained(str(path), setting, device_map="cpu")
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.bfloat16, device_map="cpu", quantization_config=bnb_config(setting)
    )


def _eval_forward(model) -> None:
    import torch

    model.eval()
    ids = torch.arange(8).reshape(1, 8)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)


def test_the_forced_avx512bf16_branch_really_repacks_without_memprofs_rule(tmp_path, cpu_has_avx512bf16):
    """The control: forced on, a plain from_pretrained load repacks on an eval forward (true bytes
    change with double quantization), and at widths that are not multiples of 32 it fails."""
    from memprof.tensors import true_bytes

    cpu_has_avx512bf16(True)
    aligned = _tiny_dir(tmp_path, "llama", hidden_size=64, intermediate_size=128, head_dim=16)
    model = _load(aligned, "nf4-dq", via_memprof=False)
    before = true_bytes(model)
    _eval_forward(model)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.weight.quant_state.packing_format_for_cpu
    assert true_bytes(model) != before

    odd = _tiny_dir(tmp_path / "odd", ODD_WIDTHS)
    with pytest.raises(AssertionError, match="divisible by block_n"):
        _eval_forward(_load(odd, "nf4", via_memprof=False))


@pytest.mark.parametrize("avx512bf16", [True, False], ids=["avx512bf16", "no-avx512bf16"])
@pytest.mark.parametrize("setting", ["nf4", "nf4-dq", "fp4"])
def test_memprof_loads_keep_the_gpu_layout_on_every_cpu(tmp_path, cpu_has_avx512bf16, avx512bf16, setting):
    """Through memprof's load, an eval forward leaves the weights and quant state as loaded (the
    layout a GPU holds), at widths that are not multiples of 32, and training works after it."""
    import torch

    from memprof.step import make_optimizer, prepare_model, train_step
    from memprof.tensors import true_bytes

    cpu_has_avx512bf16(avx512bf16)
    model = _load(_tiny_dir(tmp_path, ODD_WIDTHS), setting, via_memprof=True)
    loaded = true_bytes(model)
    _eval_forward(model)
    layer = model.model.layers[0].self_attn.q_proj
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert true_bytes(model) == loaded
    model.train()
    model = prepare_model(model, task="lora", quantized=True)
    train_step(model, make_optimizer([p for p in model.parameters() if p.requires_grad]), torch.arange(8).reshape(1, 8))


def _profile_in_process(path: Path, setting: str, out: Path) -> dict:
    """One setting's profile (load, forward, LoRA step) in this process, where the patch applies."""
    import dataclasses

    from memprof.measure.profile_worker import run
    from memprof.settings import get_setting

    request = {
        "weights_dir": str(path),
        "setting": dataclasses.asdict(get_setting(setting)),
        "device": "cpu",
        "batch": 1,
        "seq": 16,
        "repeats": 1,
        "warmup": 0,
        "train": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "target": None,
        "grad_checkpointing": False,
        "max_gpu_memory_bytes": None,
        "threads": 1,
        "trust_remote_code": False,
    }
    run(request, str(out))
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["nf4", "nf4-dq"])
def test_profile_measures_the_same_bytes_with_and_without_avx512bf16(tmp_path, cpu_has_avx512bf16, setting):
    """The profiler's whole run (load, eval forward, then the LoRA step) measures the same bytes
    whichever way the CPU answers."""
    path = _tiny_dir(tmp_path, ODD_WIDTHS)
    results = {}
    for value in (True, False):
        cpu_has_avx512bf16(value)
        results[value] = _profile_in_process(path, setting, tmp_path / f"{value}.json")
    for result in results.values():
        assert "error" not in result, result.get("error")
    keys = ("true_bytes", "footprint_bytes", "peak_bytes")
    assert {k: results[True]["load"][k] for k in keys} == {k: results[False]["load"][k] for k in keys}
    assert results[True]["forward"]["peak_bytes"] == results[False]["forward"]["peak_bytes"]
    assert results[True]["train"]["peak_bytes"] == results[False]["train"]["peak_bytes"]


@pytest.mark.parametrize("setting", ["nf4", "nf4-dq", "fp4"])
def test_simulated_4bit_models_keep_the_gpu_layout_on_every_cpu(cpu_has_avx512bf16, setting):
    """plan's fake model: the same inference peak whichever way the CPU answers."""
    from memprof.simulate import StepSimulator, StepSpec

    config = tiny_config(ODD_WIDTHS)
    peaks = {}
    for value in (True, False):
        cpu_has_avx512bf16(value)
        sim = StepSimulator(config, StepSpec(task="infer", setting=setting), layers=2).run(1, 16)
        peaks[value] = sim.to_json()
    assert peaks[True] == peaks[False]


# torch's CPU capability is read once, when bitsandbytes is imported: force it in a fresh interpreter.
_FORCE_CAPABILITY = """
import torch.backends.cpu
torch.backends.cpu.get_cpu_capability = lambda: {capability!r}
"""


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["AVX512", "AVX2"])
def test_int8_inference_plan_equals_profile_whichever_int8_kernel_the_cpu_takes(tmp_path, capability):
    """On AVX512 CPUs bitsandbytes runs CPU int8 matmuls with torch._int_mm; elsewhere with an fp32
    matmul of dequantized copies. Either way plan's inference peak equals profile's, byte for byte."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_FORCE_CAPABILITY.format(capability=capability))
    path = _tiny_dir(tmp_path, "llama")
    script = textwrap.dedent(
        f"""
        import json, torch
        from bitsandbytes.backends.cpu import ops
        assert ops._has_avx512 == ({capability!r} == "AVX512"), "the branch was not forced"
        from memprof.analyses.plan import plan
        from memprof.analyses.profile import profile
        planned = plan({str(path)!r}, task="infer", setting="int8", batch=1, seq=16, new_tokens=0, device="cpu")
        measured = profile({str(path)!r}, settings="int8", device="cpu", batch=1, seq=16, repeats=1, warmup=0, train="none")
        bd = planned.breakdown
        print(json.dumps([bd.total_bytes - bd.dequant_transient_bytes, measured.settings[0].forward.peak_bytes]))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    traced, measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert traced == measured


def test_bitsandbytes_missing_kernels_package_warning_is_kept_from_users():
    """On AVX512-BF16 CPUs bitsandbytes warns at import that the optional `kernels` package is
    missing; memprof never runs that kernel. The message is dropped, other warnings are not."""
    import logging

    import memprof  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    dropped = logging.LogRecord(
        logger.name,
        logging.WARNING,
        __file__,
        1,
        "Failed to load CPU gemm_4bit_forward from kernels-community: x",
        None,
        None,
    )
    kept = logging.LogRecord(logger.name, logging.WARNING, __file__, 1, "something else", None, None)
    assert not logger.filter(dropped)
    assert logger.filter(kept)
    done = subprocess.run(
        [sys.executable, "-c", "import memprof, peft, bitsandbytes, transformers"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "kernels" not in done.stderr, done.stderr
