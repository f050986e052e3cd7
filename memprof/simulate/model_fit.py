"""simulate_model, the cached entry point: the whole model's step at (batch, seq) as a ModelFit (a fit
per reduced depth, extrapolated to the model's, checked at a point it was not solved on), simulated,
read from the cache, or read off an earlier exact fit of the same range without importing torch."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace

from memprof.errors import MemprofError, SimulationError, short_message
from memprof.simulate.cache import _cache_key, _entries, _read_entry, _write_entry, user_entry_path
from memprof.simulate.config import layer_count, layer_period, seq_ranges
from memprof.simulate.fit import StepFit, _peak_error, check_point, extrapolate, fit, fit_points, prune_moments
from memprof.simulate.simulator import StepSimulator
from memprof.simulate.spec import CATEGORIES, Simulation, StepSpec
from memprof.simulate.workers import run_in_processes, shares, step_processes


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


def _entry_simulations(data: dict, depths) -> list[dict[tuple[int, int], Simulation]]:
    """A cache entry's simulations, one {(batch, seq): Simulation} per depth."""
    return [
        {(d["batch"], d["seq"]): Simulation.from_json(d) for d in data["per_depth"][str(depth)]} for depth in depths
    ]


def _entry_per_depth(runs: dict[int, dict[tuple[int, int], Simulation]], groups) -> dict[str, list]:
    """A cache entry's "per_depth" from the steps run: every simulation, with only the moments the
    fits of `groups` (point lists, each fitted together) need (see prune_moments): the cache stays
    small; a point in no group keeps none."""
    out = {}
    for depth, sims in runs.items():
        kept = {}
        for group in groups:
            if all(p in sims for p in group):
                kept.update(zip(group, prune_moments([sims[p] for p in group]), strict=True))
        out[str(depth)] = [kept.get(p, replace(sim, moments={})).to_json() for p, sim in sims.items()]
    return out


def _extrapolated(per_depth: list[dict], point: tuple[int, int], layers: int) -> Simulation:
    """The step at `point` at `layers` layers, from its simulations at the (one or two) simulated depths."""
    if len(per_depth) == 1:
        return per_depth[0][point]
    return extrapolate(per_depth[0][point], per_depth[1][point], layers)


def _model_fit(data: dict, req: _Request) -> ModelFit:
    """The fits and the direct answer from a request's simulations (`data`, a cache entry)."""
    depths = req.depths
    per_depth = _entry_simulations(data, depths)
    points, check, requested, batch1 = req.points, req.check, req.requested, req.batch1
    own_batch1 = bool(batch1) and all(p in per_depth[0] for p in batch1)
    fits = tuple(fit([sims[p] for p in points], [sims[p] for p in batch1] if own_batch1 else ()) for sims in per_depth)

    def simulated(point) -> Simulation:
        return _extrapolated(per_depth, point, req.total_layers)

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


def _exact_entries(config: dict, spec: StepSpec, req: _Request):
    """(request, cache entry, ModelFit) of every fit made earlier for the same config, spec, depths
    and range (listed in the cache's index of them, or the shipped one) that was exact at its check
    point, as its own simulations say (not the index)."""
    name, _ = _cache_key(config, spec, "fits", req.index_extra())
    for index in _entries(name):
        for entry in index.get("fits", ()):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if entry["check_error_bytes"] != 0:
                    continue
                made = _Request.make(config, spec, int(entry["batch"]), int(entry["seq"]), req.total_layers)
                if made.depths != req.depths or made.seq_range != req.seq_range:
                    continue
                data = _read_entry(_cache_key(config, spec, "fit", made.key_extra())[0])
                if data is None:
                    continue
                model_fit = _model_fit(data, made)
                if model_fit.check_error_bytes == 0:
                    yield made, data, model_fit


def _from_an_exact_fit(config: dict, spec: StepSpec, req: _Request) -> ModelFit | None:
    """The requested step read off an exact fit made earlier (_exact_entries); for batch 1, one whose
    fit holds batch 1 exactly too: made at batch 1 and on the batch >= 2 polynomial there, or given
    batch 1's own checked fit later (_complete_batch1)."""
    for made, _data, model_fit in _exact_entries(config, spec, req):
        if req.batch == 1 and not model_fit.batch1_exact:
            model_fit = _with_batch1_fit(config, spec, made, model_fit)
            if model_fit is None:
                continue
        direct = model_fit.breakdown_at(req.batch, req.seq)
        if direct is not None:
            return replace(model_fit, direct=direct, from_cache=True, from_fit=True)
    return None


def _batch1_request(made: _Request) -> tuple[tuple[tuple[int, int], ...], tuple[int, int]]:
    """Batch 1's own fit for the range of `made`: its three lengths, and the length it is checked at
    (the batch >= 2 fit's check length, between the two longest)."""
    seqs = sorted({s for _, s in made.points})
    return tuple((1, s) for s in seqs), (1, made.check[1])


def _batch1_key(config: dict, spec: StepSpec, made: _Request) -> tuple[str, dict]:
    points, check = _batch1_request(made)
    return _cache_key(config, spec, "fit1", {**made.key_extra(), "batch1": [list(p) for p in (*points, check)]})


def _with_batch1_fit(
    config: dict, spec: StepSpec, made: _Request, model_fit: ModelFit, data: dict | None = None
) -> ModelFit | None:
    """`model_fit` (exact at batch >= 2) with batch 1's own fit from its cache entry ("fit1", made by
    _complete_batch1; `data` where it is at hand), where that fit misses its check point by 0 bytes;
    else None."""
    data = data if data is not None else _read_entry(_batch1_key(config, spec, made)[0])
    if data is None:
        return None
    points, check = _batch1_request(made)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        per_depth = _entry_simulations(data, made.depths)
        if not all(p in sims for sims in per_depth for p in (*points, check)):
            return None
        fits = tuple(
            replace(f, batch1=fit([sims[p] for p in points])) for f, sims in zip(model_fit.fits, per_depth, strict=True)
        )
        with_batch1 = replace(model_fit, fits=fits)
        simulated = _extrapolated(per_depth, check, made.total_layers)
        error = max(
            _peak_error(with_batch1.at(*check), simulated),
            _breakdown_error(with_batch1.breakdown_at(*check), simulated),
        )
        if error == 0:
            return replace(with_batch1, batch1_error_bytes=0)
    return None


def _complete_batch1(config: dict, spec: StepSpec, req: _Request, say, trust_remote_code: bool) -> ModelFit | None:
    """A batch-1 request where an exact batch >= 2 fit of its range exists but does not hold batch 1
    (transformers' loss makes a view at batch 1 where larger batches copy, 8 bytes a token): simulate
    batch 1's own fit (three lengths) and its check point, 8 steps instead of a first plan's 16, and
    cache them; where that fit is exact, it answers this request and every later batch-1 request of
    the range, without importing torch. None where there is no such fit or batch 1's is not exact."""
    for made, _data, model_fit in _exact_entries(config, spec, req):
        name, payload = _batch1_key(config, spec, made)
        if _read_entry(name) is not None:
            continue  # completed already: its fit does not answer this point (_from_an_exact_fit tried)
        points, check = _batch1_request(made)
        steps = _Steps(config, spec, made.depths, say, trust_remote_code)
        steps.run((*points, check))
        data = {"per_depth": _entry_per_depth(steps.runs, [points]), "key": payload}
        _write_entry(name, data)
        completed = _with_batch1_fit(config, spec, made, model_fit, data)
        if completed is None:
            return None
        direct = completed.breakdown_at(req.batch, req.seq)
        if direct is None:
            return None
        return replace(completed, direct=direct, from_fit=True)
    return None


def _index_fit(config: dict, spec: StepSpec, req: _Request, model_fit: ModelFit) -> None:
    """Add a fit just made to the cache's index of the fits of its range (see _from_an_exact_fit)."""
    name, payload = _cache_key(config, spec, "fits", req.index_extra())
    path = user_entry_path(name)
    fits = []
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            fits = [e for e in json.loads(path.read_text())["fits"] if [e["batch"], e["seq"]] != [req.batch, req.seq]]
    entry = {"batch": req.batch, "seq": req.seq, "check_error_bytes": model_fit.check_error_bytes}
    fits.append({**entry, "batch1_exact": model_fit.batch1_exact})
    _write_entry(name, {"fits": fits, "key": payload})


@contextlib.contextmanager
def model_code_errors(spec: StepSpec, where: str):
    """An error raised by the model's own code (transformers, peft, bitsandbytes) on fake tensors as
    one SimulationError line: what was simulated where, and the library's message."""
    try:
        yield
    except MemprofError:
        raise
    except Exception as exc:  # noqa: BLE001  any library error: the user typed a config, not code
        message = short_message(exc)
        raise SimulationError(
            f"the model's {spec.task} step failed on fake tensors ({where}): {type(exc).__name__}: {message} "
            "(this config may not run in transformers at this shape; try a shorter --seq or check config.json)"
        ) from exc


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
    of a phase's peak, batch 1 gets its own fit in seq (two more points). A later batch-1 request in
    the range of an exact batch >= 2 fit that does not hold batch 1 simulates batch 1's own checked
    fit once (_complete_batch1: 8 steps, not 16) and is read off it, as are the batch-1 requests
    after it. `on_progress(message)` is told what is being simulated (nothing when the cache answers).
    """
    total_layers = layers if layers is not None else layer_count(config)
    req = _Request.make(config, spec, batch, seq, total_layers)
    depths, points, check, requested, batch1 = req.depths, req.points, req.check, req.requested, req.batch1
    name, payload = _cache_key(config, spec, "fit", req.key_extra())

    say = on_progress or (lambda _message: None)

    def compute() -> dict:
        steps = _Steps(config, spec, depths, say, trust_remote_code)
        runs, run_all = steps.runs, steps.run
        run_all((requested, *points, check))
        if batch == 1 and any(_batch1_differs(runs[d], points) for d in depths):
            run_all(batch1)
        groups = [list(points)] + ([list(batch1)] if batch1 else [])  # batch 1's where it was simulated
        return {"per_depth": _entry_per_depth(runs, groups), "key": payload}

    if not use_cache:
        return _model_fit(compute(), req)
    data = _read_entry(name)
    if data is not None:
        return replace(_model_fit(data, req), from_cache=True)
    reused = _from_an_exact_fit(config, spec, req)
    if reused is not None:
        return reused
    if batch == 1:
        completed = _complete_batch1(config, spec, req, say, trust_remote_code)
        if completed is not None:
            return completed
    data = compute()
    _write_entry(name, data)
    model_fit = _model_fit(data, req)
    _index_fit(config, spec, req, model_fit)
    return model_fit


class _Steps:
    """The fake model at each depth (built on first use) and its steps at (batch, seq) points, run
    side by side in forked processes (workers); `runs` holds every step run, depth -> point -> Simulation."""

    def __init__(self, config: dict, spec: StepSpec, depths, say, trust_remote_code: bool) -> None:
        self.config, self.spec, self.depths, self.say = config, spec, tuple(depths), say
        self.trust_remote_code = trust_remote_code
        self.simulators: dict[int, StepSimulator] = {}
        self.runs: dict[int, dict[tuple[int, int], Simulation]] = {d: {} for d in self.depths}

    def _build(self) -> None:
        for d in self.depths:
            if d not in self.simulators:
                self.say(f"building the fake model, {d} layers")
                with model_code_errors(self.spec, f"building the model at {d} layers"):
                    self.simulators[d] = StepSimulator(
                        self.config, self.spec, layers=d, trust_remote_code=self.trust_remote_code
                    )

    def run(self, wanted) -> None:
        """Simulate every point of `wanted` not run yet, at every depth."""
        self._build()
        runs, depths, say, spec = self.runs, self.depths, self.say, self.spec
        wanted = list(dict.fromkeys(wanted))
        # a point's steps at every depth together: they share one process's FakeTensor cache
        groups = [[(d, p) for d in depths if p not in runs[d]] for p in wanted]
        groups = [g for g in groups if g]
        processes = min(step_processes(), len(groups))
        here_total = len(shares(groups, processes)[0]) if groups else 0
        elsewhere = sum(map(len, groups)) - here_total
        done = 0

        def run_one(job, here: bool) -> Simulation:
            nonlocal done
            depth, (b, s) = job
            if here:
                done += 1
                more = f", {elsewhere} in parallel" if elsewhere else ""
                say(f"simulating {depth} layers, batch {b} × seq {s:,} ({done}/{here_total}{more})")
            with model_code_errors(spec, f"at {depth} layers, batch {b} × seq {s:,}"):
                return self.simulators[depth].run(b, s)

        results = run_in_processes(groups, run_one, processes=processes)
        for d in depths:  # in the order one process would have run them: the cache entry's order
            for p in wanted:
                if (d, p) in results:
                    runs[d][p] = results[(d, p)]


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
