"""Rough edges of the command line: options that were silently ignored or overridden, commands without
the shared output options, a LoRA rank wider than its layers, and a slow failing --allow-download."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import tiny_config

from memprof.analyses.lora_params import lora_params, lora_sweep
from memprof.cli import main


def one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.startswith(f"memprof {command}: error: ")
    return captured.err


# --- footprint --device without --measure ------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_footprint_device_without_measure_is_an_error_not_ignored(device, capsys):
    assert main(["footprint", "gpt2", "--device", device]) == 2
    err = one_line_error(capsys, "footprint")
    assert f"--device {device} only applies with --measure" in err


def test_footprint_without_device_still_predicts(capsys):
    assert main(["footprint", "gpt2", "--settings", "fp32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"][0]["setting"] == "fp32"


# --- --json with --format ---------------------------------------------------------------------------

# Each command with --json and --format; models that do not exist and files that are not there, so that
# the contradiction must be found before any work (else the error would be another one).
CONFLICT_COMMANDS = [
    ["footprint", "gpt2"],
    ["lora-params", "gpt2"],
    ["models"],
    ["gpus"],
    ["plan", "no-such/model"],
    ["profile", "no-such/model"],
    ["report", "no-such-result.json"],
    ["compare", "no-such-a.json", "no-such-b.json"],
]


@pytest.mark.parametrize("fmt", ["md", "html", "table"])
@pytest.mark.parametrize("command", CONFLICT_COMMANDS, ids=lambda c: c[0])
def test_json_with_another_format_is_one_line_before_any_work(command, fmt, capsys):
    assert main([*command, "--json", "--format", fmt]) == 2
    err = one_line_error(capsys, command[0])
    assert f"--json and --format {fmt} contradict each other" in err


@pytest.mark.parametrize("extra", [["--json"], ["--json", "--format", "json"], ["--format", "json"]])
@pytest.mark.parametrize("command", [["footprint", "gpt2"], ["lora-params", "gpt2"], ["models"], ["gpus"]])
def test_json_alone_or_with_format_json_prints_json(command, extra, capsys):
    assert main([*command, *extra]) == 0
    json.loads(capsys.readouterr().out)


# --- models and gpus: the shared output options -----------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["models"], ["meta-llama/Llama-3.1-8B", "8,030,261,248", "llama-3.2-1b"]),
        (["gpus"], ["H100 80GB", "bf16 TFLOP/s", "$/hour"]),
    ],
    ids=["models", "gpus"],
)
@pytest.mark.parametrize("fmt", ["table", "md", "html", "json"])
def test_models_and_gpus_render_every_format(command, expected, fmt, capsys):
    assert main([*command, "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        rows = json.loads(out)
        assert isinstance(rows, list)  # the shape --json always printed
        text = json.dumps(rows)
        assert expected[0] in text
    else:
        for value in expected:
            assert value in out
    if fmt == "md":
        assert out.startswith("## ") and "|---|" in out
    if fmt == "html":
        assert out.lstrip().lower().startswith("<!doctype html")


def test_models_json_keeps_its_shape(capsys):
    assert main(["models", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)[0]
    assert first == {"hub_id": "meta-llama/Llama-3.1-8B", "aliases": ["llama-3.1-8b"], "params": 8_030_261_248}


def test_gpus_json_keeps_its_shape(capsys):
    assert main(["gpus", "--json"]) == 0
    t4 = next(g for g in json.loads(capsys.readouterr().out) if g["name"] == "T4")
    assert t4["usable_bytes"] == t4["memory_bytes"] - t4["context_bytes"]


@pytest.mark.parametrize("command", ["models", "gpus"])
@pytest.mark.parametrize(("fmt", "suffix"), [("table", "txt"), ("md", "md"), ("html", "html"), ("json", "json")])
def test_models_and_gpus_out_writes_the_file_atomically(command, fmt, suffix, tmp_path, capsys):
    target = tmp_path / f"{command}.{suffix}"
    assert main([command, "--format", fmt, "--out", str(target)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and f"wrote {target}" in captured.err
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind
    text = target.read_text()
    assert ("Llama-3.1-8B" if command == "models" else "H100 80GB") in text


def test_gpus_out_to_a_missing_directory_is_one_line(tmp_path, capsys):
    assert main(["gpus", "--out", str(tmp_path / "nowhere" / "gpus.md")]) == 2
    assert "does not exist" in one_line_error(capsys, "gpus")


def test_gpus_table_shows_a_gpu_file_card(tmp_path, capsys):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"gpus": [{"name": "T4", "usd_per_hour": 0.123}]}))
    assert main(["gpus", "--gpu-file", str(path), "--format", "md"]) == 0
    t4 = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| T4 |"))
    assert "$0.123" in t4


# --- lora-params: a rank wider than the adapted layers -----------------------------------------------


def test_rank_above_the_narrow_side_names_those_layers_and_their_width():
    # Llama-3.1-8B: q_proj 4096 -> 4096, k_proj and v_proj 4096 -> 1024 (GQA), 32 layers each
    report = lora_params("llama-3.1-8b", r=2048, target="q_proj,k_proj,v_proj")
    above = report.rank_above_width
    assert above is not None
    assert (above.layers, above.min_width, above.modules) == (64, 1024, ("k_proj", "v_proj"))


def test_rank_equal_to_the_narrow_side_is_no_warning():
    assert lora_params("llama-3.1-8b", r=1024, target="q_proj,k_proj,v_proj").rank_above_width is None
    assert lora_params("llama-3.1-8b", r=4097, target="q_proj").rank_above_width.layers == 32


def test_rank_above_width_is_found_on_the_peft_path_too(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config("llama")))  # q 40 -> 40, k and v 40 -> 20
    report = lora_params(str(tmp_path), r=24, target="q_proj,k_proj,v_proj")
    assert report.method == "peft"
    above = report.rank_above_width
    assert (above.layers, above.min_width, above.modules) == (4, 20, ("k_proj", "v_proj"))


@pytest.mark.parametrize("fmt", ["table", "md", "html"])
def test_rank_above_width_warning_is_in_every_format(fmt, capsys):
    args = ["lora-params", "llama-3.1-8b", "--r", "2048", "--target", "q_proj,k_proj,v_proj", "--format", fmt]
    assert main(args) == 0
    out = " ".join(re.sub(r"<[^>]+>", "", capsys.readouterr().out).split())  # lines wrap; HTML spans each line
    assert "r=2048 is larger than min(in_features, out_features) of 64 of the 96 adapted layers" in out
    assert "the narrowest is 1024" in out and "without adding expressiveness" in out


def test_rank_above_width_is_a_json_field(capsys):
    assert main(["lora-params", "gpt2", "--r", "1024", "--target", "c_attn", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rank_above_width"] == {
        "layers": 12,
        "min_width": 768,
        "modules": ["c_attn"],
    }
    assert main(["lora-params", "gpt2", "--r", "768", "--target", "c_attn", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rank_above_width"] is None


def test_sweep_warns_for_the_ranks_above_width_only(capsys):
    sweep = lora_sweep("gpt2", ranks="8,1024", target="c_attn")
    assert [row.rank_above_width is not None for row in sweep.rows] == [False, True]
    assert main(["lora-params", "gpt2", "--sweep", "8,1024", "--target", "c_attn", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "> **Warning:** r=1024 is larger than" in out and "r=8 is larger" not in out


def test_rank_within_width_has_no_warning(capsys):
    assert main(["lora-params", "gpt2", "--r", "16", "--format", "md"]) == 0
    assert "Warning" not in capsys.readouterr().out


# --- --allow-download fails fast ----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _download_env(tmp_path, endpoint: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), **extra)
    return env


def _download(tmp_path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "memprof", "footprint", "some-org/not-cached", "--allow-download"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    return result, time.monotonic() - started


def test_unreachable_hub_is_one_line_in_seconds_not_after_retries(tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result, elapsed_s = _download(tmp_path, _download_env(tmp_path, endpoint))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no "Retrying in 1s" lines
    assert f"cannot reach {endpoint}" in result.stderr and "Connection refused" in result.stderr
    assert elapsed_s < 15  # huggingface_hub's own retries took about 24 s


def test_hub_without_the_model_is_one_line(tmp_path):
    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self):  # what the hub answers for a repository that does not exist
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("X-Error-Message", "Repository not found")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        result, _ = _download(tmp_path, _download_env(tmp_path, endpoint))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"no such model on {endpoint}" in result.stderr


def test_offline_mode_says_so(tmp_path):
    env = _download_env(tmp_path, f"http://127.0.0.1:{_closed_port()}", HF_HUB_OFFLINE="1")
    result, _ = _download(tmp_path, env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stderr


def test_download_asks_the_hub_once_with_a_short_timeout_before_downloading(monkeypatch, capsys):
    import huggingface_hub

    from memprof import models

    probes: list[dict] = []
    downloads: list[str] = []

    def unreachable(url, **kwargs):
        probes.append(kwargs)
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: downloads.append(a[0]))
    assert main(["footprint", "some-org/not-cached", "--allow-download"]) == 2
    assert "cannot reach" in one_line_error(capsys, "footprint")
    assert len(probes) == 1 and probes[0]["timeout"] == models.DOWNLOAD_TIMEOUT_S <= 5
    assert downloads == []  # hf_hub_download would retry a network error five times with backoff


def test_markdown_cells_escape_pipes_and_line_breaks(tmp_path, capsys):
    """A note from a user's GPU file with a `|` must not split the Markdown row into extra cells."""
    from memprof.cli import main

    gpu_file = tmp_path / "gpus.json"
    gpu_file.write_text(json.dumps({"gpus": [{"name": "T4", "note": "spot | preemptible\nEU only"}]}))
    assert main(["gpus", "--gpu-file", str(gpu_file), "--format", "md"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| T4 "))
    assert "spot \\| preemptible EU only" in row
    assert row.replace("\\|", "").count("|") == 9  # 8 cells


def test_python_footprint_rejects_a_device_without_measure():
    """The library says what the CLI says: a device for a prediction that loads nothing is an error."""
    from memprof import footprint
    from memprof.errors import OptionError

    with pytest.raises(OptionError, match="only applies with --measure"):
        footprint("openai-community/gpt2", device="cuda")
    assert footprint("openai-community/gpt2", settings="fp32").device is None


# --- argparse errors: one line for every option of every command ---------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["plan", "gpt2", "--r", "abc"], "--lora-r wants a whole number, not 'abc' (e.g. --lora-r 8)"),
        (["plan", "gpt2", "--alpha", "x"], "--lora-alpha wants a number, not 'x'"),
        (["plan", "gpt2", "--batch", "1.5"], "--batch wants a whole number, not '1.5' (e.g. --batch 1)"),
        (["profile", "gpt2", "--seq", "long"], "--seq wants a whole number, not 'long' (e.g. --seq 512)"),
        (["profile", "gpt2", "--timeout", "soon"], "--timeout wants a number, not 'soon'"),
        (["profile", "gpt2", "--train", "half"], "invalid choice: 'half' (choose from"),
        (["profile", "gpt2", "--timeout"], "--timeout needs a value after it"),
        (["footprint", "gpt2", "--bogus"], "unrecognized arguments: --bogus (see `memprof footprint --help`)"),
        (["gpus", "--foo", "3"], "unrecognized arguments: --foo 3"),
        (["models", "--format", "xml"], "invalid choice: 'xml'"),
        (["validate", "gpt2", "--seqs", "x"], "--seqs takes positive integers, not 'x'"),
        (["compare", "a.json"], "the following arguments are required: B"),
        (["report"], "the following arguments are required"),
        (["lora-params", "gpt2", "--r", "abc"], "rank must be a positive integer, not 'abc'"),
        # values argparse takes but torch's int64 shapes could not: refused before any work
        (["plan", "gpt2", "--lora-r", "99999999999999999999"], "rank 99999999999999999999 is above 16,777,216"),
        (["lora-params", "gpt2", "--r", "16777217"], "rank 16777217 is above 16,777,216"),
        (["plan", "gpt2", "--batch", "99999999999999999999"], "--batch and --seq must be at most 1,048,576"),
        (["plan", "bloom-1b7", "--task", "infer", "--new-tokens", "99999999999999999999"], "--new-tokens must be at"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_bad_option_value_is_one_line_naming_what_would_work(argv, expected, capsys):
    assert main(argv) == 2
    err = one_line_error(capsys, argv[0])
    assert expected in err
    assert "usage:" not in err


def test_an_unknown_command_is_one_line(capsys):
    assert main(["bogus"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("memprof: error: ") and len(captured.err.strip().splitlines()) == 1
    assert "'bogus'" in captured.err and "'plan'" in captured.err


# --- profile --alpha 12.5: the saved result is one report and compare read back -------------------------


def _float_alpha_report(created: str):
    from memprof.results.profile import ProfileReport, SettingProfile

    return ProfileReport(
        model="m", device="cpu", env={}, batch=1, seq=8, repeats=1, warmup=0, train="lora",
        settings=(SettingProfile("fp32", error="out of memory during load", failed_phase="load"),),
        lora_r=4, lora_alpha=12.5, created=created,
    )  # fmt: skip


def test_a_float_alpha_result_round_trips_through_report_and_compare(tmp_path, capsys):
    from memprof.results.profile import ProfileReport

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _float_alpha_report("t1").save(a)
    _float_alpha_report("t2").save(b)
    assert ProfileReport.load(a).lora_alpha == 12.5
    assert main(["report", str(a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lora_alpha"] == 12.5
    assert main(["compare", str(a), str(b)]) == 0


@pytest.mark.slow
def test_profile_alpha_12_5_saves_a_result_report_and_compare_read(tmp_path, capsys):
    model = tmp_path / "tiny"
    model.mkdir()
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 64}  # fmt: skip
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run.json"
    argv = ["profile", str(model), "--settings", "fp32", "--seq", "8", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--threads", "1", "--lora-r", "4", "--alpha", "12.5", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lora_alpha"] == 12.5
    assert main(["report", str(out), "--format", "md"]) == 0
    assert "fp32" in capsys.readouterr().out
    assert main(["compare", str(out), str(out)]) == 0


# --- one GPU-name rule for every command --------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "card"),
    [("h100", "H100 80GB"), ("H100-80GB", "H100 80GB"), ("4090", "RTX 4090"), ("rtx4090", "RTX 4090"),
     ("t4", "T4"), ("mi300", "MI300X"), ("a100 80", "A100 80GB")],
)  # fmt: skip
def test_plan_and_profile_take_the_same_gpu_names(typed, card):
    from memprof import catalog
    from memprof.analyses.plan.options import select_gpus
    from memprof.analyses.profile import gpu_budget

    assert catalog.find_gpu(typed).name == card
    assert gpu_budget(typed)[0] == card
    assert [g.name for g in select_gpus((typed,), catalog.gpus())] == [card]


def test_a_gpu_name_that_means_two_cards_names_both(capsys):
    assert main(["profile", "no-such/model", "--gpu", "a100"]) == 2
    err = one_line_error(capsys, "profile")
    assert "'a100' could be A100 40GB or A100 80GB" in err


def test_profile_gpu_h100_is_accepted(capsys):
    # the GPU is read before the model: the error is the model's, so h100 was taken
    assert main(["profile", "no-such/model", "--gpu", "h100"]) == 2
    err = one_line_error(capsys, "profile")
    assert "GPU" not in err and "no-such/model" in err


def _plan_model_dir(tmp_path, arch: str = "llama") -> str:
    path = tmp_path / f"tiny-{arch}"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(tiny_config(arch)))
    return str(path)


def test_plan_gpu_is_an_alias_of_gpus(tmp_path, capsys):
    assert main(["plan", _plan_model_dir(tmp_path), "--gpu", "4090", "--seq", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in out["gpus"]] == ["RTX 4090"]
    assert out["kind"] == "memprof.plan"  # what `memprof report` tells it apart by


# --- plan: one simulated plan, with a --gpu-file card whose name has a `|` and no speed or price --------


@pytest.fixture(scope="module")
def plan_with_a_new_card(tmp_path_factory):
    from memprof.analyses.plan import plan

    root = tmp_path_factory.mktemp("plan-new-card")
    gpu_file = root / "gpus.json"
    card = {"name": "Quux | 9000", "memory_mib": 24576, "context_mib": 400, "context_measured": True}
    gpu_file.write_text(json.dumps({"gpus": [card]}))
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse cache fixture is not set up yet
        mp.setenv("MEMPROF_CACHE_DIR", str(root / "cache"))
        model = _plan_model_dir(root)
        return plan(model, seq=64, gpus=("quux", "t4"), gpu_file=gpu_file, use_cache=False)


def test_a_gpu_file_card_without_speed_or_price_is_planned_without_step_time_or_cost(plan_with_a_new_card):
    quux, t4 = plan_with_a_new_card.gpus
    assert quux.name == "Quux | 9000" and quux.memory_bytes == 24576 * 2**20 and quux.fits
    assert quux.step_s is None and quux.usd_per_million_tokens is None
    assert t4.step_s is not None and plan_with_a_new_card.cheapest == "T4"


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_plan_markdown_escapes_a_pipe_in_a_cell(plan_with_a_new_card):
    from memprof.report.plan import render_plan_md

    report = dataclasses.replace(plan_with_a_new_card, model="me|mine")
    lines = render_plan_md(report).splitlines()
    head = next(line for line in lines if line.startswith("| GPU |"))
    quux = next(line for line in lines if "Quux" in line)
    assert quux.startswith("| Quux \\| 9000 |")
    assert _unescaped_pipes(quux) == _unescaped_pipes(head)
    for line in lines:
        if line.startswith("|"):  # every table row: as many cells as its header
            assert _unescaped_pipes(line) in (_unescaped_pipes(head), 4), line


# --- profile's progress bar counts the settings it will run -------------------------------------------


@pytest.mark.parametrize(("settings", "count"), [("bf16,bf16,fp32", 2), ("fp32, ,nf4,", 2), (None, 5)])
def test_profile_progress_counts_parsed_settings(settings, count, monkeypatch, tmp_path):
    import memprof.analyses.profile
    import memprof.commands.profile as command
    from memprof.cli import build_parser

    totals = []

    class Progress(command.Progress):
        def add_task(self, description, *, total=None, **fields):
            totals.append(total)
            return super().add_task(description, total=total, **fields)

    class Console(command.Console):  # stderr as a terminal, so the bar is shown
        def __init__(self, **kwargs):
            super().__init__(**kwargs, force_terminal=True, file=open(os.devnull, "w"))  # noqa: SIM115

    monkeypatch.setattr(command, "Progress", Progress)
    monkeypatch.setattr(command, "Console", Console)
    monkeypatch.setattr(memprof.analyses.profile, "profile", lambda *a, **k: "ran")
    argv = ["profile", "m"] + ([] if settings is None else ["--settings", settings])
    args = build_parser().parse_args(argv)
    assert command.ProfileCommand()._profile(args, None, tmp_path / "r.json") == "ran"
    assert totals == [count]


# --- models and gpus tables at 100 columns ------------------------------------------------------------


def _at_100_columns(renderable) -> str:
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_models_table_never_cuts_a_hub_id_or_an_alias():
    from memprof import catalog
    from memprof.report.catalog import models_table

    text = _at_100_columns(models_table(catalog.catalog_models()))
    assert "…" not in text
    lines = text.splitlines()
    for model in catalog.catalog_models():
        assert any(f"│ {model.hub_id} " in line for line in lines), model.hub_id  # whole, on one line


def test_gpus_table_gives_each_card_one_line_at_100_columns_and_explains_est():
    from memprof import catalog
    from memprof.report.catalog import gpus_table

    text = _at_100_columns(gpus_table(catalog.gpus()))
    assert max(len(line) for line in text.splitlines()) <= 100
    rows = [line for line in text.splitlines() if line.startswith("│ ")]
    for card in catalog.gpus():
        (row,) = [r for r in rows if r.startswith(f"│ {card.name} ")]
        assert "0.50 GiB (est.)" in row or card.context_measured
    continuation = [r for r in rows if r.startswith("│           │            │    ")]
    assert len(continuation) <= 4  # only the T4's note wraps
    assert "(est.) a shipped estimate, not measured on this card" in " ".join(text.split())


# --- every option's help states its default ------------------------------------------------------------


def _options_with_defaults():
    import argparse

    from memprof.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.default in (None, False, argparse.SUPPRESS):
                continue
            yield name, action


@pytest.mark.parametrize(
    ("command", "action"), list(_options_with_defaults()), ids=lambda v: v if isinstance(v, str) else v.dest
)
def test_every_option_with_a_default_says_it_in_its_help(command, action):
    text = action.help or ""
    assert "default" in text, f"memprof {command} {action.option_strings}: {text!r}"
    # the value itself, or "all" for a list option whose default is every choice (validate --tasks)
    assert str(action.default) in text or "(default all)" in text, (
        f"memprof {command} {action.option_strings} default {action.default!r}: {text!r}"
    )


def test_profile_help_says_what_train_defaults_to(capsys):
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    assert "none (default lora)" in " ".join(capsys.readouterr().out.split())


# --- compare: a difference within the runs' spread is marked, not called a speed-up --------------------


def _timed_report(forward_ms: float, forward_iqr: float, train_ms: float, train_iqr: float):
    from memprof.results.profile import ForwardProfile, ProfileReport, SettingProfile, TrainProfile

    forward = ForwardProfile(forward_ms, forward_iqr, 8_000 / forward_ms, 10**6)
    train = TrainProfile("lora", train_ms, train_iqr, 8_000 / train_ms, 10**9, 10**9 / train_ms / 1e9, 2 * 10**6,
                         {"weights": 2 * 10**6}, 1000)  # fmt: skip
    return ProfileReport(
        model="m", device="cpu", env={}, batch=1, seq=8, repeats=10, warmup=2, train="lora",
        settings=(SettingProfile("bf16", forward=forward, train=train),),
    )  # fmt: skip


def test_compare_marks_a_forward_difference_within_the_iqrs_as_noise(tmp_path, capsys):
    from memprof.analyses.compare import compare_reports
    from memprof.report.profile import render_compare_md

    # forward: 6% apart with IQRs of a quarter of the median; train: 50% apart with IQRs of 1%
    a, b = _timed_report(100.0, 25.0, 100.0, 1.0), _timed_report(106.0, 26.5, 150.0, 1.5)
    rows = {r.metric: r for r in compare_reports(a, b).rows}
    assert rows["forward.median_ms"].within_noise and rows["forward.tokens_per_s"].within_noise
    assert not rows["train.median_ms"].within_noise and not rows["train.tflops"].within_noise
    assert not rows["forward.peak_bytes"].within_noise  # bytes are exact: never noise
    md = render_compare_md(compare_reports(a, b))
    forward_line = next(line for line in md.splitlines() if "forward median" in line)
    train_line = next(line for line in md.splitlines() if "train step median" in line)
    assert "1.06× (within noise)" in forward_line and "noise" not in train_line
    assert "not a speed-up or slow-down" in md
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json"]) == 0
    saved = {r["metric"]: r["within_noise"] for r in json.loads(capsys.readouterr().out)["rows"]}
    assert saved["forward.median_ms"] is True and saved["train.median_ms"] is False


def test_compare_without_noise_adds_no_note():
    from memprof.analyses.compare import compare_reports
    from memprof.report.profile import render_compare_md

    a, b = _timed_report(100.0, 1.0, 100.0, 1.0), _timed_report(150.0, 1.0, 150.0, 1.0)
    assert "noise" not in render_compare_md(compare_reports(a, b))


# --- every command's JSON is a result `memprof report` re-renders ----------------------------------------


def _report_round_trip(path, capsys, original: dict, expected: str) -> None:
    """report FILE in every format; its --json is the file's JSON, field for field."""
    for fmt in ("table", "md", "html"):
        assert main(["report", str(path), "--format", fmt]) == 0, capsys.readouterr().err
        assert expected in capsys.readouterr().out
    assert main(["report", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == original


def test_a_saved_plan_json_re_renders_in_every_format(plan_with_a_new_card, tmp_path, capsys):
    from memprof.report.jsonout import render_json

    path = tmp_path / "plan.json"
    path.write_text(render_json(plan_with_a_new_card))
    original = json.loads(path.read_text())
    assert original["kind"] == "memprof.plan"
    _report_round_trip(path, capsys, original, "T4")


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (["lora-params", "gpt2", "--setting", "nf4", "--dora", "--modules-to-save", "lm_head"], "memprof.lora-params"),
        (["lora-params", "gpt2", "--sweep", "4,8"], "memprof.lora-sweep"),
        (["footprint", "gpt2", "--settings", "fp32,nf4"], "memprof.footprint"),
    ],
    ids=["lora-params", "lora-sweep", "footprint"],
)
def test_lora_params_and_footprint_json_re_render_in_every_format(argv, kind, tmp_path, capsys):
    path = tmp_path / "result.json"
    assert main([*argv, "--json", "--out", str(path)]) == 0
    capsys.readouterr()
    original = json.loads(path.read_text())
    assert original["kind"] == kind
    _report_round_trip(path, capsys, original, "gpt2")


def test_a_saved_compare_json_re_renders(tmp_path, capsys):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "cmp.json"
    _timed_report(100.0, 25.0, 100.0, 1.0).save(a)
    _timed_report(106.0, 26.5, 150.0, 1.5).save(b)
    assert main(["compare", str(a), str(b), "--json", "--out", str(out)]) == 0
    capsys.readouterr()
    original = json.loads(out.read_text())
    assert original["kind"] == "memprof.compare"
    _report_round_trip(out, capsys, original, "within noise")


def test_a_damaged_plan_json_names_the_field(plan_with_a_new_card, tmp_path, capsys):
    from memprof.report.jsonout import to_dict

    data = to_dict(plan_with_a_new_card)
    del data["gpus"][1]["max_batch"]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    assert main(["report", str(path)]) == 2
    err = one_line_error(capsys, "report")
    assert "not a valid memprof plan result: missing field 'gpus[1].max_batch'" in err


def test_the_executable_flushes_its_output_runs_exit_handlers_and_keeps_its_exit_code():
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran'))\n"
        "from memprof.cli import run\n"
        "sys.argv = ['memprof', *sys.argv[1:]]\n"
        "run()\n"
    )
    ok = subprocess.run([sys.executable, "-c", script, "models", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.rstrip().endswith("exit handler ran")
    assert '"hub_id"' in ok.stdout  # the whole table came through the pipe
    bad = subprocess.run([sys.executable, "-c", script, "plan", "llama-3.1-8b", "--batch", "0"], capture_output=True)
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback():
    # `| true` closes at once: the write fails with BrokenPipeError, which is the reader's choice
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m memprof plan llama-3.1-8b --json | true"],
        capture_output=True,
        text=True,
    )
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert done.returncode in (0, 1)  # 1 where the write failed, 0 where it all fit the pipe first
