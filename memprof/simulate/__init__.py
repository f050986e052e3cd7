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
equals the profiler's measured live-tensor peak (tests/test_simulate.py proves it).

bitsandbytes layers are simulated for real: transformers swaps them in as from_pretrained does, each
weight is quantized by bitsandbytes' own functions under FakeTensorMode (its fake kernels give the
packed weight and quant state their real shapes), and the step runs its real autograd functions
(MatMul4Bit, MatMul8bitLt on CUDA / MatMul8bitFp on the CPU) and peft's bitsandbytes LoRA layers.

bitsandbytes' 8-bit AdamW (`--optimizer adamw8bit`, `paged_adamw8bit`) runs for real too: its own
`init_state` makes the states in the warm-up step (uint8 state1/state2 and float32 absmax1/absmax2
per 256-element block for tensors of at least `min_8bit_size` = 4,096 elements, float32 state1/state2
below that; the two 256-entry float32 code tables qmap1/qmap2 are one pair per optimizer, shared by
all its parameters), and its update is bitsandbytes' fake kernel, which allocates nothing, like the
fused CUDA kernel. Its CPU kernel is Python whose float32 working copies live inside the op, where no
dispatch mode sees them: the profiler's tracker does not count them either. Paged states are made as
on the CPU (the simulation's tensors are CPU tensors): ordinary tensors of the same bytes.

What the simulation cannot see:
- Inside bitsandbytes' kernels: gemm_4bit dequantizes the weight to the compute dtype, and
  int8_scaled_mm makes an int32 product, in buffers no trace sees (plan.py adds them:
  `dequant_transient_bytes`). LLM.int8()'s outlier decomposition depends on the data (the fake
  kernels give it a dynamic size), so int8 runs without it: its outlier columns are not counted.
- The CUDA caching allocator (fragmentation, block rounding), kernel workspaces (cuBLAS,
  flash-attention) and the CUDA context: they are not tensors. The context is a per-GPU constant
  in catalog/gpus.json; fragmentation is not modelled (see plan notes).
- CUDA-only kernel choices: the simulation runs CPU dispatch. AdamW's CUDA default (foreach) is
  reproduced by passing foreach=True when planning for CUDA; scaled_dot_product_attention's
  CUDA backends (flash / memory-efficient) are not, the CPU flash kernel's tensors are traced.

Scaling: a step's live bytes at any moment are sums of tensors whose sizes are products of
{1, b} and {1, s, s^2} (batch appears at most once in a shape, sequence at most twice: attention
scores and masks), so each moment's bytes are exactly a polynomial in the basis FIT_BASIS. A
phase's peak is the largest of its moments, and which moment is largest changes with (b, s) (e.g.
the logits' grads for long inputs, the embedding's grads for short ones), so `fit` solves every
moment's polynomial from 6 simulated points (the moments line up: the same ops run at every
(b, s) >= 2) and takes the largest at the point asked for; moments no (b, s) can make the largest
are pruned first. Phases are split into regions (`_Regions`: LM head, top and bottom layers,
embeddings) so that moments line up across depths too. Batch 1 can take other ops than larger
batches (views instead of copies); it gets its own fit where it does. `ModelFit.fit_error_bytes`
reports the error at a point the fit was not solved on. Depth: with identical layers (or identical
groups of `layer_types`), every category of bytes and the FLOPs are affine in the layer count, so a
70B model is simulated at 2 and 3 layers (or groups; depth 1 is a special case) and extrapolated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import metadata

from memprof.inventory import config_key
from memprof.io import cache_dir, write_json_atomic
from memprof.simulate.config import (
    LAYER_ATTRIBUTE_KEYS,
    layer_count,
    layer_period,
    max_positions,
    seq_ranges,
    sliding_window,
    with_layers,
)
from memprof.simulate.fake_model import build_step_model, prepare_step_model
from memprof.simulate.fit import StepFit, _peak_error, check_point, extrapolate, fit, fit_points, prune_moments
from memprof.simulate.simulator import StepSimulator
from memprof.simulate.spec import CATEGORIES, OPTIMIZERS, TASKS, PhasePeak, Simulation, StepSpec

SIM_FORMAT = 10  # 9: FLOPs count the CPU attention kernel; 10: loss lives through the optimizer, --precision


# ---------------------------------------------------------------------------------------------
# the cached entry point


def _versions() -> dict:
    """What a cached simulation depends on besides config and spec: memprof's own code (its version)
    and every library whose modules the step runs (bitsandbytes: the quantized settings' layers)."""
    from memprof import version  # at call time, so a test can change the version

    out = {"format": SIM_FORMAT, "memprof": version.__version__}
    for dist in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cache_key(config: dict, spec: StepSpec, kind: str, extra: dict) -> tuple[str, dict]:
    """A cache entry's file name and the payload it is the digest of (kept in the entry, so a shipped
    one can be checked against the versions and spec it was made for)."""
    payload = {"config": config_key(config), "spec": spec.key(), "kind": kind, **extra, **_versions()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    return f"{digest}.json", payload


def _cache_path(config: dict, spec: StepSpec, kind: str, extra: dict):
    return cache_dir() / "simulations" / _cache_key(config, spec, kind, extra)[0]


def _entries(name: str) -> Iterator[dict]:
    """The cache entry `name` from the user's cache, then from the simulations shipped for the catalog
    (catalog/simulations: what a default `memprof plan` of each catalog model leaves in the cache,
    made by `python -m memprof.catalog.regenerate`). The name is the digest of the whole key
    (config, spec, points, memprof/torch/transformers/peft/bitsandbytes versions): an entry is only
    ever read for exactly the key it was made for."""
    from memprof.catalog import SIMULATIONS_DIR

    for folder in (cache_dir() / "simulations", SIMULATIONS_DIR):
        path = folder / name
        if path.is_file():
            with contextlib.suppress(ValueError, OSError):
                yield json.loads(path.read_text())


def _read_entry(name: str) -> dict | None:
    return next(_entries(name), None)


def _write_entry(name: str, data: dict) -> None:
    with contextlib.suppress(OSError):  # a read-only cache only costs the recomputation
        write_json_atomic(cache_dir() / "simulations" / name, data)


@dataclass(frozen=True)
class ModelFit:
    """The step of the whole model at any (batch, seq): a fit per simulated depth, extrapolated in depth."""

    layers: int
    simulated_layers: tuple[int, ...]
    fits: tuple[StepFit, ...]  # one per simulated depth
    # the step at the requested (batch, seq): a direct simulation (extrapolated in depth), or with
    # from_fit the fit's value there
    direct: Simulation
    fit_error_bytes: int  # |fit - simulation| at points the fit was not solved on, max over phases
    from_cache: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    seq_range: tuple[int, int] = (1, 1 << 20)  # the prompt lengths the fit holds for (seq_ranges)
    # `direct` is the fit's value, not a simulation of that point: an earlier simulation's fit (of the
    # same config and spec) holds for this (batch, seq) and was exact at its check point
    # (fit_error_bytes 0); also for seq < 4, which is always read off the fit
    from_fit: bool = False
    # the (batch, seq) whose simulation made the fits (the requested one, unless from_fit)
    fitted_at: tuple[int, int] = (0, 0)
    # the batch >= 2 fit's error at its check point (part of fit_error_bytes), with every phase's
    # breakdown fitted category by category counted too (what a from_fit answer reports)
    check_error_bytes: int = 0
    # batch 1 against the batch >= 2 fit at the requested seq (part of fit_error_bytes); None where
    # that was not checked (fitted at batch >= 2, or batch 1 has its own fit)
    batch1_error_bytes: int | None = None

    def at(self, batch: int, seq: int) -> Simulation:
        """The fitted step at (batch, seq) with `layers` layers (each depth's fit, extrapolated exactly)."""
        sims = [f.at(batch, seq) for f in self.fits]
        return sims[0] if len(sims) == 1 else extrapolate(sims[0], sims[1], self.layers)

    def breakdown_at(self, batch: int, seq: int) -> Simulation | None:
        """The step at (batch, seq) from every phase's breakdown at its peak fitted category by category
        (what a direct simulation reports), where that agrees with the moments' fit on every phase's
        peak; None where it does not (the peak moved to another moment)."""
        plain = replace(self, fits=tuple(_breakdown_only(f) for f in self.fits)).at(batch, seq)
        moments = self.at(batch, seq)
        if [p.peak_bytes for p in plain.phases] != [p.peak_bytes for p in moments.phases]:
            return None
        return plain

    @property
    def batch1_exact(self) -> bool:
        """Whether batch 1 is exactly on the batch >= 2 fit: it was simulated at batch 1, and the fit
        missed it by 0 bytes."""
        return self.batch1_error_bytes == 0


@dataclass(frozen=True)
class _Request:
    """What a fit at (batch, seq) is made from: the depths, the fitted range, its points."""

    batch: int
    seq: int
    total_layers: int
    depths: tuple[int, ...]
    seq_range: tuple[int, int]
    points: tuple[tuple[int, int], ...]
    check: tuple[int, int]
    requested: tuple[int, int]
    batch1: tuple[tuple[int, int], ...]

    @classmethod
    def make(cls, config: dict, spec: StepSpec, batch: int, seq: int, total_layers: int) -> _Request:
        period = layer_period(config)
        # Depth 1 is a special case (e.g. generation's peak moves), so 2 and 3 periods; shallow models directly.
        depths = (2 * period, 3 * period) if total_layers > 3 * period else (total_layers,)
        ranges = seq_ranges(config, spec.new_tokens)
        lo, hi = next((r for r in ranges if r[0] <= seq <= r[1]), ranges[-1])
        points = fit_points(batch, seq, lo, hi)
        batch1 = tuple((1, s) for s in sorted({s for _, s in points})) if batch == 1 else ()
        return cls(
            batch, seq, total_layers, depths, (lo, hi), points, check_point(points), (batch, max(4, seq)), batch1
        )

    def key_extra(self) -> dict:
        """The key of this request's simulations (the format of SIM_FORMAT 10's cache)."""
        return {
            "depths": list(self.depths),
            "points": [list(p) for p in self.points],
            "check": list(self.check),
            "batch": self.batch,
        }

    def index_extra(self) -> dict:
        """The key of the fits made for this range at these depths, whatever (batch, seq) made them."""
        return {"depths": list(self.depths), "seq_range": list(self.seq_range)}


def _breakdown_only(step_fit: StepFit) -> StepFit:
    batch1 = _breakdown_only(step_fit.batch1) if step_fit.batch1 is not None else None
    return replace(step_fit, moment_coefficients={}, batch1=batch1)


def _breakdown_error(fitted: Simulation | None, direct: Simulation) -> int:
    if fitted is None:
        return max(p.peak_bytes for p in direct.phases)
    return max(
        abs(p.breakdown[c] - q.breakdown[c])
        for p, q in zip(fitted.phases, direct.phases, strict=True)
        for c in CATEGORIES
    )


def _model_fit(data: dict, req: _Request) -> ModelFit:
    """The fits and the direct answer from a request's simulations (`data`, a cache entry)."""
    depths = req.depths
    per_depth = [
        {(d["batch"], d["seq"]): Simulation.from_json(d) for d in data["per_depth"][str(depth)]} for depth in depths
    ]
    points, check, requested, batch1 = req.points, req.check, req.requested, req.batch1
    own_batch1 = bool(batch1) and all(p in per_depth[0] for p in batch1)
    fits = tuple(fit([sims[p] for p in points], [sims[p] for p in batch1] if own_batch1 else ()) for sims in per_depth)

    def simulated(point) -> Simulation:
        if len(depths) == 1:
            return per_depth[0][point]
        return extrapolate(per_depth[0][point], per_depth[1][point], req.total_layers)

    model_fit = ModelFit(
        req.total_layers,
        depths,
        fits,
        simulated(requested),
        0,
        seq_range=req.seq_range,
        fitted_at=(req.batch, req.seq),
    )
    err = _peak_error(model_fit.at(*check), simulated(check))
    check_err = max(err, _breakdown_error(model_fit.breakdown_at(*check), simulated(check)))
    batch1_err = None
    if req.batch == 1 and not own_batch1:  # batch 1 from the batch >= 2 fit: its error counts too
        batch1_err = _peak_error(model_fit.at(*requested), simulated(requested))
        err = max(err, batch1_err)
    fits = tuple(replace(f, max_fit_error_bytes=err, check_points=(check,)) for f in fits)
    model_fit = replace(
        model_fit, fits=fits, fit_error_bytes=err, check_error_bytes=check_err, batch1_error_bytes=batch1_err
    )
    if req.seq >= 4:
        return replace(model_fit, direct=simulated(requested))
    return replace(model_fit, direct=model_fit.at(req.batch, req.seq), from_fit=True)


def _from_an_exact_fit(config: dict, spec: StepSpec, req: _Request) -> ModelFit | None:
    """The requested step read off a fit made earlier for the same config, spec, depths and range
    (listed in the cache's index of them, or the shipped one), where that fit is exact: it missed its
    check point by 0 bytes, and for batch 1 it was made at batch 1 and missed batch 1 by 0 bytes."""
    name, _ = _cache_key(config, spec, "fits", req.index_extra())
    for index in _entries(name):
        for entry in index.get("fits", ()):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if entry["check_error_bytes"] != 0 or (req.batch == 1 and not entry["batch1_exact"]):
                    continue
                made = _Request.make(config, spec, int(entry["batch"]), int(entry["seq"]), req.total_layers)
                if made.depths != req.depths or made.seq_range != req.seq_range:
                    continue
                data = _read_entry(_cache_key(config, spec, "fit", made.key_extra())[0])
                if data is None:
                    continue
                model_fit = _model_fit(data, made)
                if model_fit.check_error_bytes != 0 or (req.batch == 1 and not model_fit.batch1_exact):
                    continue  # the entry's own simulations decide, not the index
                direct = model_fit.breakdown_at(req.batch, req.seq)
                if direct is None:
                    continue
                return replace(model_fit, direct=direct, from_cache=True, from_fit=True)
    return None


def _index_fit(config: dict, spec: StepSpec, req: _Request, model_fit: ModelFit) -> None:
    """Add a fit just made to the cache's index of the fits of its range (see _from_an_exact_fit)."""
    name, payload = _cache_key(config, spec, "fits", req.index_extra())
    path = cache_dir() / "simulations" / name
    fits = []
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            fits = [e for e in json.loads(path.read_text())["fits"] if [e["batch"], e["seq"]] != [req.batch, req.seq]]
    entry = {"batch": req.batch, "seq": req.seq, "check_error_bytes": model_fit.check_error_bytes}
    fits.append({**entry, "batch1_exact": model_fit.batch1_exact})
    _write_entry(name, {"fits": fits, "key": payload})


def simulate_model(
    config: dict,
    spec: StepSpec,
    *,
    batch: int,
    seq: int,
    layers: int | None = None,
    trust_remote_code: bool = False,
    use_cache: bool = True,
    on_progress=None,
) -> ModelFit:
    """Simulate MODEL's step at reduced depth, fit each depth's (batch, seq) polynomials, and
    extrapolate to `layers` (default: the config's); checks the fit against a direct simulation at a
    point it was not solved on. The requested (batch, seq) is simulated directly, unless (with
    `use_cache`) a fit made earlier for the same config and spec holds for it and was exact: then it
    is read off that fit (`from_fit`), without importing torch.

    Batch 1: when the batch >= 2 fit misses the direct simulation at (1, seq) by more than 1/10,000
    of a phase's peak, batch 1 gets its own fit in seq (two more points). `on_progress(message)` is
    told what is being simulated (nothing when the cache answers).
    """
    total_layers = layers if layers is not None else layer_count(config)
    req = _Request.make(config, spec, batch, seq, total_layers)
    depths, points, check, requested, batch1 = req.depths, req.points, req.check, req.requested, req.batch1
    name, payload = _cache_key(config, spec, "fit", req.key_extra())

    say = on_progress or (lambda _message: None)

    def compute() -> dict:
        simulators = {}
        for d in depths:
            say(f"building the fake model at {d} layers")
            simulators[d] = StepSimulator(config, spec, layers=d, trust_remote_code=trust_remote_code)
        runs: dict[int, dict[tuple[int, int], Simulation]] = {d: {} for d in depths}

        def run_all(wanted) -> None:
            for depth, simulator in simulators.items():
                todo = [p for p in dict.fromkeys(wanted) if p not in runs[depth]]
                for i, point in enumerate(todo, 1):
                    say(f"simulating the step at {depth} layers, batch {point[0]} × seq {point[1]:,} ({i}/{len(todo)})")
                    runs[depth][point] = simulator.run(*point)

        run_all((requested, *points, check))
        if batch == 1 and any(_batch1_differs(runs[d], points) for d in depths):
            run_all(batch1)
        out = {}
        for depth, sims in runs.items():
            # keep only the moments the fits need (see prune_moments): the cache stays small
            groups = [list(points)] + ([list(batch1)] if batch1 and all(p in sims for p in batch1) else [])
            kept = {}
            for group in groups:
                kept.update(zip(group, prune_moments([sims[p] for p in group]), strict=True))
            out[str(depth)] = [kept.get(p, replace(sim, moments={})).to_json() for p, sim in sims.items()]
        return {"per_depth": out, "key": payload}

    if not use_cache:
        return _model_fit(compute(), req)
    data = _read_entry(name)
    if data is not None:
        return replace(_model_fit(data, req), from_cache=True)
    reused = _from_an_exact_fit(config, spec, req)
    if reused is not None:
        return reused
    data = compute()
    _write_entry(name, data)
    model_fit = _model_fit(data, req)
    _index_fit(config, spec, req, model_fit)
    return model_fit


def _batch1_differs(runs: dict[tuple[int, int], Simulation], points) -> bool:
    """Whether batch 1 is not on the batch >= 2 fit (by more than 1/10,000 of a phase's peak)."""
    step_fit = fit([runs[p] for p in points])
    (s0,) = {s for b, s in runs if b == 1}
    direct = runs[(1, s0)]
    fitted = step_fit.at(1, s0)
    return any(
        abs(p.peak_bytes - q.peak_bytes) * 10_000 > q.peak_bytes
        for p, q in zip(fitted.phases, direct.phases, strict=True)
    )


__all__ = [
    "build_step_model",
    "check_point",
    "extrapolate",
    "fit",
    "fit_points",
    "LAYER_ATTRIBUTE_KEYS",
    "layer_count",
    "max_positions",
    "ModelFit",
    "OPTIMIZERS",
    "PhasePeak",
    "prepare_step_model",
    "prune_moments",
    "seq_ranges",
    "simulate_model",
    "Simulation",
    "sliding_window",
    "StepFit",
    "StepSimulator",
    "StepSpec",
    "TASKS",
    "with_layers",
]
