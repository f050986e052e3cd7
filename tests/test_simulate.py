"""The fake-tensor simulation is the real step: same live bytes, same FLOPs, exact depth extrapolation,
and a (batch, seq) fit that agrees with direct simulation where it was not fitted."""

from __future__ import annotations

import pytest
from conftest import tiny_config, worker_request

from memprof.settings import SETTINGS
from memprof.simulate import (
    StepSimulator,
    StepSpec,
    check_point,
    extrapolate,
    fit,
    fit_points,
    prune_moments,
    seq_ranges,
    simulate_model,
    with_layers,
)

BATCH, SEQ = 2, 16


def _real_prepared(tiny_model_dir, arch: str, spec: StepSpec):
    """The tiny model loaded for real by the profiler's loader (bitsandbytes for quantized settings)."""
    from memprof.measure.worker import load_pretrained
    from memprof.settings import get_setting
    from memprof.simulate import prepare_step_model

    model = load_pretrained(str(tiny_model_dir(arch)), get_setting(spec.setting), device_map="cpu")
    return prepare_step_model(model, spec)


@pytest.mark.parametrize(
    "spec",
    [
        StepSpec(task="lora", lora_r=8, lora_alpha=16),
        StepSpec(task="full"),
        StepSpec(task="lora", grad_checkpointing=True),
        StepSpec(task="infer"),
        StepSpec(task="infer", new_tokens=5),
    ],
    ids=["lora", "full", "lora-gc", "forward", "generate"],
)
def test_simulated_step_equals_the_same_step_on_real_cpu_tensors_phase_by_phase(tiny_model_dir, spec):
    config = tiny_config("llama")
    fake = StepSimulator(config, spec, layers=2).run(BATCH, SEQ)
    real_model = _real_prepared(tiny_model_dir, "llama", spec)
    real = StepSimulator(config, spec, layers=2, real_model=real_model).run(BATCH, SEQ)
    assert [p.phase for p in fake.phases] == [p.phase for p in real.phases]
    for f, r in zip(fake.phases, real.phases, strict=True):
        assert f.breakdown == r.breakdown, f.phase  # exact, byte for byte, every category
    assert fake.flops == real.flops


def _profile_in_process(tiny_model_dir, arch: str, setting: str, train: str, tmp_path) -> dict:
    from memprof.measure.profile_worker import _Out, profile_setting

    out = _Out(tmp_path / "result.json", send=lambda phase: None)
    request = worker_request(tiny_model_dir(arch), setting=setting, train=train, batch=BATCH, seq=SEQ)
    profile_setting(request, out)
    return out.data


@pytest.mark.parametrize(
    ("arch", "setting", "train"),
    [
        ("llama", "bf16", "lora"),
        ("llama", "bf16", "full"),
        ("llama", "nf4", "lora"),
        ("llama", "nf4-dq", "lora"),
        ("llama", "int8", "lora"),
        ("gpt2", "nf4-dq", "lora"),
        ("gpt2", "int8", "lora"),
    ],
)
def test_simulation_matches_memprof_profile_on_cpu(tiny_model_dir, tmp_path, arch, setting, train):
    """The profiler's own measurement (its worker, in-process, a real bitsandbytes load for the
    quantized settings) against the simulation: forward peak, training peak and FLOPs all equal,
    byte for byte."""
    measured = _profile_in_process(tiny_model_dir, arch, setting, train, tmp_path)
    config = tiny_config(arch)
    spec = StepSpec(task=train, setting=setting, lora_r=8, lora_alpha=16)
    sim = StepSimulator(config, spec, layers=2).run(BATCH, SEQ)
    forward = StepSimulator(config, StepSpec(task="infer", setting=setting), layers=2).run(BATCH, SEQ)
    assert measured.get("error") is None
    assert forward.peak_bytes == measured["forward"]["peak_bytes"]
    assert sim.flops == measured["train"]["flops"]
    assert sim.peak_bytes == measured["train"]["peak_bytes"]


@pytest.mark.parametrize(
    "spec",
    [StepSpec(task="lora"), StepSpec(task="infer", new_tokens=4), StepSpec(task="qlora", setting="nf4-dq")],
    ids=["lora", "generate", "qlora"],
)
def test_peak_is_affine_in_layer_count(spec):
    config = tiny_config("llama")
    two, three, four = (StepSimulator(config, spec, layers=n).run(3, 24) for n in (2, 3, 4))
    predicted = extrapolate(two, three, 4)
    assert predicted.phases == four.phases
    assert predicted.flops == four.flops


def test_with_layers_keeps_alternating_layer_types():
    config = {"num_hidden_layers": 4, "layer_types": ["sliding_attention", "full_attention"] * 2}
    assert with_layers(config, 3)["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]


def test_fit_agrees_with_direct_simulation_at_points_it_was_not_fitted_on():
    config = tiny_config("llama")
    spec = StepSpec(task="lora")
    sim = StepSimulator(config, spec, layers=2)
    fitted = fit([sim.run(b, s) for b, s in fit_points(1, 32)])
    for b, s in ((3, 40), (5, 100), (2, 200)):
        direct = sim.run(b, s)
        # Exact while the moment of each phase's peak stays put; a tolerance of 0.1% of the peak
        # covers the few-hundred-byte moves seen across architectures (reported as fit_error_bytes).
        assert abs(fitted.at(b, s).peak_bytes - direct.peak_bytes) <= direct.peak_bytes // 1000
        assert fitted.at(b, s).flops == direct.flops


@pytest.mark.parametrize("setting", ["nf4", "nf4-dq", "fp4", "int8"])
def test_simulated_bitsandbytes_layers_hold_the_exact_loaded_bytes(setting):
    """GPT-2's Conv1D becomes a bitsandbytes linear of (out, in), as from_pretrained makes it, and
    the fake weights and quant state hold what predict.py says a real load holds, byte for byte."""
    import bitsandbytes as bnb
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memprof.inventory import build_inventory
    from memprof.predict import predict_setting
    from memprof.simulate import build_step_model

    config = tiny_config("gpt2")
    model = build_step_model(config, StepSpec(task="infer", setting=setting), FakeTensorMode())
    c_attn = model.get_submodule("transformer.h.0.attn.c_attn")
    assert isinstance(c_attn, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    assert (c_attn.in_features, c_attn.out_features) == (40, 120)
    sim = StepSimulator(config, StepSpec(task="infer", setting=setting), layers=2).run(BATCH, SEQ)
    (forward, *_) = sim.phases
    expected = predict_setting(build_inventory(config), SETTINGS[setting]).true_bytes
    assert forward.breakdown["weights"] + forward.breakdown["quant_state"] == expected


def test_simulated_int8_step_on_cuda_takes_matmul8bitlt_not_the_cpu_path():
    """On CUDA bitsandbytes trains LLM.int8() through MatMul8bitLt (int8 copies of each input kept
    for backward); on the CPU it dequantizes each weight instead. The two simulations must differ."""
    config = tiny_config("llama")
    cpu = StepSimulator(config, StepSpec(task="lora", setting="int8"), layers=2).run(BATCH, SEQ)
    cuda = StepSimulator(config, StepSpec(task="lora", setting="int8", device="cuda"), layers=2).run(BATCH, SEQ)
    assert cpu.phases[0].breakdown["weights"] == cuda.phases[0].breakdown["weights"]
    assert cpu.phases != cuda.phases


@pytest.mark.parametrize(
    ("arch", "spec"),
    [
        ("gpt2", StepSpec(task="lora", setting="nf4")),
        ("llama", StepSpec(task="lora", setting="nf4-dq", grad_checkpointing=True)),
        ("llama", StepSpec(task="lora", setting="int8")),
        ("llama", StepSpec(task="infer", setting="fp4")),
    ],
    ids=["gpt2-qlora", "llama-qlora-dq-gc", "llama-int8-lora", "llama-fp4-forward"],
)
def test_simulated_quantized_step_equals_the_real_bitsandbytes_step_phase_by_phase(tiny_model_dir, arch, spec):
    config = tiny_config(arch)
    fake = StepSimulator(config, spec, layers=2).run(BATCH, SEQ)
    real_model = _real_prepared(tiny_model_dir, arch, spec)
    real = StepSimulator(config, spec, layers=2, real_model=real_model).run(BATCH, SEQ)
    assert fake.phases == real.phases
    assert fake.flops == real.flops


def test_inference_holds_weights_and_no_trainable_parameters():
    sim = StepSimulator(tiny_config("llama"), StepSpec(task="infer"), layers=2).run(BATCH, SEQ)
    (forward, *_) = sim.phases
    assert forward.breakdown["trainable_params"] == 0 and forward.breakdown["weights"] > 0


def test_simulation_emits_no_warnings():
    """transformers/peft deprecation warnings (e.g. is_gradient_checkpointing) stay inside the simulation."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sim = StepSimulator(tiny_config("llama"), StepSpec(task="lora", grad_checkpointing=True), layers=2)
        sim.run(BATCH, SEQ)
        before = list(warnings.filters)
        sim.run(BATCH, SEQ)
        assert warnings.filters == before  # silenced inside the simulation only, not for the caller
    assert [str(w.message) for w in caught] == []


def test_fit_points_stay_within_the_model_positions_and_include_the_requested_one():
    points = fit_points(1, 512, hi=1024)
    assert (2, 512) in points and max(s for _, s in points) <= 1024
    assert check_point(points)[1] <= 1024 and check_point(points) not in points
    assert max(s for _, s in fit_points(1, 64, hi=1024)) == 256  # upwards where there is room
    assert min(s for _, s in fit_points(1, 2047, lo=2047, hi=4096)) == 2047  # not below the range


def test_a_sliding_window_splits_the_fitted_lengths_in_two_each_exact():
    """From the window on, transformers builds an explicit mask (below it SDPA's is_causal does)."""
    config = tiny_config("phi3")  # window 64, 128 positions
    spec = StepSpec(task="infer")
    assert seq_ranges(config) == ((1, 63), (64, 128))
    sim = StepSimulator(config, spec, layers=2)
    for seq, (b, s) in ((16, (2, 60)), (64, (3, 120))):
        model_fit = simulate_model(config, spec, batch=2, seq=seq, use_cache=False)
        assert model_fit.seq_range[0] <= s <= model_fit.seq_range[1]
        assert [p.peak_bytes for p in model_fit.at(b, s).phases] == [p.peak_bytes for p in sim.run(b, s).phases]


def test_fit_is_exact_far_from_its_points_where_the_peak_moves_between_moments():
    """Full fine-tune with checkpointing: backward peaks at the embedding's grads (all grads live) for
    short inputs and at the logits' grads for long ones, and inside each layer the peak moves between
    the attention and the MLP; fitting every moment keeps the fit exact anyway, also after pruning."""
    config = tiny_config("llama")
    sim = StepSimulator(config, StepSpec(task="full", grad_checkpointing=True), layers=2)
    sims = [sim.run(b, s) for b, s in fit_points(2, 8)]
    fitted, pruned = fit(sims), fit(prune_moments(sims))
    for b, s in ((2, 12), (9, 100), (200, 7)):
        direct = [p.peak_bytes for p in sim.run(b, s).phases]
        assert [p.peak_bytes for p in fitted.at(b, s).phases] == direct
        assert [p.peak_bytes for p in pruned.at(b, s).phases] == direct
    assert fitted.at(9, 100).flops == sim.run(9, 100).flops


def test_batch_one_gets_its_own_fit_where_it_is_not_on_the_larger_batches_polynomial():
    """At batch 1 some reshapes are views, above it copies (GPT-2's attention at nf4)."""
    config = tiny_config("gpt2")
    spec = StepSpec(task="lora", setting="nf4")
    model_fit = simulate_model(config, spec, batch=1, seq=16, use_cache=False)
    assert model_fit.fits[0].batch1 is not None and model_fit.fit_error_bytes == 0
    sim = StepSimulator(config, spec, layers=2)
    for b, s in ((1, 100), (4, 20)):
        assert [p.peak_bytes for p in model_fit.at(b, s).phases] == [p.peak_bytes for p in sim.run(b, s).phases]


def test_a_simulators_result_does_not_depend_on_the_points_it_ran_before():
    """Only the first run warms up; later runs start from the state the previous one left."""
    config = tiny_config("llama")
    spec = StepSpec(task="full", device="cuda")
    reused = StepSimulator(config, spec, layers=2)
    reused.run(2, 24)
    after, fresh = reused.run(3, 40), StepSimulator(config, spec, layers=2).run(3, 40)
    assert after.phases == fresh.phases and after.moments == fresh.moments and after.flops == fresh.flops


def test_flops_counted_during_the_tracked_step_equal_flop_counter_mode():
    """The simulation's own counter against torch's FlopCounterMode (what profile counts), at nf4 on Conv1D."""
    from memprof.measure.profile_worker import count_flops
    from memprof.simulate.fake_model import _eager_mask_paths
    from memprof.step import train_step

    config, spec = tiny_config("gpt2"), StepSpec(task="lora", setting="nf4")
    sim = StepSimulator(config, spec, layers=2)
    counted = sim.run(BATCH, SEQ).flops
    ids = sim._ids(BATCH, SEQ)
    with sim.mode, _eager_mask_paths():
        assert count_flops(lambda: train_step(sim.model, sim.optimizer, ids)) == counted


_8BIT_SPECS = [
    StepSpec(task="full", optimizer="adamw8bit"),
    StepSpec(task="full", optimizer="paged_adamw8bit", setting="fp32"),
    # r=16 makes down_proj's lora_A and gate/up's lora_B 6,720 elements: 8-bit states; the rest 32-bit
    StepSpec(task="lora", optimizer="adamw8bit", lora_r=16, lora_alpha=32, target="all-linear"),
]
_8BIT_IDS = ["full-adamw8bit", "full-fp32-paged", "lora-r16-adamw8bit"]


@pytest.mark.parametrize("spec", _8BIT_SPECS, ids=_8BIT_IDS)
def test_simulated_8bit_optimizer_step_equals_bitsandbytes_real_cpu_step_phase_by_phase(tiny_model_dir, spec):
    """The real bitsandbytes optimizer on real CPU tensors (its init_state, its CPU update kernel) against
    the fake step: every phase's breakdown, byte for byte."""
    config = tiny_config("llama")
    fake = StepSimulator(config, spec, layers=2).run(BATCH, SEQ)
    real_model = _real_prepared(tiny_model_dir, "llama", spec)
    real = StepSimulator(config, spec, layers=2, real_model=real_model).run(BATCH, SEQ)
    assert fake.phases == real.phases
    assert fake.flops == real.flops


@pytest.mark.parametrize("spec", _8BIT_SPECS, ids=_8BIT_IDS)
def test_8bit_optimizer_states_are_bitsandbytes_block_wise_layout(spec):
    """bitsandbytes' Optimizer2State.init_state: below min_8bit_size (4,096 elements) two float32 states;
    from it two uint8 states and two float32 absmax per 256-element block; one pair of 256-entry float32
    code tables for the whole optimizer (shared, counted once); `step` is a Python int."""
    sim = StepSimulator(tiny_config("llama"), spec, layers=2)
    optimizer_phase = sim.run(BATCH, SEQ).phases[-1]
    numels = [p.numel() for p in sim.model.parameters() if p.requires_grad]
    assert any(n < 4096 for n in numels) and any(n >= 4096 for n in numels)  # both layouts are exercised
    states = sum(8 * n if n < 4096 else 2 * n + 2 * 4 * -(-n // 256) for n in numels)
    assert optimizer_phase.phase == "optimizer"
    assert optimizer_phase.breakdown["optimizer_states"] == states + 2 * 256 * 4
