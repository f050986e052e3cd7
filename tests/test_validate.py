"""`memprof validate` on the CPU: plan's prediction against profile's measurement of the same step.
On the CPU both sides are exact, so what plan traced equals what profile measured, byte for byte,
and the only difference is bitsandbytes' kernel transient that the live-tensor tracker cannot see."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from memprof.analyses.validate import parse_seqs, parse_tasks, validate
from memprof.cli import main
from memprof.errors import DeviceError, ValidateOptionError
from memprof.report.jsonout import render_json
from memprof.report.validate import render_validate_html, render_validate_md, validate_renderables
from memprof.results.validate import ValidationReport, ValidationRow

SEQS = (16, 32)
TASKS = ("infer", "lora", "qlora")


@pytest.fixture(scope="module")
def reports(tiny_model_dir, tmp_path_factory):
    """Both architectures, every task, two sequence lengths; measured once for the module."""
    caches = tmp_path_factory.mktemp("caches")
    with pytest.MonkeyPatch.context() as mp:  # what the autouse _isolated_cache does for one test
        mp.setenv("MEMPROF_CACHE_DIR", str(caches / "memprof"))
        mp.setenv("HF_HUB_CACHE", str(caches / "hf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        return {arch: validate(str(tiny_model_dir(arch)), seqs=SEQS, threads=1) for arch in ("llama", "gpt2")}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_traced_prediction_equals_the_measured_cpu_peak_byte_for_byte(reports, arch):
    report = reports[arch]
    assert [(r.task, r.seq) for r in report.rows] == [(t, s) for t in TASKS for s in SEQS]
    for row in report.rows:
        assert row.error is None, row
        assert row.predicted_traced_bytes == row.measured_bytes, row
        assert row.traced_error_pct == 0
    assert report.max_abs_traced_diff_bytes == 0
    assert report.max_abs_traced_error_pct == 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_qlora_predicts_more_than_measured_by_the_kernel_transient(reports, arch):
    report = reports[arch]
    for row in report.rows:
        assert row.predicted_bytes - row.measured_bytes == row.kernel_transient_bytes
        assert (row.kernel_transient_bytes > 0) == (row.task == "qlora"), row
        assert row.setting == {"infer": "bf16", "lora": "bf16", "qlora": "nf4-dq"}[row.task]
        # CUDA-only measurements stay empty on the CPU
        assert row.reserved_peak_bytes is row.device_peak_bytes is row.fragmentation_bytes is None
    worst = max(100 * r.kernel_transient_bytes / r.measured_bytes for r in report.rows)
    assert report.max_abs_error_pct == pytest.approx(worst)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_longer_sequences_need_more_memory_on_both_sides(reports, arch):
    rows = {(r.task, r.seq): r for r in reports[arch].rows}
    for task in TASKS:
        short, long = rows[task, SEQS[0]], rows[task, SEQS[1]]
        assert long.predicted_bytes > short.predicted_bytes
        assert long.measured_bytes > short.measured_bytes


@pytest.mark.slow
@pytest.mark.parametrize(
    "render",
    [render_validate_md, render_validate_html, render_json, lambda r: _text(r)],
    ids=["md", "html", "json", "text"],
)
def test_every_format_shows_every_row_and_the_summary(reports, render):
    report = reports["llama"]
    text = render(report)
    if render is not render_json:
        text = " ".join(text.split())  # the terminal wraps lines and breaks headers
    if render is render_json:
        data = json.loads(text)
        assert data["kind"] == "memprof.validate"
        assert [r["measured_bytes"] for r in data["rows"]] == [r.measured_bytes for r in report.rows]
        return
    for task in TASKS:
        assert task in text
    assert "max |error|" in text
    assert "0 bytes" in text  # traced − measured, the byte-for-byte claim
    assert "kernel transient" in text and "untraced" in text
    assert "reserved" not in text.split("max |error|")[0]  # CUDA columns are dropped on the CPU


def _text(report) -> str:
    buf = io.StringIO()
    Console(file=buf, width=100, color_system=None).print(validate_renderables(report))
    return buf.getvalue()


@pytest.mark.slow
def test_terminal_table_fits_100_columns_without_cut_numbers(reports):
    text = _text(reports["gpt2"])
    assert "…" not in text
    assert all(len(line) <= 100 for line in text.splitlines())


def _cuda_report() -> ValidationReport:
    """A CUDA-shaped report (no GPU here): what the renderers show for allocator, reserved and NVML peaks."""
    gib = 2**30

    def row(task, seq, predicted, measured, **extra):
        transient = 32 * 2**20 if task == "qlora" else 0
        return ValidationRow(
            task=task, setting="nf4-dq" if task == "qlora" else "bf16", seq=seq, batch=1,
            predicted_bytes=predicted, predicted_traced_bytes=predicted - transient,
            kernel_transient_bytes=transient, predicted_phase="backward", measured_bytes=measured, **extra,
        )  # fmt: skip

    rows = (
        row("lora", 512, 3 * gib, 3 * gib - 2**20, error_pct=0.03, reserved_peak_bytes=3 * gib + 2**28,
            device_peak_bytes=3 * gib + 2**28 + 500 * 2**20, fragmentation_bytes=2**28 + 2**20,
            context_bytes=500 * 2**20),
        row("qlora", 2048, 5 * gib, None, error="out of memory during train"),
    )  # fmt: skip
    return ValidationReport(
        model="meta-llama/Llama-3.2-1B", device="cuda", batch=1, seqs=(512, 2048), tasks=("lora", "qlora"),
        lora_r=8, lora_alpha=16, target=None, repeats=1, warmup=1, rows=rows, max_abs_error_pct=0.03,
        max_abs_traced_error_pct=0.03, max_abs_traced_diff_bytes=2**20, env={"gpu_name": "NVIDIA H200"},
    )  # fmt: skip


@pytest.mark.parametrize("render", [render_validate_md, _text], ids=["md", "text"])
def test_cuda_rows_show_reserved_nvml_fragmentation_and_context_and_failures_say_why(render):
    text = " ".join(render(_cuda_report()).split())
    for header in ("reserved", "fragmen", "NVML", "context", "MiB"):  # the terminal breaks headers in lines
        assert header in text
    assert "500.00" in text  # the context; sizes below 10 GiB in MiB, so that 2 decimals keep 3 digits
    assert "qlora seq 2,048 (nf4-dq) failed: out of memory during train" in text
    assert "1 failed" in text
    assert "traced" not in text.split("max |error|")[0]  # on CUDA the allocator sees the kernel transient


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_json_has_one_row_per_task_and_seq(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "validate.json"
    argv = ["validate", str(tiny_model_dir("gpt2")), "--seqs", "16", "--tasks", "infer", "--threads", "1"]
    assert main([*argv, "--json", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(r["task"], r["seq"], r["setting"]) for r in data["rows"]] == [("infer", 16, "bf16")]
    row = data["rows"][0]
    assert row["predicted_traced_bytes"] == row["measured_bytes"] > 0
    assert capsys.readouterr().out == ""


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.startswith("memprof validate: error: ")
    return captured.err


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--tasks", "infer,train"], "unknown task 'train'"),
        (["--nproc", "2", "--tasks", "qlora"], "--nproc compares steps that train in ranks"),
        (["--nproc", "0"], "--nproc must be a whole number"),
        (["--tasks", ","], "--tasks needs a comma list"),
        (["--seqs", "128,0"], "--seqs takes positive integers, not '0'"),
        (["--seqs", "12.5"], "--seqs takes positive integers"),
        (["--batch", "0"], "--batch must be an integer >= 1"),
        (["--device", "tpu"], "unknown --device 'tpu'"),
        (["--r", "0"], "rank must be a positive integer"),
        (["--timeout", "0"], "--timeout must be a number of seconds > 0"),
        (["--json", "--format", "md"], "contradict"),
        (["--seqs", "64,4096"], "--seqs 4096 is longer than the model's 128 positions"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, capsys, extra, fragment):
    model = str(tiny_model_dir("llama"))
    capsys.readouterr()  # making the tiny model may print; the command must not
    assert main(["validate", model, *extra]) == 2
    assert fragment in one_line_error(capsys)


def test_cuda_without_a_gpu_is_one_line_and_exit_2(tiny_model_dir, capsys, monkeypatch):
    import torch

    model = str(tiny_model_dir("llama"))
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["validate", model, "--device", "cuda"]) == 2
    assert "no CUDA GPU" in one_line_error(capsys)
    with pytest.raises(DeviceError):
        validate(model, device="cuda")


def test_seqs_and_tasks_keep_their_order_without_repeats():
    assert parse_seqs("512, 128,512") == (512, 128)
    assert parse_seqs((16, 32)) == (16, 32)
    assert parse_tasks("qlora,infer,qlora") == ("qlora", "infer")
    with pytest.raises(ValidateOptionError):
        parse_seqs([True])


def test_one_profile_run_per_seq_measures_the_forward_and_lora_step_together():
    from memprof.analyses.validate import _profile_groups

    assert _profile_groups(("infer", "lora", "qlora")) == {"lora": ("bf16", "nf4-dq")}
    assert _profile_groups(("infer",)) == {"none": ("bf16",)}  # no training step when none is compared
    assert _profile_groups(("infer", "qlora")) == {"none": ("bf16",), "lora": ("nf4-dq",)}


def test_saved_json_rebuilds_the_same_report():
    report = _cuda_report()
    assert ValidationReport.from_json(json.loads(render_json(report))) == report


def test_memprof_report_re_renders_a_saved_validate_result(tmp_path, capsys):
    """`memprof report FILE` knows the validate kind: the saved JSON renders as the run did."""
    saved = Path(__file__).parent.parent / "reports" / "validate-cpu-gpt2.json"
    report = ValidationReport.from_json(json.loads(saved.read_text()))
    assert main(["report", str(saved), "--format", "md"]) == 0
    assert capsys.readouterr().out == render_validate_md(report)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**json.loads(saved.read_text()), "rows": "nope"}))
    assert main(["report", str(broken)]) == 2
    assert "is not a valid memprof validate result" in capsys.readouterr().err
