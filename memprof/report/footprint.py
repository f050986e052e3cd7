"""Renderers for FootprintReport: rich table, Markdown, HTML."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from memprof.report.common import md_table, render_html, render_text
from memprof.results.footprint import FootprintReport, SettingFootprint
from memprof.units import count, human_bytes, percent


def _measured_cell(row: SettingFootprint, field: str) -> str:
    m = row.measured
    if m is None or m.error:
        return "—"
    value = human_bytes(getattr(m, field))
    return f"{value} =" if field not in row.mismatches else f"{value} ≠ {human_bytes(getattr(row, field))}"


def _fits(row: SettingFootprint) -> str:
    if row.smallest_gpu is None:
        return f"none (≥{row.largest_gpu_count}× {row.largest_gpu})" if row.largest_gpu else "none"
    others = f" (or {', '.join(row.smallest_gpu_alternatives)})" if row.smallest_gpu_alternatives else ""
    return row.smallest_gpu + others


def _title(report: FootprintReport) -> str:
    params = f"{report.params:,} parameters"
    if report.published_params is not None and report.published_params != report.params:
        params += f" (published: {report.published_params:,})"
    return f"{report.model} · {report.architecture} · {params}"


def _prediction_cells(row: SettingFootprint) -> list[str]:
    return [
        row.setting,
        human_bytes(row.true_bytes),
        human_bytes(row.footprint_bytes),
        f"{row.ratio_to_fp32:.3f}",
        human_bytes(row.quant_state_bytes) if row.quant_state_bytes else "—",
        "—" if row.quantized_params == 0 else f"{percent(row.unquantized_share)} {DTYPE_SHORT[row.dtype]}",
        _fits(row),
    ]


# true bytes decide the GPU, so they come first; transformers' own figure, which misses the quant state, beside them
PREDICTION_HEAD = [
    "setting",
    "true bytes",
    "get_memory_footprint()",
    "× fp32",
    "quant state",
    "unquantized",
    "smallest GPU",
]
MEASURED_HEAD = ["setting", "footprint measured", "true measured", "load s", "load peak"]
DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _measured_cells(row: SettingFootprint) -> list[str]:
    m = row.measured
    if m is None:
        return [row.setting, "—", "—", "—", "—"]
    if m.error:
        return [row.setting, f"failed: {m.error}", "", "", ""]
    return [
        row.setting,
        _measured_cell(row, "footprint_bytes"),
        _measured_cell(row, "true_bytes"),
        "—" if m.load_s is None else f"{m.load_s:.2f}",
        human_bytes(m.peak_bytes),
    ]


def _table(title: str, head: list[str], rows: list[tuple[list[str], str | None]]) -> Table:
    table = Table(title=title, title_style="bold", title_justify="left")
    for i, name in enumerate(head):
        table.add_column(
            name,
            justify="left" if i == 0 or name == "smallest GPU" else "right",
            style="bold" if i == 0 or name == "true bytes" else None,
        )
    for cells, style in rows:
        table.add_row(*cells, style=style)
    return table


def _bad(row: SettingFootprint) -> bool:
    return bool(row.mismatches or (row.measured and row.measured.error))


def footprint_renderables(report: FootprintReport) -> Group:
    parts = [_table(_title(report), PREDICTION_HEAD, [(_prediction_cells(r), None) for r in report.settings])]
    if report.weights:
        measured_rows = [(_measured_cells(r), "red" if _bad(r) else None) for r in report.settings]
        parts.append(Text(""))
        parts.append(
            _table(
                f"Measured on {report.device}: {report.weights}, one fresh process per setting",
                MEASURED_HEAD,
                measured_rows,
            )
        )
        for kind in sorted({r.measured.peak_kind for r in report.settings if r.measured and r.measured.peak_kind}):
            parts.append(Text(f"load peak: {kind}; '=' means equal to the prediction byte for byte.", style="dim"))
    for note in report.notes:
        parts.append(Text(f"• {note}", style="dim"))
    return Group(*parts)


def render_footprint_table(report: FootprintReport, *, width: int = 140, color: bool = False) -> str:
    return render_text(footprint_renderables(report), width=width, color=color)


def render_footprint_html(report: FootprintReport) -> str:
    return render_html(footprint_renderables(report), width=160)


def render_footprint_md(report: FootprintReport) -> str:
    lines = [f"## {_title(report)}", ""]
    lines += md_table(
        PREDICTION_HEAD + ["true bytes (exact)"],
        [_prediction_cells(r) + [count(r.true_bytes)] for r in report.settings],
    )
    lines.append("")
    if report.weights:
        lines += [f"### Measured on {report.device}: {report.weights}, one fresh process per setting", ""]
        lines += md_table(MEASURED_HEAD, [_measured_cells(r) for r in report.settings])
        lines.append("")
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"
