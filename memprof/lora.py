"""`lora-params`: what a LoRA or DoRA configuration trains, where it sits, and what it costs.

The counts are peft's own: `PeftModel.get_nb_trainable_parameters()` after `get_peft_model` on the
model built on the meta device (no weights, no memory). For catalog models a fast path answers
from the shipped inventory without importing torch; tests/test_lora.py proves it equal to the peft
path for every catalog model, several ranks and every target preset. Anything the fast path has
not been proven for (modules_to_save, targets that are not quantizable linears, models outside the
catalog) goes through peft.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

from memprof.errors import LoraConfigError, UnknownTargetError, UnsupportedTargetError
from memprof.inventory import Inventory, build_meta_model, installed_transformers_version, inventory_for
from memprof.models import ResolvedModel, resolve_model
from memprof.options import comma_list
from memprof.predict import kbit_training_cast, predict_setting
from memprof.results.lora import (
    AdapterBytes,
    BaseAtSetting,
    LoraReport,
    LoraSweep,
    ModuleParams,
    RankAboveWidth,
    TrainingState,
)
from memprof.settings import DTYPE_BYTES, Setting, get_setting

TARGET_PRESETS = ("attention", "mlp", "all-linear")
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

# What `PeftModel.save_pretrained` writes: keys of get_peft_model_state_dict under this prefix,
# safetensors metadata {"format": "pt"}.
_STATE_DICT_PREFIX = "base_model.model."
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16"}
_SAFETENSORS_METADATA = {"format": "pt"}

# Parent module names that mark a linear as attention or MLP, for the `attention` / `mlp` presets.
_ATTENTION_PARENTS = ("attn", "attention")
_MLP_PARENTS = ("mlp", "ffn", "feed_forward")


@dataclass(frozen=True)
class _Counted:
    """What either path finds, before it becomes a report."""

    architecture: str
    trainable: int
    all_params: int
    base_params: int
    # (module path, in, out, params, tensors, DoRA magnitude params) per LoRA layer
    adapted: tuple[tuple[str, int, int, int, int, int], ...]
    modules_to_save: tuple[tuple[str, int, int], ...]  # (module path, params, tensors) of each trainable copy
    other_trainables: tuple[tuple[str, int], ...]  # (base-model name, numel): biases and anything else trained
    saved: tuple[tuple[str, tuple[int, ...]], ...]  # adapter state dict as saved: key, shape
    target_modules: tuple[str, ...]


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


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    out: list[str] = []
    for item in items:
        name = item.strip()
        if name and name not in out:
            out.append(name)
    return tuple(out)


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
            raise UnknownTargetError(
                f"{model} has no module named {name!r} for --modules-to-save (e.g. lm_head, embed_tokens)"
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
    names = _names(target)
    linears = [path for path, _, _ in _inventory_linears(inventory)]
    if not names:
        if inventory.model_type in PEFT_DEFAULT_TARGETS and PEFT_DEFAULT_TARGETS[inventory.model_type] is None:
            raise _no_default_targets(inventory.model_type, model, linears)
        return None
    tokens = _expand_target(names, linears, _inventory_module_keys(inventory), model)
    return "all-linear" if tokens is None else list(tokens)


# ---------------------------------------------------------------------------------------------------
# Fast path: the shipped inventory, no torch


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


def fast_path_proven(model: ResolvedModel, inventory: Inventory) -> bool:
    """Whether the inventory answers for this model: a catalog model whose shipped inventory was built with
    the installed transformers (tests/test_lora.py proves the catalog)."""
    return (
        model.source == "catalog"
        and inventory.model_type in PEFT_DEFAULT_TARGETS
        and inventory.transformers_version == installed_transformers_version()
    )


def _count_from_inventory(
    inventory: Inventory,
    *,
    model: str,
    r: int,
    target: tuple[str, ...],
    dora: bool,
    bias: str,
) -> _Counted | None:
    """peft's counts from the inventory, or None where this path is not proven (then peft answers)."""
    linears = _inventory_linears(inventory)
    linear_paths = [p for p, _, _ in linears]
    keys = _inventory_module_keys(inventory)
    if not target:
        defaults = PEFT_DEFAULT_TARGETS[inventory.model_type]
        if defaults is None:
            raise _no_default_targets(inventory.model_type, model, linear_paths)
        tokens: tuple[str, ...] | None = defaults
    else:
        tokens = _expand_target(target, linear_paths, keys, model)
    if tokens is None:
        adapted_linears = linears
    else:
        matched = [k for k in keys if any(_matches(k, t) for t in tokens)]
        if not set(matched) <= set(linear_paths):
            return None  # an embedding, the output layer, a norm...: peft decides
        adapted_linears = [lin for lin in linears if lin[0] in set(matched)]

    param_names = {t.name for t in inventory.params}
    adapted = []
    saved: list[tuple[str, tuple[int, ...]]] = []
    for path, in_f, out_f in adapted_linears:
        params = r * (in_f + out_f) + (out_f if dora else 0)
        adapted.append((path, in_f, out_f, params, 3 if dora else 2, out_f if dora else 0))
        saved += [
            (f"{_STATE_DICT_PREFIX}{path}.lora_A.weight", (r, in_f)),
            (f"{_STATE_DICT_PREFIX}{path}.lora_B.weight", (out_f, r)),
        ]
        if dora:
            saved.append((f"{_STATE_DICT_PREFIX}{path}.lora_magnitude_vector", (out_f,)))

    adapted_paths = {p for p, *_ in adapted}
    other: list[tuple[str, int]] = []
    if bias != "none":
        by_name = {t.name: t for t in inventory.tensors}
        if bias == "all":
            # peft: every parameter named *.bias is trained; every state-dict entry named *.bias is saved
            trained = [t for t in inventory.params if t.name == "bias" or t.name.endswith(".bias")]
            saved_bias = trained + [
                t for t in inventory.buffers if t.persistent and (t.name == "bias" or t.name.endswith(".bias"))
            ]
        else:  # lora_only: the biases of the adapted layers
            trained = [by_name[f"{p}.bias"] for p, *_ in adapted if f"{p}.bias" in param_names]
            saved_bias = trained
        other = [(t.name, t.numel) for t in trained]
        for t in saved_bias:
            module = t.name.removesuffix(".bias")
            key = f"{module}.base_layer.bias" if module in adapted_paths else t.name
            saved.append((_STATE_DICT_PREFIX + key, t.shape))

    lora_params = sum(a[3] for a in adapted)
    return _Counted(
        architecture=inventory.architecture,
        trainable=lora_params + sum(n for _, n in other),
        all_params=inventory.param_count + lora_params,
        base_params=inventory.param_count,
        adapted=tuple(adapted),
        modules_to_save=(),
        other_trainables=tuple(other),
        saved=tuple(saved),
        target_modules=_ordered_targets(tokens, [p for p, *_ in adapted]),
    )


# ---------------------------------------------------------------------------------------------------
# Exact path: peft on the meta-device model


def check_wrappable(key: str, module, *, dora: bool, hint: str = "") -> None:
    """Raise UnsupportedTargetError for a module peft 0.21's LoRA cannot wrap (dispatch_default), or cannot
    wrap with DoRA (MultiheadAttention). peft raises too; this gives the one-line message. `hint`: the
    model's linear module names."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    wrappable = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, Conv1D)
    if not isinstance(module, wrappable):
        raise UnsupportedTargetError(
            f"peft cannot wrap {key} ({type(module).__name__}) with {'DoRA' if dora else 'LoRA'}: it wraps "
            "Linear, Embedding, Conv1d/2d/3d, GPT-2's Conv1D and MultiheadAttention"
            + (f"; this model's linear modules are {hint}" if hint else "")
        )
    if dora and isinstance(module, nn.MultiheadAttention):
        raise UnsupportedTargetError(
            f"peft cannot apply DoRA to {key} (MultiheadAttention): drop --dora or target other modules"
        )


def _peft_linears(model) -> list[tuple[str, int, int]]:
    """peft's all-linear set: every nn.Linear / Conv1D but the output embedding, in module order."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    output = model.get_output_embeddings()
    out = []
    for name, module in model.named_modules():
        if module is output:
            continue
        if isinstance(module, Conv1D):
            out.append((name, module.weight.shape[0], module.weight.shape[1]))
        elif isinstance(module, nn.Linear):
            out.append((name, module.in_features, module.out_features))
    return out


def _count_with_peft(
    config: dict,
    *,
    model: str,
    r: int,
    alpha: float,
    dropout: float,
    target: tuple[str, ...],
    dora: bool,
    modules_to_save: tuple[str, ...],
    bias: str,
    trust_remote_code: bool,
) -> _Counted:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about meta tensors, fan_in_fan_out, ...: the library never prints
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
        from peft.tuners.lora import LoraLayer
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, ModulesToSaveWrapper

        base = build_meta_model(config, trust_remote_code=trust_remote_code)
        base_params = sum(p.numel() for p in base.parameters())
        modules = dict(base.named_modules())
        keys = [k for k in modules if k]
        linears = _peft_linears(base)
        linear_paths = [p for p, _, _ in linears]
        model_type = config["model_type"]

        if not target:
            if TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type) is None:
                raise _no_default_targets(model_type, model, linear_paths)
            tokens: tuple[str, ...] | None = None
            peft_target = None
        else:
            tokens = _expand_target(target, linear_paths, keys, model)
            peft_target = "all-linear" if tokens is None else list(tokens)
            if tokens is not None:
                for key in keys:
                    if any(_matches(key, t) for t in tokens) and not _saved_by_modules_to_save(key, modules_to_save):
                        check_wrappable(key, modules[key], dora=dora, hint=_linear_names_hint(linear_paths))
        _check_modules_to_save(modules_to_save, keys, model)

        lora_config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=peft_target,
            use_dora=dora,
            modules_to_save=list(modules_to_save) or None,
            bias=bias,
            task_type="CAUSAL_LM",
        )
        try:
            peft_model = get_peft_model(base, lora_config, low_cpu_mem_usage=True)
        except ValueError as exc:  # peft's own refusal; its first line says what
            raise LoraConfigError(f"peft refuses this configuration: {str(exc).splitlines()[0]}") from None
        trainable, all_params = peft_model.get_nb_trainable_parameters()
        state_dict = get_peft_model_state_dict(peft_model)

        counted: set[int] = set()
        adapted = []
        saved_copies = []
        for name, module in peft_model.named_modules():
            path = name.removeprefix(_STATE_DICT_PREFIX)
            if isinstance(module, LoraLayer):
                own = {
                    n: p for n, p in module.named_parameters() if p.requires_grad and not n.startswith("base_layer.")
                }
                counted.update(id(p) for p in own.values())
                magnitude = sum(p.numel() for n, p in own.items() if n.startswith("lora_magnitude_vector."))
                params = sum(p.numel() for p in own.values())
                adapted.append((path, module.in_features, module.out_features, params, len(own), magnitude))
            elif isinstance(module, ModulesToSaveWrapper):
                own = [p for p in module.modules_to_save["default"].parameters() if p.requires_grad]
                counted.update(id(p) for p in own)
                saved_copies.append((path, sum(p.numel() for p in own), len(own)))
        other = []
        for name, p in peft_model.named_parameters():
            if p.requires_grad and id(p) not in counted:
                base_name = name.removeprefix(_STATE_DICT_PREFIX).replace(".base_layer.", ".")
                other.append((base_name, p.numel()))

        if peft_target is None and tokens is None and not target:
            resolved = peft_model.peft_config["default"].target_modules
            tokens = (resolved,) if isinstance(resolved, str) else tuple(resolved)
        return _Counted(
            architecture=type(base).__name__,
            trainable=trainable,
            all_params=all_params,
            base_params=base_params,
            adapted=tuple(adapted),
            modules_to_save=tuple(saved_copies),
            other_trainables=tuple(other),
            saved=tuple((k, tuple(v.shape)) for k, v in state_dict.items()),
            target_modules=_ordered_targets(tokens, [a[0] for a in adapted]),
        )


# ---------------------------------------------------------------------------------------------------
# From counts to the report


def safetensors_file_bytes(tensors: Sequence[tuple[str, tuple[int, ...]]], dtype: str) -> int:
    """Exact size of a safetensors file holding `tensors` (name, shape) in `dtype`, as
    `safetensors.torch.save_file(..., metadata={"format": "pt"})` writes it: an 8-byte header length,
    the compact JSON header padded with spaces to a multiple of 8, then the data. One dtype: tensors
    are laid out sorted by name."""
    itemsize = DTYPE_BYTES[dtype]
    header: dict = {"__metadata__": _SAFETENSORS_METADATA}
    offset = 0
    for name, shape in sorted(tensors):
        nbytes = math.prod(shape) * itemsize
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header_len = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + header_len + (-header_len) % 8 + offset


def _per_module(counted: _Counted) -> tuple[ModuleParams, ...]:
    rows: list[ModuleParams] = []

    def grouped(entries, kind: str) -> None:
        # group by (leaf, shape); a leaf with several shapes (GPT-2's attn.c_proj / mlp.c_proj) is named parent.leaf
        shapes_by_leaf: dict[str, set] = {}
        for path, in_f, out_f, params, _, _ in entries:
            shapes_by_leaf.setdefault(_leaf(path), set()).add((in_f, out_f, params))
        groups: dict[tuple, list[int]] = {}
        for path, in_f, out_f, params, _, magnitude in entries:
            name = _leaf(path) if len(shapes_by_leaf[_leaf(path)]) == 1 else _parent_leaf(path)
            groups.setdefault((name, in_f, out_f, params, magnitude), []).append(params)
        for (name, in_f, out_f, per_layer, magnitude), members in groups.items():
            rows.append(ModuleParams(name, kind, len(members), in_f, out_f, per_layer, sum(members), magnitude))

    grouped(counted.adapted, "lora")
    grouped([(p, None, None, n, t, 0) for p, n, t in counted.modules_to_save], "modules_to_save")
    biases = [n for name, n in counted.other_trainables if name == "bias" or name.endswith(".bias")]
    if biases:
        rows.append(ModuleParams("bias", "bias", len(biases), None, None, None, sum(biases)))
    others = [n for name, n in counted.other_trainables if not (name == "bias" or name.endswith(".bias"))]
    if others:
        rows.append(ModuleParams("other", "other", len(others), None, None, None, sum(others)))
    return tuple(rows)


def _rank_above_width(per_module: Sequence[ModuleParams], r: int) -> RankAboveWidth | None:
    """The adapted layers whose narrower side is below r, or None when there are none."""
    narrow = [
        row
        for row in per_module
        if row.kind == "lora"
        and row.in_features is not None
        and row.out_features is not None
        and r > min(row.in_features, row.out_features)
    ]
    if not narrow:
        return None
    return RankAboveWidth(
        layers=sum(row.layers for row in narrow),
        min_width=min(min(row.in_features, row.out_features) for row in narrow),
        modules=tuple(dict.fromkeys(row.name for row in narrow)),
    )


def _training_state(counted: _Counted, inventory: Inventory | None, setting: Setting | None) -> TrainingState:
    """LoRA weights are float32 (peft's autocast_adapter_dtype=True); biases and modules_to_save copies keep
    the dtype the base was loaded in (float32 without --setting). Grads and AdamW moments are like their
    parameter."""
    lora_bytes = sum(a[3] for a in counted.adapted) * DTYPE_BYTES["float32"]
    records = {t.name: t for t in inventory.tensors} if inventory is not None else {}
    base_dtype = setting.dtype if setting is not None else "float32"

    def dtype_of(name: str) -> str:
        record = records.get(name)
        return record.dtype_when_loaded(base_dtype) if record is not None else base_dtype

    copies = sum(n for _, n, _ in counted.modules_to_save) * DTYPE_BYTES[base_dtype]
    other = sum(n * DTYPE_BYTES[dtype_of(name)] for name, n in counted.other_trainables)
    weights = lora_bytes + copies + other
    tensors = sum(a[4] for a in counted.adapted) + sum(t for *_, t in counted.modules_to_save)
    tensors += len(counted.other_trainables)
    basis = "LoRA weights in float32 (peft's autocast_adapter_dtype)"
    if counted.modules_to_save or counted.other_trainables:
        basis += f"; biases and modules_to_save copies in the base's dtype ({base_dtype})"
    basis += "; gradients and torch.optim.AdamW exp_avg + exp_avg_sq like their parameters"
    return TrainingState(
        weights_bytes=weights,
        grads_bytes=weights,
        adamw_moments_bytes=2 * weights,
        total_bytes=4 * weights,
        trainable_tensors=tensors,
        adamw_step_bytes=4 * tensors,
        basis=basis,
    )


def _peft_printout_all_params(all_params: int, inventory: Inventory, setting: Setting) -> int:
    """peft's get_nb_trainable_parameters on a model loaded at `setting`: a bitsandbytes Params4bit holds
    ceil(n/2) packed uint8 values and peft counts numel() * 2 * element_size(), i.e. 2*ceil(n/2) for a
    weight of n values: one more than n when n is odd. int8 and float weights count n."""
    if setting.quant not in ("nf4", "fp4"):
        return all_params
    extra = sum(t.numel % 2 for t in inventory.tensors if t.quantizable)
    return all_params + extra


def _notes(
    counted: _Counted,
    *,
    method: str,
    peft_version: str,
    alpha_given: bool,
    target: tuple[str, ...],
    base: BaseAtSetting | None,
    setting: Setting | None,
    inventory: Inventory | None,
    all_params: int,
) -> tuple[str, ...]:
    notes = []
    if method == "inventory":
        notes.append(
            f"Counts from the shipped inventory: the same numbers as peft {peft_version}'s "
            "get_nb_trainable_parameters (proven for every catalog model by tests/test_lora.py)."
        )
    else:
        notes.append(f"Counts from peft {peft_version} applied to the model on the meta device (no weights loaded).")
    if not alpha_given:
        notes.append("alpha defaults to 2·r here (peft's LoraConfig default is 8); alpha and dropout change no count.")
    if "all-linear" in target:
        notes.append("all-linear: every Linear/Conv1D except the output layer, as peft resolves it.")
    if counted.modules_to_save:
        notes.append("modules_to_save: each module is copied in full and the copy trained; the original stays frozen.")
    if counted.modules_to_save or counted.other_trainables:
        notes.append(
            "Adapter fp32/bf16 assume every saved tensor in that dtype; peft saves modules_to_save copies and "
            "biases in the dtype the base was loaded in."
        )
    saved_params = sum(math.prod(shape) for _, shape in counted.saved)
    if saved_params != counted.trainable:
        notes.append(
            f"The adapter file holds {saved_params:,} parameters, not just the {counted.trainable:,} trained: "
            "peft also saves the full embedding layers when they are targeted (save_embedding_layers='auto')."
        )
    notes.append(
        "Adapter file: adapter_model.safetensors as PeftModel.save_pretrained writes it, header included (exact); "
        "peft keeps LoRA weights in float32, so it writes the fp32 size unless the model is cast."
    )
    if base is not None and setting is not None and inventory is not None:
        if setting.quant in ("nf4", "fp4"):
            if base.peft_printout_all_params == all_params:
                notes.append(
                    "4-bit: peft counts a Params4bit weight as 2 × its packed uint8 elements; every quantized weight "
                    "here has an even number of values, so its printout equals the logical count."
                )
            else:
                odd = base.peft_printout_all_params - all_params
                notes.append(
                    f"4-bit: peft counts a Params4bit weight as 2 × its packed uint8 elements, so its printout says "
                    f"all params {base.peft_printout_all_params:,}: {odd:,} more than the logical count "
                    f"({odd:,} quantized weights with an odd number of values)."
                )
        notes.append(
            f"Total at {setting.name} = base weights (true bytes, exact) + the training state; "
            "no activations, CUDA context or allocator overhead."
        )
        if base.qlora_true_bytes is not None:
            notes.append(
                f"QLoRA at {setting.name}: peft's prepare_model_for_kbit_training (the QLoRA recipe, what `memprof "
                f"profile` and `memprof plan --task qlora` run) casts every fp16/bf16 parameter bitsandbytes left "
                f"unquantized (embeddings, LM head, norms, biases: {base.qlora_cast_params:,} params) to float32 "
                "before training, so the base then holds the 'after the QLoRA fp32 cast' bytes (exact)."
                + (
                    " In the step, each 4-bit layer's first forward casts its bias back to the compute dtype "
                    f"({setting.dtype}, bitsandbytes' Linear4bit): 'in the QLoRA step'."
                    if base.qlora_step_true_bytes != base.qlora_true_bytes
                    else ""
                )
            )
    return tuple(notes)


def _peft_version() -> str:
    try:
        return metadata.version("peft")
    except metadata.PackageNotFoundError:
        return "not installed"


def lora_params(
    model: str | None = None,
    *,
    r: int = 8,
    alpha: float | None = None,
    target: str | Sequence[str] | None = None,
    dropout: float = 0.0,
    dora: bool = False,
    modules_to_save: str | Sequence[str] | None = None,
    bias: str = "none",
    setting: str | Setting | None = None,
    method: str = "auto",
    allow_download: bool = False,
    trust_remote_code: bool = False,
) -> LoraReport:
    """What LoraConfig(r, lora_alpha=alpha, target_modules=target, ...) trains on MODEL, exactly as peft counts it.

    `target`: names (suffix-matched like peft), `attention`, `mlp`, `all-linear`, or None for peft's default
    for the architecture. `setting` (e.g. "nf4-dq") adds the base weights at that load setting.
    `method="peft"` always applies peft (slower); "auto" uses the inventory where it is proven equal.
    """
    if isinstance(r, bool) or not isinstance(r, int):
        raise LoraConfigError(f"rank must be a positive integer, not {r!r}")
    r = parse_rank(r)
    alpha_given = alpha is not None
    lora_alpha = parse_alpha(alpha) if alpha_given else 2 * r
    dropout = parse_dropout(dropout)
    if bias not in BIAS_MODES:
        raise LoraConfigError(f"unknown bias mode {bias!r}; use one of {', '.join(BIAS_MODES)}")
    if method not in ("auto", "peft"):
        raise ValueError(f"method must be 'auto' or 'peft', not {method!r}")
    chosen = get_setting(setting) if isinstance(setting, str) else setting
    target_names = _names(target)
    saved_names = _names(modules_to_save)

    resolved = resolve_model(model, allow_download=allow_download)
    inventory = None
    if chosen is not None or (method == "auto" and resolved.source == "catalog"):
        inventory = inventory_for(resolved, trust_remote_code=trust_remote_code)
    counted = None
    if inventory is not None and method == "auto" and not saved_names and fast_path_proven(resolved, inventory):
        counted = _count_from_inventory(inventory, model=resolved.name, r=r, target=target_names, dora=dora, bias=bias)
    used = "inventory" if counted is not None else "peft"
    if counted is None:
        counted = _count_with_peft(
            resolved.config,
            model=resolved.name,
            r=r,
            alpha=lora_alpha,
            dropout=dropout,
            target=target_names,
            dora=dora,
            modules_to_save=saved_names,
            bias=bias,
            trust_remote_code=trust_remote_code,
        )

    training = _training_state(counted, inventory, chosen)
    base = None
    if chosen is not None:
        true_bytes = predict_setting(inventory, chosen).true_bytes
        qlora = {}
        if chosen.quantized:
            cast = kbit_training_cast(inventory, chosen)
            qlora = dict(
                qlora_cast_params=cast.cast_params,
                qlora_true_bytes=cast.true_bytes,
                qlora_step_true_bytes=cast.step_true_bytes,
                qlora_total_bytes=cast.step_true_bytes + training.total_bytes,
            )
        base = BaseAtSetting(
            setting=chosen.name,
            description=chosen.description,
            true_bytes=true_bytes,
            total_bytes=true_bytes + training.total_bytes,
            peft_printout_all_params=_peft_printout_all_params(counted.all_params, inventory, chosen),
            **qlora,
        )
    peft_version = _peft_version()
    per_module = _per_module(counted)
    return LoraReport(
        model=resolved.name,
        r=r,
        alpha=lora_alpha,
        target_modules=counted.target_modules,
        trainable_params=counted.trainable,
        all_params=counted.all_params,
        trainable_percent=100 * counted.trainable / counted.all_params,
        adapter_bytes=AdapterBytes(
            fp32=sum(math.prod(s) for _, s in counted.saved) * DTYPE_BYTES["float32"],
            bf16=sum(math.prod(s) for _, s in counted.saved) * DTYPE_BYTES["bfloat16"],
        ),
        per_module=per_module,
        architecture=counted.architecture,
        target=",".join(target_names) if target_names else "peft default",
        dora=dora,
        dropout=dropout,
        bias=bias,
        modules_to_save=saved_names,
        scaling=lora_alpha / r,
        adapted_layers=len(counted.adapted),
        base_params=counted.base_params,
        adapter_file_bytes=AdapterBytes(
            fp32=safetensors_file_bytes(counted.saved, "float32"),
            bf16=safetensors_file_bytes(counted.saved, "bfloat16"),
        ),
        adapter_tensors=len(counted.saved),
        training_state=training,
        base=base,
        method=used,
        peft_version=peft_version,
        notes=_notes(
            counted,
            method=used,
            peft_version=peft_version,
            alpha_given=alpha_given,
            target=target_names,
            base=base,
            setting=chosen,
            inventory=inventory,
            all_params=counted.all_params,
        ),
        rank_above_width=_rank_above_width(per_module, r),
    )


def lora_sweep(model: str | None = None, *, ranks: str | Sequence[int], **options) -> LoraSweep:
    """lora_params for each rank (alpha stays 2*r per row unless given); same options as lora_params."""
    rows = tuple(lora_params(model, r=r, **options) for r in parse_ranks(ranks))
    return LoraSweep(model=rows[0].model, rows=rows)
