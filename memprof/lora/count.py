"""What a LoRA or DoRA configuration trains, counted two ways that tests prove equal: from the shipped
inventory (no torch), or by peft on the model built on the meta device."""

from __future__ import annotations

from dataclasses import dataclass

from memprof.errors import LoraConfigError, UnsupportedTargetError
from memprof.inventory import Inventory, build_meta_model, installed_transformers_version
from memprof.lora.options import (
    PEFT_DEFAULT_TARGETS,
    _check_modules_to_save,
    _expand_target,
    _inventory_linears,
    _inventory_module_keys,
    _linear_names_hint,
    _matches,
    _no_default_targets,
    _ordered_targets,
    _saved_by_modules_to_save,
)
from memprof.models import ResolvedModel

# What `PeftModel.save_pretrained` writes: keys of get_peft_model_state_dict under this prefix.
_STATE_DICT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Counted:
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
# Fast path: the shipped inventory, no torch


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
) -> Counted | None:
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
    return Counted(
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
) -> Counted:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about meta tensors, fan_in_fan_out, ...: the library never prints
        from memprof.libraries import import_library

        import_library("peft")  # bitsandbytes' kernels compiled on first use (memprof.libraries)
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
        return Counted(
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
