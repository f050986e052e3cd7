"""`plan`: which GPUs can run a model's step, with how much headroom, at what batch and context, at what cost.

Peak memory per GPU = the simulated step's peak (simulate.py: exact live bytes of the profiler's
step on fake tensors, real bitsandbytes layers included, extrapolated in depth) plus the transient
inside bitsandbytes' kernels that no trace sees, divided as the sharding divides it, plus the
card's CUDA context (gpus.json, labelled with whether it was measured). Sweeps over batch and
sequence length evaluate the fitted polynomial (simulate.StepFit), so they are arithmetic. Step time is a roofline estimate and prices
are indicative: both are labelled as estimates wherever they are shown.

Sharding (per GPU, N GPUs, data parallel: every GPU runs the given batch):
- none (N=1) or ddp (N>1 without --shard): nothing is divided.
- zero2 (DeepSpeed ZeRO stage 2): grads and optimizer states are divided by N.
- zero3 and fsdp (FSDP FULL_SHARD): weights (incl. quant state), trainable params, grads and
  optimizer states are divided by N; while a layer runs its full parameters are gathered, and the
  next layer's are prefetched: two decoder layers' unsharded weights are added.
- never divided: activations and forward/backward temporaries, inputs, the KV cache, the kernel
  transient. The optimizer phase's temporaries (foreach AdamW's param-sized lists) are divided with
  the states under zero2/zero3/fsdp.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

from memprof import catalog
from memprof.errors import PlanOptionError
from memprof.inventory import Inventory, inventory_for
from memprof.lora import parse_alpha, parse_rank, peft_target_modules
from memprof.models import resolve_model
from memprof.predict import tensor_bytes
from memprof.settings import DTYPE_BYTES, Setting, get_setting
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
from memprof.step import DEFAULT_LORA_R, default_alpha

SHARDS = ("none", "ddp", "zero2", "zero3", "fsdp")
PLAN_KIND = "memprof.plan"  # the "kind" of `memprof plan --json`, so `memprof report` re-renders it
MAX_SWEEP_BATCH = 1 << 20
MAX_SWEEP_SEQ = 1 << 20  # for models without a position limit (ALiBi)
FIT_ERROR_NOTE_FRACTION = 0.01  # a fit error above this fraction of a card's memory is called out


@dataclass(frozen=True)
class Breakdown:
    """Bytes per GPU at the step's peak, by what holds them."""

    weights_bytes: int  # frozen weights and buffers, incl. bitsandbytes quant state (exact, predict.py)
    trainable_params_bytes: int
    grads_bytes: int
    optimizer_states_bytes: int
    activations_bytes: int  # activations and temporaries live at the peak (simulated)
    inputs_bytes: int
    kv_cache_bytes: int
    # inside a bitsandbytes kernel, where the simulation cannot see: 4-bit, the largest weight
    # dequantized; int8 (MatMul8bitLt), the int32 product of the widest layer
    dequant_transient_bytes: int
    gathered_layers_bytes: int  # zero3/fsdp: two layers' unsharded weights
    total_bytes: int  # the sum: what the step's tensors hold at the peak, without the CUDA context
    peak_phase: str


@dataclass(frozen=True)
class GpuPlan:
    name: str
    memory_bytes: int
    context_bytes: int
    context_measured: bool
    context_given: bool  # the context figure came from the user's --gpu-file
    required_bytes: int  # breakdown total + context
    fits: bool  # the step fits in memory_bytes without offload
    verdict: str  # "fits", "offload" (fits with CPU offload of offload_bytes) or "no"
    offload_bytes: int
    headroom_bytes: int  # memory_bytes - required_bytes (negative: short by)
    max_batch: int  # at the given seq (0: not even batch 1); from the fitted polynomial
    max_seq: int  # at the given batch (0: not even 1 token; capped at the model's max positions); fitted
    max_seq_capped: bool
    step_s: float | None  # roofline estimate
    step_bound: str  # "compute" or "memory"
    usd_per_hour: float | None  # for all num_gpus cards
    usd_per_million_tokens: float | None  # estimate
    cheapest: bool = False


@dataclass(frozen=True)
class PlanReport:
    model: str
    architecture: str
    task: str
    setting: str
    batch: int
    seq: int
    new_tokens: int
    optimizer: str
    lora_r: int | None
    lora_alpha: float | None
    grad_checkpointing: bool
    num_gpus: int
    shard: str
    device: str  # "cuda" (plan for the GPU table) or "cpu" (this machine)
    layers: int
    simulated_layers: tuple[int, ...]
    breakdown: Breakdown  # per GPU, after sharding
    unsharded_total_bytes: int
    flops_per_step: int  # per GPU, counted exactly (FlopCounterMode on the simulated step)
    tokens_per_step: int  # all GPUs
    fit_error_bytes: int  # fitted polynomial vs direct simulation at a point it was not fitted on
    max_positions: int | None  # the model's position limit (prompt + new tokens); None: unbounded
    from_cache: bool
    gpus: tuple[GpuPlan, ...]
    cheapest: str | None
    notes: tuple[str, ...] = ()
    kind: str = PLAN_KIND


def _check(task: str, setting: Setting, batch: int, seq: int, num_gpus: int, shard: str, optimizer: str) -> None:
    if task not in TASKS:
        raise PlanOptionError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if batch < 1 or seq < 1:
        raise PlanOptionError(f"--batch and --seq must be at least 1 (got batch {batch}, seq {seq})")
    if batch > MAX_SWEEP_BATCH or seq > MAX_SWEEP_SEQ:  # the sweeps' own bounds; far past any GPU's memory
        raise PlanOptionError(
            f"--batch and --seq must be at most {MAX_SWEEP_BATCH:,} and {MAX_SWEEP_SEQ:,} (got batch {batch:,}, seq {seq:,})"
        )
    if num_gpus < 1:
        raise PlanOptionError(f"--num-gpus must be at least 1 (got {num_gpus})")
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


def _host_memory_bytes() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in open("/proc/meminfo").read().splitlines():  # noqa: SIM115
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_as_gpu() -> catalog.Gpu:
    return catalog.Gpu("cpu (this machine)", _host_memory_bytes(), 0.0, 0.0, 0.0, 0)


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
    grad_checkpointing: bool = False,
    gpus: tuple[str, ...] | None = None,
    gpu_file=None,
    num_gpus: int = 1,
    shard: str = "none",
    device: str = "cuda",
    allow_download: bool = False,
    trust_remote_code: bool = False,
    use_cache: bool = True,
) -> PlanReport:
    """Plan MODEL's step (task infer / lora / qlora / full) on every GPU of the table (or `gpus`).

    `setting` defaults to bf16 (nf4-dq for qlora). `device="cpu"` plans for this machine's memory
    instead, with the CPU's defaults (AdamW for-loop), to be checked against `memprof profile --device cpu`.
    """
    if task not in TASKS:
        raise PlanOptionError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    chosen_setting = get_setting(setting or ("nf4-dq" if task == "qlora" else "bf16"))
    if shard == "none" and num_gpus > 1:
        shard = "ddp"
    _check(task, chosen_setting, batch, seq, num_gpus, shard, optimizer)
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
    )
    fitted = simulate_model(
        resolved.config, spec, batch=batch, seq=seq, trust_remote_code=trust_remote_code, use_cache=use_cache
    )
    ctx = _Context(
        task=task,
        setting=chosen_setting,
        dequant_bytes=_dequant_bytes(inventory, chosen_setting),
        int8_out_features=_int8_out_features(inventory, chosen_setting, task, device),
        layer_bytes=_layer_weight_bytes(inventory, chosen_setting),
        num_gpus=num_gpus,
        shard=shard,
    )
    breakdown = _peak(fitted.direct, ctx)
    unsharded = _peak(fitted.direct, replace(ctx, num_gpus=1, shard="none")).total_bytes
    tokens = batch * (seq + spec.new_tokens) * num_gpus
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
            )
        return fits[seq_range]

    def total_at(b: int, s: int, model_fit=fitted) -> int:
        if (b, s) == (batch, seq):
            return breakdown.total_bytes
        return _peak(model_fit.at(b, s), ctx).total_bytes

    def max_seq_under(cap: int) -> int:
        best = 0
        for lo, hi in ranges:
            model_fit = fit_for((lo, hi))
            best = _max_int(lambda s, mf=model_fit: total_at(batch, s, mf) <= cap, hi, lo)
            if best < hi:
                break
        return best

    rows = []
    for gpu in table:
        required = breakdown.total_bytes + gpu.context_bytes
        headroom = gpu.memory_bytes - required
        verdict, offload = "fits", 0
        if headroom < 0:
            # accelerate / DeepSpeed offload frozen weights and optimizer states; one layer stays resident
            offloadable = breakdown.weights_bytes + breakdown.optimizer_states_bytes - ctx.layer_bytes
            verdict = "offload" if -headroom <= offloadable and device != "cpu" else "no"
            offload = -headroom if verdict == "offload" else 0
        budget = gpu.memory_bytes - gpu.context_bytes
        max_batch = _max_int(lambda b, cap=budget: total_at(b, seq) <= cap, MAX_SWEEP_BATCH)
        max_seq = max_seq_under(budget)
        step_s = bound = usd_h = usd_m = None
        if gpu.bf16_dense_tflops > 0 and gpu.memory_bandwidth_gbs > 0:  # 0.0: unknown (catalog.Gpu)
            step_s, bound = _roofline_s(fitted.direct.flops, breakdown, gpu, task, spec.new_tokens)
            if gpu.usd_per_hour > 0:
                usd_h = gpu.usd_per_hour * num_gpus
                usd_m = usd_h / 3600 * step_s / tokens * 1e6
        rows.append(
            GpuPlan(
                name=gpu.name,
                memory_bytes=gpu.memory_bytes,
                context_bytes=gpu.context_bytes,
                context_measured=gpu.context_measured,
                context_given=gpu.context_given,
                required_bytes=required,
                fits=verdict == "fits",
                verdict=verdict,
                offload_bytes=offload,
                headroom_bytes=headroom,
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
    fitting = [r for r in rows if r.fits and r.usd_per_million_tokens is not None]
    # on the exact float; an exact tie goes to the first card of the table (min keeps the first)
    cheapest = min(fitting, key=lambda r: r.usd_per_million_tokens).name if fitting else None
    rows = [replace(r, cheapest=r.name == cheapest) for r in rows]
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
        num_gpus=num_gpus,
        shard=shard,
        device=device,
        layers=fitted.layers,
        simulated_layers=fitted.simulated_layers,
        breakdown=breakdown,
        unsharded_total_bytes=unsharded,
        flops_per_step=fitted.direct.flops,
        tokens_per_step=tokens,
        fit_error_bytes=fit_error,
        max_positions=limit,
        from_cache=fitted.from_cache,
        gpus=tuple(rows),
        cheapest=cheapest,
        notes=_notes(task, chosen_setting, device, fitted, fit_error, num_gpus, shard, limit, spec.new_tokens, rows)
        + _window_note(resolved.config, ranges),
    )


def _notes(task, setting, device, fitted, fit_error, num_gpus, shard, limit, new_tokens, rows) -> tuple[str, ...]:
    notes = [
        "Memory: the exact live-tensor peak of the profiler's step simulated on fake tensors "
        f"(at {'/'.join(map(str, fitted.simulated_layers))} layers, extrapolated exactly to {fitted.layers}), "
        "at the given batch and seq.",
        _fit_note(fit_error, rows),
        "Not in the simulation: CUDA caching-allocator fragmentation and rounding, kernel workspaces (cuBLAS, "
        "flash-attention), CUDA-only kernel choices (SDPA flash/mem-efficient backends are traced as the CPU kernel). "
        "No margin is added for them yet: it is to be measured on a GPU as torch.cuda.max_memory_reserved() minus "
        "the simulated peak (memprof profile --device cuda).",
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
            "Prices are indicative on-demand USD/hour (override with --gpu-file), so cost per million tokens is an "
            "estimate too; ★ marks the cheapest card that fits, compared on unrounded costs (a tie goes to the "
            "first card in table order)."
        )
        if task != "infer":
            notes.append("AdamW is simulated with foreach=True, torch's default on CUDA.")
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
    if num_gpus > 1:
        what = {
            "ddp": "nothing is divided (every GPU holds everything)",
            "zero2": "grads and optimizer states are divided",
            "zero3": "weights, trainable params, grads and optimizer states are divided; two layers are gathered",
            "fsdp": "weights, trainable params, grads and optimizer states are divided; two layers are gathered",
        }[shard]
        notes.append(
            f"{num_gpus} GPUs, {shard}: {what}; activations, inputs and KV cache are per GPU. Cost is for all "
            f"{num_gpus} cards; tokens per step count every GPU's batch."
        )
    if limit is None:
        notes.append(f"The model has no position limit (e.g. ALiBi); max seq is swept up to {MAX_SWEEP_SEQ:,}.")
    else:
        less = f" less the {new_tokens:,} new tokens" if new_tokens else ""
        notes.append(f"max seq is capped at the model's {limit:,} positions{less}; (max) marks the cap.")
    return tuple(notes)


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
