"""LoRA options as every command takes them (--r, --alpha, --dropout, --target, --bias): parsing, and
resolving target names against a model's linears, as peft's LoraConfig does."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from memprof.errors import LoraConfigError, UnknownTargetError, UnsupportedTargetError
from memprof.inventory import Inventory
from memprof.options import comma_list, name_list

BIAS_MODES = ("none", "lora_only", "all")

# peft 0.21.2's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the model types of the catalog
# (None: peft has no default and asks for target_modules). A copy so that the fast path needs no
# peft import; tests/test_lora.py asserts it equals peft's table for every catalog model type.
PEFT_DEFAULT_TARGETS: dict[str, tuple[str, ...] | None] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "bloom": ("query_key_value",),
    "gpt2": ("c_attn",),
    "phi3": None,
}

# Parent module names that mark a linear as attention or MLP, for the `attention` / `mlp` presets.
_ATTENTION_PARENTS = ("attn", "attention")
_MLP_PARENTS = ("mlp", "ffn", "feed_forward")


# ---------------------------------------------------------------------------------------------------
# Parsing user input


MAX_RANK = 1 << 24  # above the widest dimension of any model (vocabularies reach ~256k)


def parse_rank(text: str | int) -> int:
    """'32' -> 32; a rank is a positive integer."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise LoraConfigError(f"rank must be a positive integer, not {text!r} (e.g. --r 16)") from None
    if value <= 0:
        raise LoraConfigError(f"rank must be a positive integer, not {value} (e.g. --r 16)")
    if value > MAX_RANK:  # past every layer's width, and sizes past it overflow torch's int64 shapes
        raise LoraConfigError(f"rank {value} is above {MAX_RANK:,}, wider than any layer (e.g. --r 16)")
    return value


def parse_ranks(text: str | Sequence[int]) -> tuple[int, ...]:
    """'8,16,32' -> (8, 16, 32), in the given order, without repeats."""
    empty = LoraConfigError("--sweep needs a comma list of ranks, e.g. --sweep 8,16,32,64")
    return comma_list(text, parse_rank, empty=empty)


def parse_alpha(text: str | float | None) -> float | None:
    """'64' -> 64, '0.5' -> 0.5; None stays None (2*r)."""
    if text is None:
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        raise LoraConfigError(f"alpha must be a number, not {text!r} (e.g. --alpha 32; default 2*r)") from None
    if not math.isfinite(value) or value <= 0:
        raise LoraConfigError(f"alpha must be a positive number, not {text!r} (e.g. --alpha 32; default 2*r)")
    return int(value) if value.is_integer() else value


def parse_dropout(text: str | float | None) -> float:
    if text is None:
        return 0.0
    try:
        value = float(str(text).strip())
    except ValueError:
        raise LoraConfigError(f"dropout must be a number in [0, 1), not {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise LoraConfigError(f"dropout must be in [0, 1), not {text!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# Target resolution, shared by both paths


def _matches(key: str, token: str) -> bool:
    """peft's rule for a target_modules list entry (check_target_module_exists): the key, or a suffix at a dot."""
    return key == token or key.endswith("." + token)


def _saved_by_modules_to_save(key: str, names: tuple[str, ...]) -> bool:
    """peft excludes modules that modules_to_save matches from adapter targets (check_target_module_exists)."""
    return any(re.match(rf"(^|.*\.){name}($|\..*)", key) for name in names)


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _parent_leaf(path: str) -> str:
    return ".".join(path.split(".")[-2:])


def _block_kind(path: str) -> str | None:
    parts = path.split(".")
    parent = parts[-2].lower() if len(parts) > 1 else ""
    if any(p in parent for p in _ATTENTION_PARENTS):
        return "attention"
    if any(p in parent for p in _MLP_PARENTS):
        return "mlp"
    return None


def _preset_tokens(linears: Sequence[str], preset: str) -> list[str]:
    """Target names for `attention` / `mlp`: the leaf name where it is only in that block, else parent.leaf."""
    kinds_by_leaf: dict[str, set] = {}
    for path in linears:
        kinds_by_leaf.setdefault(_leaf(path), set()).add(_block_kind(path))
    tokens: list[str] = []
    for path in linears:
        if _block_kind(path) != preset:
            continue
        token = _leaf(path) if kinds_by_leaf[_leaf(path)] == {preset} else _parent_leaf(path)
        if token not in tokens:
            tokens.append(token)
    return tokens


def _linear_names_hint(linears: Sequence[str]) -> str:
    leaves: list[str] = []
    for path in linears:
        if _leaf(path) not in leaves:
            leaves.append(_leaf(path))
    return ", ".join(leaves)


def _expand_target(
    target: tuple[str, ...], linears: Sequence[str], keys: Sequence[str], model: str
) -> tuple[str, ...] | None:
    """User target names -> the names handed to peft; None means all-linear. Checks every name exists."""
    if "all-linear" in target:
        if len(target) > 1:
            raise LoraConfigError("all-linear already targets every linear but the output layer: give it alone")
        return None
    tokens: list[str] = []
    for name in target:
        if name in ("attention", "mlp"):
            expanded = _preset_tokens(linears, name)
            if not expanded:
                raise UnknownTargetError(
                    f"{model} has no linear under an attention/mlp-named block for --target {name}; "
                    f"name its linear modules instead: {_linear_names_hint(linears)}"
                )
        else:
            if not any(_matches(k, name) for k in keys):
                raise UnknownTargetError(
                    f"{model} has no module named {name!r}; its linear modules are {_linear_names_hint(linears)} "
                    "(or use attention, mlp, all-linear)"
                )
            expanded = [name]
        tokens += [t for t in expanded if t not in tokens]
    return tuple(tokens)


def _check_modules_to_save(names: tuple[str, ...], keys: Sequence[str], model: str) -> None:
    for name in names:
        # peft's own rule for modules_to_save (_set_trainable): a plain suffix match.
        if not any(k.endswith(name) for k in keys):
            # the modules outside the repeated layers: what modules_to_save is for (embeddings, the head)
            outside = [k.rsplit(".", 1)[-1] for k in keys if k and not any(p.isdigit() for p in k.split("."))]
            hint = ", ".join(dict.fromkeys(n for n in outside if n)) or "none"
            raise UnknownTargetError(
                f"{model} has no module named {name!r} for --modules-to-save; its modules outside the layers are {hint}"
            )


def _no_default_targets(model_type: str, model: str, linears: Sequence[str]) -> UnsupportedTargetError:
    return UnsupportedTargetError(
        f"peft has no default LoRA targets for model_type {model_type!r} ({model}); pass --target with "
        f"some of {_linear_names_hint(linears)}, or attention, mlp, all-linear"
    )


def _ordered_targets(tokens: Sequence[str] | None, adapted_paths: Sequence[str]) -> tuple[str, ...]:
    """Resolved target names in model order: tokens by their first adapted module; None: adapted leaf names."""
    if tokens is None:
        return tuple(dict.fromkeys(_leaf(p) for p in adapted_paths))

    def first(token: str) -> int:
        return next((i for i, p in enumerate(adapted_paths) if _matches(p, token)), len(adapted_paths))

    return tuple(sorted(tokens, key=first))


def peft_target_modules(inventory: Inventory, target: str | Sequence[str] | None, *, model: str):
    """The `LoraConfig(target_modules=...)` value for a --target option, checked against the model.

    Names (suffix-matched like peft), `attention` / `mlp` (expanded to names), `all-linear`, or
    nothing for peft's own default; returns a list of names, "all-linear", or None. The profiler and
    the planner use this, so every command accepts the same --target as lora-params.
    """
    names = name_list(target, option="target", error=LoraConfigError)
    linears = [path for path, _, _ in _inventory_linears(inventory)]
    if not names:
        if inventory.model_type in PEFT_DEFAULT_TARGETS and PEFT_DEFAULT_TARGETS[inventory.model_type] is None:
            raise _no_default_targets(inventory.model_type, model, linears)
        return None
    tokens = _expand_target(names, linears, _inventory_module_keys(inventory), model)
    return "all-linear" if tokens is None else list(tokens)


def _inventory_linears(inventory: Inventory) -> list[tuple[str, int, int]]:
    out = []
    for t in inventory.tensors:
        if t.quantizable:
            out_features = t.quant_out_features
            out.append((t.name.removesuffix(".weight"), t.numel // out_features, out_features))
    return out


def _inventory_module_keys(inventory: Inventory) -> list[str]:
    keys: dict[str, None] = {}
    for t in inventory.tensors:
        parts = t.name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            keys[".".join(parts[:i])] = None
    return list(keys)
