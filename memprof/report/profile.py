"""Renderers for ProfileReport and ProfileComparison: rich tables + a memory bar chart, Markdown, HTML."""

from __future__ import annotations

import math

from rich.console import Group
from rich.table import Table
from rich.text import Text

from memprof.report.common import md_table, render_html, with_charts
from memprof.results.profile import ProfileComparison, ProfileReport, SettingProfile
from memprof.units import human_bytes, percent

# one glyph and one colour per kind, so the bar reads without colour too (piped, --format md)
BREAKDOWN_STYLES = {
    "weights": ("█", "blue"),
    "quant_state": ("▓", "cyan"),
    "trainable_params": ("▒", "green"),
    "grads": ("≡", "yellow"),
    "optimizer_states": ("░", "magenta"),
    "inputs": ("·", "white"),
    "activations_temporaries": ("▚", "red"),
}
BAR_WIDTH = 60
LEGEND_WIDTH = 80
TABLE_PHASES = ("load", "forward", "train")  # the phases with a table row per setting


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:,.2f}"


def _rate(x: float | None) -> str:
    return "—" if x is None else f"{x:,.1f}"


def _b(n: int | None) -> str:
    return human_bytes(n)


def sig3(x: float) -> str:
    """`x` to 3 significant digits, never in scientific notation: 0.549, 1.23, 12.3, 123, 1,234."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    x = float(f"{x:.3g}")
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def flops_per_s(tflops: float | None) -> str:
    """Achieved compute in the largest of TFLOP/s, GFLOP/s, MFLOP/s, kFLOP/s that keeps it >= 1."""
    if tflops is None:
        return "—"
    value = float(f"{tflops * 1e12:.3g}")  # rounded first: 999.6 MFLOP/s is 1.00 GFLOP/s
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6), ("kFLOP/s", 1e3)):
        if abs(value) >= scale:
            return f"{sig3(value / scale)} {unit}"
    return f"{sig3(value)} FLOP/s"


def params(n: int | None) -> str:
    """A parameter count: exact below a million, else 3 significant digits with M or B (21.0M, 8.03B)."""
    if n is None:
        return "—"
    if n < 10**6:
        return f"{n:,}"
    return f"{sig3(n / 1e6)}M" if n < 10**9 else f"{sig3(n / 1e9)}B"


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{sig3(x)}×"


def _title(report: ProfileReport) -> str:
    gpu = f" ({report.env.get('gpu_name')})" if report.env.get("gpu_name") else ""
    state = " · INTERRUPTED, partial" if report.interrupted else ""
    return (
        f"{report.model} on {report.device}{gpu} · batch {report.batch} × seq {report.seq} · "
        f"{report.repeats} repeats after {report.warmup} warm-up{state}"
    )


def failed_phase(row: SettingProfile) -> str | None:
    """The phase whose table shows `row`'s error: the one it failed in, else the first without a result.

    A process killed before its first phase ("start-up") shows the error at load, not nowhere.
    """
    if not row.error:
        return None
    if row.failed_phase in (*TABLE_PHASES, "offload"):
        return row.failed_phase
    return next((phase for phase in TABLE_PHASES if getattr(row, phase) is None), row.failed_phase)


def _failed(row: SettingProfile, phase: str) -> str | None:
    """The cell text for a phase that did not produce a result."""
    if row.error and failed_phase(row) == phase:
        return f"failed: {row.error}"
    if row.error:
        return "not run"
    return None


def _missing(row: SettingProfile, phase: str, width: int) -> list[str]:
    return [row.setting, _failed(row, phase) or "—"] + [""] * (width - 2)


def _phase_rows(report: ProfileReport, phase: str, head: list[str], cells) -> tuple[list[str], list[list[str]]]:
    """One row per setting: `cells(result)` for the phase's result, or why it is missing."""
    rows = []
    for r in report.settings:
        m = getattr(r, phase)
        rows.append(_missing(r, phase, len(head)) if m is None else [r.setting, *cells(m)])
    return head, rows


def _load_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "load s", "footprint", "true bytes", "peak", "peak RSS"]
    return _phase_rows(
        report,
        "load",
        head,
        lambda m: [f"{m.load_s:,.2f}", _b(m.footprint_bytes), _b(m.true_bytes), _b(m.peak_bytes), _b(m.peak_rss_bytes)],
    )


def _forward_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "median ms", "IQR ms", "tokens/s", "peak", "peak RSS"]
    return _phase_rows(
        report,
        "forward",
        head,
        lambda m: [_ms(m.median_ms), _ms(m.iqr_ms), _rate(m.tokens_per_s), _b(m.peak_bytes), _b(m.peak_rss_bytes)],
    )


def _train_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "median ms", "IQR ms", "tokens/s", "FLOP/s", "of peak", "trainable", "peak"]
    return _phase_rows(
        report,
        "train",
        head,
        lambda m: [
            _ms(m.median_ms),
            _ms(m.iqr_ms),
            _rate(m.tokens_per_s),
            flops_per_s(m.tflops),
            percent(m.peak_fraction),
            params(m.trainable_params),
            _b(m.peak_bytes),
        ],
    )


def _generate_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "prefill ms", "decode tok/s", "generate ms", "KV cache", "memprof KV", "peak"]

    def cells(g) -> list[str]:
        predicted = _b(g.predicted_kv_cache_bytes)
        if g.predicted_kv_cache_bytes is not None:
            predicted += " (=)" if g.predicted_kv_cache_bytes == g.kv_cache_bytes else " (≠)"
        return [
            _ms(g.prefill_ms),
            _rate(g.decode_tokens_per_s),
            _ms(g.generate_ms),
            f"{_b(g.kv_cache_bytes)} / {g.kv_cache_tokens:,} tok",
            predicted,
            _b(g.peak_bytes),
        ]

    return _phase_rows(report, "generate", head, cells)


def _rank_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    """The training peak of every rank side by side, and the time a rank spent in collectives."""
    trained = [r for r in report.settings if r.train is not None and r.train.rank_peak_bytes]
    world = max((len(r.train.rank_peak_bytes) for r in trained), default=0)
    head = ["setting", "shard", *[f"rank {i}" for i in range(world)], "collectives ms/step"]
    rows = [
        [r.setting, r.train.shard, *[_b(b) for b in r.train.rank_peak_bytes], _ms(r.train.collective_ms)]
        for r in trained
    ]
    return head, rows


def _device_peak_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    """GPU peaks beside the allocator's: reserved by the caching allocator, whole device by NVML."""
    head = ["setting", "phase", "allocated", "reserved", "device (NVML)"]
    rows = []
    for r in report.settings:
        for phase in TABLE_PHASES:
            m = getattr(r, phase)
            if m is None or (m.reserved_peak_bytes is None and m.device_peak_bytes is None):
                continue
            rows.append([r.setting, phase, _b(m.peak_bytes), _b(m.reserved_peak_bytes), _b(m.device_peak_bytes)])
    return head, rows


def _offload_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "budget", "plan GPU", "plan CPU", "plan disk", "GPU", "CPU", "disk", "fwd ms", "slowdown"]
    rows = []
    for r in report.settings:
        o = r.offload
        if o is None:
            continue
        rows.append(
            [
                r.setting,
                _b(o.budget_bytes),
                _b(o.plan_gpu_bytes),
                _b(o.plan_cpu_bytes),
                _b(o.plan_disk_bytes),
                _b(o.gpu_bytes),
                _b(o.cpu_bytes),
                _b(o.disk_bytes),
                _ms(o.median_ms),
                "—" if o.slowdown is None else f"{sig3(o.slowdown)}×",
            ]
        )
    return head, rows


def _precision(report: ProfileReport) -> str:
    """A full fine-tune's precision per setting ("" for LoRA, which runs at the setting's dtype)."""
    if report.train != "full":
        return ""
    trained = [r for r in report.settings if r.train is not None]
    mixed = [r.setting for r in trained if r.train.precision == "mixed"]
    if mixed and len(mixed) < len(trained):
        return f"mixed precision for {', '.join(mixed)} (fp32 weights, autocast), pure for the others; "
    if mixed:
        return "mixed precision (fp32 weights, autocast); "
    return "pure precision; " if trained else ""


def _checkpointing(report: ProfileReport) -> str:
    """Whether each setting's training step checkpointed (QLoRA settings do by default)."""
    trained = [r for r in report.settings if r.train is not None]
    on = [r.setting for r in trained if r.train.grad_checkpointing]
    if not trained:
        on_all = bool(report.grad_checkpointing)
    elif on and len(on) < len(trained):
        return f"grad checkpointing on for {', '.join(on)}, off for the others"
    else:
        on_all = bool(on)
    return "grad checkpointing " + ("on" if on_all else "off")


def _without_empty_columns(head: list[str], rows: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """Drop columns with no value in any row (GPU-only ones on CPU); the setting and first value stay."""
    keep = [i for i in range(len(head)) if i < 2 or any(row[i] not in ("—", "") for row in rows)]
    return [head[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _sections(report: ProfileReport) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    train = "none" if report.train == "none" else f"{report.train}; {_precision(report)}{_checkpointing(report)}"
    sections = []
    if report.shard == "none":  # in ranks, only the training step is measured
        sections += [("Load", _load_rows(report)), ("Forward (no grad)", _forward_rows(report))]
    if report.generate:
        sections.append((f"Generate ({report.generate} new tokens, {report.cache} cache)", _generate_rows(report)))
    if report.train != "none":
        ranks = f" in {report.nproc} rank(s), {report.shard}" if report.shard != "none" else ""
        sections.append((f"Training step ({train}; forward + backward + AdamW{ranks})", _train_rows(report)))
    if report.shard != "none":
        sections.append(("Training peak of every rank", _rank_rows(report)))
    device_peaks = _device_peak_rows(report)
    if device_peaks[1]:
        sections.append(("GPU memory peaks (allocated, reserved by the caching allocator, whole device)", device_peaks))
    offload = _offload_rows(report)
    if offload[1]:
        sections.append(("CPU offload (accelerate device map under the GPU budget)", offload))
    return [(title, _without_empty_columns(*table)) for title, table in sections]


def _table(title: str, head: list[str], rows: list[list[str]], *, labels: int = 1) -> Group:
    """A bold title line (never wrapped to the table's width) over the table. The first `labels`
    columns are names (left-aligned), the others numbers (right-aligned); from the third on, cells
    never wrap, while the second may, as it holds a failed setting's reason."""
    table = Table()
    for i, name in enumerate(head):
        justify = "left" if i < labels else "right"
        table.add_column(name, justify=justify, style="bold" if i == 0 else None, no_wrap=i >= 2)
    for cells in rows:
        failed = any(c.startswith("failed") for c in cells[1:2])
        table.add_row(*cells, style="red" if failed else None)
    return Group(Text(title, style="bold"), table)


def breakdown_chart(report: ProfileReport) -> Group | None:
    """One stacked bar per setting: the training peak split by kind, all on one scale."""
    rows = [r for r in report.settings if r.train is not None and r.train.breakdown]
    if not rows:
        return None
    largest = max(r.train.peak_bytes for r in rows) or 1
    label_width = max(len(r.setting) for r in rows)
    lines = [Text("Training peak memory by kind", style="bold")]
    for r in rows:
        line = Text(r.setting.ljust(label_width) + " ")
        for kind, nbytes in r.train.breakdown.items():
            char, style = BREAKDOWN_STYLES.get(kind, ("?", "white"))
            cells = round(BAR_WIDTH * max(nbytes, 0) / largest)
            line.append(char * cells, style=style)
        line.append(f" {_b(r.train.peak_bytes)}")
        lines.append(line)
    lines += _legend_lines()
    for r in rows:
        parts = ", ".join(f"{kind} {_b(n)}" for kind, n in r.train.breakdown.items())
        lines.append(Text(f"{r.setting}: {parts}", style="dim"))
    return Group(*lines)


def _legend_lines(width: int = LEGEND_WIDTH) -> list[Text]:
    """The glyph of each kind and its name, packed into lines of at most `width` cells, so no
    terminal of that width splits an entry."""
    lines, line = [], Text("")
    for kind, (char, style) in BREAKDOWN_STYLES.items():
        entry = f"{char * 2} {kind}"
        if line.cell_len and line.cell_len + 2 + len(entry) > width:
            lines.append(line)
            line = Text("")
        if line.cell_len:
            line.append("  ")
        line.append(entry, style=style)
    return [*lines, line]


def _timelines(report: ProfileReport) -> list[tuple[str, object]]:
    """(setting, Timeline) of each setting's tracked training step (CPU runs record one)."""
    from memprof.measure.timeline import Timeline

    return [
        (r.setting, Timeline.from_json(r.train.timeline))
        for r in report.settings
        if r.train is not None and r.train.timeline
    ]


def timeline_lines(report: ProfileReport) -> list:
    """The training step's live bytes over time, a sparkline per phase, per setting."""
    from memprof.report.timeline import timeline_sparklines

    lines: list = []
    for setting, timeline in _timelines(report):
        lines += [Text(f"{setting}: training step over time (live bytes; ▁ to █ from the phase's low to its high)")]
        lines.append(timeline_sparklines(timeline))
    return lines


def profile_renderables(report: ProfileReport) -> Group:
    parts: list = [Text(_title(report), style="bold")]
    for title, (head, rows) in _sections(report):
        parts += [Text(""), _table(title, head, rows, labels=2 if head[1] == "phase" else 1)]
    chart = breakdown_chart(report)
    if chart is not None:
        parts += [Text(""), chart]
    lines = timeline_lines(report)
    if lines:
        parts += [Text(""), *lines]
    parts.append(Text(""))
    for note in _notes(report):
        parts.append(Text(f"• {note}", style="dim"))
    return Group(*parts)


def _notes(report: ProfileReport) -> list[str]:
    notes = list(report.notes)
    for r in report.settings:
        if r.error and failed_phase(r) not in TABLE_PHASES:  # e.g. the offloaded load: no table cell says it
            notes.append(f"{r.setting} failed: {r.error}")
    notes.append(f"weights: {report.weights}")
    env = report.env
    versions = ", ".join(
        f"{k} {env[k]}" for k in ("torch", "transformers", "bitsandbytes", "peft", "accelerate") if env.get(k)
    )
    notes.append(f"{versions}; GPU driver {env.get('gpu_driver') or '—'}")
    if env.get("command"):
        notes.append(f"command: {env['command']}")
    for r in report.settings:
        if r.train is not None:
            notes += [f"{r.setting}: {n}" for n in r.train.notes[-1:]]
            break
    return notes


def render_profile_html(report: ProfileReport) -> str:
    from memprof.report.timeline import timeline_svg

    html = render_html(profile_renderables(report), width=160)
    charts = [
        timeline_svg(timeline, title=f"{report.model} · {setting} · training step, live bytes by kind")
        for setting, timeline in _timelines(report)
    ]
    return with_charts(html, charts)


def render_profile_md(report: ProfileReport) -> str:
    lines = [f"## {_title(report)}", ""]
    for title, (head, rows) in _sections(report):
        lines += [f"### {title}", ""] + md_table(head, rows) + [""]
    rows = [r for r in report.settings if r.train is not None and r.train.breakdown]
    if rows:
        kinds = list(rows[0].train.breakdown)
        lines += ["### Training peak by kind", ""]
        lines += md_table(
            ["setting"] + kinds + ["peak"],
            [[r.setting] + [_b(r.train.breakdown.get(k)) for k in kinds] + [_b(r.train.peak_bytes)] for r in rows],
        )
        lines.append("")
    lines += [f"- {note}" for note in _notes(report)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# compare

# metric path -> (label, formatter): times in ms with 2 decimals, bytes in binary units, FLOP/s adaptive
COMPARE_METRICS = {
    "load.load_s": ("load time (s)", lambda x: f"{x:,.2f}"),
    "load.true_bytes": ("load true bytes", lambda x: _b(int(x))),
    "load.peak_bytes": ("load peak", lambda x: _b(int(x))),
    "forward.median_ms": ("forward median (ms)", _ms),
    "forward.tokens_per_s": ("forward tokens/s", _rate),
    "forward.peak_bytes": ("forward peak", lambda x: _b(int(x))),
    "train.median_ms": ("train step median (ms)", _ms),
    "train.tokens_per_s": ("train tokens/s", _rate),
    "train.tflops": ("train FLOP/s", flops_per_s),
    "train.peak_bytes": ("train peak", lambda x: _b(int(x))),
}


def metric_label(metric: str) -> str:
    return COMPARE_METRICS.get(metric, (metric, None))[0]


def _cmp_value(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    formatter = COMPARE_METRICS.get(metric, (None, sig3))[1]
    return formatter(value)


COMPARE_HEAD = ["setting", "metric", "A", "B", "B / A"]


def _compare_rows(comparison: ProfileComparison) -> list[list[str]]:
    return [
        [
            row.setting,
            metric_label(row.metric),
            _cmp_value(row.metric, row.a),
            _cmp_value(row.metric, row.b),
            _ratio(row.ratio) + (f" {WITHIN_NOISE}" if row.within_noise else ""),
        ]
        for row in comparison.rows
    ]


WITHIN_NOISE = "(within noise)"
NOISE_NOTE = (
    f"{WITHIN_NOISE}: the medians differ by no more than the two runs' IQRs added, so the ratio is "
    "run-to-run spread, not a speed-up or slow-down"
)


def _compare_notes(comparison: ProfileComparison) -> list[str]:
    return [*comparison.notes, *([NOISE_NOTE] if any(r.within_noise for r in comparison.rows) else [])]


def compare_renderables(comparison: ProfileComparison) -> Group:
    parts: list = [
        Text(f"A: {comparison.a_title}", style="bold"),
        Text(f"B: {comparison.b_title}", style="bold"),
        _table("Side by side", COMPARE_HEAD, _compare_rows(comparison), labels=2),
    ]
    parts += [Text(f"• {n}", style="dim") for n in _compare_notes(comparison)]
    return Group(*parts)


def render_compare_md(comparison: ProfileComparison) -> str:
    lines = [f"- A: {comparison.a_title}", f"- B: {comparison.b_title}", ""]
    lines += md_table(COMPARE_HEAD, _compare_rows(comparison)) + [""]
    lines += [f"- {n}" for n in _compare_notes(comparison)]
    return "\n".join(lines) + "\n"


def render_compare_html(comparison: ProfileComparison) -> str:
    """The side-by-side table, then per setting both runs' training steps over time on one chart."""
    from memprof.measure.timeline import Timeline
    from memprof.report.timeline import compare_svg

    charts = [
        compare_svg(
            [("A", Timeline.from_json(a)), ("B", Timeline.from_json(b))],
            title=f"{setting}: training step, live bytes (A and B)",
        )
        for setting, (a, b) in comparison.timelines.items()
    ]
    return with_charts(render_html(compare_renderables(comparison), width=160), charts)
