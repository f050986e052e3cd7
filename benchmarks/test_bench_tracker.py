"""The cost of `@pytest.mark.limit_torch_memory` on the CPU (run with `nox -s bench`).

Goal from issue 15: inside a test, memprof's live-tensor tracker adds under 10% to a tiny model's
training step. Measured as a ratio of medians in the same run (tracked step / bare step), since
machines are noisy; the tracker's cost is per op (a Python dispatch), so the ratio is highest for
the tiniest models, where each op's arithmetic is cheapest.
"""

from __future__ import annotations

import statistics
import time

import pytest

from memprof.testing import measure_torch_memory

torch = pytest.importorskip("torch")

ROUNDS = 15
OVERHEAD_GOAL = 0.10


@pytest.fixture(scope="module")
def lora_step():
    """A LoRA training step of a tiny Llama (16M parameters: hidden 512, 4 layers; batch 2 x seq 512)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from memprof.step import make_optimizer, prepare_model, train_step

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=512,
        intermediate_size=1365,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=4096,
        max_position_embeddings=1024,
    )
    model = prepare_model(AutoModelForCausalLM.from_config(config), task="lora", quantized=False)
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(0, 4096, (2, 512), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        train_step(model, optimizer, ids)

    step()  # the optimizer's states exist from here on
    return model, optimizer, step


def _interleaved_ratio(bare, tracked, rounds: int = ROUNDS) -> tuple[float, float]:
    """Median of tracked/bare over rounds that time one bare and one tracked step back to back, so a
    change of load on a shared machine hits both sides of each ratio alike; and the bare median (s)."""
    ratios, bare_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        bare()
        bare_s = time.perf_counter() - start
        start = time.perf_counter()
        tracked()
        ratios.append((time.perf_counter() - start) / bare_s)
        bare_times.append(bare_s)
    return statistics.median(ratios), statistics.median(bare_times)


def test_tracked_training_step_costs_under_10_percent_more(benchmark, lora_step):
    model, optimizer, step = lora_step

    def tracked() -> None:
        with measure_torch_memory("cpu", holders=(model, optimizer)):
            step()

    benchmark.pedantic(tracked, rounds=ROUNDS, warmup_rounds=1)  # the tracked step's own stats, saved
    ratio, bare_s = _interleaved_ratio(step, tracked)
    overhead = ratio - 1
    benchmark.extra_info["bare_step_median_s"] = bare_s
    benchmark.extra_info["overhead_fraction"] = overhead
    assert overhead < OVERHEAD_GOAL, f"tracked step {ratio:.3f}x the bare one (median of {ROUNDS} interleaved pairs)"
