"""Shared fixtures: tiny configs shaped like the catalog's architectures, and their random weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memprof.catalog import find_catalog_model

# One catalog model per architecture; tiny versions keep their structure (GQA, tied embeddings,
# Conv1D, fused QKV, rope scaling) but shrink every size.
ARCH_MODELS = {
    "llama": "meta-llama/Llama-3.1-8B",
    "llama-tied": "meta-llama/Llama-3.2-1B",
    "mistral": "mistralai/Mistral-7B-v0.3",
    "qwen2": "Qwen/Qwen2.5-0.5B",
    "phi3": "microsoft/Phi-3-mini-4k-instruct",
    "gemma2": "google/gemma-2-2b",
    "bloom": "bigscience/bloom-3b",
    "gpt2": "openai-community/gpt2",
}

_DECODER_SIZES = {
    "hidden_size": 40,  # head_dim 10: k/v projections of 800 values, a partial 64-value block
    "intermediate_size": 420,  # 16,800 values: 263 blocks, two nested double-quant blocks
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}


def tiny_config(arch: str) -> dict:
    """A catalog model's config with every size shrunk, so real loads take milliseconds."""
    config = find_catalog_model(ARCH_MODELS[arch]).config()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in config:
            config[key] = 1
    model_type = config["model_type"]
    if model_type == "bloom":
        config.update(hidden_size=40, n_layer=2, n_head=4, vocab_size=256)
    elif model_type == "gpt2":
        config.update(n_embd=40, n_layer=2, n_head=4, vocab_size=256, n_positions=128)
    else:
        config.update(_DECODER_SIZES)
        if "head_dim" in config:
            config["head_dim"] = 10
        if model_type == "gemma2":
            config.update(sliding_window=64, query_pre_attn_scalar=10)
        if model_type == "phi3":
            config.update(original_max_position_embeddings=128, sliding_window=64)
    return config


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """arch -> a directory with config.json and random safetensors weights (made once per session)."""
    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM

            config = tiny_config(arch)
            values = dict(config)
            hf_config = AutoConfig.for_model(values.pop("model_type"), **values)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            model.save_pretrained(path, safe_serialization=True)
            # Keep the exact tiny config (save_pretrained adds defaults; both describe the same model).
            (path / "config.json").write_text(json.dumps(config, indent=1))
            made[arch] = path
        return made[arch]

    return make


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Inventory cache and HF cache in a temporary directory: tests never touch ~/.cache."""
    monkeypatch.setenv("MEMPROF_CACHE_DIR", str(tmp_path / "memprof-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def worker_request(weights_dir, *, setting: str = "fp32", train: str = "full", **overrides) -> dict:
    """A measurement worker's request (what memprof.analyses.profile.profile sends a worker or the ranks), for
    a tiny model's one timed step: batch 2 x 32 tokens, LoRA r=8 alpha=16 where it trains LoRA."""
    import dataclasses

    from memprof.settings import get_setting

    return {
        "weights_dir": str(weights_dir),
        "setting": dataclasses.asdict(get_setting(setting)),
        "device": "cpu",
        "batch": 2,
        "seq": 32,
        "repeats": 1,
        "warmup": 1,
        "train": train,
        "lora_r": 8,
        "lora_alpha": 16,
        "target": None,
        "grad_checkpointing": False,
        "precision": "pure",
        **overrides,
    }
