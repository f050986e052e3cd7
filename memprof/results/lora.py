"""The result of `memprof lora-params`: trainable parameters and bytes of a LoRA adapter (one rank, or a sweep)."""

from __future__ import annotations

from dataclasses import dataclass

# the "kind" of `memprof lora-params --json` (one rank, or --sweep), so `memprof report` re-renders it
LORA_KIND = "memprof.lora-params"
LORA_SWEEP_KIND = "memprof.lora-sweep"


@dataclass(frozen=True)
class ModuleParams:
    """Trainable parameters of one group of modules: same name, same shape."""

    name: str  # the target name as LoraConfig takes it ("q_proj"; "attn.c_proj" where the leaf is ambiguous)
    kind: str  # "lora" (A and B, plus the DoRA magnitude), "modules_to_save" (full copy), "bias", "other"
    layers: int  # modules in the group (for "bias": bias tensors)
    in_features: int | None
    out_features: int | None
    params_per_layer: int | None  # r*(in+out), + out with DoRA; None for bias/other rows
    params: int
    magnitude_per_layer: int = 0  # DoRA's magnitude vector, included in params_per_layer


@dataclass(frozen=True)
class AdapterBytes:
    """Bytes of the adapter as saved, at each dtype it is commonly saved in."""

    fp32: int
    bf16: int


@dataclass(frozen=True)
class TrainingState:
    """Bytes the trainable parameters hold during training with torch.optim.AdamW."""

    weights_bytes: int
    grads_bytes: int
    adamw_moments_bytes: int  # exp_avg + exp_avg_sq, each like its parameter
    total_bytes: int
    trainable_tensors: int
    adamw_step_bytes: int  # one float32 step scalar per tensor, on the CPU by default: not in total_bytes
    basis: str


@dataclass(frozen=True)
class BaseAtSetting:
    """The base model's weights at a load setting, plus the training state: the memory to train in."""

    setting: str
    description: str
    true_bytes: int  # memprof.predict true_bytes: every byte of the loaded weights, quant state included
    total_bytes: int  # true_bytes + training_state.total_bytes
    peft_printout_all_params: int  # what peft's print_trainable_parameters says for a model loaded so
    # Quantized settings: QLoRA's recipe (peft's prepare_model_for_kbit_training, as profile and plan run
    # it) casts the unquantized fp16/bf16 params to float32 before training (memprof.predict.kbit_training_cast).
    qlora_cast_params: int = 0
    qlora_true_bytes: int | None = None  # true_bytes right after that cast
    qlora_step_true_bytes: int | None = None  # during the step: 4-bit layers' biases back in the compute dtype
    qlora_total_bytes: int | None = None  # qlora_step_true_bytes + training_state.total_bytes


@dataclass(frozen=True)
class RankAboveWidth:
    """Adapted layers narrower than the rank: r > min(in_features, out_features). peft accepts such a rank,
    but there B @ A has rank at most that width, so the extra rank adds parameters, not expressiveness."""

    layers: int  # adapted layers with min(in_features, out_features) < r
    min_width: int  # the smallest min(in_features, out_features) among them
    modules: tuple[str, ...]  # their names, as in per_module


@dataclass(frozen=True)
class LoraReport:
    model: str
    r: int
    alpha: float
    target_modules: tuple[str, ...]  # resolved names, as LoraConfig(target_modules=...) takes them
    trainable_params: int
    all_params: int  # as peft counts them: the base model plus the adapter
    trainable_percent: float
    adapter_bytes: AdapterBytes  # tensor bytes of adapter_model.safetensors
    per_module: tuple[ModuleParams, ...]
    architecture: str
    target: str  # what was asked: "peft default", a preset, or the names given
    dora: bool
    dropout: float
    bias: str
    modules_to_save: tuple[str, ...]
    scaling: float  # alpha / r, the factor on B @ A
    adapted_layers: int  # modules wrapped with LoRA
    base_params: int
    adapter_file_bytes: AdapterBytes  # the whole adapter_model.safetensors: 8 + JSON header + tensors
    adapter_tensors: int
    training_state: TrainingState
    base: BaseAtSetting | None
    method: str  # "inventory" (fast path, proven equal to peft by the tests) or "peft"
    peft_version: str
    notes: tuple[str, ...]
    rank_above_width: RankAboveWidth | None = None  # None: r <= min(in, out) of every adapted layer
    kind: str = LORA_KIND


@dataclass(frozen=True)
class LoraSweep:
    model: str
    rows: tuple[LoraReport, ...]
    kind: str = LORA_SWEEP_KIND
