"""The result of `memprof profile` (ProfileReport: the session object, saved as JSON after every
setting) and of `memprof compare` (ProfileComparison)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from memprof.errors import ResultFileError
from memprof.io import write_json_atomic
from memprof.results.decode import _json_list, _kind_text, fields_from_json, read_result_json

RESULT_KIND = "memprof.profile"
COMPARE_KIND = "memprof.compare"  # `memprof compare --json`, which `memprof report` re-renders
RESULT_VERSION = 1


@dataclass(frozen=True)
class LoadProfile:
    load_s: float
    footprint_bytes: int
    true_bytes: int
    peak_bytes: int  # allocator peak on GPU, live-tensor peak on CPU (see peak_kind)
    peak_kind: str = ""
    reserved_peak_bytes: int | None = None
    device_peak_bytes: int | None = None  # NVML: whole device, CUDA context included
    peak_rss_bytes: int | None = None


@dataclass(frozen=True)
class ForwardProfile:
    median_ms: float
    iqr_ms: float
    tokens_per_s: float
    peak_bytes: int
    min_ms: float | None = None
    reserved_peak_bytes: int | None = None
    device_peak_bytes: int | None = None
    peak_rss_bytes: int | None = None
    tracked_ms: float | None = None  # CPU: the separate step run under the live-bytes tracker
    overhead_pct: float | None = None  # GPU: time the NVML sampler adds
    timeline: dict | None = None  # CPU: memprof.measure.timeline.Timeline JSON of the tracked forward


@dataclass(frozen=True)
class GenerateProfile:
    """`generate` with exactly `new_tokens` greedy tokens (memprof.measure.generate): time to first
    token, decode speed, the KV cache really held at the end and memprof's arithmetic for it."""

    new_tokens: int
    prompt_tokens: int
    batch: int
    cache: str  # "dynamic" (DynamicCache) or "static" (StaticCache)
    prefill_ms: float  # median: a generate of one new token, the time to first token
    generate_ms: float  # median: the whole generate of new_tokens
    decode_ms: float  # generate_ms - prefill_ms: the new_tokens - 1 decode steps
    kv_cache_bytes: int  # the cache's storages after generate (prompt + new_tokens - 1 tokens)
    kv_cache_tokens: int
    peak_bytes: int
    prefill_iqr_ms: float | None = None
    generate_iqr_ms: float | None = None
    decode_tokens_per_s: float | None = None  # None when the decode time is within the prefill's noise
    predicted_kv_cache_bytes: int | None = None  # memprof.kvcache's exact arithmetic for the same tokens
    peak_kind: str = ""
    reserved_peak_bytes: int | None = None
    device_peak_bytes: int | None = None
    peak_rss_bytes: int | None = None


@dataclass(frozen=True)
class TrainProfile:
    mode: str  # "lora" or "full"
    median_ms: float
    iqr_ms: float
    tokens_per_s: float
    flops: int  # one step, counted by torch's FlopCounterMode (+ bitsandbytes matmuls)
    tflops: float  # achieved: flops / median step time
    peak_bytes: int
    breakdown: dict[str, int]  # bytes by kind at the peak; sums to peak_bytes
    trainable_params: int
    grad_checkpointing: bool = False
    precision: str = "pure"  # memprof.step.PRECISIONS; files from before it were pure
    min_ms: float | None = None
    peak_fraction: float | None = None  # of the GPU's catalog bf16 dense peak
    reserved_peak_bytes: int | None = None
    device_peak_bytes: int | None = None
    peak_rss_bytes: int | None = None
    tracked_ms: float | None = None
    overhead_pct: float | None = None
    breakdown_method: str = ""
    notes: tuple[str, ...] = ()
    timeline: dict | None = None  # CPU: memprof.measure.timeline.Timeline JSON of the tracked step
    snapshot: str | None = None  # CUDA --snapshot: the allocator history file of one step (PyTorch's viewer)
    # --nproc N: every rank's peak (peak_bytes is their maximum), the shard mode, and the time a rank
    # spent per step in collectives (all-gather, reduce-scatter, all-reduce; they overlap compute on CUDA)
    rank_peak_bytes: tuple[int, ...] | None = None
    world_size: int = 1
    shard: str = "none"
    collective_ms: float | None = None
    rank_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class OffloadProfile:
    """accelerate's device map under a GPU budget: planned on the meta device, measured on a GPU."""

    budget_bytes: int
    plan_gpu_bytes: int
    plan_cpu_bytes: int
    plan_disk_bytes: int
    gpu_bytes: int | None = None  # measured (GPU runs only)
    cpu_bytes: int | None = None
    disk_bytes: int | None = None
    median_ms: float | None = None
    iqr_ms: float | None = None
    slowdown: float | None = None  # offloaded forward time / on-GPU forward time
    peak_bytes: int | None = None


@dataclass(frozen=True)
class SettingProfile:
    setting: str
    error: str | None = None
    failed_phase: str | None = None
    load: LoadProfile | None = None
    forward: ForwardProfile | None = None
    train: TrainProfile | None = None
    offload: OffloadProfile | None = None
    generate: GenerateProfile | None = None


@dataclass(frozen=True)
class ProfileReport:
    model: str
    device: str
    env: dict
    batch: int
    seq: int
    repeats: int
    warmup: int
    train: str
    settings: tuple[SettingProfile, ...]
    weights: str = ""
    lora_r: int | None = None
    lora_alpha: float | None = None  # peft takes any positive number (--alpha 12.5)
    target: tuple[str, ...] | str | None = None  # LoRA target_modules as resolved: names, "all-linear", None
    # as asked: None is each setting's default (on for QLoRA settings); TrainProfile.grad_checkpointing
    # holds what each setting's step ran with
    grad_checkpointing: bool | None = False
    # as asked: None is each setting's default (mixed for a 16-bit full fine-tune); TrainProfile.precision
    # holds what each setting's step ran with
    precision: str | None = "pure"
    max_gpu_memory_bytes: int | None = None
    generate: int = 0  # --generate N: new tokens per setting (0: no generate phase)
    cache: str = "dynamic"
    nproc: int = 1  # --nproc N: the training step in N ranks under torch.distributed
    shard: str = "none"
    interrupted: bool = False
    created: str = ""
    notes: tuple[str, ...] = ()
    kind: str = RESULT_KIND
    version: int = RESULT_VERSION

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ProfileReport:
        """Rebuild a report from its JSON; ResultFileError, naming the field, for anything else."""
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind != RESULT_KIND:
            raise ResultFileError(f"not a memprof profile result ({_kind_text(data)})")
        values = fields_from_json(cls, data)
        values["settings"] = tuple(
            _setting_from_json(s, f"settings[{i}]") for i, s in enumerate(_json_list(values["settings"], "settings"))
        )
        values["notes"] = tuple(values["notes"])
        if isinstance(values.get("target"), list):
            values["target"] = tuple(values["target"])
        return cls(**values)

    def save(self, path: Path) -> None:
        """Write the JSON atomically: readers see the old file or the whole new one."""
        try:
            write_json_atomic(Path(path), self.to_json(), indent=2)
        except OSError as exc:
            raise ResultFileError(f"cannot write {path}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: Path) -> ProfileReport:
        """Read a saved result; any file that is not one is a ResultFileError in one line."""
        path = Path(path)
        data = read_result_json(path)
        if data.get("kind") != RESULT_KIND:
            raise ResultFileError(
                f"{path} is not a memprof profile result ({_kind_text(data)}); write one with `memprof profile`"
            )
        try:
            return cls.from_json(data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof profile result: {exc}") from None


def _setting_from_json(data: object, where: str) -> SettingProfile:
    values = fields_from_json(SettingProfile, data, where)
    for name, kind in (
        ("load", LoadProfile),
        ("forward", ForwardProfile),
        ("offload", OffloadProfile),
        ("generate", GenerateProfile),
    ):
        if values.get(name) is not None:
            values[name] = kind(**fields_from_json(kind, values[name], f"{where}.{name}"))
    if values.get("train") is not None:
        train = fields_from_json(TrainProfile, values["train"], f"{where}.train")
        train["notes"] = tuple(train["notes"])
        train["rank_errors"] = tuple(train["rank_errors"])
        if train.get("rank_peak_bytes") is not None:
            train["rank_peak_bytes"] = tuple(train["rank_peak_bytes"])
        values["train"] = TrainProfile(**train)
    return SettingProfile(**values)


@dataclass(frozen=True)
class ComparisonRow:
    setting: str
    metric: str  # a field path like "train.median_ms"
    a: float | None
    b: float | None
    ratio: float | None  # b / a
    # a timing (median, and the tokens/s and FLOP/s made from it) whose medians differ by no more than
    # the two runs' IQRs added: run-to-run spread, not a speed-up or slow-down
    within_noise: bool = False


@dataclass(frozen=True)
class ProfileComparison:
    a_title: str
    b_title: str
    rows: tuple[ComparisonRow, ...]
    notes: tuple[str, ...] = ()
    # setting -> (A's, B's) training-step timeline JSON, for the settings both runs tracked (CPU runs)
    timelines: dict[str, tuple[dict, dict]] = dataclasses.field(default_factory=dict)
    kind: str = COMPARE_KIND
