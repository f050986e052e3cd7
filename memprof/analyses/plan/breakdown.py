"""The bytes per GPU: a simulated phase divided as the sharding divides it, plus the transient inside
bitsandbytes' kernels that no trace sees, and the region peaks as a timeline."""

from __future__ import annotations

from dataclasses import dataclass

from memprof.inventory import Inventory
from memprof.predict import tensor_bytes
from memprof.results.plan import Breakdown
from memprof.settings import DTYPE_BYTES, Setting
from memprof.simulate import (
    PhasePeak,
    Simulation,
)
from memprof.simulate.sharded import SHARDED_MODES


def layer_weight_bytes(inventory: Inventory, setting: Setting) -> int:
    """Bytes of decoder layer 0's tensors at the setting (what zero3/fsdp gathers per layer)."""
    total = 0
    for record in inventory.tensors:
        parts = record.name.split(".")
        if "0" in parts and parts[parts.index("0") - 1] in ("layers", "h", "blocks", "layer"):
            b = tensor_bytes(record, setting)
            total += b.stored_bytes + b.quant_state_bytes
    return total


def int8_matmul8bitlt(task: str, device: str) -> bool:
    """Whether bitsandbytes runs LLM.int8() through MatMul8bitLt: inference anywhere, training on
    CUDA (the CPU trains through MatMul8bitFp, which dequantizes)."""
    return task == "infer" or device != "cpu"


def kernel_transient(inventory: Inventory, setting: Setting, task: str, device: str) -> tuple[int, int]:
    """What bitsandbytes' kernels hold where no trace sees it (memprof.quant), for the largest
    quantized layer: (bytes whatever the tokens, bytes per token)."""
    if not setting.quantized:
        return 0, 0
    quantized = [t for t in inventory.tensors if t.quantizable]
    largest = max((t.numel for t in quantized), default=0)
    widest = max((t.quant_out_features for t in quantized), default=0)
    q = setting.quantization
    return (
        q.kernel_fixed_bytes(largest, DTYPE_BYTES[setting.dtype], setting.double_quant),
        q.kernel_bytes_per_token(widest, int8_matmuls=int8_matmul8bitlt(task, device)),
    )


@dataclass(frozen=True)
class PlanContext:
    task: str
    setting: Setting
    kernel_fixed_bytes: int  # inside bitsandbytes' kernels (kernel_transient), whatever the tokens
    kernel_bytes_per_token: int
    layer_bytes: int
    num_gpus: int
    shard: str
    bucket_bytes: int = 0  # ddp: its gradient buckets, a grad-sized copy of the trainable params (every phase)
    # sharded and simulated: per phase, the simulated sharded step's total minus the division's at the
    # planned point, added to the division everywhere else (the sweeps)
    corrections: tuple[tuple[str, int], ...] = ()


def phase_breakdown(phase: PhasePeak, ctx: PlanContext, tokens: int) -> Breakdown:
    b = phase.breakdown
    weights = b["weights"] + b["quant_state"]
    trainable, grads, states = b["trainable_params"], b["grads"], b["optimizer_states"]
    gathered = 0
    n = ctx.num_gpus
    temporaries = b["activations_temporaries"]
    if n > 1 and ctx.shard in ("zero2", "zero3", "fsdp") and phase.phase == "optimizer":
        # activations are freed by then: what is live are the optimizer's temporaries (foreach AdamW
        # makes param-sized lists), computed over this GPU's shard of the params
        temporaries = -(-temporaries // n)
    if n > 1 and ctx.shard == "zero2":
        grads, states = -(-grads // n), -(-states // n)
    elif n > 1 and ctx.shard in ("zero3", "fsdp"):
        weights, trainable = -(-weights // n), -(-trainable // n)
        grads, states = -(-grads // n), -(-states // n)
        gathered = 2 * ctx.layer_bytes
    grads += ctx.bucket_bytes
    temporaries += dict(ctx.corrections).get(phase.phase.split(":")[0], 0)  # "backward: lm head" -> backward
    parts = (
        weights,
        trainable,
        grads,
        states,
        temporaries,
        b["inputs"],
        b["kv_cache"],
        ctx.kernel_fixed_bytes + tokens * ctx.kernel_bytes_per_token,
        gathered,
    )
    return Breakdown(*parts, total_bytes=sum(parts), peak_phase=phase.phase)


def sharding_source(task: str, setting: Setting, num_gpus, shard: str, simulate: bool, optimizer: str = "adamw") -> str:
    """Where the per-GPU breakdown at the planned point comes from: "" (the single-GPU step as it is:
    one GPU, or data-parallel inference), "ddp" (the single step + buckets, as measured), "simulated"
    (the sharded step on fake tensors) or "division"."""
    if num_gpus == "auto":
        return "division"
    if num_gpus == 1 or (shard == "ddp" and task == "infer"):  # inference keeps no gradient buckets
        return ""
    if shard == "ddp":
        return "ddp"
    # bitsandbytes' 8-bit states on FSDP2's sharded DTensors need data the fake tensors do not have
    if simulate and shard in SHARDED_MODES and not setting.quantized and task != "infer" and optimizer == "adamw":
        return "simulated"
    return "division"


def peak_breakdown(sim: Simulation, ctx: PlanContext) -> Breakdown:
    return max((phase_breakdown(p, ctx, sim.batch * sim.seq) for p in sim.phases), key=lambda x: x.total_bytes)


# Breakdown field -> the kind's name in a timeline (the profiler's names where they exist)
TIMELINE_KINDS = {
    "weights_bytes": "weights",
    "trainable_params_bytes": "trainable_params",
    "grads_bytes": "grads",
    "optimizer_states_bytes": "optimizer_states",
    "inputs_bytes": "inputs",
    "kv_cache_bytes": "kv_cache",
    "gathered_layers_bytes": "gathered_layers",
    "dequant_transient_bytes": "in_kernel",
    "activations_bytes": "activations_temporaries",
}


def region_timeline(peaks: tuple[Breakdown, ...]):
    """A timeline of one point per region peak (the simulation keeps each region's peak and what
    held it, exactly, at the planned depth), so the chart of a plan reads like a profile's."""
    from memprof.measure.timeline import Timeline, TimelinePhase, TimelinePoint

    points = tuple(
        TimelinePoint(i, bd.total_bytes, {kind: getattr(bd, field) for field, kind in TIMELINE_KINDS.items()})
        for i, bd in enumerate(peaks)
    )
    top = max(points, key=lambda p: p.bytes)
    return Timeline(
        points=points,
        phases=tuple(TimelinePhase(bd.peak_phase, i, i) for i, bd in enumerate(peaks)),
        peak_event=top.event,
        peak_bytes=top.bytes,
        kinds=tuple(TIMELINE_KINDS.values()),
    )
