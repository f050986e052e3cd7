"""`memprof footprint`: the library function, the CLI, its output formats and its errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import tiny_config

from memprof import footprint
from memprof.cli import main
from memprof.errors import DeviceError, SettingError
from memprof.report.footprint import render_footprint_md
from memprof.report.jsonout import render_json
from memprof.settings import parse_settings
from memprof.units import human_bytes


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memprof", *args], capture_output=True, text=True)


def test_llama_3_1_8b_matches_the_published_seed_figures():
    """fp32 ~32 GB, nf4 footprint ~5.6 GB (transformers' own figures for Llama-3.1-8B)."""
    report = footprint("meta-llama/Llama-3.1-8B")
    rows = {r.setting: r for r in report.settings}
    assert [r.setting for r in report.settings] == ["fp32", "bf16", "int8", "nf4", "nf4-dq"]
    assert rows["fp32"].footprint_bytes == 4 * 8_030_261_248 + 2 * 64 * 4  # params + two rotary buffers
    assert round(rows["nf4"].footprint_bytes / 1e9, 2) == 5.59
    assert rows["nf4-dq"].true_bytes < rows["nf4"].true_bytes
    assert rows["nf4"].fits_gpus[0] == "T4" and rows["fp32"].fits_gpus[0] == "A100 40GB"


def test_json_output_has_the_documented_shape(capsys):
    assert main(["footprint", "gpt2", "--settings", "fp32,nf4-dq", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "openai-community/gpt2" and data["params"] == 124_439_808
    assert [s["setting"] for s in data["settings"]] == ["fp32", "nf4-dq"]
    for row in data["settings"]:
        assert {"setting", "params", "footprint_bytes", "true_bytes"} <= row.keys()
        assert isinstance(row["true_bytes"], int) and "measured" not in row


@pytest.mark.parametrize("fmt", ["table", "md", "html", "json"])
def test_every_format_renders_the_true_bytes(fmt, capsys):
    assert main(["footprint", "llama-3.2-1b", "--settings", "nf4", "--format", fmt]) == 0
    out = capsys.readouterr().out
    report = footprint("llama-3.2-1b", settings="nf4")
    if fmt == "json":
        assert json.loads(out)["settings"][0]["true_bytes"] == report.settings[0].true_bytes
    else:
        assert human_bytes(report.settings[0].true_bytes) in out


def test_out_writes_the_file_atomically(tmp_path, capsys):
    target = tmp_path / "gpt2.md"
    assert main(["footprint", "gpt2", "--format", "md", "--out", str(target)]) == 0
    assert target.read_text().startswith("## openai-community/gpt2")
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_settings_pick_and_order():
    assert [s.name for s in parse_settings("nf4-dq, fp32,fp4,fp16")] == ["nf4-dq", "fp32", "fp4", "fp16"]


def test_local_config_directory_builds_and_caches_its_inventory(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(cache))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(tiny_config("bloom")))
    first = footprint(str(tmp_path / "model"))
    assert len(list((cache / "inventories").glob("*.json"))) == 1
    assert footprint(str(tmp_path / "model")) == first


def test_catalog_answer_does_not_import_torch():
    code = (
        "import sys; from memprof.cli import main; rc = main(['footprint', 'meta-llama/Llama-3.1-405B', '--json']); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported torch'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["params"] == 405_853_388_800


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["footprint", "no-such-model"], "unknown model 'no-such-model'"),
        (["footprint", "gpt2", "--settings", "fp8"], "unknown setting 'fp8'"),
        (["footprint", "gpt2", "--settings", ","], "no setting given"),
        (["footprint", "gpt2", "--dtype", "int4"], "unknown dtype 'int4'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_malformed_config_on_the_cli_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    proc = run_cli("footprint", str(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "not valid JSON" in proc.stderr


def test_unknown_model_type_on_the_cli_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "not-a-real-arch"}')
    proc = run_cli("footprint", str(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "does not know model_type 'not-a-real-arch'" in proc.stderr


def test_measure_on_cuda_without_a_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_cli("footprint", "gpt2", "--measure", "--device", "cuda", "--settings", "fp32")
    assert proc.returncode == 2 and "torch sees no CUDA GPU" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_quantized_settings_without_bitsandbytes_are_refused(monkeypatch):
    from memprof.measure.load import check_device

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    with pytest.raises(SettingError, match="need bitsandbytes"):
        check_device("cpu", parse_settings("fp32,nf4"))
    check_device("cpu", parse_settings("fp32,bf16"))  # no bitsandbytes needed


def test_unknown_device_is_refused():
    from memprof.measure.load import check_device

    with pytest.raises(DeviceError, match="unknown device"):
        check_device("tpu", parse_settings("fp32"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "bloom", "gpt2"])
def test_measure_equals_prediction_byte_for_byte_in_fresh_processes(arch, tmp_path):
    """The product path: random weights written as safetensors, one subprocess per setting."""
    (tmp_path / "config.json").write_text(json.dumps(tiny_config(arch)))
    report = footprint(str(tmp_path), measure=True)
    assert report.weights.startswith("random weights")
    assert [r.setting for r in report.settings] == ["fp32", "bf16", "int8", "nf4", "nf4-dq"]
    for row in report.settings:
        assert row.measured.error is None
        assert row.measured.footprint_bytes == row.footprint_bytes
        assert row.measured.true_bytes == row.true_bytes
        assert row.mismatches == ()
        assert row.measured.load_s > 0 and row.measured.peak_bytes is not None


@pytest.mark.slow
def test_measure_uses_local_safetensors_and_the_cli_json_carries_measured(tiny_model_dir):
    proc = run_cli("footprint", str(tiny_model_dir("gpt2")), "--measure", "--settings", "bf16,nf4", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["weights"].startswith("local safetensors")
    for row in data["settings"]:
        assert row["measured"]["footprint_bytes"] == row["footprint_bytes"]
        assert row["measured"]["true_bytes"] == row["true_bytes"]


def test_measure_skips_settings_whose_weights_cannot_fit_in_memory(tiny_model_dir, monkeypatch):
    from memprof.measure import load

    monkeypatch.setattr(load, "available_bytes", lambda device: 50_000)  # tiny llama fp32 holds 524,360 bytes
    report = footprint(str(tiny_model_dir("llama")), settings="fp32,nf4", measure=True)
    fp32, nf4 = report.settings
    assert fp32.measured.error.startswith("skipped: the weights alone need")
    assert nf4.measured.error.startswith("skipped")


def test_random_weights_that_cannot_fit_in_memory_are_refused(tmp_path, monkeypatch):
    from memprof.errors import MeasureError
    from memprof.measure import load

    monkeypatch.setattr(load, "available_bytes", lambda device: 1000)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config("gpt2")))
    with pytest.raises(MeasureError, match="random weights for .* need"):
        footprint(str(tmp_path), settings="fp32", measure=True)


def test_saved_json_rebuilds_the_same_report(tiny_model_dir):
    from memprof.report.jsonout import render_json
    from memprof.results.footprint import FootprintReport

    report = footprint(str(tiny_model_dir("bloom")), settings="bf16", measure=True)
    assert FootprintReport.from_json(json.loads(render_json(report))) == report
    catalog_report = footprint("gpt2")
    assert FootprintReport.from_json(json.loads(render_json(catalog_report))) == catalog_report


def test_memprof_report_re_renders_a_saved_footprint(tmp_path, capsys):
    saved = tmp_path / "fp.json"
    assert main(["footprint", "llama-3.2-1b", "--json", "--out", str(saved)]) == 0
    assert json.loads(saved.read_text())["kind"] == "memprof.footprint"
    capsys.readouterr()
    assert main(["report", str(saved), "--format", "md"]) == 0
    assert capsys.readouterr().out == render_footprint_md(footprint("llama-3.2-1b"))


def test_memprof_report_on_a_broken_footprint_file_is_one_line(tmp_path):
    broken = tmp_path / "fp.json"
    broken.write_text('{"kind": "memprof.footprint"}')
    proc = run_cli("report", str(broken))
    assert proc.returncode == 2 and "not a valid memprof footprint result" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["footprint", "gpt2", "--settings", ""], "no setting given"),
        (["footprint", "gpt2", "--out", "/"], "it is a directory"),
        (["footprint", "gpt2", "--out", "/proc/no-such-dir/x.json"], "cannot write"),
    ],
)
def test_empty_settings_and_unwritable_out_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_config_transformers_rejects_is_one_line_with_its_reason(tmp_path, capsys):
    config = {**tiny_config("llama"), "num_attention_heads": 3}  # hidden 40 is not a multiple of 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["footprint", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is malformed" in err[0] and "attention heads" in err[0]


def _cards_of_size(tier_gb: int):
    from memprof.catalog import gpus

    return [g for g in gpus() if g.tier_gb == tier_gb]


def test_smallest_gpu_is_the_cheapest_of_the_smallest_size_that_holds_the_weights():
    """bf16 Llama-3.1-8B fits every 24 GB card: the cheapest per hour is picked, the others listed by price."""
    bf16 = footprint("meta-llama/Llama-3.1-8B", settings="bf16").settings[0]
    by_price = sorted(_cards_of_size(24), key=lambda g: g.usd_per_hour)
    assert all(g.usable_bytes >= bf16.true_bytes for g in by_price) and len(by_price) == 3
    assert bf16.smallest_gpu == by_price[0].name == "RTX 4090"  # $0.40/h, not the A10G at $1.01/h
    assert bf16.smallest_gpu_alternatives == tuple(g.name for g in by_price[1:]) == ("L4", "A10G")
    assert bf16.largest_gpu is None and bf16.largest_gpu_count == 0


def test_a_card_of_the_smallest_size_that_cannot_hold_the_weights_is_not_an_alternative(monkeypatch):
    from memprof import catalog

    shipped = catalog.gpus()
    weights = footprint("meta-llama/Llama-3.1-8B", settings="bf16").settings[0].true_bytes
    small = [g for g in shipped if g.tier_gb == 24 and g.name != "RTX 4090"]
    # the 24 GB cards but the RTX 4090 lose memory until the weights no longer fit them
    squeezed = tuple(
        dataclasses.replace(g, memory_bytes=weights + g.context_bytes - 1) if g in small else g for g in shipped
    )
    monkeypatch.setattr(catalog, "gpus", lambda path=None: squeezed)
    row = footprint("meta-llama/Llama-3.1-8B", settings="bf16").settings[0]
    assert row.smallest_gpu == "RTX 4090" and row.smallest_gpu_alternatives == ()


def test_a_4bit_70b_model_is_sized_by_its_true_bytes_not_get_memory_footprint():
    """nf4 Llama-3.1-70B: get_memory_footprint() (35.79 GiB) would fit an A100 40GB; the true bytes do not."""
    nf4 = footprint("meta-llama/Llama-3.1-70B", settings="nf4").settings[0]
    (a100_40,) = _cards_of_size(40)
    assert nf4.footprint_bytes <= a100_40.usable_bytes < nf4.true_bytes
    assert nf4.smallest_gpu == "L40S" and "A100 40GB" not in nf4.fits_gpus


def test_no_card_holds_405b_so_the_count_of_the_largest_card_is_given():
    from memprof.analyses.footprint import gpu_tiers

    report = footprint("meta-llama/Llama-3.1-405B", settings="bf16,nf4")
    largest = max(gpu_tiers(), key=lambda g: g.usable_bytes)
    for row in report.settings:
        assert row.smallest_gpu is None and row.fits_gpus == () and row.largest_gpu == largest.name == "MI300X"
        n = row.largest_gpu_count
        assert (n - 1) * largest.usable_bytes < row.true_bytes <= n * largest.usable_bytes
    assert [r.largest_gpu_count for r in report.settings] == [4, 2]
    text = render_footprint_md(report)
    assert "| none (≥4× MI300X) |" in text and "| none (≥2× MI300X) |" in text


def test_every_card_of_the_table_is_checked_the_largest_included():
    """Every card of `memprof gpus` is checked, B200 and MI300X too: the count is of the largest, MI300X."""
    from memprof import catalog
    from memprof.analyses.footprint import gpu_tiers

    assert {g.name for g in gpu_tiers()} == {g.name for g in catalog.gpus()}
    row = footprint("meta-llama/Llama-3.1-405B", settings="nf4-dq").settings[0]  # 200.80 GiB
    assert row.largest_gpu == "MI300X" and row.largest_gpu_count == 2


def test_true_bytes_are_the_first_column_and_get_memory_footprint_is_labelled():
    from memprof.report.footprint import render_footprint_table

    report = footprint("meta-llama/Llama-3.1-70B", settings="nf4")
    row = report.settings[0]
    table = render_footprint_table(report)
    head = next(line for line in table.splitlines() if "setting" in line)
    assert head.index("true bytes") < head.index("get_memory_footprint()") < head.index("smallest GPU")
    body = next(line for line in table.splitlines() if line.startswith("│ nf4"))
    assert body.index(human_bytes(row.true_bytes)) < body.index(human_bytes(row.footprint_bytes))
    md_head = render_footprint_md(report).splitlines()[2]
    assert md_head.startswith("| setting | true bytes | get_memory_footprint() |")


def test_a_footprint_file_from_before_smallest_gpu_shows_its_first_fitting_card(tmp_path, capsys):
    report = footprint("meta-llama/Llama-3.1-8B", settings="fp32")
    data = json.loads(render_json(report))
    for key in ("smallest_gpu", "smallest_gpu_alternatives", "largest_gpu", "largest_gpu_count"):
        del data["settings"][0][key]
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps(data))
    assert main(["report", str(saved), "--format", "md"]) == 0
    assert f"| {report.settings[0].fits_gpus[0]} |" in capsys.readouterr().out


def test_the_readme_example_table_is_the_real_output():
    from pathlib import Path

    from memprof.report.footprint import render_footprint_table

    readme = (Path(__file__).parents[1] / "README.md").read_text().splitlines()
    start = readme.index("$ memprof footprint meta-llama/Llama-3.1-8B") + 1
    shown = readme[start : readme.index("```", start)]
    real = [line.rstrip() for line in render_footprint_table(footprint("meta-llama/Llama-3.1-8B")).splitlines()]
    assert shown == real[: len(shown)] and len(shown) == 10
