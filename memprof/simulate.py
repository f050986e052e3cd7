"""Simulate one training or inference step on fake tensors and count its live bytes and FLOPs exactly.

The step is the one `memprof profile` runs (measure/profile_worker.py): the transformers model at
the setting's dtype, peft LoRA (r, alpha, targets, dropout 0) or every parameter trainable,
`torch.optim.AdamW(trainable, lr=1e-5)`, then `zero_grad(set_to_none=True)`, forward with labels,
backward, `optimizer.step()`; for inference `model(input_ids, use_cache=False)` under no_grad, or
prefill + one decode step with the KV cache when new tokens are asked for. It runs under
`FakeTensorMode` on the CPU: no memory is allocated and no arithmetic is done, but every op's
output shapes, dtypes and lifetimes are real, so `LiveBytesTracker` sees the exact live bytes and
`FlopCounterMode` the exact FLOPs, for any architecture, attention implementation, gradient
checkpointing, sequence length and LoRA targets. The peak is measured on the second step (the
first one creates AdamW's states), tracking what the profiler tracks, so on the CPU the simulation
equals the profiler's measured live-tensor peak (tests/test_plan.py proves it).

What the simulation cannot see:
- bitsandbytes layers. Quantized linears are simulated as bf16 linears with the 4-bit/8-bit
  layer's dtype behaviour (input cast to the compute dtype, output cast back); their weight bytes
  are replaced by predict.py's exact true bytes (packed weight + quant state). The transient
  dequantized bf16 copy of one weight that bitsandbytes makes inside each matmul is not in the
  trace: `dequant_transient_bytes` adds the largest quantized linear's bf16 bytes once.
- The CUDA caching allocator (fragmentation, block rounding), kernel workspaces (cuBLAS,
  flash-attention) and the CUDA context: they are not tensors. The context is a per-GPU constant
  in catalog/gpus.json; fragmentation is not modelled (see plan notes).
- CUDA-only kernel choices: the simulation runs CPU dispatch. AdamW's CUDA default (foreach) is
  reproduced by passing foreach=True when planning for a GPU; scaled_dot_product_attention's
  CUDA backends (flash / memory-efficient) are not, the CPU flash kernel's tensors are traced.

Scaling: a step's live bytes at any moment are sums of tensors whose sizes are products of
{1, b} and {1, s, s^2} (batch appears at most once in a shape, sequence at most twice: attention
scores and masks), so each phase's peak is exactly a polynomial in the basis FIT_BASIS as long as
the moment of the peak stays in the same place; `fit_step` solves it from 6 simulated points and
`StepFit.max_fit_error_bytes` reports its error at points it was not fitted on. Depth: with
identical layers (or identical groups of `layer_types`), every category of bytes and the FLOPs
are affine in the layer count, so a 70B model is simulated at 2 and 3 layers (or groups; depth 1 is
a special case) and extrapolated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import metadata

from memprof.inventory import cache_dir, config_key, write_json_atomic
from memprof.step import apply_lora, enable_grad_checkpointing, make_full_trainable, train_step
from memprof.step import make_optimizer as step_optimizer

SIM_FORMAT = 2
TASKS = ("infer", "lora", "qlora", "full")
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")
# Categories of live bytes, the same names as the profiler's breakdown.
CATEGORIES = (
    "weights",
    "quant_state",
    "trainable_params",
    "grads",
    "optimizer_states",
    "inputs",
    "kv_cache",
    "activations_temporaries",
)
FIT_BASIS = ("1", "b", "s", "b*s", "s^2", "b*s^2")


@dataclass(frozen=True)
class StepSpec:
    """Which step to simulate. `task` is infer, lora, qlora (LoRA on a quantized setting) or full."""

    task: str
    setting: str = "bf16"
    optimizer: str = "adamw"
    lora_r: int = 8
    lora_alpha: float = 16
    # LoraConfig target_modules as memprof.lora.peft_target_modules resolves it: names, "all-linear",
    # or None for peft's default
    target: tuple[str, ...] | str | None = None
    grad_checkpointing: bool = False
    new_tokens: int = 0
    foreach: bool = False  # AdamW foreach (the CUDA default); False is the CPU default

    def key(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PhasePeak:
    """Peak live bytes during one phase of the step, and what was live at that moment."""

    phase: str
    peak_bytes: int
    breakdown: dict[str, int]  # CATEGORIES -> bytes; sums to peak_bytes


@dataclass(frozen=True)
class Simulation:
    layers: int
    batch: int
    seq: int
    phases: tuple[PhasePeak, ...]
    flops: int
    standin_weight_bytes: int = 0  # bf16 bytes of the simulated stand-ins for quantized linears

    @property
    def peak_bytes(self) -> int:
        return max(p.peak_bytes for p in self.phases)

    @property
    def peak_phase(self) -> PhasePeak:
        return max(self.phases, key=lambda p: p.peak_bytes)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Simulation:
        return cls(
            layers=data["layers"],
            batch=data["batch"],
            seq=data["seq"],
            phases=tuple(PhasePeak(**p) for p in data["phases"]),
            flops=data["flops"],
            standin_weight_bytes=data.get("standin_weight_bytes", 0),
        )


# ---------------------------------------------------------------------------------------------
# depth


def layer_count(config: dict) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in config:
            return int(config[key])
    raise KeyError("config has no layer count")


def layer_period(config: dict) -> int:
    """Smallest group of layers that repeats (1 unless `layer_types` alternates, e.g. sliding/global)."""
    types = config.get("layer_types")
    if not types:
        return 1
    for p in range(1, len(types) + 1):
        if all(types[i] == types[i % p] for i in range(len(types))):
            return p
    return len(types)


def with_layers(config: dict, layers: int) -> dict:
    """The config with `layers` decoder layers (and `layer_types` cut to match)."""
    out = dict(config)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in out:
            out[key] = layers
    if out.get("layer_types"):
        types = list(out["layer_types"])
        out["layer_types"] = [types[i % len(types)] for i in range(layers)]
    return out


# ---------------------------------------------------------------------------------------------
# building the step (mirrors profile_worker._train; see the module docstring)


def _standin_class():
    import torch

    class QuantLinearStandIn(torch.nn.Linear):
        """A bf16 linear standing in for a bitsandbytes 4-bit/8-bit linear: input cast to the compute
        dtype, output cast back to the input's dtype, as bnb's Linear4bit.forward does."""

        def forward(self, x):
            return torch.nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)

    return QuantLinearStandIn


def _fakeify(model, mode, device: str = "cpu") -> None:
    """Replace every parameter and buffer by an uninitialised fake tensor of the same shape and dtype."""
    import torch

    memo: dict[int, object] = {}
    with mode:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) not in memo:  # tied weights stay tied
                    memo[id(p)] = torch.nn.Parameter(
                        torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=p.requires_grad
                    )
                module._parameters[name] = memo[id(p)]
            for name, b in list(module._buffers.items()):
                if b is None:
                    continue
                if id(b) not in memo:
                    memo[id(b)] = torch.zeros(b.shape, dtype=b.dtype, device=device)
                module._buffers[name] = memo[id(b)]


def build_step_model(config: dict, spec: StepSpec, *, trust_remote_code: bool = False):
    """The model of the step on the meta device, prepared like the profiler prepares it.

    Returns (model, standin_weight_bytes). Quantized linears become QuantLinearStandIn (bf16).
    """
    from memprof.inventory import build_meta_model
    from memprof.settings import get_setting

    setting = get_setting(spec.setting)
    model = build_meta_model(config, dtype=setting.dtype, trust_remote_code=trust_remote_code)
    return prepare_step_model(model, spec)


def prepare_step_model(model, spec: StepSpec):
    """Apply the profiler's preparation (profile_worker._train) to a model, meta or real.

    Returns (model, standin_weight_bytes).
    """
    import torch

    from memprof.inventory import quantizable_linears
    from memprof.settings import get_setting

    setting = get_setting(spec.setting)
    standin_bytes = 0
    quantized_weights: set[int] = set()
    if setting.quantized:
        standin = _standin_class()
        for name in quantizable_linears(model):
            module = model.get_submodule(name)
            module.__class__ = standin
            quantized_weights.add(id(module.weight))
            standin_bytes += module.weight.numel() * module.weight.element_size()
    if spec.task in ("lora", "qlora"):
        if setting.quantized:
            # prepare_model_for_kbit_training on the stand-ins: freeze, cast every unquantized
            # bf16/fp16 param to fp32 (the real function would also cast the stand-ins' weights)
            for p in model.parameters():
                p.requires_grad_(False)
                if id(p) not in quantized_weights and p.dtype in (torch.float16, torch.bfloat16):
                    p.data = p.data.to(torch.float32)
            if spec.grad_checkpointing:
                enable_grad_checkpointing(model, input_grads=False)
        elif spec.grad_checkpointing:
            enable_grad_checkpointing(model, input_grads=True)
        target = list(spec.target) if isinstance(spec.target, tuple) else spec.target
        model = apply_lora(model, r=spec.lora_r, alpha=spec.lora_alpha, target_modules=target)
    elif spec.task == "full":
        make_full_trainable(model, grad_checkpointing=spec.grad_checkpointing)
    return model, standin_bytes


def make_optimizer(params, spec: StepSpec):
    """The step's optimizer (memprof.step.make_optimizer), with AdamW foreach as on a GPU when asked."""
    return step_optimizer(params, spec.optimizer, foreach=True if spec.foreach else None)


# ---------------------------------------------------------------------------------------------
# tracking


def _model_parts(model, optimizer=None) -> dict[str, list]:
    from memprof.step import model_parts

    return model_parts(model, optimizer)


class _PhaseRecorder:
    """Per-phase peaks with the breakdown at each peak, on one LiveBytesTracker."""

    def __init__(self, tracker, categories) -> None:
        self.tracker = tracker
        self.categories = categories  # () -> dict[str, tensors]; called at the end of each phase
        self.phases: list[PhasePeak] = []

    @contextlib.contextmanager
    def phase(self, name: str, held: dict | None = None):
        """`held`: categories taken before the phase (tensors it frees, e.g. zero_grad's grads), kept
        alive until the breakdown is taken so they are classified; released before the next phase."""
        self.tracker.reset_peak()
        yield
        breakdown = self.tracker.breakdown_at_peak(held if held is not None else self.categories())
        breakdown["activations_temporaries"] = breakdown.pop("other")
        full = {c: int(breakdown.get(c, 0)) for c in CATEGORIES}
        self.phases.append(PhasePeak(name, int(self.tracker.peak_bytes), full))


@contextlib.contextmanager
def _eager_mask_paths():
    """Make transformers take the mask path a real eager run takes.

    transformers treats fake tensors like a compile trace and then always builds the (b, 1, s, s)
    packed-sequence mask, because it cannot read the position ids. A real eager run reads them and,
    for unpacked rows (the profiler's input: one sequence per row, default positions), finds no
    packing and builds no mask. The simulated inputs are unpacked, so the answer is known: None.
    """
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def _cache_tensors(cache) -> list:
    if cache is None:
        return []
    out = []
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "untyped_storage"):
                out.append(t)
    return out


class StepSimulator:
    """One fake model of `layers` layers, reused for steps at several (batch, seq)."""

    def __init__(
        self, config: dict, spec: StepSpec, *, layers: int, trust_remote_code: bool = False, real_model=None
    ) -> None:
        """`real_model`: run the same step on this prepared real model instead (for equality tests)."""
        import torch
        from torch._subclasses.fake_tensor import FakeTensorMode
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        self.config = with_layers(config, layers)
        self.spec = spec
        self.layers = layers
        self.vocab = int(self.config.get("vocab_size", 2))
        if real_model is not None:
            self.mode = contextlib.nullcontext()
            self.model, self.standin_bytes = real_model, 0
        else:
            self.mode = FakeTensorMode()
            self.model, self.standin_bytes = build_step_model(self.config, spec, trust_remote_code=trust_remote_code)
            _fakeify(self.model, self.mode)
        self.optimizer = None
        if spec.task == "infer":
            self.model.eval()
        else:
            self.model.train()
            with self.mode:
                trainable = [p for p in self.model.parameters() if p.requires_grad]
                self.optimizer = make_optimizer(trainable, spec)
        self._torch = torch

    def _ids(self, batch: int, seq: int):
        with self.mode:
            return self._torch.randint(0, self.vocab, (batch, seq))

    def run(self, batch: int, seq: int) -> Simulation:
        from memprof.measure.profile_worker import count_flops
        from memprof.measure.tracker import LiveBytesTracker

        torch = self._torch
        ids = self._ids(batch, seq)
        model, optimizer = self.model, self.optimizer
        with self.mode, _eager_mask_paths():
            if self.spec.task != "infer":
                train_step(model, optimizer, ids)  # warm-up: AdamW creates its states in the first step
                with LiveBytesTracker() as tracker:
                    rec = _PhaseRecorder(tracker, lambda: {**_model_parts(model, optimizer), "inputs": [ids]})
                    tracker.track(*_model_parts(model, optimizer).values(), ids)
                    held = {**_model_parts(model, optimizer), "inputs": [ids]}
                    with rec.phase("zero_grad", held):  # the last moment the previous step's grads are live
                        optimizer.zero_grad(set_to_none=True)
                    held.clear()  # the grads are freed here, before the forward phase
                    with rec.phase("forward"):
                        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                    with rec.phase("backward"):
                        loss.backward()
                        del loss
                    with rec.phase("optimizer"):
                        optimizer.step()
                flops = count_flops(lambda: train_step(model, optimizer, ids))
            elif self.spec.new_tokens == 0:
                # the profiler's forward: no_grad, no cache, logits for every position
                with LiveBytesTracker() as tracker:
                    rec = _PhaseRecorder(tracker, lambda: {**_model_parts(model), "inputs": [ids]})
                    tracker.track(*_model_parts(model).values(), ids)
                    with rec.phase("forward"), torch.no_grad():
                        model(input_ids=ids, use_cache=False)

                def fwd():
                    with torch.no_grad():
                        model(input_ids=ids, use_cache=False)

                flops = count_flops(fwd)
            else:
                rec, flops = self._generate(batch, seq, ids)
        return Simulation(self.layers, batch, seq, tuple(rec.phases), int(flops), self.standin_bytes)

    def _generate(self, batch: int, seq: int, ids):
        """Prefill `seq` tokens into a KV cache, grow the cache by new_tokens - 1, decode one token.

        The cache grows through its own `update()` (so sliding-window layers keep what they keep);
        the last decode step, the largest, runs for real. Logits for the last position only, as
        `generate()` asks for them.
        """
        from memprof.measure.profile_worker import count_flops
        from memprof.measure.tracker import LiveBytesTracker

        torch = self._torch
        model = self.model
        state: dict = {}
        with LiveBytesTracker() as tracker:
            rec = _PhaseRecorder(
                tracker,
                lambda: {**_model_parts(model), "inputs": [ids], "kv_cache": _cache_tensors(state.get("cache"))},
            )
            tracker.track(*_model_parts(model).values(), ids)
            with torch.no_grad():
                with rec.phase("prefill"):
                    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                    state["cache"] = out.past_key_values
                    del out
                grow = self.spec.new_tokens - 1
                cache = state["cache"]
                if grow > 0:
                    for i, layer in enumerate(cache.layers):
                        k, v = layer.keys, layer.values
                        shape = (k.shape[0], k.shape[1], grow, k.shape[3])
                        cache.update(
                            torch.empty(shape, dtype=k.dtype), torch.empty(shape[:3] + (v.shape[3],), dtype=v.dtype), i
                        )
                step_ids = ids[:, -1:]
                with rec.phase("decode"):
                    model(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)

        def prefill():
            with torch.no_grad():
                model(input_ids=ids, use_cache=True, logits_to_keep=1)

        def decode():
            with torch.no_grad():
                model(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)

        # FLOPs of the whole generation: prefill + new_tokens decode steps, each costed at the last
        # (longest-cache) step: an upper bound within one step's attention FLOPs per token.
        flops = count_flops(prefill) + self.spec.new_tokens * count_flops(decode)
        return rec, flops


# ---------------------------------------------------------------------------------------------
# extrapolation and fit


def _affine(v1: int, v2: int, step: int, target: int) -> int:
    return v1 + (v2 - v1) * target // step


def extrapolate(a: Simulation, b: Simulation, layers: int) -> Simulation:
    """Exactly affine extrapolation in layer count from simulations at a.layers and b.layers."""
    step = b.layers - a.layers
    d = layers - a.layers
    phases = []
    for pa, pb in zip(a.phases, b.phases, strict=True):
        breakdown = {c: pa.breakdown[c] + (pb.breakdown[c] - pa.breakdown[c]) * d // step for c in CATEGORIES}
        phases.append(PhasePeak(pa.phase, sum(breakdown.values()), breakdown))
    return Simulation(
        layers=layers,
        batch=a.batch,
        seq=a.seq,
        phases=tuple(phases),
        flops=a.flops + (b.flops - a.flops) * d // step,
        standin_weight_bytes=a.standin_weight_bytes + (b.standin_weight_bytes - a.standin_weight_bytes) * d // step,
    )


def _basis(b: int, s: int) -> list[int]:
    return [1, b, s, b * s, s * s, b * s * s]


@dataclass(frozen=True)
class StepFit:
    """Each phase's breakdown and the FLOPs as exact polynomials in FIT_BASIS of (batch, seq)."""

    layers: int
    phase_names: tuple[str, ...]
    coefficients: dict[str, dict[str, list[float]]]  # phase -> category -> FIT_BASIS coefficients
    flops_coefficients: list[float]
    standin_weight_bytes: int
    fit_points: tuple[tuple[int, int], ...]
    max_fit_error_bytes: int = 0  # at the check points (not fitted on)
    check_points: tuple[tuple[int, int], ...] = ()

    def at(self, batch: int, seq: int) -> Simulation:
        x = _basis(batch, seq)

        def ev(coefs: list[float]) -> int:
            return max(0, round(sum(c * v for c, v in zip(coefs, x, strict=True))))

        phases = []
        for name in self.phase_names:
            breakdown = {c: ev(self.coefficients[name][c]) for c in CATEGORIES}
            phases.append(PhasePeak(name, sum(breakdown.values()), breakdown))
        return Simulation(
            self.layers, batch, seq, tuple(phases), ev(self.flops_coefficients), self.standin_weight_bytes
        )


def fit_points(batch: int, seq: int) -> tuple[tuple[int, int], ...]:
    """Six points that determine the 6-term polynomial: two batches x three sequence lengths, from the
    requested point upwards (sweeps look for the largest batch / context that fits)."""
    s0 = max(4, seq)
    seqs = (s0, 2 * s0, 4 * s0)
    batches = (batch, batch + 1)
    return tuple((b, s) for b in batches for s in seqs)


def fit(sims: list[Simulation]) -> StepFit:
    """Solve the 6-term polynomial of every phase/category from six simulations (exact linear solve)."""
    import numpy as np

    a = np.array([_basis(s.batch, s.seq) for s in sims], dtype=np.float64)
    names = tuple(p.phase for p in sims[0].phases)

    def solve(values: list[int]) -> list[float]:
        return [float(c) for c in np.linalg.lstsq(a, np.array(values, dtype=np.float64), rcond=None)[0]]

    coefficients = {
        name: {c: solve([s.phases[i].breakdown[c] for s in sims]) for c in CATEGORIES} for i, name in enumerate(names)
    }
    return StepFit(
        layers=sims[0].layers,
        phase_names=names,
        coefficients=coefficients,
        flops_coefficients=solve([s.flops for s in sims]),
        standin_weight_bytes=sims[0].standin_weight_bytes,
        fit_points=tuple((s.batch, s.seq) for s in sims),
    )


# ---------------------------------------------------------------------------------------------
# the cached entry point


def _versions() -> dict:
    out = {"format": SIM_FORMAT}
    for dist in ("torch", "transformers", "peft"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cache_path(config: dict, spec: StepSpec, kind: str, extra: dict):
    payload = {"config": config_key(config), "spec": spec.key(), "kind": kind, **extra, **_versions()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "simulations" / f"{digest}.json"


def _cached(path, compute):
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, OSError):
            return json.loads(path.read_text())
    data = compute()
    with contextlib.suppress(OSError):  # a read-only cache only costs the recomputation
        write_json_atomic(path, data)
    return data


@dataclass(frozen=True)
class ModelFit:
    """The step of the whole model as a polynomial in (batch, seq): depth already extrapolated."""

    layers: int
    simulated_layers: tuple[int, ...]
    fit: StepFit
    direct: Simulation  # extrapolated direct simulation at the requested (batch, seq)
    fit_error_bytes: int  # |fit - direct| at the requested point, max over phases (not a fit point)
    from_cache: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def simulate_model(
    config: dict,
    spec: StepSpec,
    *,
    batch: int,
    seq: int,
    layers: int | None = None,
    trust_remote_code: bool = False,
    use_cache: bool = True,
) -> ModelFit:
    """Simulate MODEL's step at reduced depth, extrapolate to `layers` (default: the config's), and fit
    the (batch, seq) polynomial; checks the fit against a direct simulation at (batch, seq)."""
    total_layers = layers if layers is not None else layer_count(config)
    period = layer_period(config)
    # Depth 1 is a special case (e.g. generation's peak moves), so 2 and 3 periods; shallow models directly.
    depths = (2 * period, 3 * period) if total_layers > 3 * period else (total_layers,)
    points = fit_points(batch, seq)
    check = (batch + 2, 3 * max(4, seq) + 1)
    extra = {"depths": list(depths), "points": [list(p) for p in points], "check": list(check)}
    path = _cache_path(config, spec, "fit", extra)
    hit = path.is_file()

    def compute() -> dict:
        per_depth = {}
        for depth in depths:
            sim = StepSimulator(config, spec, layers=depth, trust_remote_code=trust_remote_code)
            per_depth[depth] = [sim.run(b, s).to_json() for b, s in (*points, check)]
            del sim
        return {"per_depth": {str(k): v for k, v in per_depth.items()}}

    data = _cached(path, compute) if use_cache else compute()
    lo = [Simulation.from_json(d) for d in data["per_depth"][str(depths[0])]]
    if len(depths) == 1:
        full = lo
    else:
        hi = [Simulation.from_json(d) for d in data["per_depth"][str(depths[1])]]
        full = [extrapolate(a, b, total_layers) for a, b in zip(lo, hi, strict=True)]
    step_fit = fit(full[:-1])
    check_sim = full[-1]
    fitted = step_fit.at(*check)
    err = max(abs(p.peak_bytes - q.peak_bytes) for p, q in zip(fitted.phases, check_sim.phases, strict=True))
    step_fit = StepFit(**{**step_fit.__dict__, "max_fit_error_bytes": err, "check_points": (check,)})
    direct_index = points.index((batch, max(4, seq))) if (batch, max(4, seq)) in points else None
    direct = full[direct_index] if direct_index is not None and seq >= 4 else step_fit.at(batch, seq)
    return ModelFit(
        layers=total_layers,
        simulated_layers=depths,
        fit=step_fit,
        direct=direct,
        fit_error_bytes=err,
        from_cache=hit,
    )
