"""What a model's config.json says about the shape of its step: the decoder layer count, the group of
layers that repeats and the config at another depth; the position limit, the sliding window and the
prompt-length ranges within which one fit holds.

Torch-free: plan's cached path uses them without importing torch; transformers is asked only for a
config whose layer-count key is ambiguous (`_layer_key`).
"""

from __future__ import annotations

import contextlib
import functools

# Where configs keep the decoder layer count when transformers' config class does not say (remote code).
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# Every key a config class of the pinned transformers names as its `num_hidden_layers` (attribute_map);
# tests/test_layer_count.py checks this list against CONFIG_MAPPING.
LAYER_ATTRIBUTE_KEYS = frozenset(
    {
        "num_hidden_layers",
        "n_layer",
        "num_layers",
        "n_layers",
        "encoder_layers",
        "decoder_layers",
        "depth",
        "layers",
        "num_stages",
        "decoder_num_hidden_layers",
        "num_encoder_blocks",
    }
)


def _layer_key(config: dict) -> tuple[str, int]:
    """The config.json key of the decoder layer count, and the count. transformers' config class says
    which key its `num_hidden_layers` is (attribute_map: MPT n_layers, GPT-2 n_layer); a key the
    config omits takes the class default, as transformers would build it.

    A config that holds exactly one of the keys any class could name, and that one of `_LAYER_KEYS`,
    gets the same answer from every class (its own key is that one, or else `_LAYER_KEYS` finds it),
    so transformers is not asked (nor imported): the catalog's configs are all such.
    """
    named = [k for k in LAYER_ATTRIBUTE_KEYS if k in config]
    if len(named) == 1 and named[0] in _LAYER_KEYS:
        return named[0], int(config[named[0]])
    return _layer_key_from_transformers(config)


def _layer_key_from_transformers(config: dict) -> tuple[str, int]:
    from transformers import CONFIG_MAPPING

    from memprof.errors import ConfigError

    model_type = config.get("model_type")
    try:
        config_class = CONFIG_MAPPING[model_type]
    except KeyError:
        config_class = None
    key = (config_class.attribute_map if config_class else {}).get("num_hidden_layers", "num_hidden_layers")
    if key in config:
        return key, int(config[key])
    for other in _LAYER_KEYS:  # configs of remote code
        if other in config:
            return other, int(config[other])
    if config_class is not None:
        with contextlib.suppress(Exception):  # a config transformers cannot build has no default either
            values = {k: v for k, v in config.items() if k != "model_type"}
            built = config_class(**values)
            return key, int(built.num_hidden_layers)
    raise ConfigError(
        f"cannot tell the layer count of this {model_type or 'unknown'} config: it has none of "
        "num_hidden_layers, n_layer, n_layers, num_layers, and transformers' config class gives no default"
    )


def layer_count(config: dict) -> int:
    return _layer_key(config)[1]


def layer_period(config: dict) -> int:
    """Smallest group of layers that repeats (1 unless `layer_types` alternates, e.g. sliding/global)."""
    types = config.get("layer_types")
    if not types:
        return 1
    for p in range(1, len(types) + 1):
        if all(types[i] == types[i % p] for i in range(len(types))):
            return p
    return len(types)


def with_layers(config: dict, layers: int) -> dict:
    """The config with `layers` decoder layers (and `layer_types` cut to match)."""
    out = dict(config)
    out[_layer_key(config)[0]] = layers
    if out.get("layer_types"):
        types = list(out["layer_types"])
        out["layer_types"] = [types[i % len(types)] for i in range(layers)]
    return out


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "max_seq_len")  # MPT


def max_positions(config: dict) -> int | None:
    """The longest sequence (prompt + generated tokens) the model is defined for; None if unbounded (ALiBi).

    A config.json that leaves the limit out gets its config class's default, as transformers builds
    the model with it (GPT-2: 1,024 positions; BERT: 512): a longer sequence fails in the model."""
    for key in _POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type in UNBOUNDED_TYPES or config.get("alibi") is True:
        return None
    return _class_default_positions(model_type)


# Config classes without a position limit (ALiBi): answered without importing transformers, so a
# catalog BLOOM plans as fast as the others (tests/test_layer_count.py holds this to transformers).
UNBOUNDED_TYPES = frozenset({"bloom"})


@functools.cache
def _class_default_positions(model_type: str) -> int | None:
    try:  # transformers' config classes import no torch; only configs without the key get here
        from transformers import CONFIG_MAPPING

        defaults = CONFIG_MAPPING[model_type]().to_dict()
    except Exception:  # noqa: BLE001  an unknown or unbuildable type: no limit known, as before
        return None
    return max_positions({k: v for k, v in defaults.items() if k in _POSITION_KEYS})


def sliding_window(config: dict) -> int | None:
    """The attention window of sliding-window layers where it is shorter than the model's positions."""
    window = config.get("sliding_window")
    if config.get("use_sliding_window") is False or isinstance(window, bool) or not isinstance(window, int):
        return None
    limit = max_positions(config)
    return window if window > 1 and (limit is None or window < limit) else None


def seq_ranges(config: dict, new_tokens: int = 0) -> tuple[tuple[int, int], ...]:
    """Prompt lengths [lo, hi] within which the step runs the same ops, so that one fit holds.

    transformers builds an explicit attention mask for sliding-window layers once the keys reach
    the window (below it SDPA's is_causal does), so a sliding window splits the lengths in two.
    The last range ends at the model's positions less `new_tokens` (or at 2**20 without a limit).
    """
    limit = max_positions(config)
    top = (1 << 20) if limit is None else limit - new_tokens
    window = sliding_window(config)
    if window is None or window > top:
        return ((1, top),)
    return ((1, window - 1), (window, top))
