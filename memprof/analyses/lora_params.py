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
import operator
from collections.abc import Sequence
from importlib import metadata

from memprof.errors import LoraConfigError, OptionError
from memprof.inventory import Inventory, inventory_for
from memprof.lora.count import Counted, _count_from_inventory, _count_with_peft, fast_path_proven
from memprof.lora.options import (
    BIAS_MODES,
    _leaf,
    _parent_leaf,
    parse_alpha,
    parse_dropout,
    parse_rank,
    parse_ranks,
)
from memprof.models import resolve_model
from memprof.options import name_list, switch
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

# The safetensors header `PeftModel.save_pretrained` writes: its dtypes, and metadata {"format": "pt"}.
_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16"}
_SAFETENSORS_METADATA = {"format": "pt"}


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


def _per_module(counted: Counted) -> tuple[ModuleParams, ...]:
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


def _training_state(counted: Counted, inventory: Inventory | None, setting: Setting | None) -> TrainingState:
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
    if not setting.four_bit:
        return all_params
    extra = sum(t.numel % 2 for t in inventory.tensors if t.quantizable)
    return all_params + extra


def _notes(
    counted: Counted,
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
        if setting.four_bit:
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
    if isinstance(r, bool) or not hasattr(type(r), "__index__"):
        raise LoraConfigError(f"rank must be a positive integer, not {r!r}")
    r = parse_rank(operator.index(r))
    dora = switch(dora, "dora", error=LoraConfigError)
    allow_download = switch(allow_download, "allow_download")
    trust_remote_code = switch(trust_remote_code, "trust_remote_code")
    alpha_given = alpha is not None
    lora_alpha = parse_alpha(alpha) if alpha_given else 2 * r
    dropout = parse_dropout(dropout)
    if bias not in BIAS_MODES:
        raise LoraConfigError(f"unknown bias mode {bias!r}; use one of {', '.join(BIAS_MODES)}")
    if method not in ("auto", "peft"):
        raise OptionError(f"method must be 'auto' (the inventory where proven equal) or 'peft', not {method!r}")
    chosen = setting if isinstance(setting, Setting) or setting is None else get_setting(setting)
    target_names = name_list(target, option="target", error=LoraConfigError)
    saved_names = name_list(modules_to_save, option="modules_to_save", error=LoraConfigError)

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
