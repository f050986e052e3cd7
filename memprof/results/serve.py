"""The result of `memprof plan --task serve` (memprof.serve): sequences per GPU, cache bytes, estimates."""

from __future__ import annotations

from dataclasses import dataclass

SERVE_KIND = "memprof.serve-plan"


@dataclass(frozen=True)
class ServeGpu:
    name: str
    memory_bytes: int
    context_bytes: int
    context_measured: bool
    margin_bytes: int  # left free so the fit is not tight (an estimate: allocator fragmentation)
    cache_budget_bytes: int  # for KV caches: memory - context - weights - prefill peak - margin
    fits: bool  # the weights and one prefill chunk fit, with one sequence's cache
    max_concurrent_sequences: int
    # memory-bandwidth roofline at max_concurrent_sequences (ESTIMATES: lower bound on step time)
    decode_tokens_per_s_est: float | None
    single_decode_tokens_per_s_est: float | None
    usd_per_hour: float | None
    usd_per_million_tokens_est: float | None
    vllm_max_concurrent_sequences_est: int  # vLLM's own count (blocks of 16 in 0.9 of memory)
    cheapest: bool = False


@dataclass(frozen=True)
class ServePlan:
    model: str
    architecture: str
    setting: str
    context: int  # tokens per sequence: prompt plus generated
    kv_dtype: str
    kv_cache_bytes_per_token: int  # every layer, while the context is within every window
    sequence_kv_bytes: int  # one sequence of `context` tokens, windows applied
    cache_layers: int
    sliding_layers: int
    weights_bytes: int
    prefill_chunk: int
    prefill_activation_bytes: int  # simulated peak of one prefill chunk beyond the weights
    max_positions: int | None
    gpus: tuple[ServeGpu, ...]
    cheapest: str | None
    notes: tuple[str, ...] = ()
    kind: str = SERVE_KIND
