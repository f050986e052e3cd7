"""`plan`: which GPUs can run a model's step, with how much headroom, at what batch and context, at what cost.

Peak memory per GPU = the simulated step's peak (memprof.simulate: exact live bytes of the profiler's
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
step simulated on fake tensors (memprof.simulate.sharded: FSDP2 itself, equal to 2 measured gloo
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

from dataclasses import replace

from memprof import catalog
from memprof.analyses.plan.breakdown import (
    PlanContext,
    kernel_transient,
    layer_weight_bytes,
    peak_breakdown,
    phase_breakdown,
    region_timeline,
    sharding_source,
)
from memprof.analyses.plan.cost import cheapest_card, roofline_s
from memprof.analyses.plan.notes import detail_notes, from_fit_note, sharding_note, short_notes, window_note
from memprof.analyses.plan.options import (
    AUTO_GPU_COUNTS,
    MAX_SWEEP_BATCH,
    MAX_SWEEP_SEQ,
    SHARDS,
    check_applicable,
    check_options,
    check_positions,
    cpu_as_gpu,
    margin_bytes,
    select_gpus,
)
from memprof.errors import PlanOptionError
from memprof.inventory import inventory_for
from memprof.lora.options import parse_alpha, parse_rank, peft_target_modules
from memprof.models import resolve_model
from memprof.options import name_list, path, switch, whole_number
from memprof.results.plan import GpuPlan, PlanReport
from memprof.settings import get_setting
from memprof.simulate import TASKS, StepSpec, max_positions, seq_ranges, simulate_model
from memprof.simulate.sharded import simulate_sharded_cached
from memprof.step import (
    DEFAULT_LORA_R,
    check_precision,
    default_alpha,
    resolve_grad_checkpointing,
    weights_dtype,
)

__all__ = ["SHARDS", "margin_bytes", "plan"]  # what commands, serve and validate take from here


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
    (batch, seq) is rank 0 of the sharded step simulated on fake tensors (memprof.simulate.sharded),
    and the sweeps are the division corrected per phase by the simulation at (batch, seq);
    `simulate_sharding=False` keeps the division alone (what --num-gpus auto and quantized settings use).
    """
    if task == "serve":
        raise PlanOptionError("task serve is its own function: memprof.plan_serving(model, context=...)")
    if task not in TASKS:  # before the task's default setting is looked up
        raise PlanOptionError(f"unknown task {task!r}; use one of {', '.join(TASKS)}, serve")
    # "h100,l4" as the command line takes it, or a sequence of names
    gpus = name_list(gpus, option="gpus", error=PlanOptionError) or None
    chosen_setting = get_setting(setting or ("nf4-dq" if task == "qlora" else "bf16"))
    batch, seq, new_tokens = (
        whole_number(v, n, error=PlanOptionError)
        for v, n in ((batch, "batch"), (seq, "seq"), (new_tokens, "new_tokens"))
    )
    grad_checkpointing = switch(grad_checkpointing, "grad_checkpointing", error=PlanOptionError, unset=True)
    allow_download, trust_remote_code, use_cache, simulate_sharding = (
        switch(v, n, error=PlanOptionError)
        for v, n in (
            (allow_download, "allow_download"),
            (trust_remote_code, "trust_remote_code"),
            (use_cache, "use_cache"),
            (simulate_sharding, "simulate_sharding"),
        )
    )
    gpu_file = path(gpu_file, "gpu_file", error=PlanOptionError, unset=True)
    auto = num_gpus == "auto"
    if auto and shard not in ("zero2", "zero3", "fsdp"):
        raise PlanOptionError(
            f"--num-gpus auto finds the fewest GPUs whose shards fit: give --shard zero2, zero3 or fsdp "
            f"({'ddp' if shard == 'ddp' else 'without --shard, every GPU'} holds everything, so more GPUs never help)"
        )
    if not auto:
        num_gpus = whole_number(num_gpus, "--num-gpus", error=PlanOptionError, wants="a number of GPUs or auto")
    given = [
        flag
        for flag, changed in (
            ("--new-tokens", new_tokens != 0),
            ("--lora-r", lora_r != DEFAULT_LORA_R),
            ("--lora-alpha", lora_alpha is not None),
            ("--target", bool(name_list(target, option="target", error=PlanOptionError))),
            ("--optimizer", optimizer != "adamw"),
            ("--grad-checkpointing", grad_checkpointing is not None),
            ("--gpus", gpus is not None),
            ("--gpu-file", gpu_file is not None),
        )
        if changed
    ]
    check_applicable(task, given, num_gpus=num_gpus, shard=shard, device=device)
    if shard == "none" and not auto and num_gpus > 1:
        shard = "ddp"
    check_options(task, chosen_setting, batch, seq, new_tokens, num_gpus, shard, optimizer, device)
    grad_checkpointing = resolve_grad_checkpointing(grad_checkpointing, task, quantized=chosen_setting.quantized)
    precision = check_precision(precision, task, chosen_setting)
    # the bytes the weights are held in: fp32 masters under mixed precision
    weights_setting = replace(chosen_setting, dtype=weights_dtype(chosen_setting.dtype, precision))
    table = (cpu_as_gpu(),) if device == "cpu" else select_gpus(gpus, catalog.gpus_with(gpu_file))

    resolved = resolve_model(model, allow_download=allow_download)
    limit = max_positions(resolved.config)
    check_positions(task, seq, new_tokens, limit)
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
    transient = kernel_transient(inventory, chosen_setting, task, device)
    ctx = PlanContext(
        task=task,
        setting=chosen_setting,
        kernel_fixed_bytes=transient[0],
        kernel_bytes_per_token=transient[1],
        layer_bytes=layer_weight_bytes(inventory, weights_setting),
        num_gpus=1 if auto else num_gpus,
        shard=shard,
    )
    if not auto and num_gpus > 1 and shard == "ddp" and task != "infer":
        # measured (tests/test_distributed.py): a DDP rank holds the single-process step plus its buckets
        ctx = replace(ctx, bucket_bytes=max(p.breakdown["trainable_params"] for p in fitted.direct.phases))
    # the one division (phase_breakdown), at each count of GPUs a row may need
    contexts = {n: replace(ctx, num_gpus=n) for n in (AUTO_GPU_COUNTS if auto else (num_gpus,))}
    breakdowns = {n: peak_breakdown(fitted.direct, c) for n, c in contexts.items()}
    unsharded = peak_breakdown(fitted.direct, replace(ctx, num_gpus=1, shard="none", bucket_bytes=0)).total_bytes
    sharded = sharding_source(task, chosen_setting, num_gpus, shard, simulate_sharding, optimizer)
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
        exact = {p.phase: phase_breakdown(p, whole, batch * seq) for p in sim.phases}
        # the single-GPU step's phases are finer ("backward: lm head"): the division's peak of each of
        # the sharded step's phases is the largest of its parts
        divided: dict[str, int] = {}
        for p in fitted.direct.phases:
            part = phase_breakdown(p, contexts[num_gpus], batch * seq).total_bytes
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

    totals: dict[tuple, int] = {}  # every card's sweep asks for the same first points (see _max_int)

    def total_at(b: int, s: int, n: int, model_fit=fitted) -> int:
        if (b, s) == (batch, seq):
            return breakdowns[n].total_bytes
        key = (b, s, n, model_fit.seq_range)
        if key not in totals:
            totals[key] = peak_breakdown(model_fit.at(b, s), contexts[n]).total_bytes
        return totals[key]

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
            step_s, bound = roofline_s(fitted.direct.flops, breakdown, gpu, task, spec.new_tokens)
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
    cheapest = cheapest_card(rows)
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
        timeline=region_timeline(
            region_peaks.get(shown)
            or tuple(phase_breakdown(p, contexts[shown], batch * seq) for p in fitted.direct.phases)
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
        notes=short_notes(device, fit_error, "auto" if auto else num_gpus, shard, rows, task)
        + ((sharding_note(sharded, task, chosen_setting, shard, optimizer, auto),) if sharded else ())
        + from_fit_note(fitted),  # where the answer came from, in the table's notes too
        details=detail_notes(
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
        + window_note(resolved.config, ranges),  # the sharding and from-fit notes are short notes, shown with these
    )


def _max_int(ok, hi: int, lo: int = 1) -> int:
    """Largest x in [lo, hi] with ok(x) (ok monotone decreasing); lo - 1 if none.

    Doubling from lo, then halving the last step: the answer is the same as bisecting [lo, hi], but the
    points asked for are lo + 2^k - 1 first, the same for every card's sweep, so a cache of the
    function under `ok` answers most of them (a plan sweeps 11 cards twice)."""
    if not ok(lo):
        return lo - 1
    step = 1
    while lo + step <= hi and ok(lo + step):
        lo += step
        step *= 2
    hi = min(hi, lo + step - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
