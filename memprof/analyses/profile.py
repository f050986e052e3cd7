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
from memprof.errors import MemprofError, ProfileOptionError
from memprof.inventory import inventory_for
from memprof.io import host_memory_bytes, parse_bytes
from memprof.lora.options import parse_alpha, parse_rank, peft_target_modules
from memprof.models import ResolvedModel, resolve_model
from memprof.results.profile import (
    ForwardProfile,
    GenerateProfile,
    LoadProfile,
    OffloadProfile,
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
        dtype = CustomDtype.INT4 if setting.four_bit else torch.int8
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
    path = Path(model)
    if path.exists():  # a local folder or config.json: its folder's name, not "./" and parents
        model = (path.parent if path.is_file() else path).resolve().name or "model"
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
    if device == "cpu" and any(s.four_bit for s in chosen):
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
        runs = f"--shard {shard}" if nproc == 1 else "--nproc"
        raise ProfileOptionError(
            f"{runs} with bitsandbytes settings ({', '.join(quantized)}) is not measured yet (FSDP cannot shard "
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
        card = catalog.gpu_for_device_name(env.get("gpu_name") or env.get("worker_gpu_name"))
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
