"""`memprof profile` on CPU: tiny llama- and gpt2-shaped models through every setting and phase,
results that re-render in every format, compare, offload plans, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from rich.console import Console

from memprof.cli import main
from memprof.errors import DeviceError, ProfileOptionError, ResultFileError, SettingError, UnknownModelError
from memprof.footprint import footprint
from memprof.profile import ProfileReport, compare_reports, offload_plan, parse_bytes, profile
from memprof.report.jsonout import render_json
from memprof.report.profile import (
    compare_renderables,
    profile_renderables,
    render_compare_html,
    render_compare_md,
    render_profile_html,
    render_profile_md,
)

TINY_CONFIGS = {
    "llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 64,
    },
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 256, "n_positions": 64},
}
ALL_SETTINGS = ("fp32", "bf16", "int8", "nf4", "nf4-dq")
TINY = dict(batch=2, seq=8, repeats=2, warmup=0, threads=1)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for name, config in TINY_CONFIGS.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        dirs[name] = root / name
    return dirs


@pytest.fixture(scope="module")
def lora_reports(model_dirs, tmp_path_factory):
    """Both architectures at all five settings, LoRA training, with an offload plan; saved as JSON."""
    out = tmp_path_factory.mktemp("reports")
    reports = {}
    for name, path in model_dirs.items():
        reports[name] = profile(
            str(path), settings=",".join(ALL_SETTINGS), train="lora", lora_r=4, lora_alpha=8,
            max_gpu_memory="64KiB", save_to=out / f"{name}.json", **TINY,
        )  # fmt: skip
        assert ProfileReport.load(out / f"{name}.json") == reports[name]
    return reports


@pytest.fixture(scope="module")
def full_report(model_dirs):
    return profile(str(model_dirs["llama"]), settings="fp32,bf16", train="full", grad_checkpointing=True, **TINY)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_every_setting_and_phase_is_measured(lora_reports, arch):
    report = lora_reports[arch]
    assert [r.setting for r in report.settings] == list(ALL_SETTINGS)
    for row in report.settings:
        assert row.error is None, row
        assert row.load.load_s > 0 and row.forward.median_ms > 0 and row.train.median_ms > 0
        assert row.forward.tokens_per_s == pytest.approx(TINY["batch"] * TINY["seq"] / (row.forward.median_ms / 1000))
        assert row.train.trainable_params > 0 and row.train.flops > 0 and row.train.tflops > 0
        assert row.forward.peak_bytes >= row.load.true_bytes  # the weights are live during the forward
        assert row.offload.plan_gpu_bytes + row.offload.plan_cpu_bytes > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_loaded_bytes_equal_the_exact_prediction(lora_reports, model_dirs, arch):
    predicted = {r.setting: r for r in footprint(str(model_dirs[arch]), settings=",".join(ALL_SETTINGS)).settings}
    for row in lora_reports[arch].settings:
        assert row.load.true_bytes == predicted[row.setting].true_bytes
        assert row.load.footprint_bytes == predicted[row.setting].footprint_bytes


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_training_breakdown_sums_to_the_tracked_peak(lora_reports, arch):
    for row in lora_reports[arch].settings:
        breakdown = row.train.breakdown
        assert sum(breakdown.values()) == row.train.peak_bytes
        assert (breakdown["quant_state"] > 0) == (row.setting in ("int8", "nf4", "nf4-dq"))
        # AdamW keeps exp_avg and exp_avg_sq like each LoRA param (fp32) plus a 4-byte step per param tensor
        lora_bytes = breakdown["trainable_params"]
        assert lora_bytes == row.train.trainable_params * 4
        assert 2 * lora_bytes < breakdown["optimizer_states"] <= 2 * lora_bytes + 4 * row.train.trainable_params
        assert breakdown["activations_temporaries"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
def test_lora_step_flops_are_the_same_math_at_every_setting(lora_reports, arch):
    # quantization changes the storage, not the matmuls: bitsandbytes' ops are counted like aten.mm
    flops = {row.setting: row.train.flops for row in lora_reports[arch].settings}
    assert len(set(flops.values())) == 1, flops


@pytest.mark.slow
def test_full_training_counts_grads_and_optimizer_states(full_report):
    for row in full_report.settings:
        assert row.error is None, row
        train = row.train
        assert train.mode == "full" and train.grad_checkpointing
        param_bytes = train.breakdown["trainable_params"]
        # every weight trains; what stays frozen is the buffers (rotary inv_freq)
        assert param_bytes + train.breakdown["weights"] == row.load.true_bytes
        assert 0 < train.breakdown["weights"] < param_bytes / 100
        state_bytes = train.breakdown["optimizer_states"]
        assert 2 * param_bytes < state_bytes < 2 * param_bytes + 4 * 100  # + one 4-byte step per tensor
        assert sum(train.breakdown.values()) == train.peak_bytes
    fp32, bf16 = full_report.settings
    assert bf16.train.breakdown["trainable_params"] * 2 == fp32.train.breakdown["trainable_params"]


@pytest.mark.slow
def test_full_training_of_a_quantized_setting_is_refused(model_dirs):
    with pytest.raises(ProfileOptionError, match="--train full cannot train quantized"):
        profile(str(model_dirs["llama"]), settings="fp32,nf4", train="full", **TINY)


RENDERERS = {
    "table": lambda r: _text(profile_renderables(r)),
    "md": render_profile_md,
    "html": render_profile_html,
    "json": render_json,
}


def _text(renderable) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(renderable)
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(RENDERERS))
def test_saved_result_re_renders_in_every_format(lora_reports, fmt):
    report = ProfileReport.from_json(json.loads(json.dumps(lora_reports["llama"].to_json())))
    assert report == lora_reports["llama"]
    text = RENDERERS[fmt](report)
    for setting in ALL_SETTINGS:
        assert setting in text
    if fmt == "json":
        data = json.loads(text)
        row = data["settings"][0]
        assert set(row) >= {"setting", "error", "load", "forward", "train", "offload"}
        assert set(row["train"]) >= {"median_ms", "iqr_ms", "tokens_per_s", "tflops", "peak_bytes", "breakdown"}
        assert data["env"]["transformers"] and data["env"]["peft"]
    else:
        assert "Training step" in text and "activations_temporaries" in text


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["table", "md", "html", "json"])
def test_report_and_compare_commands(lora_reports, tmp_path, fmt, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    lora_reports["llama"].save(a)
    lora_reports["gpt2"].save(b)
    assert main(["report", str(a), "--format", fmt]) == 0
    assert "nf4-dq" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "train.median_ms" in out and "nf4-dq" in out


@pytest.mark.slow
def test_compare_ratios_are_b_over_a(lora_reports):
    a, b = lora_reports["llama"], lora_reports["gpt2"]
    comparison = compare_reports(a, b)
    row = next(r for r in comparison.rows if r.setting == "bf16" and r.metric == "load.true_bytes")
    assert row.ratio == b.settings[1].load.true_bytes / a.settings[1].load.true_bytes
    assert any("model differs" in n for n in comparison.notes)
    for render in (render_compare_md, render_compare_html, lambda c: _text(compare_renderables(c))):
        assert "load.true_bytes" in render(comparison)


def test_a_subprocess_that_dies_is_a_row_with_its_reason(model_dirs, monkeypatch):
    from memprof.measure import profile_worker

    def dying(request, **kwargs):
        return {
            "load": None,
            "error": "worker died with SIGKILL during train (the OS killed it)",
            "failed_phase": "train",
        }

    monkeypatch.setattr(profile_worker, "run_profile_worker", dying)
    monkeypatch.setattr("memprof.measure.load.weights_for", _fake_weights)
    report = profile(str(model_dirs["llama"]), settings="fp32,bf16", **TINY)
    assert [r.error for r in report.settings] == [dying(None)["error"]] * 2
    assert "failed: worker died with SIGKILL during train" in render_profile_md(report)


def test_interrupt_leaves_the_results_so_far_saved(model_dirs, monkeypatch, tmp_path):
    from memprof.measure import profile_worker

    calls = []

    def worker(request, **kwargs):
        calls.append(request["setting"]["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"load": {"load_s": 1.0, "footprint_bytes": 1, "true_bytes": 1, "peak_bytes": 1}, "done": True}

    monkeypatch.setattr(profile_worker, "run_profile_worker", worker)
    monkeypatch.setattr("memprof.measure.load.weights_for", _fake_weights)
    out = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        profile(str(model_dirs["llama"]), settings="fp32,bf16", save_to=out, **TINY)
    saved = ProfileReport.load(out)
    assert saved.interrupted and [r.setting for r in saved.settings] == ["fp32"]


class _fake_weights:
    def __init__(self, model, **kwargs):
        pass

    def __enter__(self):
        return ("/nonexistent", "fake weights for a test that never loads")

    def __exit__(self, *exc):
        return False


def test_offload_plan_fills_the_gpu_budget_first(model_dirs):
    from memprof.models import resolve_model
    from memprof.settings import SETTINGS

    model = resolve_model(str(model_dirs["llama"]))
    everything = offload_plan(model, SETTINGS["fp32"], parse_bytes("1GiB"))
    assert everything["plan_cpu_bytes"] == everything["plan_disk_bytes"] == 0
    tight = offload_plan(model, SETTINGS["fp32"], parse_bytes("300KiB"), cpu_bytes=parse_bytes("100KiB"))
    assert 0 < tight["plan_gpu_bytes"] <= parse_bytes("300KiB")
    assert tight["plan_disk_bytes"] > 0
    total = sum(tight[k] for k in ("plan_gpu_bytes", "plan_cpu_bytes", "plan_disk_bytes"))
    assert total == everything["plan_gpu_bytes"]
    # 4-bit: half a byte per quantized weight, so less than a quarter of fp32 lands anywhere but the embeddings
    nf4 = offload_plan(model, SETTINGS["nf4"], parse_bytes("1GiB"))
    assert nf4["plan_gpu_bytes"] < everything["plan_gpu_bytes"] / 2


@pytest.mark.parametrize(
    ("text", "expected"), [("15GiB", 15 * 2**30), ("16GB", 16 * 10**9), ("512MiB", 2**29), ("100", 100)]
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"batch": 0}, ProfileOptionError),
        ({"seq": 0}, ProfileOptionError),
        ({"seq": 65}, ProfileOptionError),  # longer than the model's 64 positions
        ({"repeats": 0}, ProfileOptionError),
        ({"settings": "fp32,int3"}, SettingError),
        ({"device": "cuda"}, DeviceError),
        ({"train": "full", "settings": "int8"}, ProfileOptionError),
    ],
)
def test_bad_input_is_a_memprof_error(model_dirs, kwargs, error):
    pytest.importorskip("torch")
    import torch

    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(error):
        profile(str(model_dirs["llama"]), **{"seq": 8, **kwargs})


@pytest.mark.parametrize(
    "argv",
    [
        ["profile", "no-such-model-anywhere"],
        ["profile", "{llama}", "--batch", "0"],
        ["profile", "{llama}", "--settings", "fp33"],
        ["profile", "{llama}", "--train", "full", "--settings", "nf4"],
        ["profile", "{llama}", "--gpu", "Voodoo2"],
        ["report", "{llama}/config.json"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(model_dirs, argv, capsys):
    argv = [a.format(llama=model_dirs["llama"]) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"memprof {argv[0]}: error:") and "\n" not in err


def test_unknown_model_error_type():
    with pytest.raises(UnknownModelError):
        profile("no-such-model-anywhere")


def test_result_file_must_be_a_profile(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"model": "m"}))
    with pytest.raises(ResultFileError):
        ProfileReport.load(path)


def test_flop_count_of_a_linear_is_2_m_k_n():
    torch = pytest.importorskip("torch")
    from memprof.measure.profile_worker import count_flops

    linear = torch.nn.Linear(32, 16, bias=False)
    x = torch.randn(4, 32)
    assert count_flops(lambda: linear(x)) == 2 * 4 * 32 * 16


def test_report_dataclasses_round_trip_without_optional_phases():
    from memprof.profile import SettingProfile

    report = ProfileReport(
        model="m", device="cpu", env={}, batch=1, seq=2, repeats=1, warmup=0, train="none",
        settings=(SettingProfile("fp32", error="out of memory during load", failed_phase="load"),),
    )  # fmt: skip
    assert ProfileReport.from_json(json.loads(json.dumps(dataclasses.asdict(report)))) == report
    assert "out of memory during load" in render_profile_md(report)
