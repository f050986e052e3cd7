"""`memprof profile` on CPU: tiny llama- and gpt2-shaped models through every setting and phase,
results that re-render in every format, compare, offload plans, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from rich.console import Console

from memprof.analyses.compare import compare_reports
from memprof.analyses.footprint import footprint
from memprof.analyses.profile import offload_plan, parse_bytes, profile
from memprof.cli import main
from memprof.errors import DeviceError, ProfileOptionError, ResultFileError, SettingError, UnknownModelError
from memprof.report.jsonout import render_json
from memprof.report.profile import (
    compare_renderables,
    profile_renderables,
    render_compare_html,
    render_compare_md,
    render_profile_html,
    render_profile_md,
)
from memprof.results.profile import ProfileReport

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
    return profile(
        str(model_dirs["llama"]), settings="fp32,bf16", train="full", grad_checkpointing=True, precision="pure", **TINY
    )


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
    # quantization changes the storage, not the matmuls: bitsandbytes' ops are counted like aten.mm.
    # The QLoRA settings checkpoint by default and recompute the forward in backward, so they are
    # compared among themselves, and the checkpointing they ran with is what the rows say.
    rows = lora_reports[arch].settings
    for checkpointing in (False, True):
        flops = {r.setting: r.train.flops for r in rows if r.train.grad_checkpointing is checkpointing}
        assert len(set(flops.values())) == 1, flops
    assert {r.setting for r in rows if r.train.grad_checkpointing} == {"int8", "nf4", "nf4-dq"}
    plain = {r.train.grad_checkpointing: r.train.flops for r in rows}
    assert plain[True] > plain[False]  # the recomputed forward


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
    # JSON keeps the field path; the rendered formats say it in words
    assert ("train.median_ms" if fmt == "json" else "train step median (ms)") in out and "nf4-dq" in out


@pytest.mark.slow
def test_compare_ratios_are_b_over_a(lora_reports):
    a, b = lora_reports["llama"], lora_reports["gpt2"]
    comparison = compare_reports(a, b)
    row = next(r for r in comparison.rows if r.setting == "bf16" and r.metric == "load.true_bytes")
    assert row.ratio == b.settings[1].load.true_bytes / a.settings[1].load.true_bytes
    assert any("model differs" in n for n in comparison.notes)
    for render in (render_compare_md, render_compare_html, lambda c: _text(compare_renderables(c))):
        assert "load true bytes" in render(comparison) and "load.true_bytes" not in render(comparison)


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
        ({"timeout_s": 0}, ProfileOptionError),
        ({"timeout_s": float("nan")}, ProfileOptionError),
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
        ["profile", "{llama}", "--timeout", "0"],
        ["profile", "{llama}", "--timeout", "-5"],
        ["report", "{llama}/config.json"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(model_dirs, argv, capsys):
    argv = [a.format(llama=model_dirs["llama"]) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    # exactly one line: no blank line left by the progress display before it
    assert err.startswith(f"memprof {argv[0]}: error:") and err.count("\n") == 1 and err.endswith("\n")


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
    from memprof.results.profile import SettingProfile

    report = ProfileReport(
        model="m", device="cpu", env={}, batch=1, seq=2, repeats=1, warmup=0, train="none",
        settings=(SettingProfile("fp32", error="out of memory during load", failed_phase="load"),),
    )  # fmt: skip
    assert ProfileReport.from_json(json.loads(json.dumps(dataclasses.asdict(report)))) == report
    assert "out of memory during load" in render_profile_md(report)


# ---------------------------------------------------------------------------------------------
# saved results: one reader for profile and footprint files, errors in words


def _synthetic_report(device: str = "cpu", *, error: str | None = None, failed_phase: str | None = None):
    """A report with large numbers (8B-model sizes), measured on `device`; the nf4 row failed if `error`."""
    from memprof.results.profile import ForwardProfile, LoadProfile, SettingProfile, TrainProfile

    gpu = device == "cuda"
    peaks = dict(reserved_peak_bytes=133_456_789_012, device_peak_bytes=143_456_789_012) if gpu else {}
    load = LoadProfile(1234.5, 16_060_522_496, 16_060_522_496, 123_456_789_012, peak_rss_bytes=12_345_678_901, **peaks)
    forward = ForwardProfile(12_345.678, 1_234.5, 123_456.7, 123_456_789_012, peak_rss_bytes=12_345_678_901, **peaks)
    breakdown = {kind: 10**9 for kind in ("weights", "trainable_params", "grads", "optimizer_states")}
    train = TrainProfile(
        "full", 23_456.78, 2_345.67, 234_567.8, 10**16, 456.7, 4 * 10**9, breakdown, 8_030_261_248,
        peak_fraction=0.4617 if gpu else None, **peaks,
    )  # fmt: skip
    rows = [SettingProfile("bf16", load=load, forward=forward, train=train)]
    if error:
        rows.append(SettingProfile("fp32", error=error, failed_phase=failed_phase))
    return ProfileReport(
        model="meta-llama/Llama-3.1-8B", device=device, env={"gpu_name": "NVIDIA H100 80GB HBM3"} if gpu else {},
        batch=1, seq=512, repeats=10, warmup=2, train="full", settings=tuple(rows),
    )  # fmt: skip


def _report_cli(tmp_path, capsys, content: bytes | str) -> tuple[int, str]:
    path = tmp_path / "result.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code = main(["report", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "it holds a JSON array, where a result is an object"),
        (b"\xff\xfe{}", "it is not UTF-8 text"),
        ("{not json", "is not JSON"),
        ('"memprof.profile"', "it holds a JSON string"),
        ('{"kind": "memprof.profile"}', "missing fields 'model', 'device', 'env'"),
        ('{"kind": "memprof.footprint"}', "'settings'"),
        ('{"model": "m", "r": 8, "trainable_params": 3584}', 'it has no "kind"'),
        ('{"kind": "memprof.lora-params"}', "not a valid memprof lora-params result: missing fields 'model', 'r'"),
        ('{"kind": "memprof.plan"}', "not a valid memprof plan result: missing fields 'model'"),
        (
            '{"kind": "memprof.nothing"}',
            "is not a memprof result of a kind it knows (profile, footprint, validate, plan",
        ),
        ('{"kind": "memprof.nothing"}', '`memprof plan --task serve --json --out` ("kind": "memprof.serve-plan")'),
        ('{"kind": "memprof.serve-plan"}', "not a valid memprof plan --task serve result: missing fields"),
    ],
)
def test_report_of_a_file_that_is_not_a_result_is_one_line_in_words_and_exit_2(tmp_path, capsys, content, message):
    code, err = _report_cli(tmp_path, capsys, content)
    assert code == 2 and err.count("\n") == 1 and err.startswith("memprof report: error:"), err
    assert message in err
    for internal in ("__init__", "positional argument", "Traceback", "('settings')", "KeyError"):
        assert internal not in err


def test_a_file_of_another_command_names_both_accepted_kinds(tmp_path, capsys):
    code, err = _report_cli(tmp_path, capsys, json.dumps({"model": "m", "trainable_params": 3584}))
    assert code == 2 and "memprof.profile" in err and "memprof.footprint" in err


def test_a_missing_or_ill_typed_field_is_named_with_its_path(tmp_path, capsys):
    data = _synthetic_report().to_json()
    del data["settings"][0]["train"]["median_ms"]
    code, err = _report_cli(tmp_path, capsys, json.dumps(data))
    assert code == 2 and "missing field 'settings[0].train.median_ms'" in err
    data = _synthetic_report().to_json()
    data["batch"] = "one"
    code, err = _report_cli(tmp_path, capsys, json.dumps(data))
    assert code == 2 and "field 'batch' should be an integer, not a JSON string" in err


def test_a_footprint_file_missing_a_row_field_is_named(tmp_path, capsys):
    data = json.loads(render_json(footprint(str(TINY_CONFIGS and "gpt2"), settings="bf16")))
    del data["settings"][0]["fits_gpus"]
    code, err = _report_cli(tmp_path, capsys, json.dumps(data))
    assert code == 2 and "missing field 'settings[0].fits_gpus'" in err and err.count("\n") == 1


def test_compare_refuses_a_footprint_file_in_one_line(tmp_path, capsys):
    footprint_file, profile_file = tmp_path / "fp.json", tmp_path / "p.json"
    footprint_file.write_text(render_json(footprint("gpt2", settings="bf16")))
    _synthetic_report().save(profile_file)
    assert main(["compare", str(profile_file), str(footprint_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'its "kind" is "memprof.footprint"' in err


def test_unknown_keys_from_newer_versions_are_ignored():
    data = _synthetic_report().to_json()
    data["future_field"] = 1
    data["settings"][0]["load"]["future_field"] = 2
    assert ProfileReport.from_json(data) == _synthetic_report()


# ---------------------------------------------------------------------------------------------
# failures: timeouts, reasons in the tables, exit codes


def test_a_kill_at_the_timeout_is_reported_as_a_timeout_not_as_the_os():
    from memprof.measure.fresh import Finished

    assert Finished(None, -9, "", timed_out=True, timeout_s=2.5).exit_reason() == "timed out after 2.5 s"
    assert "out of host memory" in Finished(None, -9, "").exit_reason()


@pytest.mark.slow
def test_a_setting_that_times_out_is_a_row_with_the_timeout_and_exit_code_1(model_dirs, tmp_path, capsys):
    out = tmp_path / "timeout.json"
    argv = ["profile", str(model_dirs["llama"]), "--settings", "bf16", "--seq", "8", "--timeout", "0.05"]
    assert main([*argv, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    error = ProfileReport.load(out).settings[0].error
    assert error.startswith("timed out after 0.05 s during ") and "SIGKILL" not in error
    assert "failed: timed out after 0.05 s during" in captured.out  # the table says why, not just "not run"
    assert "1 setting(s) failed: bf16 (timed out after 0.05 s" in captured.err


def _fake_worker(fail: set[str]):
    def worker(request, **kwargs):
        name = request["setting"]["name"]
        if name in fail:
            return {"error": "worker died with SIGKILL during start-up", "failed_phase": "start-up"}
        load = {"load_s": 0.5, "footprint_bytes": 1000, "true_bytes": 1000, "peak_bytes": 2000}
        forward = {"median_ms": 1.5, "iqr_ms": 0.1, "tokens_per_s": 10.0, "peak_bytes": 3000}
        return {"load": load, "forward": forward, "done": True}

    return worker


@pytest.mark.parametrize(("fail", "code"), [(set(), 0), ({"bf16"}, 1)])
def test_profile_exit_code_is_0_only_when_every_setting_ran(model_dirs, tmp_path, monkeypatch, capsys, fail, code):
    from memprof.measure import profile_worker

    monkeypatch.setattr(profile_worker, "run_profile_worker", _fake_worker(fail))
    monkeypatch.setattr("memprof.measure.load.weights_for", _fake_weights)
    argv = ["profile", str(model_dirs["llama"]), "--settings", "fp32,bf16", "--train", "none", "--seq", "8"]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == code


def test_a_setting_that_died_before_its_first_phase_shows_the_reason_in_the_load_table():
    from memprof.results.profile import SettingProfile

    row = SettingProfile("nf4", error="timed out after 5 s during start-up", failed_phase="start-up")
    report = dataclasses.replace(_synthetic_report(), settings=(row,))
    text = render_profile_md(report)
    load_table = text.split("### Load")[1].split("###")[0]
    assert "failed: timed out after 5 s during start-up" in load_table
    assert "not run" in text.split("### Forward")[1]


# ---------------------------------------------------------------------------------------------
# --out: a JSON file in an existing directory; the default ./reports/ is said and documented


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("{tmp}/r.html", "must end in .json"),
        ("{tmp}/no-such-dir/r.json", "directory {tmp}/no-such-dir does not exist"),
        ("{tmp}", "must end in .json"),
    ],
)
def test_profile_out_is_a_json_file_in_an_existing_directory(model_dirs, tmp_path, capsys, out, message):
    out, message = out.format(tmp=tmp_path), message.format(tmp=tmp_path)
    argv = ["profile", str(model_dirs["llama"]), "--seq", "8", "--format", "html", "--out", out]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "no-such-dir").exists() and not (tmp_path / "r.html").exists()


def test_html_out_is_refused_with_the_report_command_that_writes_it(model_dirs, tmp_path, capsys):
    assert main(["profile", str(model_dirs["llama"]), "--format", "html", "--out", str(tmp_path / "r.html")]) == 2
    assert f"memprof report RESULT.json --format html --out {tmp_path / 'r.html'}" in capsys.readouterr().err


def test_profile_without_out_saves_under_reports_and_says_where(model_dirs, tmp_path, monkeypatch, capsys):
    from memprof.cli import build_parser
    from memprof.measure import profile_worker

    monkeypatch.setattr(profile_worker, "run_profile_worker", _fake_worker(set()))
    monkeypatch.setattr("memprof.measure.load.weights_for", _fake_weights)
    monkeypatch.chdir(tmp_path)
    assert main(["profile", str(model_dirs["llama"]), "--settings", "fp32", "--train", "none", "--seq", "8"]) == 0
    saved = list((tmp_path / "reports").glob("profile-*-cpu-*.json"))
    assert len(saved) == 1 and f"saved reports/{saved[0].name}" in capsys.readouterr().err
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["profile"].format_help().split())
    assert "./reports/" in help_text and "memprof report FILE.json --format md" in help_text


def test_bad_options_leave_no_empty_reports_directory(model_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["profile", str(model_dirs["llama"]), "--batch", "0"]) == 2
    assert not (tmp_path / "reports").exists()


# ---------------------------------------------------------------------------------------------
# numbers, glyphs and widths


@pytest.mark.parametrize(
    ("tflops", "text"),
    [
        (6.862e-05, "68.6 MFLOP/s"),
        (0.012345, "12.3 GFLOP/s"),
        (456.7, "457 TFLOP/s"),
        (1.0, "1.00 TFLOP/s"),
        (9.996e-4, "1.00 GFLOP/s"),
    ],
)
def test_flops_use_an_adaptive_unit_with_3_significant_digits(tflops, text):
    from memprof.report.profile import flops_per_s

    assert flops_per_s(tflops) == text


def test_compare_formats_each_metric_consistently_with_readable_labels():
    a = _synthetic_report()
    slower = dataclasses.replace(a.settings[0].load, load_s=a.settings[0].load.load_s * 0.5490123)
    b = dataclasses.replace(a, settings=(dataclasses.replace(a.settings[0], load=slower),))
    text = render_compare_md(compare_reports(a, b))
    assert "| bf16 | load time (s) | 1,234.50 | 677.76 | 0.549× |" in text
    assert "| bf16 | forward median (ms) | 12,345.68 | 12,345.68 | 1.00× (within noise) |" in text
    assert "| bf16 | train peak | 3.73 GiB | 3.73 GiB | 1.00× |" in text
    assert "| bf16 | train FLOP/s | 457 TFLOP/s | 457 TFLOP/s | 1.00× (within noise) |" in text
    assert "load.load_s" not in text and "e+" not in text and "e-" not in text


def test_every_memory_kind_has_its_own_glyph_and_colour_in_the_legend():
    from memprof.report.profile import BREAKDOWN_STYLES, breakdown_chart

    glyphs = [glyph for glyph, _ in BREAKDOWN_STYLES.values()]
    colours = [colour for _, colour in BREAKDOWN_STYLES.values()]
    assert len(set(glyphs)) == len(glyphs) and len(set(colours)) == len(colours)
    legend = _plain(breakdown_chart(_synthetic_report()), width=100)
    for kind, (glyph, _) in BREAKDOWN_STYLES.items():
        assert f"{glyph * 2} {kind}" in legend  # without colour (piped), the glyph alone tells kinds apart


def _plain(renderable, *, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(renderable)
    return buf.getvalue()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_tables_fit_100_columns_with_whole_headers_and_numbers(device):
    report = _synthetic_report(device, error="out of memory during train", failed_phase="train")
    text = _plain(profile_renderables(report), width=100)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 100
    for header in ("load s", "footprint", "true bytes", "median ms", "IQR ms", "tokens/s", "FLOP/s", "trainable"):
        assert header in text
    assert "12,345.68" in text and "23,456.78" in text and "457 TFLOP/s" in text and "8.03B" in text
    # reserved and whole-device peaks are GPU-only: their own table there, no column of dashes on CPU
    assert ("reserved" in text) == (device == "cuda") and ("of peak" in text) == (device == "cuda")


@pytest.mark.slow
def test_real_results_render_at_100_columns_without_cut_cells_or_scientific_notation(lora_reports):
    text = _plain(profile_renderables(lora_reports["llama"]), width=100)
    assert "…" not in text and "e-0" not in text and "FLOP/s" in text


def test_qlora_settings_checkpoint_by_default_and_the_others_do_not(model_dirs, monkeypatch):
    from memprof.measure import profile_worker

    asked = {}

    def worker(request, **kwargs):
        asked[request["setting"]["name"]] = request["grad_checkpointing"]
        return {"load": None, "error": "not run in this test", "failed_phase": "load"}

    monkeypatch.setattr(profile_worker, "run_profile_worker", worker)
    monkeypatch.setattr("memprof.measure.load.weights_for", _fake_weights)
    profile(str(model_dirs["llama"]), settings="bf16,nf4-dq", **TINY)
    assert asked == {"bf16": False, "nf4-dq": True}
    profile(str(model_dirs["llama"]), settings="bf16,nf4-dq", grad_checkpointing=False, **TINY)
    assert asked == {"bf16": False, "nf4-dq": False}
    profile(str(model_dirs["llama"]), settings="bf16", train="none", grad_checkpointing=True, **TINY)
    assert asked["bf16"] is False  # nothing to checkpoint without a training step


def test_a_rate_is_within_noise_only_when_both_runs_did_the_same_work():
    """tokens/s and FLOP/s are the work over the median: between runs of another seq their change is
    the work's (seq 32 against 48 here), never the runs' noise; against the same run they are."""
    from pathlib import Path

    from memprof.results import load_result

    inputs = Path(__file__).parent / "golden" / "inputs"
    a, b = load_result(inputs / "profile-a.json"), load_result(inputs / "profile-b.json")
    assert (a.seq, b.seq) == (32, 48)
    rates = ("tokens_per_s", "tflops")
    across = compare_reports(a, b).rows
    assert not any(r.within_noise for r in across if r.metric.endswith(rates))
    assert any(r.within_noise for r in across if r.metric.endswith("median_ms"))
    same = compare_reports(a, a).rows
    assert all(r.within_noise for r in same if r.metric.endswith(rates) and r.ratio is not None)
