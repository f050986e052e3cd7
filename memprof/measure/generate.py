"""Generation measured: time to first token, decode speed, the KV cache really held, and the peak.

`model.generate` runs greedy with exactly N new tokens (min = max, no early stop at an EOS), as the
published serving benchmarks do. Prefill is timed as a generate of one new token (the prompt's
forward plus one sampled token: the time to first token); decode speed is the N-1 further tokens
over the time the full generate takes beyond that. Both are medians of repeats after warm-up, like
every timing memprof reports. The cache is read off the finished generate: the bytes of the
storages its layers hold, which is what the arithmetic of memprof.kvcache predicts.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

CACHES = ("dynamic", "static")


@dataclass(frozen=True)
class GenerateRequest:
    new_tokens: int
    repeats: int
    warmup: int
    device: str
    cache: str = "dynamic"  # transformers' DynamicCache, or StaticCache ("static")


def cache_storage_bytes(cache) -> tuple[int, int]:
    """(bytes, tokens) a transformers cache holds: each distinct storage of its keys and values once
    (a sliding layer's keys are a view of a larger storage, which is what stays allocated)."""
    seen: dict[tuple[str, int], int] = {}
    for layer in getattr(cache, "layers", ()):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is None or t.device.type == "meta" or t.numel() == 0:
                continue
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values()), int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0


def measure_generate(model, ids, request: GenerateRequest, *, peaks=None, reset_peaks=None) -> dict:
    """Time and measure generation from the prompt `ids` ([batch, prompt tokens]).

    `peaks()` / `reset_peaks()` read and reset the device's peak counters (CUDA); on the CPU (None)
    the peak is the live-tensor tracker's over one full generate, weights and prompt included.
    """
    import torch

    from memprof.measure.timing import time_calls

    if request.cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}")
    batch, prompt = ids.shape
    n = request.new_tokens
    common = {
        "do_sample": False,
        "pad_token_id": model.config.pad_token_id if model.config.pad_token_id is not None else 0,
        "attention_mask": torch.ones_like(ids),
    }
    if request.cache == "static":
        common["cache_implementation"] = "static"
    model.eval()

    def run(tokens: int):
        with torch.no_grad():
            return model.generate(
                ids, max_new_tokens=tokens, min_new_tokens=tokens, return_dict_in_generate=True, **common
            )

    first = time_calls(lambda: run(1), repeats=request.repeats, warmup=request.warmup, device=request.device)
    if reset_peaks is not None:
        reset_peaks()
    full = time_calls(lambda: run(n), repeats=request.repeats, warmup=request.warmup, device=request.device)
    decode_ms = full.median_ms - first.median_ms
    result = {
        "new_tokens": n,
        "prompt_tokens": int(prompt),
        "batch": int(batch),
        "cache": request.cache,
        "prefill_ms": first.median_ms,
        "prefill_iqr_ms": first.iqr_ms,
        "generate_ms": full.median_ms,
        "generate_iqr_ms": full.iqr_ms,
        "decode_ms": decode_ms,
        # n-1 tokens per sequence after the first; the whole batch decodes together. None where the
        # decode time is lost in the noise of the prefill's (tiny models, few tokens).
        "decode_tokens_per_s": batch * (n - 1) / (decode_ms / 1000) if n > 1 and decode_ms > first.iqr_ms else None,
    }
    if peaks is not None:
        result.update(peaks())
    gc.collect()
    if peaks is None:
        from memprof.measure.tracker import LiveBytesTracker
        from memprof.step import model_parts

        with LiveBytesTracker() as tracker:
            tracker.track(*model_parts(model).values(), ids)
            out = run(n)
        result["peak_bytes"] = tracker.peak_bytes
        result["peak_kind"] = "live-tensor peak (dispatch-mode tracker)"
    else:
        out = run(n)
    kv_bytes, kv_tokens = cache_storage_bytes(out.past_key_values)
    # the last sampled token is never fed back: the cache holds prompt + new - 1 tokens
    result["kv_cache_bytes"] = kv_bytes
    result["kv_cache_tokens"] = kv_tokens
    return result
