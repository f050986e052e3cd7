"""The simulation disk cache's key: a change to memprof or any library the step runs is a new entry."""

from __future__ import annotations

from importlib import metadata

import pytest
from conftest import tiny_config

import memprof
from memprof.simulate import StepSpec, cache


def _key() -> str:
    return cache._cache_path(tiny_config("llama"), StepSpec("lora"), "fit", {}).name


@pytest.mark.parametrize("dist", ["torch", "transformers", "peft", "bitsandbytes"])
def test_a_library_upgrade_changes_the_simulation_cache_key(dist, monkeypatch):
    before = _key()
    real = metadata.version
    monkeypatch.setattr(cache.metadata, "version", lambda d: real(d) + ".post1" if d == dist else real(d))
    assert _key() != before


def test_a_memprof_upgrade_changes_the_simulation_cache_key(monkeypatch):
    before = _key()
    monkeypatch.setattr(memprof.version, "__version__", memprof.version.__version__ + ".post1")
    assert _key() != before


def test_the_key_is_stable_when_nothing_changed():
    assert _key() == _key()
