"""`profile`: load a model at each setting and measure what a user will hit: load, forward, train step.

Each setting runs in a fresh subprocess (memprof.measure.profile_worker), so no setting's memory or
allocator cache leaks into the next; a process that dies or runs out of memory becomes a row with
the reason and phase, and the other settings go on. The result, `ProfileReport`, is the session
object: it is saved as JSON after every setting, and every other format is rendered from it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from memprof import catalog
from memprof.errors import MemprofError, ProfileOptionError, ResultFileError
from memprof.inventory import inventory_for
from memprof.lora import parse_alpha, parse_rank, peft_target_modules
from memprof.models import ResolvedModel, resolve_model
from memprof.settings import CPU_REPACKING_NOTE, Setting, parse_settings
from memprof.step import DEFAULT_LORA_R, check_precision, default_alpha, resolve_grad_checkpointing

TRAIN_MODES = ("lora", "full", "none")
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
        from memprof.inventory import write_json_atomic

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


# ---------------------------------------------------------------------------------------------
# reading saved results (profile and footprint): one reader, errors in words, never in Python's


def read_result_json(path: Path) -> dict:
    """The JSON object in a saved result file, or ResultFileError saying in one line why not."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ResultFileError(f"{path} is not a memprof result: it is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ResultFileError(f"{path} is not a memprof result: its JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise ResultFileError(
            f"{path} is not a memprof result: it holds a JSON {_json_type(data)}, where a result is an object"
        )
    return data


def load_result(path: Path):
    """A saved `memprof profile`, `memprof footprint --json`, `memprof validate --save`, `memprof plan
    --json` or `memprof lora-params --json` result, told apart by its "kind"."""
    from memprof.footprint import FOOTPRINT_KIND
    from memprof.lora import LORA_KIND, LORA_SWEEP_KIND, LoraReport, LoraSweep
    from memprof.plan import PLAN_KIND, PlanReport
    from memprof.serve import SERVE_KIND, ServePlan
    from memprof.validate import VALIDATE_KIND, ValidationReport

    path = Path(path)
    data = read_result_json(path)
    kind = data.get("kind")
    decoded = {PLAN_KIND: ("plan", PlanReport), LORA_KIND: ("lora-params", LoraReport)}
    decoded[LORA_SWEEP_KIND] = ("lora-params --sweep", LoraSweep)
    decoded[COMPARE_KIND] = ("compare", ProfileComparison)
    decoded[SERVE_KIND] = ("plan --task serve", ServePlan)
    if kind in decoded:
        command, cls = decoded[kind]
        try:
            return dataclass_from_json(cls, data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof {command} result: {exc}") from None
    if kind == RESULT_KIND:
        try:
            return ProfileReport.from_json(data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof profile result: {exc}") from None
    if kind == FOOTPRINT_KIND:
        try:
            return _footprint_from_json(data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof footprint result: {exc}") from None
    if kind == VALIDATE_KIND:
        try:
            return ValidationReport.from_json(data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof validate result: {exc}") from None
    raise ResultFileError(
        f"{path} is not a memprof profile, footprint, validate, plan, lora-params or compare result "
        f"({_kind_text(data)}); "
        f'FILE must be saved by `memprof profile` ("kind": "{RESULT_KIND}"), '
        f'`memprof footprint --json --out` ("kind": "{FOOTPRINT_KIND}"), '
        f'`memprof validate --save` ("kind": "{VALIDATE_KIND}"), `memprof plan --json --out` ("kind": "{PLAN_KIND}"), '
        f'`memprof lora-params --json --out` ("kind": "{LORA_KIND}" or "{LORA_SWEEP_KIND}") '
        f'or `memprof compare --json --out` ("kind": "{COMPARE_KIND}")'
    )


def _footprint_from_json(data: dict):
    from memprof.footprint import FootprintReport, SettingFootprint
    from memprof.measure.load import MeasuredLoad

    values = fields_from_json(FootprintReport, data)
    rows = []
    for i, row in enumerate(_json_list(values["settings"], "settings")):
        row = fields_from_json(SettingFootprint, row, f"settings[{i}]")
        if row.get("measured") is not None:
            row["measured"] = fields_from_json(MeasuredLoad, row["measured"], f"settings[{i}].measured")
        rows.append(row)
    values["settings"] = rows
    try:
        return FootprintReport.from_json(values)
    except (TypeError, KeyError, ValueError, AttributeError):  # complete and typed above; a guard, in words
        raise ResultFileError("its fields do not make a footprint report") from None


def fields_from_json(cls, data: object, where: str = "") -> dict:
    """The fields of dataclass `cls` in JSON object `data`, each present (or defaulted) and of its type.

    Unknown keys are dropped, so files from newer versions still load. A missing or ill-typed field
    is a ResultFileError that names it: "missing field 'settings[0].load.load_s'".
    """
    if not isinstance(data, dict):
        raise ResultFileError(f"field '{where}' should be an object, not a JSON {_json_type(data)}")
    values, missing = {}, []
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is not dataclasses.MISSING:
                values[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
            else:
                missing.append(f"'{name}'")
            continue
        value = data[f.name]
        if not _conforms(value, f.type):
            raise ResultFileError(f"field '{name}' should be {_describe_type(f.type)}, not a JSON {_json_type(value)}")
        values[f.name] = value
    if missing:
        raise ResultFileError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return values


def dataclass_from_json(cls, data: object, where: str = ""):
    """Dataclass `cls` rebuilt from its `dataclasses.asdict` JSON, nested dataclasses and tuples
    included; fields_from_json checks each level, so a bad file is a ResultFileError naming the field."""
    import typing

    hints = typing.get_type_hints(cls)
    values = fields_from_json(cls, data, where)
    for f in dataclasses.fields(cls):
        values[f.name] = _decode_value(hints[f.name], values[f.name], f"{where}.{f.name}" if where else f.name)
    try:
        return cls(**values)
    except (TypeError, ValueError):  # fields typed above; a guard, in words
        raise ResultFileError(f"its fields do not make a {cls.__name__}") from None


def _decode_value(annotation, value: object, where: str):
    import types
    import typing

    if dataclasses.is_dataclass(annotation):
        return dataclass_from_json(annotation, value, where)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in args:  # the alternative the JSON value is: a dataclass for an object, a tuple for a list
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return dataclass_from_json(arg, value, where)
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return _decode_value(arg, value, where)
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(_decode_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    return value


def _json_list(value: object, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ResultFileError(f"field '{where}' should be a list, not a JSON {_json_type(value)}")
    return list(value)


def _kind_text(data: object) -> str:
    kind = data.get("kind") if isinstance(data, dict) else None
    return 'it has no "kind"' if kind is None else f'its "kind" is {json.dumps(kind)}'


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"


def _split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside brackets: 'tuple[str, ...] | None' -> ['tuple[str, ...] ', ' None']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _conforms(value: object, annotation: str) -> bool:
    """Whether a JSON value fits a field's annotation (a string: these modules postpone annotations)."""
    return any(_conforms_one(value, alt.strip()) for alt in _split_top(str(annotation), "|"))


def _conforms_one(value: object, annotation: str) -> bool:
    base, _, inner = annotation.partition("[")
    args = [a.strip() for a in _split_top(inner[:-1], ",")] if inner else []
    if base == "None":
        return value is None
    if base in ("int", "float"):
        numbers = int if base == "int" else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base == "bool":
        return isinstance(value, bool)
    if base == "dict":
        return isinstance(value, dict) and (len(args) != 2 or all(_conforms(v, args[1]) for v in value.values()))
    if base in ("tuple", "list"):
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] == "...":
            return all(_conforms(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args, strict=True)))
    return True  # a nested dataclass: its own fields_from_json checks it


def _describe_type(annotation: str) -> str:
    words = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "dict": "an object"}
    words |= {"tuple": "a list", "list": "a list", "None": "null"}
    alts = [words.get(a.strip().partition("[")[0], "an object") for a in _split_top(str(annotation), "|")]
    return " or ".join(dict.fromkeys(alts))


def _known(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


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


# ---------------------------------------------------------------------------------------------
# sizes and budgets

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_bytes(text: str) -> int:
    """'15GiB' -> 15 * 2**30; '16GB' -> 16 * 10**9; '1024' -> 1024 bytes."""
    match = _SIZE.match(str(text))
    if not match:
        raise ProfileOptionError(f"cannot read {text!r} as a size; write e.g. 15GiB, 16000MiB or 16GB")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    binary = "i" in unit
    scale = 2 ** (10 * "kmgt".index(unit[0]) + 10) if binary else _UNITS[unit.rstrip("b") or "b"]
    return int(number * scale)


def gpu_budget(gpu: str) -> tuple[str, int]:
    """A catalog GPU's name and total memory, for --gpu (names as `plan --gpus` takes them)."""
    hint = "or give a budget with --max-gpu-memory, e.g. 15GiB"
    card = catalog.lookup_gpu(gpu, error=ProfileOptionError, hint=hint)
    return card.name, card.memory_bytes


def catalog_gpu_for(device_name: str | None) -> catalog.Gpu | None:
    """The catalog card a CUDA device name is ('NVIDIA H100 80GB HBM3' -> H100 80GB), or None."""
    return catalog.gpu_for_device_name(device_name)


def offload_plan(model: ResolvedModel, setting: Setting, budget_bytes: int, *, cpu_bytes: int | None = None) -> dict:
    """Where accelerate's `infer_auto_device_map` puts the model's weights under a GPU budget.

    Runs on the meta-device model, so it needs no GPU. Quantized linears are sized as transformers
    sizes them for the device map (int8: 1 byte, 4-bit: half a byte per weight; quant state not
    counted); everything else at the setting's dtype. Returns bytes on gpu / cpu / disk.
    """
    import torch
    from accelerate import infer_auto_device_map
    from accelerate.utils import CustomDtype, compute_module_sizes

    from memprof.inventory import build_meta_model, quantizable_linears

    meta = build_meta_model(model.config, dtype=setting.dtype)
    dtype = getattr(torch, setting.dtype)
    special: dict[str, object] = {}
    if setting.quantized:
        quantized = set(quantizable_linears(meta))
        dtype = torch.int8 if setting.quant == "int8" else CustomDtype.INT4
        for name, _ in meta.named_parameters():
            module, _, leaf = name.rpartition(".")
            if not (module in quantized and leaf == "weight"):
                special[name] = getattr(torch, setting.dtype)
    cpu = cpu_bytes if cpu_bytes is not None else _host_memory_bytes()
    # accelerate warns that GPU 0 does not exist when planning on a machine without one; the plan is still right
    accelerate_log = logging.getLogger("accelerate.utils.modeling")
    level = accelerate_log.level
    accelerate_log.setLevel(logging.ERROR)
    try:
        device_map = infer_auto_device_map(
            meta,
            max_memory={0: budget_bytes, "cpu": cpu},
            no_split_module_classes=list(getattr(meta, "_no_split_modules", None) or []),
            dtype=dtype,
            special_dtypes=special or None,
        )
    finally:
        accelerate_log.setLevel(level)
    sizes = compute_module_sizes(meta, dtype=dtype, special_dtypes=special or None)
    totals = {"gpu": 0, "cpu": 0, "disk": 0}
    for name, where in device_map.items():
        kind = "gpu" if isinstance(where, int) or str(where).startswith("cuda") else str(where)
        totals[kind if kind in totals else "disk"] += int(sizes[name])
    return {
        "budget_bytes": budget_bytes,
        "plan_gpu_bytes": totals["gpu"],
        "plan_cpu_bytes": totals["cpu"],
        "plan_disk_bytes": totals["disk"],
    }


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ---------------------------------------------------------------------------------------------
# environment


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str, *, command: str | None = None) -> dict:
    """Versions, machine and GPU (from NVML) for a result file."""
    from memprof import __version__
    from memprof.measure.nvml import gpu_info

    env = {
        "memprof": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "bitsandbytes": _version("bitsandbytes"),
        "peft": _version("peft"),
        "accelerate": _version("accelerate"),
        "gpu_name": None,
        "gpu_driver": None,
        "gpu_memory_bytes": None,
        "command": command,
    }
    if device == "cuda":
        info = gpu_info(0)
        if info is not None:
            env.update(gpu_name=info.name, gpu_driver=info.driver, gpu_memory_bytes=info.memory_bytes)
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def default_result_path(model: str, device: str, *, directory: Path = Path("reports")) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/").replace("/", "__"))[-80:]
    return directory / f"profile-{slug}-{device}-{stamp}.json"


# ---------------------------------------------------------------------------------------------
# the library function


def _check_options(
    chosen: tuple[Setting, ...],
    *,
    batch: int,
    seq: int,
    repeats: int,
    warmup: int,
    train: str,
    config: dict,
    timeout_s: float | None,
    save_to: Path | None,
) -> None:
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):  # NaN too
        shown = f"{timeout_s:g}" if isinstance(timeout_s, (int, float)) else repr(timeout_s)
        raise ProfileOptionError(f"--timeout must be a number of seconds > 0, not {shown}")
    if save_to is not None:
        _check_writable(Path(save_to))
    for name, value, least in (("batch", batch, 1), ("seq", seq, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or value < least:
            raise ProfileOptionError(f"--{name} must be an integer >= {least}, not {value!r}")
    if train not in TRAIN_MODES:
        raise ProfileOptionError(f"unknown --train {train!r}; use lora, full or none")
    if train == "full":
        quantized = [s.name for s in chosen if s.quantized]
        if quantized:
            raise ProfileOptionError(
                f"--train full cannot train quantized weights ({', '.join(quantized)}); "
                "use --train lora for those, or --settings fp32,bf16 with --train full"
            )
    from memprof.simulate import max_positions  # the one rule for every config's position limit (MPT too)

    limit = max_positions(config)
    if limit is not None and seq > limit:
        raise ProfileOptionError(f"--seq {seq} is longer than the model's {limit} positions; use --seq <= {limit}")


def _check_writable(path: Path) -> None:
    """Refuse a result path that cannot be written before measuring, not after; never create directories."""
    if path.is_dir():
        raise ProfileOptionError(
            f"cannot write {path}: it is a directory; give a file name, e.g. {path / 'result.json'}"
        )
    if not path.parent.is_dir():
        raise ProfileOptionError(f"cannot write {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ProfileOptionError(f"cannot write {path}: directory {path.parent} is not writable")


def profile(
    model: str | None = None,
    *,
    settings: str | tuple[Setting, ...] | None = None,
    device: str = "cpu",
    batch: int = 1,
    seq: int = 512,
    repeats: int = 10,
    warmup: int = 2,
    train: str = "lora",
    lora_r: int = DEFAULT_LORA_R,
    lora_alpha: float | None = None,
    target: str | tuple[str, ...] | None = None,
    grad_checkpointing: bool | None = None,
    precision: str | None = None,
    max_gpu_memory: int | str | None = None,
    threads: int | None = None,
    save_to: Path | None = None,
    command: str | None = None,
    allow_download: bool = False,
    trust_remote_code: bool = False,
    on_progress: Callable[[str, str], None] | None = None,
    timeout_s: float | None = None,
    generate: int = 0,
    cache: str = "dynamic",
    nproc: int = 1,
    shard: str | None = None,
    snapshot: Path | None = None,
) -> ProfileReport:
    """Measure MODEL at each setting (default fp32, bf16, int8, nf4, nf4-dq), each in a fresh process.

    Per setting: load (time, footprint, true bytes, peak), a no-grad forward of `batch` x `seq`
    random tokens (median and IQR over `repeats` after `warmup`), a training step (`train`: "lora",
    QLoRA on quantized settings; "full", fp32/bf16 only; or "none"), and, with `max_gpu_memory`, the
    offload plan under that budget (measured too on a GPU). `save_to` is rewritten after every
    setting (its directory must exist), so an interrupt leaves what was gathered; KeyboardInterrupt
    propagates after saving. `timeout_s` (> 0) kills a setting's process after that many seconds;
    the row then says "timed out after N s during <phase>". `on_progress(setting, phase)` is called
    as work starts. `grad_checkpointing` None: each setting's default (memprof.step.default_grad_checkpointing:
    on for QLoRA, off otherwise). `precision` (memprof.step.PRECISIONS) None: mixed for a full fine-tune
    of a 16-bit setting, pure otherwise; mixed loads the weights in fp32 and runs the forward passes
    under autocast to the setting's dtype.

    `generate` N > 0 adds a phase per setting: `model.generate` of exactly N greedy tokens from the
    forward's prompt (prefill time, decode tokens/s, the KV cache held, its peak); `cache` "static"
    generates with transformers' StaticCache. `nproc` N > 1 runs the training step in N ranks under
    torch.distributed (`shard` ddp, fsdp, zero2 or zero3; ddp by default), every rank measured; the
    single-process phases (forward, generate, offload) are not run then.
    """
    from memprof.measure.load import check_device, weights_for
    from memprof.measure.profile_worker import run_profile_worker

    resolved = resolve_model(model, allow_download=allow_download)
    chosen = settings if isinstance(settings, tuple) else parse_settings(settings)
    _check_options(
        chosen,
        batch=batch,
        seq=seq,
        repeats=repeats,
        warmup=warmup,
        train=train,
        config=resolved.config,
        timeout_s=timeout_s,
        save_to=save_to,
    )
    shard = _check_distributed(chosen, nproc=nproc, shard=shard, train=train, generate=generate, budget=max_gpu_memory)
    _check_generate(generate, cache, seq=seq, config=resolved.config)
    if snapshot is not None:
        _check_snapshot(Path(snapshot), device=device, train=train, shard=shard)
    step_task = {"full": "full", "lora": "lora", "none": "infer"}[train]
    precisions = {s.name: check_precision(precision, step_task, s) for s in chosen}  # all refused before any run
    budget = parse_bytes(max_gpu_memory) if isinstance(max_gpu_memory, str) else max_gpu_memory
    check_device(device, chosen)
    say = on_progress or (lambda _setting, _phase: None)
    lora_r = parse_rank(lora_r)
    lora_alpha = default_alpha(lora_r, parse_alpha(lora_alpha))
    lora_target = None
    if train == "lora":  # the same --target as lora-params: names, attention, mlp, all-linear
        lora_target = peft_target_modules(inventory_for(resolved), target, model=resolved.name)

    env = environment(device, command=command)
    notes = [_timing_note(device)]
    if train == "lora":
        notes.append("LoRA on quantized settings follows QLoRA: peft's prepare_model_for_kbit_training, then LoRA.")
    if device == "cpu" and any(s.quant in ("nf4", "fp4") for s in chosen):
        notes.append(CPU_REPACKING_NOTE + ".")
    if budget is not None and device != "cuda":
        notes.append(
            "Offload: accelerate's device-map plan on the meta model only; bytes moved and slowdown need --device cuda."
        )
    base = dict(
        model=resolved.name,
        device=device,
        env=env,
        batch=batch,
        seq=seq,
        repeats=repeats,
        warmup=warmup,
        train=train,
        lora_r=lora_r if train == "lora" else None,
        lora_alpha=lora_alpha if train == "lora" else None,
        target=tuple(lora_target) if isinstance(lora_target, list) else lora_target,
        grad_checkpointing=grad_checkpointing,
        precision=precision,
        max_gpu_memory_bytes=budget,
        generate=generate,
        cache=cache,
        nproc=nproc,
        shard=shard,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if shard != "none":
        notes.append(
            f"Training step in {nproc} rank{'s' if nproc > 1 else ''} under torch.distributed ({'nccl' if device == 'cuda' else 'gloo'}), "
            f"{_SHARD_WORDS[shard]}; every rank's peak is shown, peak = the largest."
        )
    if generate:
        notes.append(
            f"generate: exactly {generate} greedy new tokens from the forward's prompt ({cache} cache); prefill = "
            "time to first token, decode = the further tokens; KV cache = its storages after generate, "
            "beside memprof's arithmetic for the same tokens."
        )
    rows: list[SettingProfile] = []

    def report(weights: str, *, interrupted: bool = False) -> ProfileReport:
        return ProfileReport(**base, settings=tuple(rows), weights=weights, interrupted=interrupted, notes=tuple(notes))

    weights_note = ""
    try:
        say("", "preparing weights")
        with weights_for(resolved, trust_remote_code=trust_remote_code) as (weights_dir, weights_note):
            for setting in chosen:
                say(setting.name, "starting")
                plan = None
                if budget is not None:
                    say(setting.name, "offload plan")
                    plan = offload_plan(resolved, setting, budget)
                request = {
                    "weights_dir": str(weights_dir),
                    "setting": dataclasses.asdict(setting),
                    "device": device,
                    "batch": batch,
                    "seq": seq,
                    "repeats": repeats,
                    "warmup": warmup,
                    "train": train,
                    "lora_r": lora_r,
                    "lora_alpha": lora_alpha,
                    "target": lora_target,
                    "grad_checkpointing": resolve_grad_checkpointing(
                        grad_checkpointing, train if train != "none" else "infer", quantized=setting.quantized
                    ),
                    "precision": precisions[setting.name],
                    "max_gpu_memory_bytes": budget if device == "cuda" else None,
                    "threads": threads,
                    "trust_remote_code": trust_remote_code,
                    "generate": generate,
                    "cache": cache,
                    "snapshot": str(_snapshot_path(Path(snapshot), setting.name, len(chosen)))
                    if snapshot is not None
                    else None,
                }
                if shard != "none":
                    from memprof.measure.distributed import run_ranks

                    say(setting.name, f"training in {nproc} ranks ({shard})")
                    raw = _ranks_result(run_ranks(request, nproc=nproc, shard=shard, timeout_s=timeout_s))
                else:
                    raw = run_profile_worker(
                        request, on_phase=lambda phase, name=setting.name: say(name, phase), timeout_s=timeout_s
                    )
                if generate and raw.get("generate"):
                    raw["generate"]["predicted_kv_cache_bytes"] = _predicted_kv_bytes(
                        resolved.config, setting, raw["generate"]
                    )
                for key in ("gpu_name", "torch_threads", "cuda"):
                    if raw.get("env", {}).get(key) is not None:
                        env.setdefault(f"worker_{key}", raw["env"][key])
                rows.append(_row(setting.name, raw, plan, env))
                if save_to is not None:
                    report(weights_note).save(save_to)
    except KeyboardInterrupt:
        if save_to is not None:
            report(weights_note, interrupted=True).save(save_to)
        raise
    return report(weights_note)


_SHARD_WORDS = {
    "ddp": "DDP (every rank holds the whole model, plus gradient buckets)",
    "fsdp": "FSDP2 fully_shard per decoder layer and the root, resharding after forward (ZeRO-3)",
    "zero3": "FSDP2 fully_shard per decoder layer and the root, resharding after forward (ZeRO-3)",
    "zero2": "FSDP2 without resharding after forward (ZeRO-2: grads and optimizer states sharded)",
}


def _check_distributed(chosen, *, nproc: int, shard: str | None, train: str, generate: int, budget) -> str:
    """The shard mode the run uses ("none" for one process), or ProfileOptionError in one line."""
    from memprof.measure.distributed import SHARD_MODES

    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ProfileOptionError(f"--nproc must be a whole number >= 1, not {nproc!r}")
    if nproc == 1 and shard in (None, "none"):
        return "none"
    # --nproc 1 with a --shard: the distributed path in one rank (world size 1), a smoke test on one GPU
    shard = shard or "ddp"
    if shard not in SHARD_MODES:
        raise ProfileOptionError(f"unknown --shard {shard!r}; use one of {', '.join(SHARD_MODES)}")
    if train == "none":
        raise ProfileOptionError("--nproc runs the training step in ranks: give --train lora or --train full")
    quantized = [s.name for s in chosen if s.quantized]
    if quantized:
        raise ProfileOptionError(
            f"--nproc with bitsandbytes settings ({', '.join(quantized)}) is not measured yet (FSDP cannot shard "
            "bitsandbytes' packed weights here); use --settings bf16,fp32, or profile QLoRA in one process"
        )
    if generate:
        raise ProfileOptionError("--generate measures one process: leave out --nproc, or --generate")
    if budget is not None:
        raise ProfileOptionError("--max-gpu-memory/--gpu plan offload for one process: leave them out with --nproc")
    return shard


def _check_snapshot(path: Path, *, device: str, train: str, shard: str) -> None:
    if device != "cuda":
        raise ProfileOptionError("--snapshot records the CUDA caching allocator: it needs --device cuda")
    if train == "none" or shard != "none":
        raise ProfileOptionError(
            "--snapshot records one training step of one process: give --train lora or full, no --nproc"
        )
    if path.suffix != ".pickle":
        raise ProfileOptionError(f"--snapshot {path} must end in .pickle (PyTorch's memory viewer opens those)")
    if not path.parent.is_dir():
        raise ProfileOptionError(f"cannot write {path}: directory {path.parent} does not exist")


def _snapshot_path(path: Path, setting: str, settings: int) -> Path:
    """One snapshot per setting: FILE.pickle for one setting, FILE-SETTING.pickle for several."""
    return path if settings == 1 else path.with_name(f"{path.stem}-{setting}{path.suffix}")


def _check_generate(generate: int, cache: str, *, seq: int, config: dict) -> None:
    from memprof.measure.generate import CACHES
    from memprof.simulate import max_positions

    if not isinstance(generate, int) or isinstance(generate, bool) or generate < 0:
        raise ProfileOptionError(f"--generate must be a whole number of new tokens >= 0, not {generate!r}")
    if cache not in CACHES:
        raise ProfileOptionError(f"unknown --cache {cache!r}; use one of {', '.join(CACHES)}")
    limit = max_positions(config)
    if generate and limit is not None and seq + generate > limit:
        raise ProfileOptionError(
            f"--seq {seq} + --generate {generate} = {seq + generate:,} is longer than the model's {limit} positions; "
            f"use --seq + --generate <= {limit}"
        )


def _predicted_kv_bytes(config: dict, setting: Setting, measured: dict) -> int | None:
    """memprof.kvcache's arithmetic for the tokens the measured cache holds, in the model's dtype."""
    from memprof.kvcache import KV_DTYPE_BYTES, kv_layout

    try:
        layout = kv_layout(config)
    except MemprofError:
        return None
    return layout.sequence_bytes(measured["kv_cache_tokens"], KV_DTYPE_BYTES[setting.dtype], batch=measured["batch"])


def _ranks_result(ranks: list[dict]) -> dict:
    """One setting's raw result from every rank's: the train phase of the rank with the largest peak,
    every rank's peak beside it, the first failure as the row's error."""
    finished = [r for r in ranks if r.get("train")]
    errors = [f"rank {r['rank']}: {r['error']}" for r in ranks if r.get("error")]
    raw: dict = {}
    if finished:
        top = max(finished, key=lambda r: r["train"]["peak_bytes"])
        train = dict(top["train"])
        train["rank_peak_bytes"] = [r["train"]["peak_bytes"] if r.get("train") else None for r in ranks]
        if any(p is None for p in train["rank_peak_bytes"]):
            train["rank_peak_bytes"] = None
        train["world_size"] = top["world_size"]
        train["shard"] = top["shard"]
        train["collective_ms"] = max(r["train"].get("collective_ms", 0.0) for r in finished)
        train["rank_errors"] = errors
        raw["train"] = train
    if errors:
        raw["error"] = errors[0]
        raw["failed_phase"] = next(r.get("failed_phase") for r in ranks if r.get("error"))
    return raw


def _timing_note(device: str) -> str:
    if device == "cuda":
        return (
            "Times: CUDA events, device synchronised, median and IQR after warm-up. Peaks: allocator "
            "(max_memory_allocated), reserved (max_memory_reserved), device (NVML used, sampled; includes the CUDA context)."
        )
    return (
        "Times: perf_counter, median and IQR after warm-up, WITHOUT the memory tracker. Peaks: exact bytes of live "
        "tensors from a separate tracked run (a torch dispatch mode; slower, so never timed), plus process peak RSS."
    )


def _row(name: str, raw: dict, plan: dict | None, env: dict) -> SettingProfile:
    load = LoadProfile(**_known(LoadProfile, raw["load"])) if raw.get("load") else None
    forward = ForwardProfile(**_known(ForwardProfile, raw["forward"])) if raw.get("forward") else None
    train = None
    if raw.get("train"):
        values = _known(TrainProfile, raw["train"])
        values["notes"] = tuple(values.get("notes", ()))
        values["rank_errors"] = tuple(values.get("rank_errors", ()))
        if values.get("rank_peak_bytes") is not None:
            values["rank_peak_bytes"] = tuple(values["rank_peak_bytes"])
        card = catalog_gpu_for(env.get("gpu_name") or env.get("worker_gpu_name"))
        if card is not None:
            values["peak_fraction"] = values["tflops"] / card.bf16_dense_tflops
        train = TrainProfile(**values)
    generate = GenerateProfile(**_known(GenerateProfile, raw["generate"])) if raw.get("generate") else None
    offload = None
    if plan is not None:
        measured = raw.get("offload") or {}
        extra = {k: v for k, v in _known(OffloadProfile, measured).items() if k not in plan}
        offload = OffloadProfile(**plan, **extra)
    return SettingProfile(
        setting=name,
        error=raw.get("error"),
        failed_phase=raw.get("failed_phase"),
        load=load,
        forward=forward,
        train=train,
        offload=offload,
        generate=generate,
    )


# ---------------------------------------------------------------------------------------------
# compare


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


COMPARED_METRICS = (
    "load.load_s",
    "load.true_bytes",
    "load.peak_bytes",
    "forward.median_ms",
    "forward.tokens_per_s",
    "forward.peak_bytes",
    "train.median_ms",
    "train.tokens_per_s",
    "train.tflops",
    "train.peak_bytes",
)


def _metric(row: SettingProfile, path: str) -> float | None:
    phase, name = path.split(".")
    part = getattr(row, phase)
    return None if part is None else getattr(part, name)


def _describe(report: ProfileReport) -> str:
    where = report.env.get("gpu_name") or report.env.get("cpu") or report.device
    return f"{report.model} on {report.device} ({where}), batch {report.batch} x seq {report.seq}, {report.created}"


def _within_noise(a, b) -> bool:
    """Whether two timed phases' medians differ by no more than their IQRs added: a difference the
    runs' own spread explains (tokens/s and FLOP/s are the median's reciprocal, so they share it)."""
    if getattr(a, "iqr_ms", None) is None or getattr(b, "iqr_ms", None) is None:  # load: one timing, no IQR
        return False
    return abs(b.median_ms - a.median_ms) <= a.iqr_ms + b.iqr_ms


def compare_reports(a: ProfileReport, b: ProfileReport) -> ProfileComparison:
    """The settings both runs measured, metric by metric, with B / A ratios."""
    b_rows = {r.setting: r for r in b.settings}
    rows = []
    for ra in a.settings:
        rb = b_rows.get(ra.setting)
        if rb is None:
            continue
        for metric in COMPARED_METRICS:
            va, vb = _metric(ra, metric), _metric(rb, metric)
            ratio = vb / va if va and vb is not None else None
            noise = ratio is not None and _within_noise(
                getattr(ra, metric.split(".")[0]), getattr(rb, metric.split(".")[0])
            )
            timed = metric.split(".")[1] in ("median_ms", "tokens_per_s", "tflops")
            rows.append(ComparisonRow(ra.setting, metric, va, vb, ratio, within_noise=timed and noise))
    notes = []
    only = sorted({r.setting for r in a.settings} ^ set(b_rows))
    if only:
        notes.append(f"in one run only: {', '.join(only)}")
    for field_name in ("model", "device", "batch", "seq", "train"):
        if getattr(a, field_name) != getattr(b, field_name):
            notes.append(f"{field_name} differs: {getattr(a, field_name)} vs {getattr(b, field_name)}")
    timelines = {
        ra.setting: (ra.train.timeline, b_rows[ra.setting].train.timeline)
        for ra in a.settings
        if ra.setting in b_rows
        and ra.train is not None
        and ra.train.timeline
        and b_rows[ra.setting].train is not None
        and b_rows[ra.setting].train.timeline
    }
    return ProfileComparison(_describe(a), _describe(b), tuple(rows), tuple(notes), timelines)


__all__ = [
    "ComparisonRow",
    "ProfileComparison",
    "compare_reports",
    "ForwardProfile",
    "LoadProfile",
    "OffloadProfile",
    "ProfileReport",
    "SettingProfile",
    "TrainProfile",
    "offload_plan",
    "profile",
]
