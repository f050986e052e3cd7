"""Renderers for ProfileReport and ProfileComparison: rich tables + a memory bar chart, Markdown, HTML."""

from __future__ import annotations

import io

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from memprof.profile import ProfileComparison, ProfileReport, SettingProfile
from memprof.report.units import human_bytes, percent

BREAKDOWN_STYLES = {
    "weights": ("█", "blue"),
    "quant_state": ("▓", "cyan"),
    "trainable_params": ("▒", "green"),
    "grads": ("▒", "yellow"),
    "optimizer_states": ("░", "magenta"),
    "inputs": ("·", "white"),
    "activations_temporaries": ("▚", "red"),
}
BAR_WIDTH = 60


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:,.2f}"


def _rate(x: float | None) -> str:
    return "—" if x is None else f"{x:,.1f}"


def _b(n: int | None) -> str:
    return human_bytes(n)


def _title(report: ProfileReport) -> str:
    gpu = f" ({report.env.get('gpu_name')})" if report.env.get("gpu_name") else ""
    state = " · INTERRUPTED, partial" if report.interrupted else ""
    return (
        f"{report.model} on {report.device}{gpu} · batch {report.batch} × seq {report.seq} · "
        f"{report.repeats} repeats after {report.warmup} warm-up{state}"
    )


def _failed(row: SettingProfile, phase: str) -> str | None:
    """The cell text for a phase that did not produce a result."""
    if row.error and (row.failed_phase == phase or row.failed_phase is None):
        return f"failed: {row.error}"
    if row.error:
        return "not run"
    return None


def _load_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "load s", "footprint", "true bytes", "peak", "reserved peak", "device peak", "peak RSS"]
    rows = []
    for r in report.settings:
        m = r.load
        if m is None:
            rows.append([r.setting, _failed(r, "load") or "—"] + [""] * (len(head) - 2))
            continue
        rows.append(
            [
                r.setting,
                f"{m.load_s:.2f}",
                _b(m.footprint_bytes),
                _b(m.true_bytes),
                _b(m.peak_bytes),
                _b(m.reserved_peak_bytes),
                _b(m.device_peak_bytes),
                _b(m.peak_rss_bytes),
            ]
        )
    return head, rows


def _forward_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "median ms", "IQR ms", "tokens/s", "peak", "reserved peak", "device peak", "peak RSS"]
    rows = []
    for r in report.settings:
        m = r.forward
        if m is None:
            rows.append([r.setting, _failed(r, "forward") or "—"] + [""] * (len(head) - 2))
            continue
        rows.append(
            [
                r.setting,
                _ms(m.median_ms),
                _ms(m.iqr_ms),
                _rate(m.tokens_per_s),
                _b(m.peak_bytes),
                _b(m.reserved_peak_bytes),
                _b(m.device_peak_bytes),
                _b(m.peak_rss_bytes),
            ]
        )
    return head, rows


def _train_rows(report: ProfileReport) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "median ms", "IQR ms", "tokens/s", "TFLOP/s", "of peak", "trainable", "peak", "reserved peak"]
    head += ["device peak"]
    rows = []
    for r in report.settings:
        m = r.train
        if m is None:
            rows.append([r.setting, _failed(r, "train") or "—"] + [""] * (len(head) - 2))
            continue
        rows.append(
            [
                r.setting,
                _ms(m.median_ms),
                _ms(m.iqr_ms),
                _rate(m.tokens_per_s),
                f"{m.tflops:.4g}",
                percent(m.peak_fraction),
                f"{m.trainable_params:,}",
                _b(m.peak_bytes),
                _b(m.reserved_peak_bytes),
                _b(m.device_peak_bytes),
            ]
        )
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
                "—" if o.slowdown is None else f"{o.slowdown:.2f}×",
            ]
        )
    return head, rows


def _sections(report: ProfileReport) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    train = (
        "none"
        if report.train == "none"
        else report.train + (" + grad checkpointing" if report.grad_checkpointing else "")
    )
    sections = [
        ("Load", _load_rows(report)),
        ("Forward (no grad)", _forward_rows(report)),
    ]
    if report.train != "none":
        sections.append((f"Training step ({train}; forward + backward + AdamW)", _train_rows(report)))
    offload = _offload_rows(report)
    if offload[1]:
        sections.append(("CPU offload (accelerate device map under the GPU budget)", offload))
    return sections


def _table(title: str, head: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_style="bold", title_justify="left")
    for i, name in enumerate(head):
        table.add_column(name, justify="left" if i == 0 else "right", style="bold" if i == 0 else None)
    for cells in rows:
        failed = any(c.startswith("failed") for c in cells[1:2])
        table.add_row(*cells, style="red" if failed else None)
    return table


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
    legend = Text("")
    for kind, (char, style) in BREAKDOWN_STYLES.items():
        legend.append(f"{char * 2} {kind}  ", style=style)
    lines.append(legend)
    for r in rows:
        parts = ", ".join(f"{kind} {_b(n)}" for kind, n in r.train.breakdown.items())
        lines.append(Text(f"{r.setting}: {parts}", style="dim"))
    return Group(*lines)


def profile_renderables(report: ProfileReport) -> Group:
    parts: list = [Text(_title(report), style="bold")]
    for title, (head, rows) in _sections(report):
        parts += [Text(""), _table(title, head, rows)]
    chart = breakdown_chart(report)
    if chart is not None:
        parts += [Text(""), chart]
    parts.append(Text(""))
    for note in _notes(report):
        parts.append(Text(f"• {note}", style="dim"))
    return Group(*parts)


def _notes(report: ProfileReport) -> list[str]:
    notes = list(report.notes)
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


def render_profile_text(report: ProfileReport, *, width: int = 140) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(profile_renderables(report))
    return buf.getvalue()


def render_profile_html(report: ProfileReport) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(profile_renderables(report))
    return console.export_html(inline_styles=True)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_profile_md(report: ProfileReport) -> str:
    lines = [f"## {_title(report)}", ""]
    for title, (head, rows) in _sections(report):
        lines += [f"### {title}", ""] + _md_table(head, rows) + [""]
    rows = [r for r in report.settings if r.train is not None and r.train.breakdown]
    if rows:
        kinds = list(rows[0].train.breakdown)
        lines += ["### Training peak by kind", ""]
        lines += _md_table(
            ["setting"] + kinds + ["peak"],
            [[r.setting] + [_b(r.train.breakdown.get(k)) for k in kinds] + [_b(r.train.peak_bytes)] for r in rows],
        )
        lines.append("")
    lines += [f"- {note}" for note in _notes(report)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# compare


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _cmp_value(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    return _b(int(value)) if metric.endswith("bytes") else f"{value:,.4g}"


COMPARE_HEAD = ["setting", "metric", "A", "B", "B / A"]


def _compare_rows(comparison: ProfileComparison) -> list[list[str]]:
    return [
        [row.setting, row.metric, _cmp_value(row.metric, row.a), _cmp_value(row.metric, row.b), _ratio(row.ratio)]
        for row in comparison.rows
    ]


def compare_renderables(comparison: ProfileComparison) -> Group:
    parts: list = [
        Text(f"A: {comparison.a_title}", style="bold"),
        Text(f"B: {comparison.b_title}", style="bold"),
        _table("Side by side", COMPARE_HEAD, _compare_rows(comparison)),
    ]
    parts += [Text(f"• {n}", style="dim") for n in comparison.notes]
    return Group(*parts)


def render_compare_md(comparison: ProfileComparison) -> str:
    lines = [f"- A: {comparison.a_title}", f"- B: {comparison.b_title}", ""]
    lines += _md_table(COMPARE_HEAD, _compare_rows(comparison)) + [""]
    lines += [f"- {n}" for n in comparison.notes]
    return "\n".join(lines) + "\n"


def render_compare_html(comparison: ProfileComparison) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(compare_renderables(comparison))
    return console.export_html(inline_styles=True)
