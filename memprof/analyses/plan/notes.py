"""The notes under a plan: short ones a reader needs to act on the table, and the details of what was simulated, divided, estimated or assumed."""

from __future__ import annotations

from memprof.analyses.plan.breakdown import int8_matmul8bitlt
from memprof.analyses.plan.options import (
    AUTO_GPU_COUNTS,
    FIT_ERROR_NOTE_FRACTION,
    MAX_SWEEP_SEQ,
    TIGHT_MARGIN_FRACTION,
    TIGHT_MARGIN_MIN_BYTES,
)
from memprof.measure.flops import COUNTED_NOTE as FLOPS_COUNTED_NOTE
from memprof.settings import CPU_REPACKING_NOTE, Setting
from memprof.simulate import (
    sliding_window,
)


def sharding_note(
    source: str, task: str, setting: Setting, shard: str, optimizer: str = "adamw", auto: bool = False
) -> str:
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
    if auto:
        why = "--num-gpus auto divides at every count; confirm a count with --num-gpus N, which simulates it"
    elif setting.quantized:
        why = "FSDP-QLoRA is not simulated yet"
    elif task == "infer":
        why = "inference is not simulated sharded"
    else:
        why = f"{optimizer}'s 8-bit states are not simulated sharded yet"
    return f"Per GPU: ARITHMETIC, the single-GPU simulation divided as {shard} divides it ({why}), not simulated."


def from_fit_note(fitted) -> tuple[str, ...]:
    """Where the answer came from when nothing was simulated now: an earlier plan's exact fit, or the
    cache of the same plan (shipped, or ~/.cache/memprof)."""
    b, s = fitted.fitted_at
    if fitted.from_cache and not fitted.from_fit:
        return (
            "From the cache: this plan's simulation, shipped with memprof or saved by an earlier identical plan (--no-cache simulates it again).",
        )
    if not fitted.from_fit or (b, s) == (fitted.direct.batch, fitted.direct.seq):  # seq < 4: its own fit
        return ()
    return (
        f"Read off the exact fit of an earlier plan of this model and options (simulated at batch {b} × seq {s:,}; "
        "0 bytes off at the point it was checked on), not simulated at this batch and seq.",
    )


def short_notes(device, fit_error, num_gpus, shard, rows, task: str = "lora") -> tuple[str, ...]:
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
        notes.append(f"GPUs: the fewest of {counts} that fit with the margin. {shard_what(shard, task)}; $/h for all.")
    elif num_gpus > 1:
        notes.append(f"{shard_what(shard, task)}; cost is for all the cards.")
    large = [r.name for r in rows if r.memory_bytes > 0 and fit_error > FIT_ERROR_NOTE_FRACTION * r.memory_bytes]
    if large:
        notes.append(f"max batch/seq are approximate for {', '.join(large)} (fit error {fit_error:,} bytes).")
    return tuple(notes)


def shard_what(shard: str, task: str = "lora") -> str:
    if shard == "ddp" and task == "infer":
        return "data parallel: every GPU holds the whole model (inference keeps no gradient buckets)"
    return {
        "ddp": "ddp divides nothing (every GPU holds everything, plus DDP's gradient buckets)",
        "zero2": "zero2 divides grads and optimizer states",
        "zero3": "zero3 divides weights, trainable params, grads and optimizer states, gathering two layers",
        "fsdp": "fsdp divides weights, trainable params, grads and optimizer states, gathering two layers",
    }[shard]


def detail_notes(
    task, setting, device, fitted, fit_error, num_gpus, shard, limit, new_tokens, rows, precision, optimizer="adamw"
) -> tuple[str, ...]:
    depths = " and ".join(map(str, fitted.simulated_layers))
    where = (
        "read off the exact fit of an earlier plan (see the note above), not simulated at this batch and seq"
        if from_fit_note(fitted)
        else "at the given batch and seq"
    )
    notes = [
        "Memory: the exact live-tensor peak of the profiler's step simulated on fake tensors "
        f"(at {depths} layers, extrapolated exactly to {fitted.layers}), {where}.",
        fit_note(fit_error, rows),
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
        notes.append(context_note(rows))
        notes.append(
            "step (est.) is a roofline ESTIMATE (max of FLOPs / dense bf16 peak and bytes moved / bandwidth): a lower "
            "bound, real steps are slower; FLOPs are counted exactly on the simulated step. " + bound_note(rows)
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
        notes.append(bitsandbytes_optimizer_note(optimizer, device))
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
    if device == "cpu" and setting.four_bit:
        # what `memprof profile --device cpu` measures, so the CPU plan is checked against the same layout
        notes.append(f"Simulated as profile measures it: {CPU_REPACKING_NOTE}.")
    if setting.quantized:
        kbit = ", unquantized params in fp32 as prepare_model_for_kbit_training casts them" if task != "infer" else ""
        if not setting.four_bit:
            lt = int8_matmul8bitlt(task, device)
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
            f"{cards}, {shard_what(shard, task)}; activations, inputs and KV cache are per GPU. Cost is for all "
            "the cards; tokens per step count every GPU's batch. The bar shows the starred card's count."
        )
    if limit is None:
        notes.append(f"The model has no position limit (e.g. ALiBi); max seq is swept up to {MAX_SWEEP_SEQ:,}.")
    else:
        less = f" less the {new_tokens:,} new tokens" if new_tokens else ""
        if any(r.max_seq_capped for r in rows):  # else no row shows (max)
            notes.append(f"max seq is capped at the model's {limit:,} positions{less}; (max) marks the cap.")
    return tuple(notes)


def bitsandbytes_optimizer_note(optimizer: str, device: str) -> str:
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


def window_note(config: dict, ranges) -> tuple[str, ...]:
    if len(ranges) < 2:
        return ()
    return (
        f"Sliding window of {sliding_window(config):,} tokens: from there on transformers builds an explicit "
        "attention mask (below it SDPA's is_causal does without), so prompts below and from it are fitted "
        "separately.",
    )


def fit_note(err: int, rows) -> str:
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


def context_note(rows) -> str:
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


def bound_note(rows) -> str:
    memory = [r.name for r in rows if r.step_bound == "memory"]
    compute = [r.name for r in rows if r.step_bound == "compute"]
    if not memory:
        return "It is compute-bound on every card."
    if not compute:
        return "It is memory-bandwidth-bound on every card."
    return f"It is memory-bandwidth-bound on {', '.join(memory)}; compute-bound on the others."
