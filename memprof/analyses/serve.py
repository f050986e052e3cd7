"""`memprof plan --task serve`: how many sequences of a given context one GPU serves, how fast, and
at what cost per million output tokens.

Per card, the memory left after the CUDA context, the weights (exact true bytes), the activation
peak of one prefill chunk (simulated on fake tensors, like every plan) and the tight-fit margin is
divided by the exact KV-cache bytes of one sequence (memprof.kvcache: the model's real attention
layout, grouped heads and sliding windows applied). Decode speed is a memory-bandwidth roofline
(every step reads the weights and every sequence's cache), labelled as an estimate.
"""

from __future__ import annotations

from dataclasses import replace

from memprof import catalog
from memprof.errors import OptionError
from memprof.inventory import inventory_for
from memprof.kvcache import KV_DTYPE_BYTES, kv_layout, parse_kv_dtype
from memprof.models import resolve_model
from memprof.options import name_list, path, switch, text, whole_number
from memprof.predict import predict_setting
from memprof.results.serve import ServeGpu, ServePlan
from memprof.settings import get_setting

DEFAULT_CONTEXT = 8192
# vLLM's default token budget per scheduler step (max_num_batched_tokens with chunked prefill): the
# longest prompt piece whose activations sit beside the cache at once
DEFAULT_PREFILL_CHUNK = 2048
# how vLLM counts, for the side-by-side note: the cache is paged in blocks of 16 tokens, inside
# gpu_memory_utilization (0.9) of the card's memory
VLLM_BLOCK_TOKENS = 16
VLLM_GPU_MEMORY_UTILIZATION = 0.9


class ServeOptionError(OptionError):
    """A serve option out of range."""


def _decode_tokens_per_s(gpu: catalog.Gpu, weights: int, seq_kv: int, params: int, n: int) -> float | None:
    """n sequences decoding together: each step reads the weights once and every sequence's cache
    (bandwidth), and does 2 FLOPs per parameter per sequence (compute); the slower bounds it."""
    if n < 1 or gpu.memory_bandwidth_gbs <= 0 or gpu.bf16_dense_tflops <= 0:
        return None
    memory_s = (weights + n * seq_kv) / (gpu.memory_bandwidth_gbs * 1e9)
    compute_s = 2 * params * n / (gpu.bf16_dense_tflops * 1e12)
    return n / max(memory_s, compute_s)


def plan_serving(
    model: str | None = None,
    *,
    setting: str | None = None,
    context: int | None = None,
    kv_dtype: str | None = None,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    gpus: tuple[str, ...] | None = None,
    gpu_file=None,
    allow_download: bool = False,
    trust_remote_code: bool = False,
    use_cache: bool = True,
    on_progress=None,
) -> ServePlan:
    """Serving capacity of MODEL at `setting` (bf16 by default) on every GPU of the table (or `gpus`):
    sequences of `context` tokens that fit beside the weights, decode speed and cost (estimates).
    `context` defaults to DEFAULT_CONTEXT, or the model's positions where it has fewer."""
    from memprof.analyses.plan import margin_bytes, plan
    from memprof.simulate import max_positions

    chosen = get_setting(setting or "bf16")
    if context is not None:
        context = whole_number(context, "--context", error=ServeOptionError, wants="a number of tokens")
    prefill_chunk = whole_number(prefill_chunk, "prefill_chunk", error=ServeOptionError)
    kv_dtype = text(kv_dtype, "kv_dtype", error=ServeOptionError, unset=True)
    gpus = name_list(gpus, option="gpus", error=ServeOptionError) or None
    gpu_file = path(gpu_file, "gpu_file", error=ServeOptionError, unset=True)
    allow_download, trust_remote_code, use_cache = (
        switch(v, n, error=ServeOptionError)
        for v, n in (
            (allow_download, "allow_download"),
            (trust_remote_code, "trust_remote_code"),
            (use_cache, "use_cache"),
        )
    )
    if context is not None and context < 1:
        raise ServeOptionError(f"--context must be at least 1 token (got {context})")
    if prefill_chunk < 1:
        raise ServeOptionError(f"--prefill-chunk must be at least 1 token (got {prefill_chunk})")
    resolved = resolve_model(model, allow_download=allow_download)
    limit = max_positions(resolved.config)
    if context is None:  # the default, or all the model has
        context = DEFAULT_CONTEXT if limit is None else min(DEFAULT_CONTEXT, limit)
    if limit is not None and context > limit:
        raise ServeOptionError(
            f"--context {context:,} is longer than the model's {limit:,} positions; use --context <= {limit}"
        )
    # the cache holds keys and values in the dtype the attention computes in, unless told otherwise
    cache_dtype = parse_kv_dtype(kv_dtype) if kv_dtype else chosen.dtype
    dtype_bytes = KV_DTYPE_BYTES[cache_dtype]
    layout = kv_layout(resolved.config)
    per_token = layout.bytes_per_token(dtype_bytes)
    seq_kv = layout.sequence_bytes(context, dtype_bytes)
    inventory = inventory_for(resolved, trust_remote_code=trust_remote_code)
    weights = predict_setting(inventory, chosen).true_bytes
    params = inventory.param_count
    # the chunk is prefilled into the cache and one token decoded, logits for the last position only,
    # as generate() and serving engines run it; the chunk's own cache is part of the sequence's
    chunk = min(prefill_chunk, max(1, context - 1))
    prefill = plan(
        model,
        task="infer",
        setting=chosen.name,
        batch=1,
        seq=chunk,
        new_tokens=1,
        gpus=gpus,
        gpu_file=gpu_file,
        allow_download=allow_download,
        trust_remote_code=trust_remote_code,
        use_cache=use_cache,
        on_progress=on_progress,
    )
    activation = prefill.breakdown.total_bytes - prefill.breakdown.weights_bytes - prefill.breakdown.kv_cache_bytes
    table = catalog.gpus_with(gpu_file)
    if gpus:
        names = {row.name for row in prefill.gpus}
        table = tuple(g for g in table if g.name in names)
    rows = []
    for gpu in table:
        margin = margin_bytes(gpu.memory_bytes)
        budget = gpu.memory_bytes - gpu.context_bytes - weights - activation - margin
        n = max(0, budget // seq_kv)
        tps = _decode_tokens_per_s(gpu, weights, seq_kv, params, n)
        usd_h = gpu.usd_per_hour if gpu.usd_per_hour > 0 else None
        usd_m = usd_h / 3600 / tps * 1e6 if usd_h and tps else None
        blocks_per_seq = -(-context // VLLM_BLOCK_TOKENS)
        vllm_free = int(gpu.memory_bytes * VLLM_GPU_MEMORY_UTILIZATION) - gpu.context_bytes - weights - activation
        vllm_blocks = max(0, vllm_free // (VLLM_BLOCK_TOKENS * per_token)) if per_token else 0
        rows.append(
            ServeGpu(
                name=gpu.name,
                memory_bytes=gpu.memory_bytes,
                context_bytes=gpu.context_bytes,
                context_measured=gpu.context_measured,
                margin_bytes=margin,
                cache_budget_bytes=budget,
                fits=n >= 1,
                max_concurrent_sequences=int(n),
                decode_tokens_per_s_est=tps,
                single_decode_tokens_per_s_est=_decode_tokens_per_s(gpu, weights, seq_kv, params, 1) if n else None,
                usd_per_hour=usd_h,
                usd_per_million_tokens_est=usd_m,
                vllm_max_concurrent_sequences_est=int(vllm_blocks // blocks_per_seq)
                if layout.sliding_layers == 0
                else -1,
            )
        )
    # the star: lowest price per hour among the cards that serve at least one sequence (a known
    # figure), as plan stars its cheapest fit; the cost per token beside it is an estimate
    priced = [r for r in rows if r.fits and r.usd_per_hour]
    cheapest = min(priced, key=lambda r: (r.usd_per_hour, -r.max_concurrent_sequences)).name if priced else None
    rows = [replace(r, cheapest=r.name == cheapest) for r in rows]
    notes = _notes(layout, cache_dtype, chosen.name, context, chunk)
    return ServePlan(
        model=resolved.name,
        architecture=inventory.architecture,
        setting=chosen.name,
        context=context,
        kv_dtype=cache_dtype,
        kv_cache_bytes_per_token=per_token,
        sequence_kv_bytes=seq_kv,
        cache_layers=sum(1 for layer in layout.layers if layer.kv_heads),
        sliding_layers=layout.sliding_layers,
        weights_bytes=weights,
        prefill_chunk=chunk,
        prefill_activation_bytes=activation,
        max_positions=limit,
        gpus=tuple(rows),
        cheapest=cheapest,
        notes=notes,
    )


def _notes(layout, cache_dtype: str, setting: str, context: int, chunk: int) -> tuple[str, ...]:
    notes = [
        f"KV cache: exact bytes of transformers' cache for this attention layout ({cache_dtype}); "
        f"weights: exact true bytes at {setting}; prefill: the simulated activation peak of one {chunk:,}-token chunk.",
        "Decode tokens/s and $ per million tokens are ESTIMATES: a memory-bandwidth roofline (each step reads "
        "the weights and every sequence's full cache), a bound real servers stay below.",
        f"vLLM counts differently: it pages the cache in blocks of {VLLM_BLOCK_TOKENS} tokens inside "
        f"gpu_memory_utilization={VLLM_GPU_MEMORY_UTILIZATION} of the card (memprof leaves the tight margin instead) "
        "and profiles its own activation peak; its count is shown beside memprof's.",
    ]
    if layout.sliding_layers:
        window = min(layer.window for layer in layout.layers if layer.window is not None)
        notes.append(
            f"{layout.sliding_layers} of {len(layout.layers)} layers use a sliding window ({window:,} tokens): "
            f"their cache stops growing there, so a {context:,}-token sequence costs less than "
            "per-token bytes x context (no vLLM count: its hybrid allocator pages these layers apart)."
        )
    return tuple(notes)
