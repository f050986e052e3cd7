"""`validate`: memprof's own prediction error, published. `plan` predicts a step's peak memory and
`profile` measures the same step for real; one row per (task, seq) shows both side by side.

Mapping (the same batch, seq and LoRA options on both sides):
- infer: plan(task="infer", setting="bf16", new_tokens=0) vs profile's bf16 forward peak
- lora:  plan(task="lora", setting="bf16") vs profile's bf16 train="lora" training-step peak
- qlora: plan(task="qlora", setting="nf4-dq") vs profile's nf4-dq train="lora" (QLoRA) training-step peak

Profile runs are grouped: one `profile` call per seq measures every setting needed at that seq,
and a bf16 run with train="lora" gives both the forward (infer) and the training (lora) peak.
On the CPU the measured peak is the exact live-tensor peak; on CUDA, the allocator peak
(torch.cuda.max_memory_allocated), with the reserved and NVML peaks next to it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass

from memprof.errors import ValidateOptionError
from memprof.options import comma_list
from memprof.results.validate import ValidationReport, ValidationRow
from memprof.step import DEFAULT_LORA_R

DEFAULT_SEQS = (128, 256, 512)
DEFAULT_TASKS = ("infer", "lora", "qlora")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class _TaskMap:
    setting: str  # the load setting of both plan and profile
    phase: str  # the profile phase whose peak is compared: "forward" or "train"
    train: str  # the profile train mode that measures it


TASK_MAP = {
    "infer": _TaskMap("bf16", "forward", "none"),
    "lora": _TaskMap("bf16", "train", "lora"),
    "qlora": _TaskMap("nf4-dq", "train", "lora"),
    "full": _TaskMap("bf16", "train", "full"),  # mixed precision on both sides (the default of a 16-bit full)
}
# what --nproc compares: the steps that train in ranks (bitsandbytes settings are not sharded yet)
DISTRIBUTED_TASKS = ("lora", "full")


def parse_seqs(seqs: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """'128,256,512' -> (128, 256, 512), in the given order, without repeats; each at least 1."""

    def parse(item) -> int:
        try:
            value = int(str(item).strip()) if not isinstance(item, bool) else 0
        except ValueError:
            value = 0
        if value < 1:
            raise ValidateOptionError(f"--seqs takes positive integers, not {item!r} (e.g. --seqs 128,256,512)")
        return value

    empty = ValidateOptionError("--seqs needs a comma list of sequence lengths, e.g. --seqs 128,256,512")
    return comma_list(seqs, parse, empty=empty, strip=True)


def parse_tasks(tasks: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'infer,qlora' -> ('infer', 'qlora'); each one of infer, lora, qlora."""

    def parse(item) -> str:
        if item not in TASK_MAP:
            raise ValidateOptionError(f"unknown task {item!r} in --tasks; use any of {', '.join(TASK_MAP)}")
        return item

    empty = ValidateOptionError(f"--tasks needs a comma list of {', '.join(TASK_MAP)}, e.g. --tasks infer,lora")
    return comma_list(tasks, parse, empty=empty, strip=True)


def _pct(predicted: int, measured: int | None) -> float | None:
    if not measured:
        return None
    return 100 * (predicted - measured) / measured


def _max_abs(values):
    return max((abs(v) for v in values if v is not None), default=None)


def _train_mode(task: str, tasks: tuple[str, ...]) -> str:
    """The profile train mode whose run measures `task`: bf16 with train="lora" measures the
    forward too, so infer shares lora's run when both are asked for."""
    return "lora" if task == "infer" and "lora" in tasks else TASK_MAP[task].train


def _profile_groups(tasks: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """train mode -> the settings that one profile call per seq runs in that mode."""
    groups: dict[str, list[str]] = {}
    for task in tasks:
        settings = groups.setdefault(_train_mode(task, tasks), [])
        if TASK_MAP[task].setting not in settings:
            settings.append(TASK_MAP[task].setting)
    return {train: tuple(settings) for train, settings in groups.items()}


def validate(
    model: str | None = None,
    *,
    device: str = "cpu",
    batch: int = 1,
    seqs: str | tuple[int, ...] = DEFAULT_SEQS,
    tasks: str | tuple[str, ...] | None = None,
    lora_r: int = DEFAULT_LORA_R,
    lora_alpha: float | None = None,
    target: str | tuple[str, ...] | None = None,
    repeats: int = 1,
    warmup: int = 1,
    threads: int | None = None,
    timeout_s: float | None = None,
    allow_download: bool = False,
    trust_remote_code: bool = False,
    command: str | None = None,
    on_progress: Callable[[str], None] | None = None,
    nproc: int = 1,
    shard: str | None = None,
) -> ValidationReport:
    """Predict (plan) and measure (profile) MODEL's peak memory for every task and seq; one row each.

    `tasks` None: infer, lora, qlora; with `nproc` N > 1 (or a `shard`), lora and full, each planned per
    GPU with --num-gpus N --shard and measured in N ranks (the largest rank's peak).

    All plans run first, so a user error (a seq beyond the model's positions, an unknown target) is
    raised before anything is measured. A measurement that fails (out of memory, `timeout_s`, a
    crash) is a row with its `error`; the other rows go on. Timing is not the point: `repeats` and
    `warmup` are kept small.
    """
    from memprof.analyses.plan import plan
    from memprof.analyses.profile import profile
    from memprof.lora.options import parse_alpha, parse_rank
    from memprof.measure.load import check_device
    from memprof.models import resolve_model
    from memprof.settings import get_setting
    from memprof.simulate import max_positions
    from memprof.step import default_alpha

    if device not in DEVICES:
        raise ValidateOptionError(f"unknown --device {device!r}; use cpu or cuda")
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValidateOptionError(f"--nproc must be a whole number >= 1, not {nproc!r}")
    distributed = nproc > 1 or shard not in (None, "none")
    shard = (shard or "ddp") if distributed else "none"
    if tasks is None:
        tasks = DISTRIBUTED_TASKS if distributed else DEFAULT_TASKS
    chosen_tasks = parse_tasks(tasks)
    if distributed and any(t not in DISTRIBUTED_TASKS for t in chosen_tasks):
        raise ValidateOptionError(
            f"--nproc compares steps that train in ranks: use --tasks {','.join(DISTRIBUTED_TASKS)} "
            f"(not {','.join(t for t in chosen_tasks if t not in DISTRIBUTED_TASKS)})"
        )
    chosen_seqs = parse_seqs(seqs)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValidateOptionError(f"--batch must be an integer >= 1, not {batch!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValidateOptionError(f"--threads must be an integer >= 1, not {threads!r}")
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):  # NaN too
        raise ValidateOptionError(f"--timeout must be a number of seconds > 0, not {timeout_s!r}")
    lora_r = parse_rank(lora_r)
    lora_alpha = default_alpha(lora_r, parse_alpha(lora_alpha))
    check_device(device, tuple(get_setting(TASK_MAP[t].setting) for t in chosen_tasks))
    say = on_progress or (lambda _msg: None)
    resolved = resolve_model(model, allow_download=allow_download)
    limit = max_positions(resolved.config)
    if limit is not None and max(chosen_seqs) > limit:
        raise ValidateOptionError(
            f"--seqs {max(chosen_seqs)} is longer than the model's {limit} positions; use lengths <= {limit}"
        )

    # -- predictions: all of them first (fast, and the user errors come before any measurement) --
    predictions = {}
    for task in chosen_tasks:
        for seq in chosen_seqs:
            say(f"plan {task} seq {seq}")
            predictions[task, seq] = plan(
                model,
                task=task,
                setting=TASK_MAP[task].setting,
                batch=batch,
                seq=seq,
                device=device,
                allow_download=allow_download,
                trust_remote_code=trust_remote_code,
                **({"num_gpus": nproc, "shard": shard} if distributed else {}),
                # the LoRA options for the steps that train LoRA (plan refuses them elsewhere)
                **({"lora_r": lora_r, "lora_alpha": lora_alpha, "target": target} if task in ("lora", "qlora") else {}),
            )

    # -- measurements: one profile call per (train mode, seq), every setting it needs ------------
    measured = {}  # (train mode, seq) -> ProfileReport
    for seq in chosen_seqs:
        for train, settings in _profile_groups(chosen_tasks).items():

            def progress(setting: str, phase: str, seq=seq) -> None:
                say(f"profile seq {seq}" + (f" {setting}" if setting else "") + f": {phase}")

            measured[train, seq] = profile(
                model,
                settings=",".join(settings),
                device=device,
                batch=batch,
                seq=seq,
                repeats=repeats,
                warmup=warmup,
                train=train,
                lora_r=lora_r,
                lora_alpha=lora_alpha,
                target=target,
                threads=threads,
                allow_download=allow_download,
                trust_remote_code=trust_remote_code,
                on_progress=progress,
                timeout_s=timeout_s,
                **({"nproc": nproc, "shard": shard} if distributed else {}),
            )

    rows = []
    for task in chosen_tasks:
        m = TASK_MAP[task]
        for seq in chosen_seqs:
            predicted = predictions[task, seq]
            run = measured[_train_mode(task, chosen_tasks), seq]
            result = next(s for s in run.settings if s.setting == m.setting)
            rows.append(_row(task, seq, batch, predicted, result, m.phase))
    first = next(iter(measured.values()))
    return ValidationReport(
        model=first.model,
        device=device,
        batch=batch,
        seqs=chosen_seqs,
        tasks=chosen_tasks,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        target=target,
        repeats=repeats,
        warmup=warmup,
        rows=tuple(rows),
        max_abs_error_pct=_max_abs(r.error_pct for r in rows),
        max_abs_traced_error_pct=_max_abs(r.traced_error_pct for r in rows),
        max_abs_traced_diff_bytes=_max_abs(
            r.predicted_traced_bytes - r.measured_bytes for r in rows if r.measured_bytes is not None
        ),
        env=first.env,
        weights=first.weights,
        command=command,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=_notes(device, chosen_tasks, repeats, warmup, nproc=nproc, shard=shard),
        nproc=nproc,
        shard=shard,
    )


def _row(task: str, seq: int, batch: int, predicted, result, phase: str) -> ValidationRow:
    """A row from plan's PlanReport and profile's SettingProfile (its `phase`: forward or train)."""
    bd = predicted.breakdown
    traced = bd.total_bytes - bd.dequant_transient_bytes
    base = dict(
        task=task,
        setting=predicted.setting,
        seq=seq,
        batch=batch,
        predicted_bytes=bd.total_bytes,
        predicted_traced_bytes=traced,
        kernel_transient_bytes=bd.dequant_transient_bytes,
        predicted_phase=bd.peak_phase,
    )
    peak = getattr(result, phase)
    if peak is None:
        why = result.error or f"profile returned no {phase} result"
        if result.error and result.failed_phase not in (None, phase):
            why = f"{result.error} (before the {phase} phase)"
        return ValidationRow(**base, error=why)
    reserved, nvml = peak.reserved_peak_bytes, peak.device_peak_bytes
    return ValidationRow(
        **base,
        measured_bytes=peak.peak_bytes,
        error_pct=_pct(bd.total_bytes, peak.peak_bytes),
        traced_error_pct=_pct(traced, peak.peak_bytes),
        reserved_peak_bytes=reserved,
        device_peak_bytes=nvml,
        fragmentation_bytes=None if reserved is None else reserved - peak.peak_bytes,
        context_bytes=None if reserved is None or nvml is None else nvml - reserved,
        measured_timeline=peak.timeline,
    )


def _notes(
    device: str, tasks: tuple[str, ...], repeats: int, warmup: int, *, nproc: int = 1, shard: str = "none"
) -> tuple[str, ...]:
    what = {
        "infer": "infer: plan --task infer --setting bf16 vs profile's bf16 no-grad forward peak",
        "lora": "lora: plan --task lora --setting bf16 vs profile's bf16 LoRA training-step peak",
        "qlora": "qlora: plan --task qlora --setting nf4-dq vs profile's nf4-dq QLoRA training-step peak",
        "full": "full: plan --task full --setting bf16 vs profile's bf16 full training-step peak (mixed precision)",
    }
    notes = []
    if shard != "none":
        notes.append(
            f"In {nproc} rank(s), {shard}: predicted is plan's per-GPU peak (--num-gpus {nproc} --shard {shard}), "
            "measured the largest rank's peak (profile --nproc)."
        )
    notes += [
        f"Compared, at the same batch, seq and LoRA options: {'; '.join(what[t] for t in tasks)}. "
        f"predicted is plan's peak total (plan --device {device}), without the CUDA context; error % is "
        "100 x (predicted - measured) / measured.",
    ]
    if "qlora" in tasks:
        notes.append(
            "qlora runs with gradient checkpointing on both sides (the QLoRA default of plan and profile, as peft's "
            "prepare_model_for_kbit_training); infer and lora without."
        )
    if device == "cpu":
        notes.append(
            "measured is profile's exact live-tensor peak on the CPU (a dispatch-mode tracker of every tensor "
            "storage). plan's kernel-transient line (bitsandbytes' dequantized weight inside gemm_4bit; the int32 "
            "product of int8) lives inside a kernel that the tracker cannot see, so on the CPU it is untraced: "
            "traced = predicted - kernel transient is what the simulation traced and should equal measured byte "
            "for byte (traced - measured = 0); predicted exceeds measured by the transient."
        )
    else:
        notes.append(
            "measured is the CUDA allocator peak (torch.cuda.max_memory_allocated), which sees the kernel transient "
            "(bitsandbytes allocates it through torch): compare predicted. Next to it: fragmentation = reserved peak "
            "(max_memory_reserved) - allocated peak, what the caching allocator holds beyond live tensors; context = "
            "NVML device peak - reserved peak, the CUDA context and memory outside torch's allocator (cuBLAS/NCCL "
            "workspaces), sampled, so approximate. What a card needs is about predicted + fragmentation + context."
        )
    notes.append(
        f"Timing is not the point here: {repeats} timed repeat(s) after {warmup} warm-up call(s); a training "
        "step's peak is taken after the warm-up, with the optimizer states allocated."
    )
    return tuple(notes)


__all__ = [
    "DEFAULT_SEQS",
    "DEFAULT_TASKS",
    "TASK_MAP",
    "parse_seqs",
    "parse_tasks",
    "validate",
]
