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


def test_an_error_in_the_models_own_code_is_one_line_not_a_traceback(monkeypatch, tmp_path, capsys):
    """A config transformers cannot run at the planned shape fails inside the fake step: the command
    says so in one line (what was simulated, the library's message) and exits 2."""
    import json

    from memprof.cli import main
    from memprof.simulate import simulator

    def broken(self, batch, seq):
        raise RuntimeError("The expanded size of the tensor (1024) must match the existing size (512)\nmore")

    monkeypatch.setattr(simulator.StepSimulator, "run", broken)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(tiny_config("llama")))
    assert main(["plan", str(model), "--seq", "64", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failed on fake tensors" in err and "expanded size" in err and "more" not in err
