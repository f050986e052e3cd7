"""The estimates beside the exact bytes: a roofline step time (a lower bound) and the card to star."""

from __future__ import annotations

from memprof import catalog
from memprof.results.plan import Breakdown


def roofline_s(flops: int, bd: Breakdown, gpu: catalog.Gpu, task: str, new_tokens: int) -> tuple[float, str]:
    """max(FLOPs / peak dense bf16 FLOP/s, bytes moved / bandwidth): a lower bound on the step time.

    Bytes moved: training reads the weights and trainable params in forward and backward, writes
    and reads the activations, and reads+writes params, grads and optimizer states in the update;
    inference reads the weights and activations once per pass (prefill, then each new token
    re-reads the weights and the KV cache).
    """
    params = bd.weights_bytes + bd.trainable_params_bytes + bd.gathered_layers_bytes
    if task == "infer":
        moved = params + bd.activations_bytes + new_tokens * (params + bd.kv_cache_bytes)
    else:
        moved = 2 * params + 2 * bd.activations_bytes + 2 * (bd.trainable_params_bytes + bd.grads_bytes)
        moved += 2 * bd.optimizer_states_bytes
    compute_s = flops / (gpu.bf16_dense_tflops * 1e12)
    memory_s = moved / (gpu.memory_bandwidth_gbs * 1e9)
    return (compute_s, "compute") if compute_s >= memory_s else (memory_s, "memory")


def cheapest_card(rows) -> str | None:
    """The card to star: the lowest price per hour (what is known; cost per token rests on the
    roofline estimate, a lower bound real steps miss by several times) among the cards that fit with
    the margin, or, if none does, among the tight ones; a tie goes to more headroom, then to the
    first card of the table (min keeps the first)."""
    for verdict in ("fits", "tight"):
        priced = [r for r in rows if r.verdict == verdict and r.usd_per_hour is not None]
        if priced:
            return min(priced, key=lambda r: (r.usd_per_hour, -r.headroom_bytes)).name
    return None
