"""What a model holds: every parameter and buffer, its shape and dtype rule, and which linears
bitsandbytes would replace.

The inventory is derived from the real transformers model class instantiated on the meta device
(no memory, no weights), using transformers' own rules for what quantization skips. It is cached
as JSON keyed by the config, and shipped for the catalog, so that predictions for catalog models
never import torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from memprof.catalog import INVENTORIES_DIR, find_catalog_model
from memprof.errors import ConfigError, short_message
from memprof.io import cache_dir, write_json_atomic
from memprof.models import ResolvedModel

INVENTORY_FORMAT = 1

# Keys of config.json that do not change the module tree: memprof always passes the dtype itself.
_VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype"})


@dataclass(frozen=True)
class TensorRecord:
    """One parameter or buffer of the model, as `named_parameters()` / `named_buffers()` list it."""

    name: str
    shape: tuple[int, ...]
    # "auto": follows the dtype the model is loaded in; otherwise a fixed torch dtype name.
    dtype: str
    kind: str  # "param" or "buffer"
    persistent: bool = True
    # For the weight of a linear that bitsandbytes replaces: its out_features (int8 keeps one
    # float32 scale per output row). None for every other tensor.
    quant_out_features: int | None = None
    # Load dtypes under which transformers upcasts this parameter to float32 (_keep_in_fp32_modules).
    fp32_on: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def quantizable(self) -> bool:
        return self.quant_out_features is not None

    def dtype_when_loaded(self, load_dtype: str) -> str:
        if load_dtype in self.fp32_on:
            return "float32"
        return load_dtype if self.dtype == "auto" else self.dtype


@dataclass(frozen=True)
class Inventory:
    model_type: str
    architecture: str
    transformers_version: str
    config_key: str
    tensors: tuple[TensorRecord, ...]

    @property
    def params(self) -> tuple[TensorRecord, ...]:
        return tuple(t for t in self.tensors if t.kind == "param")

    @property
    def buffers(self) -> tuple[TensorRecord, ...]:
        return tuple(t for t in self.tensors if t.kind == "buffer")

    @property
    def param_count(self) -> int:
        return sum(t.numel for t in self.params)

    def to_json(self) -> dict:
        return {
            "format": INVENTORY_FORMAT,
            "model_type": self.model_type,
            "architecture": self.architecture,
            "transformers_version": self.transformers_version,
            "config_key": self.config_key,
            "tensors": [_record_to_json(t) for t in self.tensors],
        }

    @classmethod
    def from_json(cls, data: dict) -> Inventory:
        return cls(
            model_type=data["model_type"],
            architecture=data["architecture"],
            transformers_version=data["transformers_version"],
            config_key=data["config_key"],
            tensors=tuple(_record_from_json(t) for t in data["tensors"]),
        )


def _record_to_json(t: TensorRecord) -> dict:
    out: dict = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "kind": t.kind}
    if not t.persistent:
        out["persistent"] = False
    if t.quant_out_features is not None:
        out["quant_out_features"] = t.quant_out_features
    if t.fp32_on:
        out["fp32_on"] = list(t.fp32_on)
    return out


def _record_from_json(d: dict) -> TensorRecord:
    return TensorRecord(
        name=d["name"],
        shape=tuple(d["shape"]),
        dtype=d["dtype"],
        kind=d["kind"],
        persistent=d.get("persistent", True),
        quant_out_features=d.get("quant_out_features"),
        fp32_on=tuple(d.get("fp32_on", ())),
    )


def config_key(config: dict) -> str:
    """A stable key for the structure a config describes."""
    kept = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def installed_transformers_version() -> str:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "not installed"


def shipped_inventory_path(hub_id: str) -> Path:
    return INVENTORIES_DIR / (hub_id.replace("/", "__") + ".json")


@cache
def _read_inventory(path: Path) -> Inventory:
    return Inventory.from_json(json.loads(path.read_text()))


def inventory_for(model: ResolvedModel, *, trust_remote_code: bool = False) -> Inventory:
    """The model's inventory: shipped (catalog), cached, or built now on the meta device and cached."""
    key = config_key(model.config)
    if model.source == "catalog":
        entry = find_catalog_model(model.name)
        if entry is not None:
            path = shipped_inventory_path(entry.hub_id)
            if path.is_file():
                inv = _read_inventory(path)
                if inv.config_key == key:
                    return inv
    cached = cache_dir() / "inventories" / f"{key}.json"
    if cached.is_file():
        try:
            inv = _read_inventory(cached)
        except (ValueError, KeyError):
            inv = None  # a corrupt cache entry is rebuilt, not trusted
        if inv is not None and inv.transformers_version == installed_transformers_version():
            return inv
    inv = build_inventory(model.config, trust_remote_code=trust_remote_code)
    with contextlib.suppress(OSError):  # a read-only cache only costs the rebuild next time
        write_json_atomic(cached, inv.to_json())
    return inv


def check_known_model_type(model_type: str) -> None:
    """One ConfigError line for a model_type the installed transformers does not know."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ConfigError(
            f"transformers {installed_transformers_version()} does not know model_type {model_type!r}; "
            "check config.json's model_type (e.g. llama, mistral, qwen2, gemma2, phi3, bloom, gpt2)"
        )


def build_meta_model(config: dict, *, dtype: str = "float32", trust_remote_code: bool = False):
    """Instantiate the transformers causal-LM class for `config` on the meta device.

    Follows what `from_pretrained(dtype=...)` does before loading weights: the default dtype is
    set to `dtype` while modules are built. Raises ConfigError for configs transformers rejects.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    values = dict(config)
    model_type = values.pop("model_type")
    for key in _VOLATILE_CONFIG_KEYS:
        values.pop(key, None)
    check_known_model_type(model_type)
    try:
        hf_config = AutoConfig.for_model(model_type, **values)
    except Exception as exc:  # transformers validates with several exception types; all mean a bad config
        raise ConfigError(f"config for model_type {model_type!r} is malformed: {short_message(exc)}") from None
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(
                hf_config, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
            )
    except ValueError as exc:
        raise ConfigError(f"cannot build a causal LM for model_type {model_type!r}: {short_message(exc)}") from None
    except (TypeError, AttributeError, RuntimeError) as exc:
        raise ConfigError(
            f"config for model_type {model_type!r} does not build a model: {short_message(exc)}"
        ) from None


def quantizable_linears(model) -> dict[str, int]:
    """Module path -> out_features of every linear transformers' bitsandbytes integration replaces.

    Uses transformers' own skip rules (tied weights, output embeddings, last module,
    _keep_in_fp32_modules) and its own module test (exactly nn.Linear, or GPT-2's Conv1D).
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    out: dict[str, int] = {}
    for name, module in model.named_modules():
        if not should_convert_module(name, skip):
            continue
        if isinstance(module, Conv1D):
            out[name] = module.weight.shape[1]  # Conv1D stores weight as (in, out)
        elif type(module) is nn.Linear:
            out[name] = module.out_features
    return out


def _fp32_upcasts(model, name: str) -> tuple[str, ...]:
    """Load dtypes under which transformers' dtype_plan keeps parameter `name` in float32."""
    import torch
    from transformers.core_model_loading import build_glob_alternation

    upcast = []
    for dtype in (torch.float16, torch.bfloat16):
        plan = model._get_dtype_plan(dtype)
        if plan:
            pattern, _, _ = build_glob_alternation(list(plan))
            if pattern.search(name):
                upcast.append(str(dtype).removeprefix("torch."))
    return tuple(upcast)


def build_inventory(config: dict, *, trust_remote_code: bool = False) -> Inventory:
    """Derive the inventory from the model class on the meta device. Imports torch."""
    import torch  # noqa: F401  (build_meta_model needs it; imported here to fail early)

    model_fp32 = build_meta_model(config, dtype="float32", trust_remote_code=trust_remote_code)
    model_bf16 = build_meta_model(config, dtype="bfloat16", trust_remote_code=trust_remote_code)
    bf16_dtypes = {n: t.dtype for n, t in model_bf16.named_parameters()}
    bf16_dtypes.update({n: t.dtype for n, t in model_bf16.named_buffers()})
    linears = quantizable_linears(model_fp32)
    has_fp32_plan = bool(model_fp32._keep_in_fp32_modules or model_fp32._keep_in_fp32_modules_strict)

    def dtype_rule(name, tensor) -> str:
        # A tensor built in the default dtype follows the load dtype; one built explicitly
        # (inv_freq in float32, integer position ids) keeps its own.
        if tensor.dtype == torch.float32 and bf16_dtypes[name] == torch.bfloat16:
            return "auto"
        return str(tensor.dtype).removeprefix("torch.")

    records: list[TensorRecord] = []
    for name, p in model_fp32.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        records.append(
            TensorRecord(
                name=name,
                shape=tuple(p.shape),
                dtype=dtype_rule(name, p),
                kind="param",
                quant_out_features=linears.get(module_name) if leaf == "weight" else None,
                fp32_on=_fp32_upcasts(model_fp32, name) if has_fp32_plan else (),
            )
        )
    for name, b in model_fp32.named_buffers():
        module_name, _, leaf = name.rpartition(".")
        module = model_fp32.get_submodule(module_name) if module_name else model_fp32
        records.append(
            TensorRecord(
                name=name,
                shape=tuple(b.shape),
                dtype=dtype_rule(name, b),
                kind="buffer",
                persistent=leaf not in module._non_persistent_buffers_set,
            )
        )
    return Inventory(
        model_type=config["model_type"],
        architecture=type(model_fp32).__name__,
        transformers_version=installed_transformers_version(),
        config_key=config_key(config),
        tensors=tuple(records),
    )
