"""`memprof profile --generate N` (prefill, decode, the KV cache held), `--nproc N --shard MODE` (every
rank measured) and the training step's timeline, through the command line as a user runs them."""

from __future__ import annotations

import json

import pytest

from memprof.cli import main
from memprof.kvcache import kv_layout
from memprof.results.profile import ProfileReport


def _run(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_generate_measures_prefill_decode_and_the_cache_memprof_predicts(arch, tiny_model_dir, tmp_path, capsys):
    folder = tiny_model_dir(arch)
    out = tmp_path / "r.json"
    argv = ["profile", str(folder), "--settings", "bf16", "--seq", "70", "--generate", "8", "--train", "none"]
    code, _, err = _run([*argv, "--repeats", "2", "--warmup", "1", "--out", str(out)], capsys)
    assert code == 0, err
    report = ProfileReport.load(out)
    g = report.settings[0].generate
    assert (g.new_tokens, g.prompt_tokens, g.kv_cache_tokens) == (8, 70, 77)
    config = json.loads((folder / "config.json").read_text())
    assert g.kv_cache_bytes == g.predicted_kv_cache_bytes == kv_layout(config).sequence_bytes(77, 2)
    if arch == "gemma2":  # its sliding window (64 in the tiny config) caps half the layers' cache
        assert g.kv_cache_bytes < kv_layout(config).bytes_per_token(2) * 77
    assert g.prefill_ms > 0 and g.generate_ms > g.prefill_ms * 0 and g.peak_bytes > g.kv_cache_bytes
    code, text, _ = _run(["report", str(out)], capsys)
    assert code == 0 and "Generate (8 new tokens, dynamic cache)" in text and "(=)" in text


@pytest.mark.slow
def test_the_training_step_has_a_timeline_whose_peak_is_the_steps(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["profile", str(tiny_model_dir("llama")), "--settings", "bf16", "--seq", "32", "--repeats", "1"]
    code, _, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    train = ProfileReport.load(out).settings[0].train
    points = train.timeline["points"]
    assert len(points) >= 10
    assert max(p["bytes"] for p in points) == train.timeline["peak_bytes"] == train.peak_bytes
    assert [p["name"] for p in train.timeline["phases"]] == ["zero_grad", "forward", "backward", "optimizer"]
    code, text, _ = _run(["report", str(out)], capsys)
    assert "training step over time" in text and "← the peak" in text
    code, html, _ = _run(["report", str(out), "--format", "html"], capsys)
    assert code == 0 and html.count("<svg") == 1 and "peak" in html
    code, html, _ = _run(["compare", str(out), str(out), "--format", "html"], capsys)
    assert code == 0 and html.count("<svg") == 1 and html.count("class='run'") == 2
    saved = tmp_path / "c.json"
    assert _run(["compare", str(out), str(out), "--json", "--out", str(saved)], capsys)[0] == 0
    code, html, _ = _run(["report", str(saved), "--format", "html"], capsys)
    assert code == 0 and html.count("class='run'") == 2  # the saved comparison keeps both timelines


@pytest.mark.slow
@pytest.mark.parametrize("shard", ["fsdp", "ddp"])
def test_nproc_measures_every_rank(shard, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["profile", str(tiny_model_dir("llama")), "--settings", "bf16", "--seq", "32", "--repeats", "1"]
    argv += ["--nproc", "2", "--shard", shard, "--train", "full", "--out", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    report = ProfileReport.load(out)
    assert (report.nproc, report.shard) == (2, shard)
    train = report.settings[0].train
    assert len(train.rank_peak_bytes) == 2 and train.peak_bytes == max(train.rank_peak_bytes)
    assert train.world_size == 2 and train.shard == shard and train.collective_ms > 0
    assert sum(train.breakdown.values()) == train.peak_bytes
    code, text, _ = _run(["report", str(out)], capsys)
    assert "Training peak of every rank" in text and "rank 1" in text and "Load" not in text


@pytest.mark.slow
def test_one_rank_runs_the_distributed_path_as_a_smoke_test(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["profile", str(tiny_model_dir("gpt2")), "--settings", "fp32", "--seq", "32", "--repeats", "1"]
    code, _, err = _run([*argv, "--shard", "fsdp", "--train", "full", "--out", str(out)], capsys)
    assert code == 0, err
    train = ProfileReport.load(out).settings[0].train
    assert train.world_size == 1 and train.rank_peak_bytes == (train.peak_bytes,)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--nproc", "0"], "--nproc must be a whole number >= 1"),
        (["--nproc", "2", "--train", "none"], "give --train lora or --train full"),
        (["--nproc", "2", "--settings", "nf4"], "not measured yet"),
        (["--nproc", "2", "--generate", "4"], "--generate measures one process"),
        (["--generate", "-1"], "--generate must be a whole number"),
        (["--seq", "100", "--generate", "100"], "longer than the model's 128 positions"),
        (["--cache", "paged"], "invalid choice"),
        (["--snapshot", "s.pickle"], "--snapshot records the CUDA caching allocator: it needs --device cuda"),
    ],
)
def test_bad_generate_and_rank_options_are_one_line(extra, message, tiny_model_dir, tmp_path, capsys):
    argv = ["profile", str(tiny_model_dir("llama")), "--settings", "bf16", "--seq", "32"]
    argv += ["--out", str(tmp_path / "r.json"), *extra]
    code, _, err = _run(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_snapshot_file_per_setting_and_its_rules(tmp_path):
    from memprof.analyses.profile import _check_snapshot, _snapshot_path
    from memprof.errors import ProfileOptionError

    assert _snapshot_path(tmp_path / "s.pickle", "bf16", 1) == tmp_path / "s.pickle"
    assert _snapshot_path(tmp_path / "s.pickle", "nf4", 2) == tmp_path / "s-nf4.pickle"
    _check_snapshot(tmp_path / "s.pickle", device="cuda", train="lora", shard="none")
    for path, kwargs, message in [
        (tmp_path / "s.json", {}, "must end in .pickle"),
        (tmp_path / "no" / "s.pickle", {}, "does not exist"),
        (tmp_path / "s.pickle", {"train": "none"}, "one training step of one process"),
        (tmp_path / "s.pickle", {"shard": "fsdp"}, "one training step of one process"),
    ]:
        with pytest.raises(ProfileOptionError, match=message):
            _check_snapshot(path, **{"device": "cuda", "train": "lora", "shard": "none", **kwargs})


def test_the_default_file_of_a_local_model_is_named_after_its_folder(tmp_path, monkeypatch):
    from memprof.analyses.profile import default_result_path

    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    for model in ("./tiny", "tiny/", "tiny/config.json"):
        assert default_result_path(model, "cpu").name.startswith("profile-tiny-cpu-")
    assert default_result_path("meta-llama/Llama-3.2-1B", "cuda").name.startswith(
        "profile-meta-llama__Llama-3.2-1B-cuda-"
    )
