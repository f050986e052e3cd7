"""The result of `memprof validate`: plan's prediction next to profile's measurement, row by row."""

from __future__ import annotations

from dataclasses import dataclass

from memprof.errors import ResultFileError
from memprof.results.decode import fields_from_json

VALIDATE_KIND = "memprof.validate"
VALIDATE_VERSION = 1


@dataclass(frozen=True)
class ValidationRow:
    """One (task, seq): plan's prediction next to profile's measurement of the same step."""

    task: str
    setting: str
    seq: int
    batch: int
    predicted_bytes: int  # plan's breakdown.total_bytes (without the CUDA context)
    predicted_traced_bytes: int  # predicted_bytes minus the kernel transient: what the simulation traced
    kernel_transient_bytes: int  # plan's breakdown.dequant_transient_bytes
    predicted_phase: str  # the step phase at plan's peak (forward, backward, optimizer, ...)
    measured_bytes: int | None = None  # profile's peak_bytes: live tensors on CPU, allocator peak on CUDA
    error_pct: float | None = None  # 100 * (predicted - measured) / measured
    traced_error_pct: float | None = None  # 100 * (predicted_traced - measured) / measured
    reserved_peak_bytes: int | None = None  # CUDA: torch.cuda.max_memory_reserved()
    device_peak_bytes: int | None = None  # CUDA: NVML used memory, sampled (CUDA context included)
    fragmentation_bytes: int | None = None  # reserved peak - allocated peak
    context_bytes: int | None = None  # NVML peak - reserved peak: the CUDA context and memory outside torch
    error: str | None = None  # the measurement failed (out of memory, timeout, crash)
    measured_timeline: dict | None = None  # CPU: the measured step's live bytes over time (Timeline JSON)


@dataclass(frozen=True)
class ValidationReport:
    model: str
    device: str
    batch: int
    seqs: tuple[int, ...]
    tasks: tuple[str, ...]
    lora_r: int
    lora_alpha: float
    target: str | tuple[str, ...] | None  # as given (None: peft's default targets)
    repeats: int
    warmup: int
    rows: tuple[ValidationRow, ...]
    max_abs_error_pct: float | None  # over the measured rows; None if none was measured
    max_abs_traced_error_pct: float | None
    max_abs_traced_diff_bytes: int | None  # max |predicted_traced - measured|: 0 on the CPU when exact
    env: dict
    weights: str = ""
    command: str | None = None  # the command line that made the report, when run from the CLI
    created: str = ""
    notes: tuple[str, ...] = ()
    nproc: int = 1  # --nproc N: plan's per-GPU peak (--num-gpus N --shard) vs the largest rank's measured peak
    shard: str = "none"
    kind: str = VALIDATE_KIND
    version: int = VALIDATE_VERSION

    @classmethod
    def from_json(cls, data: dict) -> ValidationReport:
        """Rebuild a report from its JSON (`--save` / `--json`); ResultFileError, naming the field, if it is not one."""
        if not isinstance(data, dict) or data.get("kind") != VALIDATE_KIND:
            raise ResultFileError(f'not a memprof validate result (its "kind" is not "{VALIDATE_KIND}")')
        values = fields_from_json(cls, data)
        values["rows"] = tuple(
            ValidationRow(**fields_from_json(ValidationRow, row, f"rows[{i}]")) for i, row in enumerate(values["rows"])
        )
        for name in ("seqs", "tasks", "notes"):
            values[name] = tuple(values[name])
        if isinstance(values["target"], list):
            values["target"] = tuple(values["target"])
        return cls(**values)
