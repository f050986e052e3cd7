"""Draw a Timeline: a stacked-area SVG chart for the HTML reports, sparklines for the terminal.

Hand-written SVG, not a charting library. The chart needs a stacked area with phase bands, a peak
annotation and a horizontal GPU line, as one offline SVG string to embed in rich's exported HTML:
- plotly, bokeh and altair draw in the browser with JavaScript (plotly's offline HTML embeds ~3.5 MB
  of it per file); vl-convert renders Vega-Lite to SVG offline but ships a JavaScript engine (~80 MB).
- matplotlib writes offline SVG, but is a ~40 MB dependency (numpy, pillow, fonts) for one chart,
  and its SVG draws text as glyph paths unless configured otherwise.
- pygal writes SVG but links its interactive script from the network by default and has no
  bands, annotations or reference lines; leather has no stacked areas.
What is left is ~200 lines of rectangles, paths and text, with no dependency and no script.
Nothing here computes: the points, phases and peak come from the Timeline as saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

from rich.text import Text

from memprof.measure.timeline import Timeline, TimelinePhase
from memprof.units import human_bytes

# Persistent state at the bottom, what comes and goes on top; unknown kinds between, in their order.
KIND_ORDER = (
    "weights",
    "quant_state",
    "trainable_params",
    "grads",
    "optimizer_states",
    "kv_cache",
    "inputs",
    "kernel_transients",
    "activations",
    "activations_temporaries",
    "other",
)
KIND_COLORS = {
    "weights": "#4c72b0",
    "quant_state": "#64b5cd",
    "trainable_params": "#55a868",
    "grads": "#ccb974",
    "optimizer_states": "#8172b2",
    "kv_cache": "#da8bc3",
    "inputs": "#8c8c8c",
    "kernel_transients": "#937860",
    "activations": "#c44e52",
    "activations_temporaries": "#c44e52",
    "other": "#dd8452",
}
EXTRA_COLORS = ("#17becf", "#bcbd22", "#7f7f7f", "#e377c2", "#2ca02c")
LINE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")  # none the GPU line's red
SPARKS = "▁▂▃▄▅▆▇█"
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"

WIDTH, HEIGHT = 900, 360
LEFT, RIGHT, TOP = 78, 24, 56  # the plot area's margins; the bottom holds the axis and legend
BOTTOM = 70
LABEL_ROWS = 2  # rows of phase labels between the title and the plot


def stack_order(kinds: Sequence[str]) -> list[str]:
    """The kinds in drawing order, bottom first (KIND_ORDER, unknown kinds before "other")."""
    known = {k: i for i, k in enumerate(KIND_ORDER)}
    tail = len(KIND_ORDER) - 3  # unknowns go below the activations and "other"
    return sorted(kinds, key=lambda k: (known.get(k, tail - 0.5), kinds.index(k)))


def _color(kind: str, index: int) -> str:
    return KIND_COLORS.get(kind) or EXTRA_COLORS[index % len(EXTRA_COLORS)]


def _nice_step(span: float, ticks: int = 5) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about `ticks` ticks over `span`."""
    raw = span / ticks
    power = 10 ** int(f"{raw:e}".split("e")[1])
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def _unit(n: int) -> tuple[str, int]:
    for name, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return name, size
    return "B", 1


class _Frame:
    """Scales from events and bytes to the plot area, and the axes drawn in SVG."""

    def __init__(self, x0: float, x1: float, y_max: int, *, width: int, height: int) -> None:
        self.x0, self.x1 = x0, max(x1, x0 + 1)
        self.width, self.height = width, height
        self.unit, self.unit_bytes = _unit(max(y_max, 1))
        self.step = _nice_step(max(y_max, 1) / self.unit_bytes)
        ticks = int(max(y_max, 1) / self.unit_bytes / self.step) + 1
        self.y_top = ticks * self.step * self.unit_bytes  # the axis ends on a tick above every value
        self.ticks = [i * self.step for i in range(ticks + 1)]
        self.plot_w = width - LEFT - RIGHT
        self.plot_h = height - TOP - BOTTOM

    def x(self, event: float) -> float:
        return LEFT + (event - self.x0) / (self.x1 - self.x0) * self.plot_w

    def y(self, nbytes: float) -> float:
        return TOP + self.plot_h - nbytes / self.y_top * self.plot_h

    def axes(self, x_label: str) -> list[str]:
        bottom = TOP + self.plot_h
        out = []
        for t in self.ticks:
            y = self.y(t * self.unit_bytes)
            out.append(f"<line x1='{LEFT}' x2='{LEFT + self.plot_w}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e5e5e5'/>")
            label = f"{t:g} {self.unit}"
            out.append(f"<text x='{LEFT - 6}' y='{y + 4:.1f}' text-anchor='end' font-size='11' {FONT}>{label}</text>")
        out.append(f"<line x1='{LEFT}' x2='{LEFT}' y1='{TOP}' y2='{bottom}' stroke='#444'/>")
        out.append(f"<line x1='{LEFT}' x2='{LEFT + self.plot_w}' y1='{bottom}' y2='{bottom}' stroke='#444'/>")
        out.append(
            f"<text x='{LEFT + self.plot_w / 2:.1f}' y='{bottom + 18}' text-anchor='middle' font-size='11' "
            f"fill='#555' {FONT}>{escape(x_label)}</text>"
        )
        return out

    def gpu_line(self, name: str, nbytes: int) -> list[str]:
        y = self.y(nbytes)
        label = escape(f"{name}: {human_bytes(nbytes)}")
        return [
            f"<g class='gpu'><line x1='{LEFT}' x2='{LEFT + self.plot_w}' y1='{y:.1f}' y2='{y:.1f}' "
            "stroke='#b00' stroke-width='1.5' stroke-dasharray='6 4'/>",
            f"<text x='{LEFT + self.plot_w - 4}' y='{y - 5:.1f}' text-anchor='end' font-size='11' fill='#b00' "
            f"{FONT}>{label}</text></g>",
        ]


def _svg(parts: list[str], *, width: int, height: int, title: str) -> str:
    return "\n".join(
        [
            f"<svg xmlns='http://www.w3.org/2000/svg' class='memprof-timeline' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label={quoteattr(title)}>",
            f"<title>{escape(title)}</title>",
            f"<rect width='{width}' height='{height}' fill='white'/>",
            f"<text x='{LEFT}' y='20' font-size='14' font-weight='bold' {FONT}>{escape(title)}</text>",
            *parts,
            "</svg>",
        ]
    )


def _depths(phases: Sequence[TimelinePhase]) -> list[int]:
    """Each phase's nesting depth: how many earlier phases contain it."""
    return [
        sum(1 for q in phases[:i] if q.start_event <= p.start_event and p.end_event <= q.end_event)
        for i, p in enumerate(phases)
    ]


def _phase_bands(frame: _Frame, phases: Sequence[TimelinePhase]) -> list[str]:
    """Alternating bands for top-level phases, outlines for nested ones, labels in two rows above the
    plot (a label that would overlap the one before it moves up a row; with both rows taken it is left
    out: the band's tooltip still names it)."""
    out = []
    row_ends: list[float] = []
    for i, (phase, depth) in enumerate(zip(phases, _depths(phases), strict=True)):
        x0, x1 = frame.x(phase.start_event), frame.x(phase.end_event)
        fill = ("#f3f3f3", "#e9eef6")[i % 2] if depth == 0 else "none"
        stroke = "none" if depth == 0 else "#9aa"
        out.append(
            f"<rect class='phase' x='{x0:.1f}' y='{TOP}' width='{max(x1 - x0, 0.5):.1f}' height='{frame.plot_h}' "
            f"fill='{fill}' stroke='{stroke}' stroke-dasharray='3 3'><title>{escape(phase.name)}: events "
            f"{phase.start_event}-{phase.end_event}</title></rect>"
        )
        label_w = 6.5 * len(phase.name)
        x_label = max(LEFT, min((x0 + x1) / 2 - label_w / 2, LEFT + frame.plot_w - label_w))
        row = next((r for r, e in enumerate(row_ends) if e <= x_label), len(row_ends))
        if row >= LABEL_ROWS:
            continue
        if row == len(row_ends):
            row_ends.append(0.0)
        row_ends[row] = x_label + label_w + 6
        y = TOP - 6 - 13 * row
        out.append(
            f"<text class='phase-label' x='{x_label:.1f}' y='{y}' font-size='11' fill='#333' "
            f"{FONT}>{escape(phase.name)}</text>"
        )
    return out


def _legend(items: Sequence[tuple[str, str]], *, y: float, width: int) -> list[str]:
    out, x = [], LEFT
    for label, color in items:
        w = 22 + 6.3 * len(label)
        if x + w > width - RIGHT:
            x, y = LEFT, y + 16
        out.append(f"<rect x='{x}' y='{y - 9}' width='12' height='12' fill='{color}'/>")
        out.append(f"<text x='{x + 16}' y='{y + 1}' font-size='11' {FONT}>{escape(label)}</text>")
        x += w + 12
    return out


def timeline_svg(
    timeline: Timeline,
    *,
    title: str = "Live memory over the step",
    gpu_name: str | None = None,
    gpu_bytes: int | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
    x_label: str = "events (every tensor made, freed or resized is one)",
) -> str:
    """The timeline as a stacked area by kind (one `<path class='kind' data-kind=...>` per kind that
    holds bytes), phase bands with labels, the peak marked with its bytes, and, with `gpu_bytes`,
    the GPU's memory as a dashed line. A standalone SVG string: no script, no external reference."""
    points = timeline.points
    kinds = [k for k in stack_order(list(timeline.kinds)) if any(p.kinds.get(k, 0) for p in points)]
    y_max = max([timeline.peak_bytes, gpu_bytes or 0])
    first = points[0].event if points else 0
    last = points[-1].event if points else 1
    frame = _Frame(first, last, y_max, width=width, height=height)
    parts = _phase_bands(frame, timeline.phases)
    parts += frame.axes(x_label)

    below = [0] * len(points)
    xs = [frame.x(p.event) for p in points]
    for i, kind in enumerate(kinds):
        above = [b + p.kinds.get(kind, 0) for b, p in zip(below, points, strict=True)]
        upper = " ".join(f"{x:.1f},{frame.y(v):.1f}" for x, v in zip(xs, above, strict=True))
        lower = " ".join(f"{x:.1f},{frame.y(v):.1f}" for x, v in zip(reversed(xs), reversed(below), strict=True))
        at_peak = next((p.kinds.get(kind, 0) for p in points if p.event == timeline.peak_event), 0)
        parts.append(
            f"<path class='kind' data-kind={quoteattr(kind)} d='M {upper} L {lower} Z' fill='{_color(kind, i)}' "
            f"fill-opacity='0.85' stroke='none'><title>{escape(kind)}: {human_bytes(at_peak)} at the peak"
            "</title></path>"
        )
        below = above
    if points:
        total = " ".join(f"{x:.1f},{frame.y(p.bytes):.1f}" for x, p in zip(xs, points, strict=True))
        parts.append(f"<polyline class='total' points='{total}' fill='none' stroke='#222' stroke-width='1'/>")

    if gpu_bytes is not None:
        parts += frame.gpu_line(gpu_name or "GPU", gpu_bytes)
    parts += _peak_marker(frame, timeline.peak_event, timeline.peak_bytes, "#222")

    at_peak = next((p for p in points if p.event == timeline.peak_event), None)
    legend = [
        (f"{k} {human_bytes(at_peak.kinds.get(k, 0)) if at_peak else ''}".rstrip(), _color(k, i))
        for i, k in enumerate(kinds)
    ]
    parts += _legend(legend[::-1], y=TOP + frame.plot_h + 40, width=width)  # top of the stack first
    return _svg(parts, width=width, height=height, title=title)


def _peak_marker(frame: _Frame, event: int, nbytes: int, color: str, prefix: str = "peak") -> list[str]:
    x, y = frame.x(event), frame.y(nbytes)
    anchor = "end" if x > LEFT + frame.plot_w * 0.75 else "start"
    dx = -7 if anchor == "end" else 7
    label = escape(f"{prefix} {human_bytes(nbytes)}")
    return [
        f"<g class='peak'><line x1='{x:.1f}' x2='{x:.1f}' y1='{y:.1f}' y2='{TOP + frame.plot_h}' stroke='{color}' "
        "stroke-dasharray='2 3'/>",
        f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4' fill='{color}' stroke='white'/>",
        f"<text class='peak-label' x='{x + dx:.1f}' y='{max(y - 6, TOP + 10):.1f}' text-anchor='{anchor}' "
        f"font-size='12' font-weight='bold' fill='{color}' {FONT}>{label}</text></g>",
    ]


def compare_svg(
    runs: Sequence[tuple[str, Timeline]],
    *,
    title: str = "Live memory over the step, compared",
    gpu_name: str | None = None,
    gpu_bytes: int | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """Each run's total bytes as a line (`<polyline class='run' data-run=...>`), over the fraction of
    its own events (runs differ in their numbers of events), each peak marked; the GPU as in
    `timeline_svg`."""
    y_max = max([t.peak_bytes for _, t in runs] + [gpu_bytes or 0])
    frame = _Frame(0.0, 1.0, y_max, width=width, height=height)
    parts = frame.axes("progress through each run (fraction of its events)")
    legend = []
    for i, (label, t) in enumerate(runs):
        if not t.points:
            continue
        color = LINE_COLORS[i % len(LINE_COLORS)]
        first, last = t.points[0].event, t.points[-1].event
        span = max(last - first, 1)
        line = " ".join(f"{frame.x((p.event - first) / span):.1f},{frame.y(p.bytes):.1f}" for p in t.points)
        parts.append(
            f"<polyline class='run' data-run={quoteattr(label)} points='{line}' fill='none' stroke='{color}' "
            "stroke-width='1.8'/>"
        )
        parts += _peak_marker(frame, (t.peak_event - first) / span, t.peak_bytes, color, prefix=f"{label}:")
        legend.append((f"{label} (peak {human_bytes(t.peak_bytes)})", color))
    if gpu_bytes is not None:
        parts += frame.gpu_line(gpu_name or "GPU", gpu_bytes)
    parts += _legend(legend, y=TOP + frame.plot_h + 40, width=width)
    return _svg(parts, width=width, height=height, title=title)


def _spark(values: Sequence[int], low: int, high: int) -> str:
    span = max(high - low, 1)
    return "".join(SPARKS[max(0, min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS))))] for v in values)


def _cells(timeline: Timeline, start: int, end: int, width: int) -> list[int]:
    """The largest total of each of `width` equal slices of events start..end; a slice with no kept
    point holds the value of the point before it (the live bytes hold until the next event)."""
    points = timeline.points
    inside = [p for p in points if start <= p.event <= end]
    before = [p for p in points if p.event < start]
    cells: list[int | None] = [None] * width
    for p in inside:
        c = min(width - 1, int((p.event - start) / max(end - start + 1, 1) * width))
        cells[c] = max(cells[c] or 0, p.bytes)
    held = before[-1].bytes if before else (inside[0].bytes if inside else 0)
    out = []
    for c in cells:
        held = held if c is None else c
        out.append(held)
    return out


def timeline_sparklines(timeline: Timeline, *, width: int = 40) -> Text:
    """One line per phase (the whole run when there are none): a sparkline of the total bytes over
    the phase's events, on one scale for all (▁ the run's lowest kept total, █ its peak: the weights
    and states that stay put would flatten a scale from zero), and the phase's largest kept total."""
    phases = list(timeline.phases)
    if not phases and timeline.points:
        phases = [TimelinePhase("step", timeline.points[0].event, timeline.points[-1].event)]
    depths = _depths(phases)
    names = ["  " * d + p.name for p, d in zip(phases, depths, strict=True)]
    name_w = max((len(n) for n in names), default=0)
    low = min((p.bytes for p in timeline.points), default=0)
    text = Text()
    for i, (phase, name) in enumerate(zip(phases, names, strict=True)):
        cells = _cells(timeline, phase.start_event, phase.end_event, width)
        peak = max((p.bytes for p in timeline.points if phase.start_event <= p.event <= phase.end_event), default=0)
        text.append(f"{name:<{name_w}}  ")
        text.append(_spark(cells, low, timeline.peak_bytes), style="cyan")
        text.append(f"  peak {human_bytes(peak)}")
        # a phase's start_event is the state on entry: the phase before it made that moment
        starts_run = i == 0 and phase.start_event == timeline.peak_event
        if (starts_run or phase.start_event < timeline.peak_event <= phase.end_event) and peak == timeline.peak_bytes:
            text.append("  ← the peak", style="bold")
        if i < len(phases) - 1:
            text.append("\n")
    return text


def timeline_page(svg: str, *, title: str = "memprof timeline") -> str:
    """A minimal standalone HTML page around one or more SVG charts (no script, no external file)."""
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{escape(title)}</title></head>\n"
        f"<body style='margin:16px;background:white'>\n{svg}\n</body></html>\n"
    )
