"""The KV cache a model holds while it generates: its attention layout, read from the model's own
transformers config, and the exact bytes transformers' caches keep for it.

transformers builds the cache layer by layer from the config (`cache_utils.get_layer_types_and_kwargs`,
the rule `DynamicCache(config=...)` and `StaticCache` follow): a full-attention layer keeps every
token's key and value, `[batch, kv_heads, tokens, head_dim]` each; a sliding-window (or chunked)
layer keeps at most its window; a layer without attention (an MLP or MoE-only layer, or one that
reuses another layer's cache) keeps nothing. Grouped- and multi-query attention show up as
`kv_heads` below the query heads. This module reads that layout once and does the arithmetic, so
plan answers for any context length without running anything; tests/test_kvcache.py proves the
arithmetic against the bytes a real `generate` leaves in the cache for every catalog architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from memprof.errors import ConfigError, short_message

# Bytes per element of the cache dtypes plan accepts (--kv-dtype); fp8 is what serving engines
# (vLLM's kv_cache_dtype="fp8") offer to halve a 16-bit cache.
KV_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}
_KV_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "float8": "fp8", "fp8_e4m3": "fp8"}


def parse_kv_dtype(text: str) -> str:
    name = _KV_DTYPE_ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in KV_DTYPE_BYTES:
        from memprof.errors import OptionError

        raise OptionError(f"unknown KV-cache dtype {text!r}: use one of bf16, fp16, fp32, fp8")
    return name


@dataclass(frozen=True)
class CacheLayer:
    """One decoder layer's share of the cache. `window` is None for full attention; `kv_heads` is 0
    for a layer that caches nothing."""

    kv_heads: int
    head_dim: int
    window: int | None = None

    def bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.kv_heads * self.head_dim * dtype_bytes  # a key and a value

    def tokens_held(self, tokens: int) -> int:
        """Tokens this layer holds once `tokens` have passed through it in decode steps. A sliding
        layer keeps the last window-1 tokens as a view of the step's concatenation, whose storage is
        the window (transformers' DynamicSlidingWindowLayer.update)."""
        return tokens if self.window is None else min(tokens, self.window)


@dataclass(frozen=True)
class KvLayout:
    model_type: str
    layers: tuple[CacheLayer, ...]

    @property
    def sliding_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.window is not None and layer.kv_heads)

    def bytes_per_token(self, dtype_bytes: int) -> int:
        """Cache bytes each token adds while the context is shorter than every window: the
        figure serving engines quote (2 x layers x kv_heads x head_dim x dtype bytes)."""
        return sum(layer.bytes_per_token(dtype_bytes) for layer in self.layers)

    def sequence_bytes(self, tokens: int, dtype_bytes: int, *, batch: int = 1) -> int:
        """Exact bytes the cache holds for `batch` sequences of `tokens` tokens each (prompt plus
        generated), windows applied."""
        return batch * sum(layer.bytes_per_token(dtype_bytes) * layer.tokens_held(tokens) for layer in self.layers)


def kv_layout(config: dict) -> KvLayout:
    """The cache layout transformers builds for this config.json (imports transformers)."""
    import json

    return _kv_layout(json.dumps(config, sort_keys=True))


@cache
def _kv_layout(config_json: str) -> KvLayout:
    import json

    from transformers import AutoConfig
    from transformers.cache_utils import get_layer_types_and_kwargs

    config = json.loads(config_json)
    model_type = config.get("model_type", "unknown")
    from memprof.inventory import check_known_model_type

    check_known_model_type(model_type)
    try:
        built = AutoConfig.for_model(**config)
        text = built.get_text_config(decoder=True)
        layer_types, layer_kwargs = get_layer_types_and_kwargs(text)
    except Exception as exc:  # a config transformers cannot build has no layout to read
        raise ConfigError(
            f"cannot read the attention layout of this {model_type} config: {short_message(exc)}"
        ) from exc
    heads = getattr(text, "num_attention_heads", None)
    hidden = getattr(text, "hidden_size", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if hidden and heads else None)
    if not kv_heads or not head_dim:
        raise ConfigError(f"cannot tell the KV heads and head size of this {model_type} config")
    layers = []
    for layer_type, kwargs in zip(layer_types, layer_kwargs, strict=True):
        if layer_type == "dummy":  # MLP/MoE-only layers and layers that reuse another's cache
            layers.append(CacheLayer(0, head_dim))
        elif layer_type in ("full_attention", "sliding_attention", "chunked_attention"):
            layers.append(CacheLayer(int(kv_heads), int(head_dim), kwargs.get("sliding_window")))
        else:  # recurrent / compressed states: not a KV cache memprof can count per token
            raise ConfigError(f"{model_type}: layer type {layer_type!r} keeps a state memprof does not count yet")
    return KvLayout(model_type, tuple(layers))
