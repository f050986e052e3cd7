"""A plan at another batch or seq of the same model and options is read off the earlier exact fit,
equal to simulating it; it simulates where the fit is not known to hold. The layer count is read
without transformers where the config can only mean one key."""

from __future__ import annotations

import json

import pytest
from conftest import ARCH_MODELS, tiny_config

from memprof.catalog import catalog_models
from memprof.simulate import LAYER_ATTRIBUTE_KEYS, StepSpec, cache, simulate_model
from memprof.simulate import config as simulate_config


def _phases(model_fit):
    return [(p.phase, p.peak_bytes, p.breakdown) for p in model_fit.direct.phases]


@pytest.mark.parametrize("spec", [StepSpec(task="lora"), StepSpec(task="full", device="cuda")], ids=["lora", "full"])
def test_a_second_request_in_the_fitted_range_is_the_exact_fit_and_equals_simulating_it(spec):
    config = tiny_config("llama")
    first = simulate_model(config, spec, batch=2, seq=16)
    assert not first.from_fit and first.check_error_bytes == 0
    said: list[str] = []
    again = simulate_model(config, spec, batch=5, seq=40, on_progress=said.append)
    direct = simulate_model(config, spec, batch=5, seq=40, use_cache=False)
    assert again.from_fit and again.from_cache and not direct.from_fit
    assert said == []  # nothing simulated
    assert _phases(again) == _phases(direct)
    assert again.direct.flops == direct.direct.flops
    assert again.fitted_at == (2, 16) and again.fit_error_bytes == first.fit_error_bytes


def test_a_fit_whose_breakdown_moves_between_moments_is_not_reused_but_simulated():
    """Generation: some phase's peak breakdown is not one moment's across (batch, seq) (its category
    by category fit misses the check point), so a later request is simulated, equal to no cache."""
    config, spec = tiny_config("llama"), StepSpec(task="infer", new_tokens=4)
    first = simulate_model(config, spec, batch=2, seq=16)
    assert first.check_error_bytes > 0
    again = simulate_model(config, spec, batch=5, seq=40)
    assert not again.from_fit and _phases(again) == _phases(
        simulate_model(config, spec, batch=5, seq=40, use_cache=False)
    )


@pytest.mark.parametrize("first_batch", [1, 2])
def test_batch_one_gets_its_own_checked_fit_once_then_every_batch_one_plan_is_read_off_it(first_batch, monkeypatch):
    """Batch 1 is not on the larger batches' polynomial (a view where they copy): the first batch-1
    request at another seq simulates batch 1's own fit (three lengths and a check, 8 steps at two
    depths), equal to simulating the point; later batch-1 requests simulate nothing."""
    monkeypatch.setenv("MEMPROF_SIM_PROCESSES", "1")  # every step said here
    config, spec = {**tiny_config("llama"), "num_hidden_layers": 6}, StepSpec(task="lora")
    simulate_model(config, spec, batch=first_batch, seq=16)
    said: list[str] = []
    second = simulate_model(config, spec, batch=1, seq=40, on_progress=said.append)
    assert second.from_fit and second.batch1_exact
    steps = [m for m in said if m.startswith("simulating ")]
    assert {m.split(" (")[0] for m in steps} == {
        f"simulating {d} layers, batch 1 × seq {s}" for d in (2, 3) for s in (16, 32, 64, 49)
    }
    for seq in (40, 50, 16, 100):
        said.clear()
        later = simulate_model(config, spec, batch=1, seq=seq, on_progress=said.append)
        direct = simulate_model(config, spec, batch=1, seq=seq, use_cache=False)
        assert _phases(later) == _phases(direct) and later.direct.flops == direct.direct.flops
        assert seq == 40 or (later.from_cache and said == [])  # read off the fit, or (seq 16) the cached plan


def test_a_batch_one_fit_that_misses_its_check_is_not_used(monkeypatch):
    from memprof.simulate import model_fit

    config, spec = {**tiny_config("llama"), "num_hidden_layers": 6}, StepSpec(task="lora")
    simulate_model(config, spec, batch=2, seq=16)
    real = model_fit._peak_error
    monkeypatch.setattr(model_fit, "_peak_error", lambda fitted, direct: real(fitted, direct) + (direct.batch == 1))
    again = simulate_model(config, spec, batch=1, seq=40)
    assert not again.from_fit  # simulated the usual way, as before the batch-1 fit existed


def test_a_fit_with_an_error_at_its_check_point_is_not_reused(monkeypatch):
    config, spec = tiny_config("llama"), StepSpec(task="lora")
    simulate_model(config, spec, batch=2, seq=16)
    index = cache._cache_path(config, spec, "fits", {"depths": [2], "seq_range": [1, 128]})
    data = json.loads(index.read_text())
    data["fits"][0]["check_error_bytes"] = 1
    index.write_text(json.dumps(data))
    assert not simulate_model(config, spec, batch=3, seq=20).from_fit


def test_another_seq_range_is_simulated_not_read_off_the_first_ranges_fit():
    config, spec = tiny_config("phi3"), StepSpec(task="infer")  # window 64: ranges [1, 63] and [64, 128]
    simulate_model(config, spec, batch=2, seq=16)
    assert simulate_model(config, spec, batch=2, seq=30).from_fit
    assert not simulate_model(config, spec, batch=2, seq=80).from_fit


def test_an_index_entry_is_only_used_with_the_simulations_of_exactly_its_key():
    config, spec = tiny_config("llama"), StepSpec(task="lora")
    simulate_model(config, spec, batch=2, seq=16)
    other = StepSpec(task="lora", lora_r=16)
    assert not simulate_model(config, other, batch=3, seq=20).from_fit


def _every_config():
    yield from ((e.hub_id, e.config()) for e in catalog_models())
    yield from ((f"tiny-{arch}", tiny_config(arch)) for arch in ARCH_MODELS)
    yield "mpt-without-key", {"model_type": "mpt", "d_model": 64, "n_heads": 4}
    yield "both-keys", {"model_type": "gpt2", "n_layer": 2, "num_hidden_layers": 5}


@pytest.mark.parametrize(("name", "config"), list(_every_config()), ids=lambda v: v if isinstance(v, str) else "")
def test_the_layer_count_without_transformers_is_transformers_rule(name, config):
    assert simulate_config._layer_key(config) == simulate_config._layer_key_from_transformers(config)


def test_layer_attribute_keys_are_every_key_transformers_config_classes_name():
    from transformers import CONFIG_MAPPING

    named = set()
    for model_type in CONFIG_MAPPING:
        try:
            config_class = CONFIG_MAPPING[model_type]
        except Exception:  # noqa: BLE001  (a class whose optional dependency is missing)
            continue
        named.add(config_class.attribute_map.get("num_hidden_layers", "num_hidden_layers"))
    assert named <= LAYER_ATTRIBUTE_KEYS


def test_the_moments_fit_classifies_as_the_direct_simulation_zero_grads_grads_included():
    """The sweeps read each phase at other points off the moments' fit (ModelFit.at): its breakdown
    is the direct simulation's, category by category (a grad made by the peak op, e.g. the LM
    head's, is a grad at that moment too). zero_grad's moment holds the previous
    step's grads; counted as activations there, a sharded plan left them undivided (every GPU holding
    all the grads: 302 GiB a GPU for Llama-3.1-70B on 24 GPUs, so no max batch or seq fit)."""
    config, spec = tiny_config("llama"), StepSpec(task="full", device="cuda")
    fitted = simulate_model(config, spec, batch=2, seq=16, use_cache=False).at(5, 40)
    direct = simulate_model(config, spec, batch=5, seq=40, use_cache=False)
    zero_grad = next(p for p in fitted.phases if p.phase == "zero_grad")
    assert zero_grad.breakdown["grads"] > 0 and zero_grad.breakdown["activations_temporaries"] == 0
    assert [(p.phase, p.peak_bytes, p.breakdown) for p in fitted.phases] == _phases(direct)


def test_a_plan_read_off_the_fit_says_so_in_its_table_notes_and_its_memory_note(tmp_path):
    from memprof.analyses.plan import plan

    (tmp_path / "config.json").write_text(json.dumps(tiny_config("llama")))
    first = plan(str(tmp_path), batch=2, seq=16, gpus="h100")
    again = plan(str(tmp_path), batch=5, seq=40, gpus="h100")
    assert not first.from_fit and again.from_fit
    assert not any("Read off the exact fit" in n for n in first.notes)
    assert any("Read off the exact fit of an earlier plan" in n and "batch 2 × seq 16" in n for n in again.notes)
    memory = next(n for n in again.details if n.startswith("Memory:"))
    assert "not simulated at this batch and seq" in memory and "at the given batch and seq" not in memory
