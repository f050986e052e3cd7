"""Live bytes over a step, by kind: the tracker's exact series, downsampled to a bounded timeline.

The tracker numbers every change to the live bytes (a storage born, freed or resized) as an event;
`LiveBytesTracker.kind_series` gives every kind's bytes after every event, exactly. A step has
10^5-10^6 events, so the saved `Timeline` keeps at most `max_points` of them, chosen by `downsample`:
always the first and last, the peak (so the largest kept total IS the peak, byte for byte), each
phase's peak and its boundaries, then the highest and lowest point of equal slices of what remains,
so every local maximum wider than a slice survives. The x axis is the event number, as in PyTorch's
memory snapshot viewer.

No torch import here: the tracker is passed in, and the dataclasses load from JSON anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_MAX_POINTS = 200


@dataclass(frozen=True)
class TimelinePoint:
    """The live bytes after one event, in all and by kind (the kinds sum to `bytes`)."""

    event: int
    bytes: int
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TimelinePhase:
    """A phase's span of events: `start_event` is the state on entry, `end_event` the last in it."""

    name: str
    start_event: int
    end_event: int


@dataclass(frozen=True)
class Timeline:
    """A bounded sample of the live bytes over a run of events, with its phases and its exact peak.

    `kinds` is the stacking order (every point's `kinds` has these keys); the largest `bytes` among
    `points` equals `peak_bytes`, at `peak_event`."""

    points: tuple[TimelinePoint, ...]
    phases: tuple[TimelinePhase, ...]
    peak_event: int
    peak_bytes: int
    kinds: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes,
            "peak_event": self.peak_event,
            "kinds": list(self.kinds),
            "phases": [{"name": p.name, "start_event": p.start_event, "end_event": p.end_event} for p in self.phases],
            "points": [{"event": p.event, "bytes": p.bytes, "kinds": dict(p.kinds)} for p in self.points],
        }

    @classmethod
    def from_json(cls, data: dict) -> Timeline:
        points = tuple(
            TimelinePoint(int(p["event"]), int(p["bytes"]), {k: int(v) for k, v in p.get("kinds", {}).items()})
            for p in data["points"]
        )
        phases = tuple(
            TimelinePhase(str(p["name"]), int(p["start_event"]), int(p["end_event"])) for p in data.get("phases", ())
        )
        kinds = tuple(data.get("kinds") or (points[0].kinds if points else ()))
        return cls(points, phases, int(data["peak_event"]), int(data["peak_bytes"]), kinds)


def downsample(
    totals: Sequence[int],
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    start: int = 0,
    end: int | None = None,
    phases: Iterable[tuple[int, int]] = (),
) -> list[int]:
    """Indices into `totals` (ascending, within start..end inclusive) to keep: at most `max_points`.

    A range of at most `max_points` is kept whole. Otherwise kept, by priority until the budget runs out: the first and last index and the first index of the
    maximum (always: `max_points` must be >= 3); each phase's peak (phases given as (start, end)
    index spans, clipped to the range; highest peaks first); the phases' boundaries; then, with what
    budget is left, the first maximum and minimum of each of equal slices of the range.
    """
    if max_points < 3:
        raise ValueError("max_points must be at least 3 (the first, the last and the peak)")
    end = len(totals) - 1 if end is None else end
    if not 0 <= start <= end < len(totals):
        raise ValueError(f"range {start}..{end} is not within the {len(totals)} totals")
    if end - start + 1 <= max_points:
        return list(range(start, end + 1))  # short enough to keep whole
    get = totals.__getitem__
    peak = max(range(start, end + 1), key=get)  # max() returns the first of equal maxima
    keep = dict.fromkeys([start, peak, end])
    spans = [(max(a, start), min(b, end)) for a, b in phases if b >= start and a <= end]
    phase_peaks = sorted((max(range(a, b + 1), key=get) for a, b in spans), key=lambda i: (-totals[i], i))
    boundaries = sorted({i for span in spans for i in span})
    for i in [*phase_peaks, *boundaries]:
        if len(keep) >= max_points:
            break
        keep.setdefault(i)
    budget = max_points - len(keep)
    slices = min(budget // 2, end - start + 1)
    if slices > 0:
        width = (end - start + 1) / slices
        for s in range(slices):
            lo, hi = start + int(s * width), start + int((s + 1) * width)
            if hi > lo:
                keep.setdefault(max(range(lo, hi), key=get))
                keep.setdefault(min(range(lo, hi), key=get))
    return sorted(keep)


def timeline_from_series(
    series: dict[str, Sequence[int]],
    *,
    phases: Iterable[tuple[str, int, int]] = (),
    max_points: int = DEFAULT_MAX_POINTS,
    start_event: int = 0,
    end_event: int | None = None,
) -> Timeline:
    """A `Timeline` of per-kind series indexed by event (as `LiveBytesTracker.kind_series` returns).

    The window is start_event..end_event inclusive (default: all); phases are clipped to it, and
    those outside it or only touching its ends (the phase before or after a phase's window) dropped. Kinds that hold no bytes anywhere in the window are left out.
    """
    columns = list(series.values())
    n = len(columns[0]) if columns else 0
    end_event = n - 1 if end_event is None else end_event
    totals = (
        [sum(values) for values in zip(*columns, strict=True)]
        if len(columns) > 1
        else list(columns[0] if columns else [])
    )
    spans = [
        TimelinePhase(name, max(a, start_event), min(b, end_event))
        for name, a, b in sorted(phases, key=lambda p: (p[1], -p[2]))
        if (b > start_event and a < end_event) or start_event <= a == b <= end_event  # touching: not in it
    ]
    kept = downsample(
        totals,
        max_points=max_points,
        start=start_event,
        end=end_event,
        phases=[(p.start_event, p.end_event) for p in spans],
    )
    kinds = tuple(k for k, v in series.items() if any(v[start_event : end_event + 1]))
    points = tuple(TimelinePoint(e, totals[e], {k: int(series[k][e]) for k in kinds}) for e in kept)
    peak = max(points, key=lambda p: p.bytes)  # the first of equal maxima, as downsample keeps it
    return Timeline(points, tuple(spans), peak.event, peak.bytes, kinds)


def timeline_from_tracker(
    tracker,
    categories: dict[str, Iterable],
    *,
    other: str = "other",
    earlier: Iterable[dict[int, str]] = (),
    max_points: int = DEFAULT_MAX_POINTS,
    start_event: int = 0,
    end_event: int | None = None,
) -> Timeline:
    """The tracker's live bytes by kind over start_event..end_event (default: every event), with the
    tracker's `phase()` blocks as phases; `categories`, `other` and `earlier` (snapshots of
    `tracker.claims(...)`) as in `kind_series`.

    Its `peak_bytes` is the exact maximum over the window: the tracker's `peak_bytes` for the whole
    run (no `reset_peak`), a phase's `phase_peak_bytes` for that phase's span."""
    series = tracker.kind_series(categories, other=other, earlier=earlier)
    return timeline_from_series(
        series,
        phases=tracker.phase_events,
        max_points=max_points,
        start_event=start_event,
        end_event=end_event,
    )
