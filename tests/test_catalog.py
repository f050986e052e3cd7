"""The shipped catalog: real configs, published parameter counts, inventories equal to a rebuild."""

from __future__ import annotations

import json

import pytest

from memprof.catalog import catalog_models, find_catalog_model
from memprof.inventory import build_inventory, inventory_for, shipped_inventory_path
from memprof.models import resolve_model

REQUIRED = [
    "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-405B", "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B", "microsoft/Phi-3-mini-4k-instruct", "google/gemma-2-2b", "google/gemma-2-9b",
    "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B", "mistralai/Mistral-7B-v0.3", "bigscience/bloom-1b7", "bigscience/bloom-3b",
    "openai-community/gpt2", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
]  # fmt: skip


def test_catalog_holds_every_required_model():
    assert sorted(m.hub_id for m in catalog_models()) == sorted(REQUIRED)


@pytest.mark.parametrize("entry", catalog_models(), ids=lambda m: m.hub_id)
def test_shipped_inventory_equals_rebuild_from_installed_transformers(entry):
    shipped = json.loads(shipped_inventory_path(entry.hub_id).read_text())
    assert build_inventory(entry.config()).to_json() == shipped


@pytest.mark.parametrize("entry", catalog_models(), ids=lambda m: m.hub_id)
def test_inventory_parameter_count_equals_published_total(entry):
    assert inventory_for(resolve_model(entry.hub_id)).param_count == entry.published_params


@pytest.mark.parametrize(
    ("name", "hub_id"),
    [
        ("llama-3.1-8b", "meta-llama/Llama-3.1-8B"),
        ("META-LLAMA/LLAMA-3.1-8B", "meta-llama/Llama-3.1-8B"),
        ("gpt2", "openai-community/gpt2"),
        ("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"),
        ("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B"),
    ],
)
def test_catalog_models_resolve_by_hub_id_and_alias(name, hub_id):
    assert find_catalog_model(name).hub_id == hub_id
    assert resolve_model(name).name == hub_id


def test_catalog_configs_equal_shared_model_configs():
    """The catalog ships the published configs from shared/model-configs, unchanged."""
    from pathlib import Path

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "model-configs"
    if not shared.is_dir():
        pytest.skip("../shared/model-configs is not beside this checkout")
    for entry in catalog_models():
        assert json.loads((shared / entry.config_file).read_text()) == entry.config()
