"""`profile`: load a model at each setting and measure what a user will hit: load, forward, train step.

Each setting runs in a fresh subprocess (memprof.measure.profile_worker), so no setting's memory or
allocator cache leaks into the next; a process that dies or runs out of memory becomes a row with
the reason and phase, and the other settings go on. The result, `ProfileReport`, is the session
object: it is saved as JSON after every setting, and every other format is rendered from it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import platform
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from memprof import catalog
from memprof.errors import ProfileOptionError
from memprof.inventory import inventory_for
from memprof.io import host_memory_bytes, parse_bytes
from memprof.lora.options import parse_alpha, parse_rank, peft_target_modules
from memprof.models import ResolvedModel, resolve_model
from memprof.results.profile import (
    ComparisonRow,
    ForwardProfile,
    LoadProfile,
    OffloadProfile,
    ProfileComparison,
    ProfileReport,
    SettingProfile,
    TrainProfile,
)
from memprof.settings import CPU_REPACKING_NOTE, Setting, parse_settings
from memprof.step import DEFAULT_LORA_R, check_precision, default_alpha, resolve_grad_checkpointing

TRAIN_MODES = ("lora", "full", "none")


def _known(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


# ---------------------------------------------------------------------------------------------
# sizes and budgets


def gpu_budget(gpu: str) -> tuple[str, int]:
    """A catalog GPU's name and total memory, for --gpu (names as `plan --gpus` takes them)."""
    hint = "or give a budget with --max-gpu-memory, e.g. 15GiB"
    card = catalog.lookup_gpu(gpu, error=ProfileOptionError, hint=hint)
    return card.name, card.memory_bytes


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
    cpu = cpu_bytes if cpu_bytes is not None else host_memory_bytes()
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


# ---------------------------------------------------------------------------------------------
# environment


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str, *, command: str | None = None) -> dict:
    """Versions, machine and GPU (from NVML) for a result file."""
    from memprof.measure.nvml import gpu_info
    from memprof.version import __version__

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
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
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
                }
                raw = run_profile_worker(
                    request, on_phase=lambda phase, name=setting.name: say(name, phase), timeout_s=timeout_s
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
        card = catalog.gpu_for_device_name(env.get("gpu_name") or env.get("worker_gpu_name"))
        if card is not None:
            values["peak_fraction"] = values["tflops"] / card.bf16_dense_tflops
        train = TrainProfile(**values)
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
    )


# ---------------------------------------------------------------------------------------------
# compare


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
    return ProfileComparison(_describe(a), _describe(b), tuple(rows), tuple(notes))


__all__ = [
    "compare_reports",
    "offload_plan",
    "profile",
]
