"""The step at any (batch, seq) and depth from a few simulations: every moment's live bytes as an exact
polynomial in FIT_BASIS of (batch, seq) (`fit`, StepFit), solved on six points and checked at
another (`fit_points`, `check_point`), and the exact affine extrapolation in the layer count
(`extrapolate`). Why both are exact: the "Scaling" paragraph of memprof.simulate's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from memprof.simulate.spec import CATEGORIES, PhasePeak, Simulation

FIT_BASIS = ("1", "b", "s", "b*s", "s^2", "b*s^2")


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
    )


def _basis(b: int, s: int) -> list[int]:
    return [1, b, s, b * s, s * s, b * s * s]


# Categories that stay the same through a phase; the others (grads, KV cache, activations) are taken
# at the phase's peak moment.
_PHASE_CONSTANT = ("weights", "quant_state", "trainable_params", "optimizer_states", "inputs")


@dataclass(frozen=True)
class StepFit:
    """A step's phases as exact polynomials in FIT_BASIS of (batch, seq), at one depth.

    A phase's peak is the largest of its moments' live bytes (Simulation.moments), each of which is
    exactly such a polynomial; so every moment is fitted and the peak at (batch, seq) is the largest
    of them there, with that moment's grads and KV cache, the phase's constant categories and the rest
    as activations. Where the moments do not line up across the fitted simulations (different ops),
    the phase's peak breakdown is fitted instead, which is exact only while the peak stays at one moment.

    `coefficients` hold for batch >= 2. Batch 1 can differ: some reshapes are views at batch 1 and
    copies above it (e.g. GPT-2's attention under a 4-bit setting); `batch1` is its own fit then.
    """

    layers: int
    phase_names: tuple[str, ...]
    coefficients: dict[str, dict[str, list[float]]]  # phase -> category -> FIT_BASIS coefficients (at the peak)
    flops_coefficients: list[float]
    fit_points: tuple[tuple[int, int], ...]
    max_fit_error_bytes: int = 0  # at the check points (not fitted on)
    check_points: tuple[tuple[int, int], ...] = ()
    # phase -> series ("total", "grads", "kv_cache") -> (moments x FIT_BASIS) coefficients
    moment_coefficients: dict = field(default_factory=dict, compare=False, repr=False)
    batch1: StepFit | None = None

    def at(self, batch: int, seq: int) -> Simulation:
        import numpy as np

        if batch == 1 and self.batch1 is not None:
            return self.batch1.at(batch, seq)
        x = _basis(batch, seq)
        xs = np.array(x, dtype=np.float64)

        def ev(coefs) -> int:
            return max(0, round(sum(c * v for c, v in zip(coefs, x, strict=True))))

        phases = []
        for name in self.phase_names:
            breakdown = {c: ev(self.coefficients[name][c]) for c in CATEGORIES}
            moments = self.moment_coefficients.get(name)
            if moments is not None:
                totals = moments["total"] @ xs
                i = int(np.argmax(totals))
                breakdown = {c: breakdown[c] for c in _PHASE_CONSTANT}
                breakdown["grads"] = max(0, round(float(moments["grads"][i] @ xs)))
                breakdown["kv_cache"] = max(0, round(float(moments["kv_cache"][i] @ xs)))
                breakdown["activations_temporaries"] = max(0, round(float(totals[i])) - sum(breakdown.values()))
                breakdown = {c: breakdown[c] for c in CATEGORIES}
            phases.append(PhasePeak(name, sum(breakdown.values()), breakdown))
        return Simulation(self.layers, batch, seq, tuple(phases), ev(self.flops_coefficients))


def fit_points(batch: int, seq: int, lo: int = 1, hi: int | None = None) -> tuple[tuple[int, int], ...]:
    """Six points that determine the 6-term polynomial: two batches (from `batch`, at least 2) x three
    sequence lengths in [lo, hi] (the range where the step runs the same ops, see `seq_ranges`):
    from the requested one upwards (sweeps look for the largest batch / context that fits), or
    downwards where upwards would pass `hi`."""
    s0 = max(4, seq)
    seqs = (s0, 2 * s0, 4 * s0)
    if hi is not None and 4 * s0 > hi:
        below = max(lo, s0 // 4)
        seqs = (below, (below + s0) // 2, s0) if s0 - below >= 4 else (s0, (s0 + hi) // 2, hi)
        if len(set(seqs)) < 3:  # a range too narrow for three lengths: fit across it
            seqs = (s0, 2 * s0, 4 * s0)
    b0 = max(2, batch)
    return tuple((b, s) for b in (b0, b0 + 1) for s in seqs)


def check_point(points: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """A point the fit is not solved on, between its two longest sequences and past its batches."""
    seqs = sorted({s for _, s in points})
    return (max(b for b, _ in points) + 1, (seqs[-2] + seqs[-1]) // 2 + 1)


def _lstsq(sims: list[Simulation], values):
    """FIT_BASIS coefficients through the simulations' values (one column per series): (series x 6)."""
    import numpy as np

    a = np.array([_basis(s.batch, s.seq) for s in sims], dtype=np.float64)
    return np.linalg.lstsq(a, np.asarray(values, dtype=np.float64), rcond=None)[0].T


def _moment_fit(sims: list[Simulation], name: str) -> dict | None:
    """The phase's moments fitted one by one, or None where they do not line up across `sims`."""
    import numpy as np

    series = [s.moments.get(name) for s in sims]
    if any(m is None for m in series):
        return None
    count = max(len(values) for m in series for values in m.values())
    out = {}
    for key in ("total", "grads", "kv_cache"):
        columns = []
        for m in series:
            values = m.get(key, [0])
            if len(values) not in (1, count):
                return None
            columns.append(values * count if len(values) == 1 else values)
        out[key] = _lstsq(sims, np.array(columns, dtype=np.float64))
    return out


def prune_moments(sims: list[Simulation]) -> list[Simulation]:
    """The simulations with only the moments that can be a phase's peak at some (batch, seq) >= 1.

    A moment whose fitted bytes are, coefficient by coefficient, at most another's is never larger
    than it anywhere (every FIT_BASIS term is >= 0): it is dropped, and the fit is unchanged.
    """
    import numpy as np

    kept: dict[str, list[int]] = {}
    for name in sims[0].moments:
        fitted = _moment_fit(sims, name)
        if fitted is None:
            continue
        # each coefficient as the bytes it adds at the largest fitted point, so that one tolerance
        # (far below a byte per basis unit, far above the solve's rounding) fits them all
        scale = np.array(_basis(max(s.batch for s in sims), max(s.seq for s in sims)), dtype=np.float64)
        totals = fitted["total"] * scale
        eps = 1e-9 * max(1.0, float(np.abs(totals).max()))
        # first against the next moment (most ops only allocate), then pairwise among the rest
        candidates = [i for i in range(len(totals) - 1) if not np.all(totals[i + 1] - totals[i] >= -eps)]
        candidates.append(len(totals) - 1)
        t = totals[candidates]
        diff = t[None, :, :] - t[:, None, :]  # [i, j]: moment j minus moment i
        covers = np.all(diff >= -eps, axis=2)
        larger = np.any(diff > eps, axis=2)
        order = np.arange(len(candidates))
        dominated = covers & (larger | (order[None, :] > order[:, None]))
        np.fill_diagonal(dominated, False)
        kept[name] = [candidates[i] for i in range(len(candidates)) if not dominated[i].any()]

    def pruned(sim: Simulation) -> Simulation:
        moments = {}
        for name, series in sim.moments.items():
            if name not in kept:
                moments[name] = series
                continue
            moments[name] = {k: v if len(v) == 1 else [v[i] for i in kept[name]] for k, v in series.items()}
        return replace(sim, moments=moments)

    return [pruned(sim) for sim in sims]


def fit(sims: list[Simulation], batch1: list[Simulation] = ()) -> StepFit:
    """Solve the 6-term polynomials of every phase, its moments and the FLOPs from six simulations at
    batch >= 2 (exact linear solve), and from `batch1` (three batch-1 simulations at three sequence
    lengths) batch 1's own fit."""
    sims = list(sims)
    names = tuple(p.phase for p in sims[0].phases)
    coefficients = {}
    for i, name in enumerate(names):
        rows = _lstsq(sims, [[s.phases[i].breakdown[c] for c in CATEGORIES] for s in sims])
        coefficients[name] = {c: [float(v) for v in rows[j]] for j, c in enumerate(CATEGORIES)}
    moments = {name: m for name in names if (m := _moment_fit(sims, name)) is not None}
    return StepFit(
        layers=sims[0].layers,
        phase_names=names,
        coefficients=coefficients,
        flops_coefficients=[float(v) for v in _lstsq(sims, [[s.flops] for s in sims])[0]],
        fit_points=tuple((s.batch, s.seq) for s in (*sims, *batch1)),
        moment_coefficients=moments,
        batch1=fit(list(batch1)) if batch1 else None,
    )


def _peak_error(fitted: Simulation, direct: Simulation) -> int:
    return max(abs(p.peak_bytes - q.peak_bytes) for p, q in zip(fitted.phases, direct.phases, strict=True))
