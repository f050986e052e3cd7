"""`memprof plan --num-gpus N --shard ...`: the sharded step simulated (not divided) at the planned point,
the sweeps corrected by it, DDP's buckets, what stays arithmetic, and the plan against 2 measured gloo ranks."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config, worker_request

from memprof.analyses.plan import plan
from memprof.errors import PlanOptionError
from memprof.measure.distributed import run_ranks
from memprof.simulate import StepSpec
from memprof.simulate.sharded import simulate_sharded, simulate_sharded_cached

SEQ = 32
# how far a measured gloo rank may sit over the simulated one (see the two-rank tests), a fraction
MEASURED_OVER_FRACTION = 0.05


@pytest.fixture(scope="module")
def llama_dir(tiny_model_dir):
    return str(tiny_model_dir("llama"))


def _card_file(tmp_path, memory_bytes: int) -> str:
    card = {"name": "Card", "memory_mib": memory_bytes / 2**20, "context_mib": 0, "bf16_dense_tflops": 1}
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"gpus": [{**card, "memory_bandwidth_gbs": 1, "usd_per_hour": 1}]}))
    return str(path)


def test_a_sharded_plan_is_rank_0_of_the_simulated_sharded_step_not_the_division(llama_dir):
    report = plan(llama_dir, task="full", setting="fp32", batch=2, seq=SEQ, device="cpu", num_gpus=2, shard="fsdp")
    divided = plan(
        llama_dir, task="full", setting="fp32", batch=2, seq=SEQ, device="cpu", num_gpus=2, shard="fsdp",
        simulate_sharding=False,
    )  # fmt: skip
    sim = simulate_sharded(tiny_config("llama"), StepSpec(task="full", setting="fp32"), batch=2, seq=SEQ,
                           world_size=2, shard="fsdp")  # fmt: skip
    assert report.breakdown.total_bytes == sim.peak_bytes != divided.breakdown.total_bytes
    assert report.breakdown.peak_phase == sim.peak_phase.phase and report.breakdown.gathered_layers_bytes == 0
    assert any("simulated on fake tensors" in n for n in report.notes)
    assert any("ARITHMETIC" in n for n in divided.notes)


def test_sweeps_are_the_division_corrected_by_the_simulation_and_hit_it_at_other_points(llama_dir, tmp_path):
    task, setting, shard = "full", "fp32", "fsdp"
    # planned at batch 2 x seq 32; a card (1 GiB margin, no context) whose budget is exactly the simulated
    # rank at batch 4 (for max batch), then at seq 64 (for max seq): the corrected sweep lands on it
    for point, field, hit in (((4, SEQ), "max_batch", 4), ((2, 2 * SEQ), "max_seq", 2 * SEQ)):
        at = plan(llama_dir, task=task, setting=setting, batch=point[0], seq=point[1], gpus=("H100",), num_gpus=2,
                  shard=shard)  # fmt: skip
        for memory, expected in (
            (2**30 + at.breakdown.total_bytes, hit),
            (2**30 + at.breakdown.total_bytes - 1, hit - 1),
        ):
            report = plan(llama_dir, task=task, setting=setting, batch=2, seq=SEQ, gpus=("Card",), num_gpus=2,
                          shard=shard, gpu_file=_card_file(tmp_path, memory))  # fmt: skip
            assert getattr(report.gpus[0], field) == expected, (field, memory)


def test_ddp_adds_its_gradient_buckets_and_fsdp_qlora_says_it_is_arithmetic(llama_dir):
    one = plan(llama_dir, task="lora", batch=2, seq=SEQ, device="cpu")
    ddp = plan(llama_dir, task="lora", batch=2, seq=SEQ, device="cpu", num_gpus=2, shard="ddp")
    assert ddp.breakdown.total_bytes == one.breakdown.total_bytes + one.breakdown.trainable_params_bytes
    assert any("gradient buckets" in n for n in ddp.notes)
    qlora = plan(llama_dir, task="qlora", batch=2, seq=SEQ, gpus=("H100",), num_gpus=2, shard="fsdp")
    assert any("FSDP-QLoRA is not simulated yet" in n and "ARITHMETIC" in n for n in qlora.notes)


def test_the_sharded_simulation_is_cached_and_equals_the_uncached_one():
    spec, cfg = StepSpec(task="lora", setting="bf16"), tiny_config("llama")
    runs = [simulate_sharded_cached(cfg, spec, batch=2, seq=8, world_size=2, shard="zero2") for _ in range(2)]
    assert [hit for _, hit in runs] == [False, True] and runs[0][0] == runs[1][0]
    fresh, hit = simulate_sharded_cached(cfg, spec, batch=2, seq=8, world_size=2, shard="zero2", use_cache=False)
    assert fresh == runs[0][0] and not hit


def test_cpu_plans_n_ranks_but_not_auto(llama_dir):
    with pytest.raises(PlanOptionError, match="--num-gpus N"):
        plan(llama_dir, task="full", device="cpu", num_gpus="auto", shard="fsdp", seq=SEQ)


def _request(folder, train: str, setting: str, precision: str) -> dict:
    return worker_request(folder, train=train, setting=setting, precision=precision, seq=SEQ)


@pytest.mark.slow
@pytest.mark.parametrize(
    "task,setting,precision,shard",
    [("full", "bf16", "mixed", "fsdp"), ("lora", "bf16", "pure", "fsdp"), ("full", "bf16", "mixed", "ddp"),
     ("lora", "bf16", "pure", "ddp")],
)  # fmt: skip
def test_cpu_plan_of_two_ranks_equals_the_largest_measured_rank(llama_dir, task, setting, precision, shard):
    ranks = run_ranks(_request(llama_dir, task, setting, precision), nproc=2, shard=shard, timeout_s=300)
    assert all(r.get("error") is None for r in ranks), ranks
    measured = max(r["train"]["peak_bytes"] for r in ranks)
    report = plan(llama_dir, task=task, setting=setting, precision=precision, batch=2, seq=SEQ, device="cpu",
                  num_gpus=2, shard=shard)  # fmt: skip
    # equal most runs; gloo's threads may keep a finished collective's buffer a moment longer in every
    # tracked step of a rank (seen: +2,784 B and +80,000 B, 3.4%, of 2,324,276): never under the plan
    assert 0 <= measured - report.breakdown.total_bytes <= MEASURED_OVER_FRACTION * report.breakdown.total_bytes


def test_the_sharded_step_is_simulated_at_the_models_full_depth():
    """Not extrapolated from two reduced depths: which moment peaks settles only after a few layers
    (the layers gathered at once), so the rank is simulated with every layer."""
    config = {**tiny_config("llama"), "num_hidden_layers": 5}
    sim = simulate_sharded(config, StepSpec(task="full", setting="fp32"), batch=1, seq=SEQ, world_size=2, shard="fsdp")
    assert sim.layers == 5


def test_an_8bit_optimizer_sharded_is_the_labelled_division_not_an_error():
    report = plan("gpt2", task="full", num_gpus=2, shard="fsdp", optimizer="adamw8bit", gpus=("L4",), seq=SEQ)
    assert any("ARITHMETIC" in n and "adamw8bit" in n for n in report.notes)


def test_serving_an_unknown_model_type_is_one_short_line(tmp_path):
    from memprof.analyses.serve import plan_serving
    from memprof.errors import ConfigError

    (tmp_path / "config.json").write_text('{"model_type": "frobnicator"}')
    with pytest.raises(ConfigError) as error:
        plan_serving(str(tmp_path))
    assert "does not know model_type 'frobnicator'" in str(error.value) and len(str(error.value)) < 300
