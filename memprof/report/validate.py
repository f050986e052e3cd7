"""Renderers for ValidationReport: rich table, Markdown, HTML (JSON is the dataclass, jsonout.py).
Nothing here computes beyond formatting: every number is a field of the report."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from memprof.report.common import md_table, render_html, with_charts
from memprof.report.plan import significant
from memprof.results.validate import ValidationReport, ValidationRow

# (header, CPU only): sizes in one unit per report, named in the headers; the terminal breaks headers at \n
COLUMNS = (
    ("task", False),
    ("setting", False),
    ("seq", False),
    ("predicted\n{unit}", False),
    ("kernel\ntransient\n{unit}", False),
    ("traced\n{unit}", True),  # on CUDA the allocator sees the kernel transient: predicted is the comparison
    ("measured\n{unit}", False),
    ("traced −\nmeasured\nbytes", True),
    ("error", False),
    ("reserved\n{unit}", False),
    ("fragmen-\ntation\n{unit}", False),
    ("NVML\n{unit}", False),
    ("context\n{unit}", False),
)
LABELS = 2  # task and setting are names; the other columns are numbers
KEEP = 4  # task, setting, seq and predicted always show, even where every row failed
UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def pct(x: float | None) -> str:
    """A signed percentage: +7.55%, -0.12%, 0.00%; tiny non-zero errors keep 2 significant digits."""
    if x is None:
        return "—"
    if x == 0:
        return "0.00%"
    sign = "+" if x > 0 else "-"
    text = f"{abs(x):,.2f}" if abs(x) >= 0.01 else significant(abs(x), 2)
    return f"{sign}{text}%"


def _unit(report: ValidationReport) -> tuple[str, int]:
    """The largest binary unit in which the largest prediction is at least 10: with 2 decimals,
    every size keeps at least 3 significant digits (1,126.40 MiB, not 1.10 GiB)."""
    largest = max((r.predicted_bytes for r in report.rows), default=0)
    return next(((name, scale) for name, scale in UNITS if largest >= 10 * scale), ("bytes", 1))


def _diff(row: ValidationRow) -> str:
    if row.measured_bytes is None:
        return "—"
    d = row.predicted_traced_bytes - row.measured_bytes
    return "0" if d == 0 else f"{d:+,}"


def _cells(row: ValidationRow, scale: int) -> list[str]:
    def size(n: int | None) -> str:
        return "—" if n is None else f"{n / scale:,.2f}" if scale > 1 else f"{n:,}"

    measured = [
        size(row.measured_bytes),
        _diff(row),
        "failed" if row.error else pct(row.error_pct),
        size(row.reserved_peak_bytes),
        size(row.fragmentation_bytes),
        size(row.device_peak_bytes),
        size(row.context_bytes),
    ]
    return [
        row.task,
        row.setting,
        f"{row.seq:,}",
        size(row.predicted_bytes),
        size(row.kernel_transient_bytes) if row.kernel_transient_bytes else "—",
        size(row.predicted_traced_bytes),
        *measured,
    ]


def _table_rows(report: ValidationReport) -> tuple[list[str], list[list[str]]]:
    """Headers (with \n where the terminal breaks them) and rows, without the columns that hold no
    value in any row (the CUDA-only ones on the CPU) and the CPU-only ones on CUDA."""
    unit, scale = _unit(report)
    rows = [_cells(r, scale) for r in report.rows]
    keep = [
        i
        for i, (_head, cpu_only) in enumerate(COLUMNS)
        if (i < KEEP or any(row[i] not in ("—", "") for row in rows)) and (report.device == "cpu" or not cpu_only)
    ]
    return [COLUMNS[i][0].format(unit=unit) for i in keep], [[row[i] for i in keep] for row in rows]


def _failures(report: ValidationReport) -> list[str]:
    return [f"{r.task} seq {r.seq:,} ({r.setting}) failed: {r.error}" for r in report.rows if r.error]


def _title(report: ValidationReport) -> str:
    where = report.env.get("gpu_name") or report.env.get("cpu") or ""
    lora = f"LoRA r={report.lora_r} alpha={report.lora_alpha:g}"
    if report.target:
        target = report.target if isinstance(report.target, str) else ",".join(report.target)
        lora += f" on {target}"
    return (
        f"memprof validate · {report.model} on {report.device}" + (f" ({where})" if where else "")
        + f" · batch {report.batch} · {lora}"
        + (f" · {report.nproc} rank(s), {report.shard}" if report.shard != "none" else "")
    )  # fmt: skip


def summary(report: ValidationReport) -> str:
    measured = [r for r in report.rows if r.measured_bytes is not None]
    failed = len(report.rows) - len(measured)
    if not measured:
        return f"Nothing was measured: all {failed} rows failed."
    text = f"max |error| (predicted vs measured): {pct(report.max_abs_error_pct).lstrip('+')}"
    if report.device == "cpu":
        text += (
            f"; max |traced − measured|: {report.max_abs_traced_diff_bytes:,} bytes "
            f"({pct(report.max_abs_traced_error_pct).lstrip('+')})"
        )
    text += f", over {len(measured)} measured row{'s' if len(measured) > 1 else ''}"
    return text + (f"; {failed} failed" if failed else "") + "."


def _notes(report: ValidationReport) -> list[str]:
    notes = list(report.notes)
    notes.append(f"weights: {report.weights}")
    env = report.env
    versions = ", ".join(
        f"{k} {env[k]}" for k in ("torch", "transformers", "bitsandbytes", "peft", "accelerate") if env.get(k)
    )
    notes.append(versions + (f"; GPU driver {env['gpu_driver']}" if env.get("gpu_driver") else ""))
    if report.command:
        notes.append(f"command: {report.command}")
    return notes


def validate_renderables(report: ValidationReport) -> Group:
    head, rows = _table_rows(report)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    for i, name in enumerate(head):
        justify = "left" if i < LABELS else "right"
        table.add_column(name, justify=justify, style="bold" if i == 0 else None, no_wrap=True)
    for cells, row in zip(rows, report.rows, strict=True):
        table.add_row(*cells, style="red" if row.error else None)
    parts: list = [Text(_title(report), style="bold"), table]
    parts += [Text(line, style="red") for line in _failures(report)]
    parts += [Text(""), Text(summary(report), style="bold"), Text("")]
    parts += [Text(f"• {note}", style="dim") for note in _notes(report)]
    return Group(*parts)


def render_validate_html(report: ValidationReport) -> str:
    """The table, then each measured step over time with plan's predicted peak as a line."""
    from memprof.measure.timeline import Timeline
    from memprof.report.timeline import timeline_svg

    charts = [
        timeline_svg(
            Timeline.from_json(row.measured_timeline),
            title=f"{row.task} at seq {row.seq}: measured live bytes, plan's prediction as the line",
            gpu_name="plan's predicted peak",
            gpu_bytes=row.predicted_bytes,
        )
        for row in report.rows
        if row.measured_timeline
    ]
    return with_charts(render_html(validate_renderables(report), width=170), charts)


def render_validate_md(report: ValidationReport) -> str:
    head, rows = _table_rows(report)
    lines = [f"## {_title(report)}", ""]
    lines += md_table([h.replace("-\n", "").replace("\n", " ") for h in head], rows) + [""]
    lines += [f"- {line}" for line in _failures(report)] + ([""] if _failures(report) else [])
    lines += [f"**{summary(report)}**", ""]
    lines += [f"- {note}" for note in _notes(report)]
    return "\n".join(lines) + "\n"
