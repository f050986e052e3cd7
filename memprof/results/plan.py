"""The result of `memprof plan`: the step's peak by what holds it, and one row per GPU."""

from __future__ import annotations

from dataclasses import dataclass

PLAN_KIND = "memprof.plan"  # the "kind" of `memprof plan --json`, so `memprof report` re-renders it


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
    num_gpus: int  # cards per job on this row (--num-gpus, or with auto the fewest that fit)
    context_measured: bool
    context_given: bool  # the context figure came from the user's --gpu-file
    required_bytes: int  # breakdown total + context
    fits: bool  # the step fits in memory_bytes without offload (verdict "fits" or "tight")
    # "fits" (headroom of at least margin_bytes), "tight" (fits, with less headroom than the margin),
    # "offload" (fits with CPU offload of offload_bytes) or "no"
    verdict: str
    offload_bytes: int
    headroom_bytes: int  # memory_bytes - required_bytes (negative: short by)
    margin_bytes: int  # the headroom below which a fit is tight (an estimate: margin_bytes())
    max_batch: int  # at the given seq, leaving the margin free (0: not even batch 1); from the fitted polynomial
    # at the given batch, leaving the margin free (0: not even 1 token; capped at the model's max positions); fitted
    max_seq: int
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
    precision: str  # memprof.step.PRECISIONS: "mixed" = fp32 master weights, forward under 16-bit autocast
    num_gpus: int  # with num_gpus_auto: the starred card's count (the breakdown's), else as given
    shard: str
    device: str  # "cuda" (plan for the GPU table) or "cpu" (this machine)
    layers: int
    simulated_layers: tuple[int, ...]
    breakdown: Breakdown  # per GPU, after sharding over num_gpus
    unsharded_total_bytes: int
    flops_per_step: int  # per GPU, counted exactly (FlopCounterMode on the simulated step)
    tokens_per_step: int  # all GPUs
    fit_error_bytes: int  # fitted polynomial vs direct simulation at a point it was not fitted on
    max_positions: int | None  # the model's position limit (prompt + new tokens); None: unbounded
    from_cache: bool
    gpus: tuple[GpuPlan, ...]
    cheapest: str | None
    num_gpus_auto: bool = False  # --num-gpus auto: every row has the fewest cards that fit (AUTO_GPU_COUNTS)
    # the breakdown at (batch, seq) was read off the exact fit of an earlier plan of the same model and
    # options (simulate.ModelFit.from_fit), not simulated at that point
    from_fit: bool = False
    notes: tuple[str, ...] = ()  # the assumptions behind the answer, short: shown under the table
    details: tuple[str, ...] = ()  # how every number is made: `plan --verbose`, Markdown, HTML, JSON
    # the step over time, coarsely: the per-GPU breakdown at each recorded region's peak, in step order
    # (memprof.measure.timeline.Timeline JSON, one point per region); its highest point is `breakdown`
    timeline: dict | None = None
    kind: str = PLAN_KIND
