"""Resolving MODEL: paths, config files, catalog names, the local HF cache; and clear errors."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config

from memprof.errors import ConfigError, UnknownModelError
from memprof.models import resolve_model


def test_no_model_means_the_default_llama_3_1_8b():
    assert resolve_model(None).name == "meta-llama/Llama-3.1-8B"


def test_directory_and_config_path_resolve_to_the_same_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config("llama")))
    by_dir = resolve_model(str(tmp_path))
    by_file = resolve_model(str(tmp_path / "config.json"))
    assert by_dir.config == by_file.config == tiny_config("llama")
    assert by_dir.source == by_file.source == "path"


def test_hub_id_in_local_hf_cache_resolves_to_refs_main_snapshot(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo = cache / "models--someone--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(tiny_config("llama")))
    model = resolve_model("someone/tiny-llama")
    assert (model.source, model.weights_dir) == ("hf-cache", repo / "snapshots" / "abc123")


def test_unknown_model_names_close_catalog_entries():
    with pytest.raises(UnknownModelError) as err:
        resolve_model("llama-3.1-7b")
    message = str(err.value)
    assert "llama-3.1-8b" in message and "--allow-download" in message and "\n" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"hidden_size": 8}', 'has no "model_type"'),
    ],
)
def test_malformed_config_is_a_config_error(tmp_path, content, expected):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match=expected):
        resolve_model(str(tmp_path))


def test_directory_without_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("name", ["/tmp/no/such/config.json", "./no-such-model", "a/b/c"])
def test_a_path_that_does_not_exist_says_so(name):
    from memprof.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="no such file or directory"):
        resolve_model(name)
