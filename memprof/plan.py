"""`plan`: which GPUs can run a model's step, with how much headroom, at what batch and context, at what cost.

Peak memory per GPU = the simulated step's peak (simulate.py: exact live bytes of the profiler's
step on fake tensors, real bitsandbytes layers included, extrapolated in depth) plus the transient
inside bitsandbytes' kernels that no trace sees, divided as the sharding divides it, plus the
card's CUDA context (gpus.json, labelled with whether it was measured). Sweeps over batch and
sequence length evaluate the fitted polynomial (simulate.StepFit), so they are arithmetic. Step time is a roofline estimate and prices
are indicative: both are labelled as estimates wherever they are shown.

Verdicts: "fits" leaves at least the margin free (margin_bytes: an estimate of fragmentation and
workspaces, which are not simulated), "tight" fits with less, "offload" fits only with CPU offload,
"no". The sweeps leave the margin free. The star is the lowest price per hour among the cards that
fit (the price is known; the roofline cost per token is a lower bound). --num-gpus auto gives each
card the fewest of AUTO_GPU_COUNTS that fit, dividing as below.

Sharding (per GPU, N GPUs, data parallel: every GPU runs the given batch). With N > 1 and fsdp,
zero3 or zero2 at a float setting, the breakdown at the given (batch, seq) is rank 0 of the sharded
step simulated on fake tensors (memprof.simulate_sharded: FSDP2 itself, equal to 2 measured gloo
ranks), and the sweeps are the division below corrected per phase by the simulation's difference at
that point. --num-gpus auto, quantized settings (FSDP-QLoRA) and inference use the division alone,
labelled as arithmetic in the notes:
- none (N=1): nothing is divided. ddp (N>1 without --shard): nothing is divided, and DDP's
  gradient buckets (a grad-sized copy of the trainable params, as measured) are added to the grads.
- zero2 (DeepSpeed ZeRO stage 2): grads and optimizer states are divided by N.
- zero3 and fsdp (FSDP FULL_SHARD): weights (incl. quant state), trainable params, grads and
  optimizer states are divided by N; while a layer runs its full parameters are gathered, and the
  next layer's are prefetched: two decoder layers' unsharded weights are added.
- never divided: activations and forward/backward temporaries, inputs, the KV cache, the kernel
  transient. The optimizer phase's temporaries (foreach AdamW's param-sized lists) are divided with
  the states under zero2/zero3/fsdp.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from memprof import catalog
from memprof.errors import PlanOptionError
from memprof.inventory import Inventory, inventory_for
from memprof.io import host_memory_bytes
from memprof.lora.options import parse_alpha, parse_rank, peft_target_modules
from memprof.measure.flops import COUNTED_NOTE as FLOPS_COUNTED_NOTE
from memprof.models import resolve_model
from memprof.predict import tensor_bytes
from memprof.results.plan import Breakdown, GpuPlan, PlanReport
from memprof.settings import CPU_REPACKING_NOTE, DTYPE_BYTES, Setting, get_setting
from memprof.simulate import (
    OPTIMIZERS,
    TASKS,
    PhasePeak,
    Simulation,
    StepSpec,
    max_positions,
    seq_ranges,
    simulate_model,
    sliding_window,
)
from memprof.simulate.sharded import SHARDED_MODES, simulate_sharded_cached
from memprof.step import (
    DEFAULT_LORA_R,
    check_precision,
    default_alpha,
    resolve_grad_checkpointing,
    weights_dtype,
)

SHARDS = ("none", "ddp", "zero2", "zero3", "fsdp")
# What --num-gpus auto tries, smallest first: cloud instances hold 1, 2, 4 or 8 cards, and beyond
# one node jobs take whole nodes of 8.
AUTO_GPU_COUNTS = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)
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


def _check(task: str, setting: Setting, batch: int, seq: int, num_gpus, shard: str, optimizer: str) -> None:
    if task not in TASKS:
        raise PlanOptionError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if batch < 1 or seq < 1:
        raise PlanOptionError(f"--batch and --seq must be at least 1 (got batch {batch}, seq {seq})")
    if batch > MAX_SWEEP_BATCH or seq > MAX_SWEEP_SEQ:  # the sweeps' own bounds; far past any GPU's memory
        raise PlanOptionError(
            f"--batch and --seq must be at most {MAX_SWEEP_BATCH:,} and {MAX_SWEEP_SEQ:,} (got batch {batch:,}, seq {seq:,})"
        )
    if num_gpus != "auto" and num_gpus < 1:
        raise PlanOptionError(f"--num-gpus must be at least 1 or auto (got {num_gpus})")
    if shard not in SHARDS:
        raise PlanOptionError(f"unknown --shard {shard!r}; use one of {', '.join(SHARDS)}")
    if optimizer not in OPTIMIZERS:
        raise PlanOptionError(f"unknown --optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if task == "full" and setting.quantized:
        raise PlanOptionError(
            f"a full fine-tune cannot train {setting.name} weights (bitsandbytes weights are frozen); "
            "use --task qlora, or --setting bf16/fp16/fp32"
        )
    if task == "qlora" and not setting.quantized:
        raise PlanOptionError(f"--task qlora needs a quantized setting (nf4-dq, nf4, fp4, int8), not {setting.name}")


def _check_positions(task: str, seq: int, new_tokens: int, limit: int | None) -> None:
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


def _layer_weight_bytes(inventory: Inventory, setting: Setting) -> int:
    """Bytes of decoder layer 0's tensors at the setting (what zero3/fsdp gathers per layer)."""
    total = 0
    for record in inventory.tensors:
        parts = record.name.split(".")
        if "0" in parts and parts[parts.index("0") - 1] in ("layers", "h", "blocks", "layer"):
            b = tensor_bytes(record, setting)
            total += b.stored_bytes + b.quant_state_bytes
    return total


def _dequant_bytes(inventory: Inventory, setting: Setting) -> int:
    """A 4-bit matmul's untraced transient: bitsandbytes' gemm_4bit dequantizes the weight to the
    compute dtype inside the op (and, double-quantized, its absmax to float32 first); for the largest layer."""
    if setting.quant not in ("nf4", "fp4"):
        return 0
    numel = max((t.numel for t in inventory.tensors if t.quantizable), default=0)
    absmax = -(-numel // 64) * 4 if setting.double_quant else 0
    return numel * DTYPE_BYTES[setting.dtype] + absmax


def _int8_matmul8bitlt(task: str, device: str) -> bool:
    """Whether bitsandbytes runs LLM.int8() through MatMul8bitLt: inference anywhere, training on
    CUDA (the CPU trains through MatMul8bitFp, which dequantizes)."""
    return task == "infer" or device != "cpu"


def _int8_out_features(inventory: Inventory, setting: Setting, task: str, device: str) -> int:
    """LLM.int8()'s untraced transient is an int32 product (tokens x out_features) inside
    int8_scaled_mm, on MatMul8bitLt's path."""
    if setting.quant != "int8" or not _int8_matmul8bitlt(task, device):
        return 0
    return max((t.quant_out_features for t in inventory.tensors if t.quantizable), default=0)


@dataclass(frozen=True)
class _Context:
    task: str
    setting: Setting
    dequant_bytes: int
    int8_out_features: int
    layer_bytes: int
    num_gpus: int
    shard: str
    bucket_bytes: int = 0  # ddp: its gradient buckets, a grad-sized copy of the trainable params (every phase)
    # sharded and simulated: per phase, the simulated sharded step's total minus the division's at the
    # planned point, added to the division everywhere else (the sweeps)
    corrections: tuple[tuple[str, int], ...] = ()


def _phase_breakdown(phase: PhasePeak, ctx: _Context, tokens: int) -> Breakdown:
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
        ctx.dequant_bytes + 4 * tokens * ctx.int8_out_features,
        gathered,
    )
    return Breakdown(*parts, total_bytes=sum(parts), peak_phase=phase.phase)


def _sharding_source(task: str, setting: Setting, num_gpus, shard: str, simulate: bool) -> str:
    """Where the per-GPU breakdown at the planned point comes from: "" (one GPU), "ddp" (the single
    step + buckets, as measured), "simulated" (the sharded step on fake tensors) or "division"."""
    if num_gpus == "auto":
        return "division"
    if num_gpus == 1:
        return ""
    if shard == "ddp":
        return "ddp"
    if simulate and shard in SHARDED_MODES and not setting.quantized and task != "infer":
        return "simulated"
    return "division"


def _sharding_note(source: str, task: str, setting: Setting, shard: str) -> str:
    """One line: which per-GPU numbers are simulated sharded and which are arithmetic."""
    if source == "simulated":
        return (
            f"Per GPU: rank 0 of the {shard} step (FSDP2 fully_shard per decoder layer and the root) simulated on "
            "fake tensors over a fake process group, at the given batch and seq; FSDP2's all-gathered (unsharded) "
            "layer buffers and reduce-scatter buffers are counted in activations/temporaries (gathered layers: 0). "
            "max batch/seq: the division (arithmetic), corrected per phase (forward, backward, optimizer) by the "
            "simulated step's difference at the given batch and seq; that difference is constant in batch and seq "
            "where checked (batch >= 2), so the sweeps are approximate, not simulated, at other points."
        )
    if source == "ddp":
        return (
            "Per GPU (ddp): the single-GPU step plus DDP's gradient buckets, a grad-sized copy of the trainable "
            "params, counted in grads in every phase (as measured on 2 gloo ranks)."
        )
    why = (
        "--num-gpus auto divides at every count"
        if task != "infer" and not setting.quantized
        else ("FSDP-QLoRA is not simulated yet" if setting.quantized else "inference is not simulated sharded")
    )
    return f"Per GPU: ARITHMETIC, the single-GPU simulation divided as {shard} divides it ({why}), not simulated."


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


def _region_timeline(peaks: tuple[Breakdown, ...]):
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


def _from_fit_note(fitted) -> tuple[str, ...]:
    b, s = fitted.fitted_at
    if not fitted.from_fit or (b, s) == (fitted.direct.batch, fitted.direct.seq):  # seq < 4: its own fit
        return ()
    return (
        f"Read off the fit of an earlier plan of this model and options (simulated at batch {b} × seq {s:,}; "
        "exact, 0 bytes off, at the point it was checked on), not simulated at this batch and seq.",
    )


def _peak(sim: Simulation, ctx: _Context) -> Breakdown:
    return max((_phase_breakdown(p, ctx, sim.batch * sim.seq) for p in sim.phases), key=lambda x: x.total_bytes)


def _roofline_s(flops: int, bd: Breakdown, gpu: catalog.Gpu, task: str, new_tokens: int) -> tuple[float, str]:
    """max(FLOPs / peak dense bf16 FLOP/s, bytes moved / bandwidth): a lower bound on the step time.

    Bytes moved: training reads the weights and trainable params in forward and backward, writes
    and reads the activations, and reads+writes params, grads and optimizer states in the update;
    inference reads the weights and activations once per pass (prefill, then each new token
    re-reads the weights and the KV cache).
    """
    params = bd.weights_bytes + bd.trainable_params_bytes + bd.gathered_layers_bytes
    if task == "infer":
        moved = params + bd.activations_bytes + new_tokens * (params + bd.kv_cache_bytes)
    else:
        moved = 2 * params + 2 * bd.activations_bytes + 2 * (bd.trainable_params_bytes + bd.grads_bytes)
        moved += 2 * bd.optimizer_states_bytes
    compute_s = flops / (gpu.bf16_dense_tflops * 1e12)
    memory_s = moved / (gpu.memory_bandwidth_gbs * 1e9)
    return (compute_s, "compute") if compute_s >= memory_s else (memory_s, "memory")


def _max_int(ok, hi: int, lo: int = 1) -> int:
    """Largest x in [lo, hi] with ok(x) (ok monotone decreasing); lo - 1 if none."""
    if not ok(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cpu_as_gpu() -> catalog.Gpu:
    return catalog.Gpu("cpu (this machine)", host_memory_bytes(), 0.0, 0.0, 0.0, 0)


def _select_gpus(names: tuple[str, ...] | None, table: tuple[catalog.Gpu, ...]) -> tuple[catalog.Gpu, ...]:
    if not names:
        return table
    chosen = []
    for name in names:
        gpu = catalog.lookup_gpu(name, table, error=PlanOptionError, hint="add yours with --gpu-file")
        if gpu not in chosen:
            chosen.append(gpu)
    return tuple(chosen)


def plan(
    model: str | None = None,
    *,
    task: str = "lora",
    setting: str | None = None,
    batch: int = 1,
    seq: int = 512,
    new_tokens: int = 0,
    optimizer: str = "adamw",
    lora_r: int = DEFAULT_LORA_R,
    lora_alpha: float | None = None,
    target: str | tuple[str, ...] | None = None,
    grad_checkpointing: bool | None = None,
    precision: str | None = None,
    gpus: tuple[str, ...] | None = None,
    gpu_file=None,
    num_gpus: int | str = 1,
    shard: str = "none",
    device: str = "cuda",
    allow_download: bool = False,
    trust_remote_code: bool = False,
    use_cache: bool = True,
    on_progress=None,
    simulate_sharding: bool = True,
) -> PlanReport:
    """Plan MODEL's step (task infer / lora / qlora / full) on every GPU of the table (or `gpus`).

    `setting` defaults to bf16 (nf4-dq for qlora). `grad_checkpointing` None takes the task's default
    (memprof.step.default_grad_checkpointing: on for qlora, off otherwise); `precision` None the task's
    (memprof.step.default_precision: mixed for a 16-bit full fine-tune, pure otherwise). `device="cpu"` plans for this machine's memory
    instead, with the CPU's defaults (AdamW for-loop), to be checked against `memprof profile --device cpu`.
    `num_gpus="auto"` (with shard zero2/zero3/fsdp): each card's fewest that fit. `on_progress(message)`
    is told what is being simulated.

    With num_gpus > 1 and shard fsdp, zero3 or zero2 at a float setting, the per-GPU breakdown at
    (batch, seq) is rank 0 of the sharded step simulated on fake tensors (memprof.simulate_sharded),
    and the sweeps are the division corrected per phase by the simulation at (batch, seq);
    `simulate_sharding=False` keeps the division alone (what --num-gpus auto and quantized settings use).
    """
    if task not in TASKS:
        raise PlanOptionError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    chosen_setting = get_setting(setting or ("nf4-dq" if task == "qlora" else "bf16"))
    auto = num_gpus == "auto"
    if auto and shard not in ("zero2", "zero3", "fsdp"):
        raise PlanOptionError(
            f"--num-gpus auto finds the fewest GPUs whose shards fit: give --shard zero2, zero3 or fsdp "
            f"({'ddp' if shard == 'ddp' else 'without --shard, every GPU'} holds everything, so more GPUs never help)"
        )
    if not auto and not (isinstance(num_gpus, int) and not isinstance(num_gpus, bool)):
        raise PlanOptionError(f"--num-gpus takes a number of GPUs or auto, not {num_gpus!r}")
    if shard == "none" and not auto and num_gpus > 1:
        shard = "ddp"
    _check(task, chosen_setting, batch, seq, num_gpus, shard, optimizer)
    if device == "cpu" and auto:
        raise PlanOptionError(
            "--device cpu plans one rank on this machine: give --num-gpus N (the ranks of a gloo run), not auto"
        )
    grad_checkpointing = resolve_grad_checkpointing(grad_checkpointing, task, quantized=chosen_setting.quantized)
    precision = check_precision(precision, task, chosen_setting)
    # the bytes the weights are held in: fp32 masters under mixed precision
    weights_setting = replace(chosen_setting, dtype=weights_dtype(chosen_setting.dtype, precision))
    if new_tokens < 0:
        raise PlanOptionError(f"--new-tokens must be at least 0 (got {new_tokens})")
    if new_tokens > MAX_SWEEP_SEQ:
        raise PlanOptionError(f"--new-tokens must be at most {MAX_SWEEP_SEQ:,} (got {new_tokens:,})")
    table = (_cpu_as_gpu(),) if device == "cpu" else _select_gpus(gpus, catalog.gpus_with(gpu_file))

    resolved = resolve_model(model, allow_download=allow_download)
    limit = max_positions(resolved.config)
    _check_positions(task, seq, new_tokens, limit)
    inventory = inventory_for(resolved, trust_remote_code=trust_remote_code)
    sim_task = "lora" if task == "qlora" else task
    lora_r = parse_rank(lora_r)
    lora_alpha = default_alpha(lora_r, parse_alpha(lora_alpha))
    lora_target = None
    if sim_task == "lora":  # the same --target as lora-params: names, attention, mlp, all-linear
        lora_target = peft_target_modules(inventory, target, model=resolved.name)
    spec = StepSpec(
        task=sim_task,
        setting=chosen_setting.name,
        optimizer=optimizer,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        target=tuple(lora_target) if isinstance(lora_target, list) else lora_target,
        grad_checkpointing=grad_checkpointing,
        new_tokens=new_tokens if task == "infer" else 0,
        device="cpu" if device == "cpu" else "cuda",
        precision=precision,
    )
    fitted = simulate_model(
        resolved.config,
        spec,
        batch=batch,
        seq=seq,
        trust_remote_code=trust_remote_code,
        use_cache=use_cache,
        on_progress=on_progress,
    )
    ctx = _Context(
        task=task,
        setting=chosen_setting,
        dequant_bytes=_dequant_bytes(inventory, chosen_setting),
        int8_out_features=_int8_out_features(inventory, chosen_setting, task, device),
        layer_bytes=_layer_weight_bytes(inventory, weights_setting),
        num_gpus=1 if auto else num_gpus,
        shard=shard,
    )
    if not auto and num_gpus > 1 and shard == "ddp" and task != "infer":
        # measured (tests/test_distributed.py): a DDP rank holds the single-process step plus its buckets
        ctx = replace(ctx, bucket_bytes=max(p.breakdown["trainable_params"] for p in fitted.direct.phases))
    # the one division (_phase_breakdown), at each count of GPUs a row may need
    contexts = {n: replace(ctx, num_gpus=n) for n in (AUTO_GPU_COUNTS if auto else (num_gpus,))}
    breakdowns = {n: _peak(fitted.direct, c) for n, c in contexts.items()}
    unsharded = _peak(fitted.direct, replace(ctx, num_gpus=1, shard="none", bucket_bytes=0)).total_bytes
    sharded = _sharding_source(task, chosen_setting, num_gpus, shard, simulate_sharding)
    if sharded == "simulated":
        if on_progress:
            on_progress(f"simulating rank 0 of the {shard} step over {num_gpus} ranks")
        sim, _hit = simulate_sharded_cached(
            resolved.config,
            spec,
            batch=batch,
            seq=seq,
            world_size=num_gpus,
            shard=shard,
            trust_remote_code=trust_remote_code,
            use_cache=use_cache,
        )
        whole = replace(ctx, num_gpus=1, shard="none")  # the simulated rank is divided already
        exact = {p.phase: _phase_breakdown(p, whole, batch * seq) for p in sim.phases}
        # the single-GPU step's phases are finer ("backward: lm head"): the division's peak of each of
        # the sharded step's phases is the largest of its parts
        divided: dict[str, int] = {}
        for p in fitted.direct.phases:
            part = _phase_breakdown(p, contexts[num_gpus], batch * seq).total_bytes
            divided[p.phase.split(":")[0]] = max(divided.get(p.phase.split(":")[0], 0), part)
        corrections = tuple((ph, exact[ph].total_bytes - divided[ph]) for ph in exact if ph in divided)
        contexts[num_gpus] = replace(contexts[num_gpus], corrections=corrections)
        breakdowns[num_gpus] = max(exact.values(), key=lambda x: x.total_bytes)
        region_peaks = {num_gpus: tuple(exact.values())}
    else:
        region_peaks = {}
    # the longest prompt the sweep may reach: the model's positions less the tokens generated after it
    seq_cap = MAX_SWEEP_SEQ if limit is None else limit - spec.new_tokens
    # the prompt lengths one fit holds for (a sliding window splits them in two): the fit of another
    # range is simulated when the max-seq sweep gets there
    ranges = seq_ranges(resolved.config, spec.new_tokens)
    fits = {fitted.seq_range: fitted}

    def fit_for(seq_range: tuple[int, int]):
        if seq_range not in fits:
            fits[seq_range] = simulate_model(
                resolved.config,
                spec,
                batch=batch,
                seq=seq_range[0],
                trust_remote_code=trust_remote_code,
                use_cache=use_cache,
                on_progress=on_progress,
            )
        return fits[seq_range]

    def total_at(b: int, s: int, n: int, model_fit=fitted) -> int:
        if (b, s) == (batch, seq):
            return breakdowns[n].total_bytes
        return _peak(model_fit.at(b, s), contexts[n]).total_bytes

    def max_seq_under(cap: int, n: int) -> int:
        best = 0
        for lo, hi in ranges:
            model_fit = fit_for((lo, hi))
            best = _max_int(lambda s, mf=model_fit: total_at(batch, s, n, mf) <= cap, hi, lo)
            if best < hi:
                break
        return best

    def gpus_for(gpu: catalog.Gpu) -> int:
        """The count of this card per job: as given, or with auto the fewest that fit with the margin
        (else the fewest that fit at all, else the most tried)."""
        if not auto:
            return num_gpus
        free = {n: gpu.memory_bytes - gpu.context_bytes - bd.total_bytes for n, bd in breakdowns.items()}
        margin = margin_bytes(gpu.memory_bytes, device)
        return next(
            (n for n in AUTO_GPU_COUNTS if free[n] >= margin),
            next((n for n in AUTO_GPU_COUNTS if free[n] >= 0), AUTO_GPU_COUNTS[-1]),
        )

    rows = []
    for gpu in table:
        n = gpus_for(gpu)
        breakdown, tokens = breakdowns[n], batch * (seq + spec.new_tokens) * n
        required = breakdown.total_bytes + gpu.context_bytes
        headroom = gpu.memory_bytes - required
        margin = margin_bytes(gpu.memory_bytes, device)
        verdict, offload = ("fits" if headroom >= margin else "tight"), 0
        if headroom < 0:
            # accelerate / DeepSpeed offload frozen weights and optimizer states; one layer stays resident
            offloadable = breakdown.weights_bytes + breakdown.optimizer_states_bytes - ctx.layer_bytes
            verdict = "offload" if -headroom <= offloadable and device != "cpu" else "no"
            offload = -headroom if verdict == "offload" else 0
        # the sweeps leave the margin free: their answer is what fits without being tight
        budget = gpu.memory_bytes - gpu.context_bytes - margin
        max_batch = _max_int(lambda b, cap=budget, n=n: total_at(b, seq, n) <= cap, MAX_SWEEP_BATCH)
        max_seq = max_seq_under(budget, n)
        step_s = bound = usd_h = usd_m = None
        if gpu.bf16_dense_tflops > 0 and gpu.memory_bandwidth_gbs > 0:  # 0.0: unknown (catalog.Gpu)
            step_s, bound = _roofline_s(fitted.direct.flops, breakdown, gpu, task, spec.new_tokens)
            if gpu.usd_per_hour > 0:
                usd_h = gpu.usd_per_hour * n
                usd_m = usd_h / 3600 * step_s / tokens * 1e6
        rows.append(
            GpuPlan(
                name=gpu.name,
                memory_bytes=gpu.memory_bytes,
                context_bytes=gpu.context_bytes,
                num_gpus=n,
                context_measured=gpu.context_measured,
                context_given=gpu.context_given,
                required_bytes=required,
                fits=verdict in ("fits", "tight"),
                verdict=verdict,
                offload_bytes=offload,
                headroom_bytes=headroom,
                margin_bytes=margin,
                max_batch=max_batch,
                max_seq=max_seq,
                max_seq_capped=max_seq == seq_cap,
                step_s=step_s,
                step_bound=bound or "",
                usd_per_hour=usd_h,
                usd_per_million_tokens=usd_m,
            )
        )
    fit_error = max(f.fit_error_bytes for f in fits.values())
    cheapest = _cheapest(rows)
    rows = [replace(r, cheapest=r.name == cheapest) for r in rows]
    # the report's breakdown: at the starred card's count (with auto, each row has its own)
    shown = next((r.num_gpus for r in rows if r.cheapest), rows[0].num_gpus if rows else 1)
    return PlanReport(
        model=resolved.name,
        architecture=inventory.architecture,
        task=task,
        setting=chosen_setting.name,
        batch=batch,
        seq=seq,
        new_tokens=spec.new_tokens,
        optimizer=optimizer if task != "infer" else "",
        lora_r=lora_r if sim_task == "lora" else None,
        lora_alpha=lora_alpha if sim_task == "lora" else None,
        grad_checkpointing=grad_checkpointing,
        precision=precision,
        num_gpus=shown,
        shard=shard,
        device=device,
        layers=fitted.layers,
        simulated_layers=fitted.simulated_layers,
        breakdown=breakdowns[shown],
        timeline=_region_timeline(
            region_peaks.get(shown)
            or tuple(_phase_breakdown(p, contexts[shown], batch * seq) for p in fitted.direct.phases)
        ).to_json(),
        unsharded_total_bytes=unsharded,
        flops_per_step=fitted.direct.flops,
        tokens_per_step=batch * (seq + spec.new_tokens) * shown,
        fit_error_bytes=fit_error,
        max_positions=limit,
        from_cache=fitted.from_cache,
        from_fit=fitted.from_fit,
        gpus=tuple(rows),
        cheapest=cheapest,
        num_gpus_auto=auto,
        notes=_short_notes(device, fit_error, "auto" if auto else num_gpus, shard, rows)
        + ((_sharding_note(sharded, task, chosen_setting, shard),) if sharded else ()),
        details=_notes(
            task,
            chosen_setting,
            device,
            fitted,
            fit_error,
            "auto" if auto else num_gpus,
            shard,
            limit,
            spec.new_tokens,
            rows,
            precision,
            optimizer,
        )
        + _window_note(resolved.config, ranges)
        + _from_fit_note(fitted)
        + ((_sharding_note(sharded, task, chosen_setting, shard),) if sharded else ()),
    )


def _cheapest(rows) -> str | None:
    """The card to star: the lowest price per hour (what is known; cost per token rests on the
    roofline estimate, a lower bound real steps miss by several times) among the cards that fit with
    the margin, or, if none does, among the tight ones; a tie goes to more headroom, then to the
    first card of the table (min keeps the first)."""
    for verdict in ("fits", "tight"):
        priced = [r for r in rows if r.verdict == verdict and r.usd_per_hour is not None]
        if priced:
            return min(priced, key=lambda r: (r.usd_per_hour, -r.headroom_bytes)).name
    return None


def _short_notes(device, fit_error, num_gpus, shard, rows) -> tuple[str, ...]:
    """The assumptions a reader needs to act on the table, a line or two each."""
    if device == "cpu":
        notes = [
            "needs: the exact live-tensor peak of the step, simulated on fake tensors, against this machine's RAM."
        ]
    else:
        notes = [
            "needs: the exact simulated peak + a CUDA context per card (not yet measured). tight: less free than "
            f"max({TIGHT_MARGIN_FRACTION:.0%} of the card, {TIGHT_MARGIN_MIN_BYTES / 2**30:g} GiB), an estimated "
            "margin for fragmentation and workspaces.",
            "★: the lowest $/h that fits (tie: more headroom). max batch/seq leave the margin free. step ms and "
            "$/M tok: roofline estimates, lower bounds.",
        ]
    if any(r.verdict == "offload" for r in rows):
        notes.append("offload: fits only with the shortfall of weights and optimizer states offloaded to the CPU.")
    if num_gpus == "auto":
        counts = ", ".join(map(str, AUTO_GPU_COUNTS[:5])) + f", ... {AUTO_GPU_COUNTS[-1]}"
        notes.append(f"GPUs: the fewest of {counts} that fit with the margin. {_shard_what(shard)}; $/h for all.")
    elif num_gpus > 1:
        notes.append(f"{_shard_what(shard)}; cost is for all the cards.")
    large = [r.name for r in rows if r.memory_bytes > 0 and fit_error > FIT_ERROR_NOTE_FRACTION * r.memory_bytes]
    if large:
        notes.append(f"max batch/seq are approximate for {', '.join(large)} (fit error {fit_error:,} bytes).")
    return tuple(notes)


def _shard_what(shard: str) -> str:
    return {
        "ddp": "ddp divides nothing (every GPU holds everything, plus DDP's gradient buckets)",
        "zero2": "zero2 divides grads and optimizer states",
        "zero3": "zero3 divides weights, trainable params, grads and optimizer states, gathering two layers",
        "fsdp": "fsdp divides weights, trainable params, grads and optimizer states, gathering two layers",
    }[shard]


def _notes(
    task, setting, device, fitted, fit_error, num_gpus, shard, limit, new_tokens, rows, precision, optimizer="adamw"
) -> tuple[str, ...]:
    depths = " and ".join(map(str, fitted.simulated_layers))
    notes = [
        "Memory: the exact live-tensor peak of the profiler's step simulated on fake tensors "
        f"(at {depths} layers, extrapolated exactly to {fitted.layers}), at the given batch and seq.",
        _fit_note(fit_error, rows),
        FLOPS_COUNTED_NOTE,
        "Not in the simulation: CUDA caching-allocator fragmentation and rounding, kernel workspaces (cuBLAS, "
        "flash-attention), CUDA-only kernel choices (SDPA flash/mem-efficient backends are traced as the CPU kernel). "
        f"A fit with less headroom than max({TIGHT_MARGIN_FRACTION:.0%} of the card's memory, "
        f"{TIGHT_MARGIN_MIN_BYTES / 2**30:g} GiB) is called tight, and max batch / max seq leave that margin free: "
        "the margin is an ESTIMATE (reserved minus allocated is typically several percent of a training step's "
        "peak), to be measured on a GPU as torch.cuda.max_memory_reserved() minus the allocated peak "
        "(memprof validate --device cuda).",
    ]
    if any(r.verdict == "offload" for r in rows):
        notes.append(
            "offload: does not fit as is, but would with the shortfall (the negative headroom) of frozen weights and "
            "optimizer states offloaded to the CPU (accelerate / DeepSpeed), one layer staying resident."
        )
    if device != "cpu":
        notes.append(_context_note(rows))
        notes.append(
            "step (est.) is a roofline ESTIMATE (max of FLOPs / dense bf16 peak and bytes moved / bandwidth): a lower "
            "bound, real steps are slower; FLOPs are counted exactly on the simulated step. " + _bound_note(rows)
        )
        notes.append(
            "Prices are indicative on-demand USD/hour (override with --gpu-file). ★ marks the card with the lowest "
            "price per hour among those that fit with the margin (among the tight ones if none does), a tie going to "
            "more headroom, then to the first card in table order: the price is known, while cost per million tokens "
            "rests on the roofline step time, a lower bound that real runs miss by several times, so $/M tok (est.) "
            "is shown but does not pick the card."
        )
        if task != "infer" and optimizer == "adamw":
            notes.append("AdamW is simulated with foreach=True, torch's default on CUDA.")
    if task != "infer" and optimizer != "adamw":
        notes.append(_bitsandbytes_optimizer_note(optimizer, device))
    if task == "full":
        notes.append(
            f"{setting.name} mixed precision: fp32 master weights, grads and AdamW states, the forward under "
            f"torch.autocast to {setting.dtype} (what Trainer(bf16=True) and accelerate's mixed_precision run), traced "
            "with the CPU's autocast op lists, which keep fewer ops in fp32 than CUDA's (e.g. softmax, layer_norm: "
            "small next to the weights). --precision pure holds everything in the setting's dtype."
            if precision == "mixed"
            else f"pure {setting.name}: weights, grads and AdamW states all in {setting.dtype} (--precision mixed: "
            "fp32 master weights under autocast, what most full fine-tunes run)."
        )
    if device == "cpu" and setting.quant in ("nf4", "fp4"):
        # what `memprof profile --device cpu` measures, so the CPU plan is checked against the same layout
        notes.append(f"Simulated as profile measures it: {CPU_REPACKING_NOTE}.")
    if setting.quantized:
        kbit = ", unquantized params in fp32 as prepare_model_for_kbit_training casts them" if task != "infer" else ""
        if setting.quant == "int8":
            lt = _int8_matmul8bitlt(task, device)
            path = (
                "MatMul8bitLt's int8 matmuls without the outlier decomposition (its outlier columns depend on the "
                "data; a handful of columns in real models)"
                if lt
                else "MatMul8bitFp (dequantize, then matmul), bitsandbytes' CPU training path"
            )
            transient = (
                " The int32 product inside int8_scaled_mm (tokens x the widest layer's outputs) is added: the "
                "simulation cannot see inside bitsandbytes' kernels."
                if lt
                else ""
            )
        else:
            path = "MatMul4Bit"
            transient = (
                " The compute-dtype copy of the weight that gemm_4bit dequantizes inside the kernel is added for the "
                "largest layer: the simulation cannot see inside bitsandbytes' kernels (on CUDA, small batches "
                "use a fused kernel without it: an upper bound there)."
            )
        notes.append(
            f"{setting.name}: the real bitsandbytes layers run on fake tensors (bitsandbytes' own fake kernels), "
            f"through {path}; weights and quant state are the exact loaded bytes{kbit}.{transient}"
        )
    if num_gpus == "auto" or num_gpus > 1:
        cards = "each row's GPUs" if num_gpus == "auto" else f"{num_gpus} GPUs"
        notes.append(
            f"{cards}, {_shard_what(shard)}; activations, inputs and KV cache are per GPU. Cost is for all "
            "the cards; tokens per step count every GPU's batch. The bar shows the starred card's count."
        )
    if limit is None:
        notes.append(f"The model has no position limit (e.g. ALiBi); max seq is swept up to {MAX_SWEEP_SEQ:,}.")
    else:
        less = f" less the {new_tokens:,} new tokens" if new_tokens else ""
        notes.append(f"max seq is capped at the model's {limit:,} positions{less}; (max) marks the cap.")
    return tuple(notes)


def _bitsandbytes_optimizer_note(optimizer: str, device: str) -> str:
    """What the simulation counts for bitsandbytes' 8-bit AdamW (simulate.make_optimizer runs the real one)."""
    text = (
        f"{optimizer}: bitsandbytes' own init_state makes the states, exact bytes: uint8 state1/state2 plus "
        "float32 absmax1/absmax2 per 256-element block for tensors of at least 4,096 elements, float32 "
        "state1/state2 below that, and one pair of 256-entry float32 code tables (qmap1/qmap2) that the 8-bit "
        "tensors share. "
    )
    if device == "cpu":
        text += (
            "Its CPU update kernel holds float32 working copies of the tensor it updates inside the op, where "
            "neither the simulation nor the profiler's live-tensor tracker sees them: not counted."
        )
        if optimizer == "paged_adamw8bit":
            text += " bitsandbytes does not page on the CPU (ordinary tensors instead): this is adamw8bit's step."
        return text
    text += "Its update is a fused CUDA kernel that allocates nothing."
    if optimizer == "paged_adamw8bit":
        text += (
            " Paged: the state1/state2 of tensors of at least 100,000 elements are CUDA unified memory "
            "(bitsandbytes' get_paged), outside PyTorch's allocator (torch.cuda.memory_allocated does not show "
            "them). They are counted as device memory, where bitsandbytes prefetches them before each update, so "
            "the peak is adamw8bit's; under memory pressure the driver evicts them to CPU RAM instead of failing, "
            "so a card short by up to their bytes can still run, paging and slower."
        )
    return text


def _window_note(config: dict, ranges) -> tuple[str, ...]:
    if len(ranges) < 2:
        return ()
    return (
        f"Sliding window of {sliding_window(config):,} tokens: from there on transformers builds an explicit "
        "attention mask (below it SDPA's is_causal does without), so prompts below and from it are fitted "
        "separately.",
    )


def _fit_note(err: int, rows) -> str:
    """Where max batch / max seq come from, and whether the fit's error matters for any card."""
    text = (
        "max batch and max seq (fit) are read off polynomials in (batch, seq) fitted to simulated steps (every moment "
        f"of every phase); at a point they were not fitted on they miss the simulation by {err:,} bytes"
    )
    large = [r for r in rows if r.memory_bytes > 0 and err > FIT_ERROR_NOTE_FRACTION * r.memory_bytes]
    if not large:
        return text + f", under {FIT_ERROR_NOTE_FRACTION:.0%} of every card's memory."
    worst = max(err / r.memory_bytes for r in large)
    names = ", ".join(r.name for r in large)
    return (
        text + f": up to {worst:.1%} of the memory of {names}, so treat their max batch / max seq as approximate "
        "and re-plan at that batch or seq for an exact answer."
    )


def _context_note(rows) -> str:
    shipped = [r.name for r in rows if not r.context_measured and not r.context_given]
    given = [r.name for r in rows if r.context_given and not r.context_measured]
    measured = [r.name for r in rows if r.context_measured]
    parts = []
    if shipped:
        parts.append(
            "a per-card constant from gpus.json, NOT yet measured by memprof (commonly reported value; to be "
            "measured on the next GPU session)" + ("" if len(shipped) == len(rows) else f" for {', '.join(shipped)}")
        )
    if given:
        parts.append(f"as given in --gpu-file for {', '.join(given)}")
    if measured:
        parts.append(f"measured for {', '.join(measured)}")
    return "CUDA context: " + "; ".join(parts) + "."


def _bound_note(rows) -> str:
    memory = [r.name for r in rows if r.step_bound == "memory"]
    compute = [r.name for r in rows if r.step_bound == "compute"]
    if not memory:
        return "It is compute-bound on every card."
    if not compute:
        return "It is memory-bandwidth-bound on every card."
    return f"It is memory-bandwidth-bound on {', '.join(memory)}; compute-bound on the others."
