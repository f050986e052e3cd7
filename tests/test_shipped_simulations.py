"""The simulations shipped for the catalog (catalog/simulations): each is what a default
`memprof plan MODEL` makes, named by the digest of its key, and used only for exactly that key; a
default plan of a catalog model on an empty cache is answered by them without importing torch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memprof.catalog import SIMULATIONS_DIR, catalog_models
from memprof.catalog.regenerate import default_plan_simulations
from memprof.simulate import cache

SHIPPED = sorted(SIMULATIONS_DIR.glob("*.json"))
# pinned exactly in pyproject.toml: shipped entries made with others are stale (regenerate them)
PINNED = ("format", "memprof", "transformers", "peft", "bitsandbytes")


def _shipped_versions() -> dict:
    keys = {json.dumps({k: json.loads(p.read_text())["key"][k] for k in (*PINNED, "torch")}) for p in SHIPPED}
    assert len(keys) == 1, "the shipped simulations were made with different versions"
    return json.loads(keys.pop())


def _skip_unless_made_with_this_torch() -> None:
    shipped, here = _shipped_versions()["torch"], cache._versions()["torch"]
    if shipped != here:
        pytest.skip(f"the shipped simulations are for torch {shipped}; this torch {here} does not use them")


def test_every_shipped_simulation_is_named_by_the_digest_of_its_key():
    assert len(SHIPPED) >= 20
    for path in SHIPPED:
        key = json.loads(path.read_text())["key"]
        assert hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24] + ".json" == path.name


def test_shipped_simulations_were_made_with_the_pinned_libraries_and_this_memprof():
    shipped, here = _shipped_versions(), cache._versions()
    assert {k: shipped[k] for k in PINNED} == {k: here[k] for k in PINNED}, "python -m memprof.catalog.regenerate"


def test_a_default_plan_of_every_catalog_model_on_an_empty_cache_is_answered_without_torch(tmp_path):
    _skip_unless_made_with_this_torch()
    script = (
        "import sys, json\n"
        "from memprof.catalog import catalog_models\n"
        "from memprof.errors import MemprofError\n"
        "from memprof.analyses.plan import plan\n"
        "out = {}\n"
        "for e in catalog_models():\n"
        "    try:\n"
        "        out[e.hub_id] = plan(e.hub_id).from_cache\n"
        "    except MemprofError:\n"
        "        out[e.hub_id] = None\n"
        "out['imported'] = sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules)\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "MEMPROF_CACHE_DIR": str(tmp_path / "empty")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    out = json.loads(done.stdout)
    assert out.pop("imported") == []
    assert all(from_cache in (True, None) for from_cache in out.values()), out
    assert sum(v is True for v in out.values()) >= len(catalog_models()) - 1  # Phi-3 has no default targets
    assert not (tmp_path / "empty" / "simulations").exists()  # nothing simulated, nothing written


@pytest.mark.parametrize("hub_id", ["openai-community/gpt2"])
def test_shipped_simulations_equal_a_rebuild_byte_for_byte(hub_id, tmp_path, monkeypatch):
    _skip_unless_made_with_this_torch()
    monkeypatch.setattr("memprof.catalog.SIMULATIONS_DIR", Path(tmp_path / "none-shipped"))
    rebuilt = default_plan_simulations(hub_id, tmp_path / "cache")
    assert rebuilt
    for path in rebuilt:
        assert path.read_bytes() == (SIMULATIONS_DIR / path.name).read_bytes(), path.name


def test_a_later_plan_at_another_batch_and_seq_is_read_off_the_shipped_fit_without_torch(tmp_path):
    _skip_unless_made_with_this_torch()
    script = (
        "import sys, json\n"
        "from memprof.simulate import simulate_model, StepSpec\n"
        "from memprof.analyses.plan import plan\n"
        "r = plan('llama-3.1-8b', batch=3, seq=1000)\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(json.dumps([r.from_cache, bad]))\n"
    )
    env = {**os.environ, "MEMPROF_CACHE_DIR": str(tmp_path / "empty")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(done.stdout) == [True, []]
