"""memprof's FLOP table (memprof.measure.flops): attention is counted on the CPU, once, by torch's formulas."""

from __future__ import annotations

import pytest
from conftest import tiny_config

torch = pytest.importorskip("torch")

B, H, H_KV, D = 2, 4, 2, 10  # tiny Llama: batch 2, 4 query heads, 2 kv heads, head_dim 10
LAYERS = 2


def _sdpa_inputs(seq: int, *, grad: bool):
    torch.manual_seed(0)
    q = torch.randn(B, H, seq, D, requires_grad=grad)
    k = torch.randn(B, H, seq, D, requires_grad=grad)
    v = torch.randn(B, H, seq, D, requires_grad=grad)
    return q, k, v


def _ops_run(fn) -> set[str]:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func._overloadpacket))
            return func(*args, **(kwargs or {}))

    with Seen() as seen:
        fn()
    return seen.names


def test_cpu_sdpa_forward_is_counted_as_two_score_matmuls():
    from memprof.measure.flops import count_flops

    q, k, v = _sdpa_inputs(16, grad=False)
    run = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in _ops_run(run)
    # q @ k^T and scores @ v, the full 16 x 16 scores although causal
    assert count_flops(run) == 2 * (2 * B * H * 16 * 16 * D)


def test_cpu_sdpa_backward_is_counted_as_five_score_matmuls():
    from memprof.measure.flops import count_flops

    q, k, v = _sdpa_inputs(16, grad=True)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    grad = torch.ones_like(out)
    names = _ops_run(lambda: out.backward(grad, retain_graph=True))
    assert "aten._scaled_dot_product_flash_attention_for_cpu_backward" in names
    # the scores recomputed, grad scores, grad v, grad q, grad k
    assert count_flops(lambda: out.backward(grad, retain_graph=True)) == 5 * (2 * B * H * 16 * 16 * D)


def _tiny_llama_step_flops(impl: str, seqs) -> dict[int, int]:
    """FLOPs of the profiler's training step (memprof.step.train_step) on a tiny Llama, per seq."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from memprof.measure.flops import count_flops
    from memprof.step import make_optimizer, train_step

    values = tiny_config("llama")
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=impl)
    optimizer = make_optimizer(list(model.parameters()))
    out = {}
    for seq in seqs:
        ids = torch.randint(0, config.vocab_size, (B, seq))
        out[seq] = count_flops(lambda ids=ids: train_step(model, optimizer, ids))
    return out


def _attention_flops(seq: int, *, backward_matmuls: int) -> int:
    """Per step: each layer's 2 forward score matmuls plus its backward ones, 2*b*h*s*s*d each."""
    return LAYERS * (2 + backward_matmuls) * 2 * B * H * seq * seq * D


def test_a_tiny_llama_step_grows_with_the_sdpa_attention_s2_term_exactly():
    f = _tiny_llama_step_flops("sdpa", (16, 32))
    # Everything but attention is linear in seq, so f(2s) - 2 f(s) is attention's s^2 term alone.
    assert f[32] - 2 * f[16] > 0
    assert f[32] - 2 * f[16] == _attention_flops(32, backward_matmuls=5) - 2 * _attention_flops(16, backward_matmuls=5)


def test_eager_and_sdpa_attention_differ_only_by_the_flash_backward_recompute():
    """Eager attention is counted through its matmuls (4 in backward); SDPA's kernels once each, and its
    backward recomputes the scores: one score matmul per layer more, nothing counted twice."""
    sdpa = _tiny_llama_step_flops("sdpa", (16, 32))
    eager = _tiny_llama_step_flops("eager", (16, 32))
    assert eager[32] - 2 * eager[16] == _attention_flops(32, backward_matmuls=4) - 2 * _attention_flops(
        16, backward_matmuls=4
    )
    for seq in (16, 32):
        assert sdpa[seq] - eager[seq] == LAYERS * 2 * B * H * seq * seq * D


def test_plans_simulated_step_counts_attention_like_the_profiler():
    """plan's fake-tensor step uses the same table: the same s^2 term, the same total as the real step."""
    from memprof.simulate import StepSimulator, StepSpec

    sim = StepSimulator(tiny_config("llama"), StepSpec(task="full"), layers=LAYERS)
    f = {seq: sim.run(B, seq).flops for seq in (16, 32)}
    assert f[32] - 2 * f[16] == _attention_flops(32, backward_matmuls=5) - 2 * _attention_flops(16, backward_matmuls=5)
    assert f == _tiny_llama_step_flops("sdpa", (16, 32))


def test_gqa_attention_is_counted_at_the_query_heads():
    """Llama's 2 kv heads serve 4 query heads: the scores are computed for every query head."""
    from memprof.measure.flops import count_flops

    q = torch.randn(B, H, 16, D)
    k = torch.randn(B, H_KV, 16, D)
    v = torch.randn(B, H_KV, 16, D)
    run = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
    assert count_flops(run) == 2 * (2 * B * H * 16 * 16 * D)
