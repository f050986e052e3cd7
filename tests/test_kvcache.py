"""The KV-cache arithmetic (memprof.kvcache) against the bytes a real `generate` leaves in
transformers' caches, for every catalog architecture, sliding windows included."""

from __future__ import annotations

import pytest
from conftest import ARCH_MODELS, tiny_config

from memprof.catalog import find_catalog_model
from memprof.errors import ConfigError, OptionError
from memprof.kvcache import CacheLayer, kv_layout, parse_kv_dtype


def test_llama_3_1_8b_caches_131072_bytes_per_token_at_bf16():
    layout = kv_layout(find_catalog_model("meta-llama/Llama-3.1-8B").config())
    assert layout.bytes_per_token(2) == 2 * 32 * 8 * 128 * 2 == 131_072
    assert layout.sequence_bytes(8192, 2) == 131_072 * 8192
    assert layout.sliding_layers == 0


def test_grouped_query_attention_counts_kv_heads_not_query_heads():
    # Qwen2.5-0.5B: 14 query heads, 2 KV heads, head_dim 64, 24 layers
    layout = kv_layout(find_catalog_model("Qwen/Qwen2.5-0.5B").config())
    assert layout.bytes_per_token(2) == 2 * 24 * 2 * 64 * 2


def test_gemma2_sliding_layers_stop_growing_at_their_window():
    layout = kv_layout(find_catalog_model("google/gemma-2-9b").config())
    per_layer = 2 * 8 * 256 * 2
    assert layout.sliding_layers == 21 and len(layout.layers) == 42
    assert layout.sequence_bytes(4096, 2) == 42 * per_layer * 4096
    assert layout.sequence_bytes(8192, 2) == 21 * per_layer * 8192 + 21 * per_layer * 4096


def test_a_sliding_layer_holds_the_window_once_it_is_full():
    layer = CacheLayer(kv_heads=2, head_dim=4, window=8)
    assert [layer.tokens_held(t) for t in (1, 7, 8, 9, 100)] == [1, 7, 8, 8, 8]
    assert CacheLayer(2, 4).tokens_held(100) == 100


@pytest.mark.parametrize(
    "text,name", [("bf16", "bfloat16"), ("FP16", "float16"), ("fp8", "fp8"), ("float32", "float32")]
)
def test_kv_dtype_names(text, name):
    assert parse_kv_dtype(text) == name


def test_an_unknown_kv_dtype_is_one_line():
    with pytest.raises(OptionError, match="use one of bf16, fp16, fp32, fp8"):
        parse_kv_dtype("int3")


def test_a_config_transformers_cannot_build_is_a_config_error():
    with pytest.raises(ConfigError, match="attention layout"):
        kv_layout({"model_type": "llama", "hidden_size": 40, "num_attention_heads": 3, "rope_parameters": 5})


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("arch", list(ARCH_MODELS))
@pytest.mark.limit_torch_memory("16 MiB", device="cpu")  # a tiny model's generate: a leak would show
def test_cache_bytes_after_generate_equal_the_arithmetic(arch, cache):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from memprof.measure.generate import GenerateRequest, measure_generate

    config = tiny_config(arch)
    if "sliding_window" in config:  # a window shorter than the sequence, so that it caps the cache
        config["sliding_window"] = 8
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.bfloat16)
    ids = torch.randint(2, 200, (2, 12))
    measured = measure_generate(
        model, ids, GenerateRequest(new_tokens=5, repeats=1, warmup=0, device="cpu", cache=cache)
    )
    tokens = 12 + 5 - 1  # the last sampled token is never fed back into the cache
    assert measured["kv_cache_tokens"] == tokens
    assert measured["kv_cache_bytes"] == kv_layout(config).sequence_bytes(tokens, 2, batch=2)
    if arch in ("gemma2", "phi3"):  # the window did cap it
        assert measured["kv_cache_bytes"] < kv_layout(config).bytes_per_token(2) * tokens * 2
    assert measured["peak_bytes"] > measured["kv_cache_bytes"]
    assert measured["prefill_ms"] > 0 and measured["generate_ms"] > 0
