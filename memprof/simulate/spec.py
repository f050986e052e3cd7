"""What a simulation is asked for and what it gives: the step (StepSpec), each phase's peak and what
held it (PhasePeak), and the whole step at one (layers, batch, seq) with its FLOPs and the moments the
fit is made from (Simulation)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TASKS = ("infer", "lora", "qlora", "full")
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")
# Categories of live bytes, the same names as the profiler's breakdown.
CATEGORIES = (
    "weights",
    "quant_state",
    "trainable_params",
    "grads",
    "optimizer_states",
    "inputs",
    "kv_cache",
    "activations_temporaries",
)


@dataclass(frozen=True)
class StepSpec:
    """Which step to simulate. `task` is infer, lora, qlora (LoRA on a quantized setting) or full."""

    task: str
    setting: str = "bf16"
    optimizer: str = "adamw"
    lora_r: int = 8
    lora_alpha: float = 16
    # LoraConfig target_modules as memprof.lora.options.peft_target_modules resolves it: names, "all-linear",
    # or None for peft's default
    target: tuple[str, ...] | str | None = None
    grad_checkpointing: bool = False
    new_tokens: int = 0
    # memprof.step.PRECISIONS: "mixed" loads fp32 weights and runs the forward under autocast to the
    # setting's dtype (CPU autocast's op lists: the simulated tensors are CPU tensors)
    precision: str = "pure"
    # the device planned for, whose defaults the step takes: AdamW foreach on CUDA (a for-loop on
    # the CPU); LLM.int8() trains through MatMul8bitLt on CUDA and MatMul8bitFp on the CPU
    device: str = "cpu"

    def key(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PhasePeak:
    """Peak live bytes during one phase of the step, and what was live at that moment."""

    phase: str
    peak_bytes: int
    breakdown: dict[str, int]  # CATEGORIES -> bytes; sums to peak_bytes


@dataclass(frozen=True)
class Simulation:
    layers: int
    batch: int
    seq: int
    phases: tuple[PhasePeak, ...]
    flops: int
    # phase -> series -> one value per moment (the phase's start, then after every op): "total" live
    # bytes, and where they change within the phase "grads" and "kv_cache"; what StepFit fits
    moments: dict[str, dict[str, list[int]]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def peak_bytes(self) -> int:
        return max(p.peak_bytes for p in self.phases)

    @property
    def peak_phase(self) -> PhasePeak:
        return max(self.phases, key=lambda p: p.peak_bytes)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Simulation:
        return cls(
            layers=data["layers"],
            batch=data["batch"],
            seq=data["seq"],
            phases=tuple(PhasePeak(**p) for p in data["phases"]),
            flops=data["flops"],
            moments=data.get("moments", {}),
        )
