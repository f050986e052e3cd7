"""`memprof plan --task serve`: sequences per GPU from the exact cache bytes, the star, the output."""

from __future__ import annotations

import json

import pytest

from memprof.analyses.plan import margin_bytes
from memprof.analyses.serve import ServeOptionError, plan_serving
from memprof.cli import main
from memprof.kvcache import kv_layout


@pytest.fixture(scope="module")
def llama_8b_h100():
    return plan_serving("meta-llama/Llama-3.1-8B", context=8192, gpus=("H100 80GB", "L40S", "T4"))


def test_llama_3_1_8b_h100_concurrency_follows_from_131072_bytes_per_token(llama_8b_h100):
    r = llama_8b_h100
    assert r.kv_cache_bytes_per_token == 131_072 and r.sequence_kv_bytes == 131_072 * 8192
    h100 = next(g for g in r.gpus if g.name == "H100 80GB")
    budget = h100.memory_bytes - h100.context_bytes - r.weights_bytes - r.prefill_activation_bytes
    budget -= margin_bytes(h100.memory_bytes)
    assert h100.cache_budget_bytes == budget
    assert h100.max_concurrent_sequences == budget // r.sequence_kv_bytes > 0
    # bf16 8B weights on a 16 GB card leave nothing for a cache
    t4 = next(g for g in r.gpus if g.name == "T4")
    assert not t4.fits and t4.max_concurrent_sequences == 0 and t4.decode_tokens_per_s_est is None


def test_the_star_is_the_lowest_price_per_hour_that_serves(llama_8b_h100):
    serving = [g for g in llama_8b_h100.gpus if g.fits]
    assert llama_8b_h100.cheapest == min(serving, key=lambda g: g.usd_per_hour).name
    assert sum(g.cheapest for g in llama_8b_h100.gpus) == 1


def test_decode_estimate_grows_with_concurrency_and_costs_less_per_token(llama_8b_h100):
    h100 = next(g for g in llama_8b_h100.gpus if g.name == "H100 80GB")
    assert h100.decode_tokens_per_s_est > h100.single_decode_tokens_per_s_est > 0
    assert h100.usd_per_million_tokens_est == pytest.approx(2.5 / 3600 / h100.decode_tokens_per_s_est * 1e6)


def test_vllm_count_pages_the_cache_in_16_token_blocks_within_90_percent(llama_8b_h100):
    r = llama_8b_h100
    h100 = next(g for g in r.gpus if g.name == "H100 80GB")
    free = int(h100.memory_bytes * 0.9) - h100.context_bytes - r.weights_bytes - r.prefill_activation_bytes
    assert h100.vllm_max_concurrent_sequences_est == (free // (16 * r.kv_cache_bytes_per_token)) // (8192 // 16)


# plan simulates on fake tensors: a whole serving plan of a 1B model holds no real tensor memory to speak of
@pytest.mark.limit_torch_memory("4 MiB", device="cpu")
def test_fp8_cache_holds_twice_the_sequences_of_bf16():
    bf16 = plan_serving("meta-llama/Llama-3.2-1B", context=4096, gpus=("L4",))
    fp8 = plan_serving("meta-llama/Llama-3.2-1B", context=4096, kv_dtype="fp8", gpus=("L4",))
    assert fp8.sequence_kv_bytes * 2 == bf16.sequence_kv_bytes
    assert fp8.gpus[0].max_concurrent_sequences in (
        2 * bf16.gpus[0].max_concurrent_sequences,
        2 * bf16.gpus[0].max_concurrent_sequences + 1,
    )


def test_sliding_window_model_costs_less_per_sequence_than_per_token_times_context():
    r = plan_serving("google/gemma-2-2b", context=8192, gpus=("L4",))
    assert r.sliding_layers > 0
    assert r.sequence_kv_bytes < r.kv_cache_bytes_per_token * 8192
    assert r.sequence_kv_bytes == kv_layout(
        __import__("memprof").resolve_model("google/gemma-2-2b").config
    ).sequence_bytes(8192, 2)


def test_context_beyond_the_models_positions_is_an_option_error():
    with pytest.raises(ServeOptionError, match="positions"):
        plan_serving("openai-community/gpt2", context=5000)


@pytest.mark.parametrize(
    "argv", [["--context", "0"], ["--kv-dtype", "int3"], ["--prefill-chunk", "0"], ["--context", "x"]]
)
def test_bad_serve_options_are_one_line_and_exit_2(argv, capsys):
    assert main(["plan", "openai-community/gpt2", "--task", "serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_json_md_html(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert (
        main(["plan", "openai-community/gpt2", "--task", "serve", "--context", "1024", "--gpus", "T4", "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "memprof.serve-plan"
    assert data["kv_cache_bytes_per_token"] == 2 * 12 * 12 * 64 * 2
    assert data["gpus"][0]["max_concurrent_sequences"] > 0
    assert (
        main(
            ["plan", "openai-community/gpt2", "--task", "serve", "--context", "1024", "--gpus", "T4", "--format", "md"]
        )
        == 0
    )
    md = capsys.readouterr().out
    assert md.startswith("## openai-community/gpt2 · serving 1,024-token sequences at bf16") and "| T4 ★ |" in md
    assert main(["plan", "openai-community/gpt2", "--task", "serve", "--context", "1024", "--gpus", "T4"]) == 0
    text = capsys.readouterr().out
    assert "36,864 bytes per token" in text and "ESTIMATES" in text


def test_report_re_renders_a_saved_serve_plan(tmp_path, capsys):
    saved = tmp_path / "serve.json"
    argv = ["plan", "openai-community/gpt2", "--task", "serve", "--context", "1024", "--gpus", "T4", "--json"]
    assert main([*argv, "--out", str(saved)]) == 0
    capsys.readouterr()
    assert main(["report", str(saved), "--json"]) == 0
    assert capsys.readouterr().out == saved.read_text()
    assert main(["report", str(saved), "--format", "md"]) == 0
    assert "| T4 ★ |" in capsys.readouterr().out


def test_prices_read_as_plans_do():
    """$/h and $/M tok as plan prints them: a dollar sign and three significant digits."""
    from memprof.report.serve import _cells
    from memprof.units import significant

    row = plan_serving("gpt2", gpus=("L4",)).gpus[0]
    cells = _cells(row)
    assert "$" + significant(row.usd_per_hour) in cells and cells[-1].startswith("$")


def test_lora_alpha_never_in_exponent_notation():
    from memprof.report.lora import _alpha

    assert [_alpha(a) for a in (16, 12.5, 2_000_000.0)] == ["16", "12.5", "2,000,000"]
