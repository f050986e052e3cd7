"""What a plan may be asked and what it leaves free: the options' bounds and checks, the GPUs chosen, the margin."""

from __future__ import annotations

from collections.abc import Iterable

from memprof import catalog
from memprof.errors import PlanOptionError
from memprof.io import host_memory_bytes
from memprof.settings import SETTINGS, Setting
from memprof.simulate import (
    OPTIMIZERS,
)

SHARDS = ("none", "ddp", "zero2", "zero3", "fsdp")


# What --num-gpus auto tries, smallest first: cloud instances hold 1, 2, 4 or 8 cards, and beyond
# one node jobs take whole nodes of 8.
AUTO_GPU_COUNTS = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)


# FSDP2 pads every parameter to a multiple of the ranks: far past the largest jobs the padding, not
# the model, would decide the answer
MAX_NUM_GPUS = 4096
MAX_SWEEP_BATCH = 1 << 20


MAX_SWEEP_SEQ = 1 << 20  # for models without a position limit (ALiBi)


FIT_ERROR_NOTE_FRACTION = 0.01  # a fit error above this fraction of a card's memory is called out


# The margin a fit must leave free, or it is called "tight": an ESTIMATE, not measured by memprof yet.
# It stands for what the simulation does not count: the CUDA caching allocator's fragmentation and
# block rounding (it rounds requests up to 512 B and carves large ones from 2 MiB-aligned segments
# it keeps cached, so torch.cuda.max_memory_reserved() exceeds max_memory_allocated() at a training
# step's peak, typically by several percent) and kernel workspaces (cuBLAS keeps a workspace per
# handle and stream, 4-32 MiB; flash-attention and NCCL buffers). 5% of the card, at least 1 GiB
# (on a 24 GB card 5% is 1.2 GiB). To be replaced by reserved - allocated measured on a GPU
# (`memprof validate --device cuda` reports it as fragmentation).
TIGHT_MARGIN_FRACTION = 0.05


TIGHT_MARGIN_MIN_BYTES = 1 << 30


def margin_bytes(memory_bytes: int, device: str = "cuda") -> int:
    """The free memory a fit must leave on a card of `memory_bytes` not to be "tight" (an estimate,
    see TIGHT_MARGIN_FRACTION); none on the CPU, which has no caching allocator."""
    if device == "cpu":
        return 0
    return max(int(memory_bytes * TIGHT_MARGIN_FRACTION), TIGHT_MARGIN_MIN_BYTES)


def check_options(
    task: str, setting: Setting, batch, seq, new_tokens, num_gpus, shard: str, optimizer: str, device: str
) -> None:
    """Every option of a plan of a known `task` at `setting`, each wrong one as one PlanOptionError
    (batch, seq and new_tokens are ints here: plan() took them as whole numbers)."""
    if batch < 1 or seq < 1:
        raise PlanOptionError(f"--batch and --seq must be at least 1 (got batch {batch}, seq {seq})")
    if batch > MAX_SWEEP_BATCH or seq > MAX_SWEEP_SEQ:  # the sweeps' own bounds; far past any GPU's memory
        raise PlanOptionError(
            f"--batch and --seq must be at most {MAX_SWEEP_BATCH:,} and {MAX_SWEEP_SEQ:,} (got batch {batch:,}, seq {seq:,})"
        )
    if new_tokens < 0:
        raise PlanOptionError(f"--new-tokens must be at least 0 (got {new_tokens})")
    if new_tokens > MAX_SWEEP_SEQ:
        raise PlanOptionError(f"--new-tokens must be at most {MAX_SWEEP_SEQ:,} (got {new_tokens:,})")
    if num_gpus != "auto" and not 1 <= num_gpus <= MAX_NUM_GPUS:
        raise PlanOptionError(f"--num-gpus must be from 1 to {MAX_NUM_GPUS:,}, or auto (got {num_gpus:,})")
    if shard not in SHARDS:
        raise PlanOptionError(f"unknown --shard {shard!r}; use one of {', '.join(SHARDS)}")
    if optimizer not in OPTIMIZERS:
        raise PlanOptionError(f"unknown --optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if device not in ("cuda", "cpu"):
        raise PlanOptionError(f"device must be cuda (the GPU table) or cpu (this machine), not {device!r}")
    if device == "cpu" and num_gpus == "auto":
        raise PlanOptionError(
            "--device cpu plans one rank on this machine: give --num-gpus N (the ranks of a gloo run), not auto"
        )
    if task == "full" and setting.quantized:
        raise PlanOptionError(
            f"a full fine-tune cannot train {setting.name} weights (bitsandbytes weights are frozen); "
            "use --task qlora, or --setting bf16/fp16/fp32"
        )
    if task == "qlora" and not setting.quantized:
        quantized = ", ".join(s.name for s in SETTINGS.values() if s.quantized)
        raise PlanOptionError(f"--task qlora needs a quantized setting ({quantized}), not {setting.name}")


# options some step tasks use and others do not: (flags, the tasks that use them); the setting, the
# GPUs, sharding and the device apply to every task
TASK_OPTIONS = (
    (("--new-tokens",), ("infer",)),
    (("--lora-r", "--lora-alpha", "--target"), ("lora", "qlora")),
    (("--optimizer", "--grad-checkpointing"), ("lora", "qlora", "full")),
)


def check_applicable(task: str, given: Iterable[str], *, num_gpus, shard: str, device: str = "cuda") -> None:
    """An option the task does not use is one PlanOptionError line, not silently ignored: `given` are
    the flags (TASK_OPTIONS, and --gpus / --gpu-file) whose value is not the default. So is a sharding
    of one GPU, and a choice of cards when this machine is planned (--device cpu)."""
    given = list(given)
    cards = [f for f in given if f in ("--gpus", "--gpu-file")]
    if device == "cpu" and cards:
        raise PlanOptionError(
            f"{', '.join(cards)}: not used by --device cpu, which plans this machine's memory; "
            "drop them, or plan the cards with --device cuda"
        )
    for flags, tasks in TASK_OPTIONS:
        extra = [f for f in given if f in flags]
        if extra and task not in tasks:
            raise PlanOptionError(f"{', '.join(extra)}: not used by --task {task} (for --task {' or '.join(tasks)})")
    if shard in SHARDS and shard != "none" and num_gpus == 1:  # an unknown one: check_options says so
        raise PlanOptionError(f"--shard {shard} divides over several GPUs: give --num-gpus N (2 or more) or auto")


def check_positions(task: str, seq: int, new_tokens: int, limit: int | None) -> None:
    """The rule of `memprof profile` (profile._check_options): no sequence beyond the model's positions;
    for inference the generated tokens count too."""
    if limit is None:
        return
    if task == "infer" and new_tokens and seq + new_tokens > limit:
        raise PlanOptionError(
            f"--seq {seq} + --new-tokens {new_tokens} = {seq + new_tokens:,} is longer than the model's "
            f"{limit} positions; use --seq + --new-tokens <= {limit}"
        )
    if seq > limit:
        raise PlanOptionError(f"--seq {seq} is longer than the model's {limit} positions; use --seq <= {limit}")


def cpu_as_gpu() -> catalog.Gpu:
    return catalog.Gpu("cpu (this machine)", host_memory_bytes(), 0.0, 0.0, 0.0, 0)


def select_gpus(names: tuple[str, ...] | None, table: tuple[catalog.Gpu, ...]) -> tuple[catalog.Gpu, ...]:
    if not names:
        return table
    chosen = []
    for name in names:
        gpu = catalog.lookup_gpu(name, table, error=PlanOptionError, hint="add yours with --gpu-file")
        if gpu not in chosen:
            chosen.append(gpu)
    return tuple(chosen)
