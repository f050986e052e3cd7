"""Renderers for PlanReport: rich table with a stacked memory bar, Markdown, HTML. Nothing here computes."""

from __future__ import annotations

import io
import math

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from memprof.plan import Breakdown, GpuPlan, PlanReport
from memprof.report.common import md_table
from memprof.report.units import count, gib

# (field, label, colour) of the stacked bar, bottom to top of the step's memory
BAR_PARTS = (
    ("weights_bytes", "weights", "blue"),
    ("trainable_params_bytes", "trainable", "cyan"),
    ("grads_bytes", "grads", "magenta"),
    ("optimizer_states_bytes", "optimizer", "yellow"),
    ("activations_bytes", "activations", "green"),
    ("inputs_bytes", "inputs", "white"),
    ("kv_cache_bytes", "KV cache", "bright_red"),
    ("dequant_transient_bytes", "in-kernel", "bright_black"),  # bitsandbytes kernels' own buffers
    ("gathered_layers_bytes", "gathered", "bright_blue"),
)
BAR_WIDTH = 72
VERDICT = {"fits": "fits", "offload": "offload", "no": "no"}
# Short headers (units in the header, explanations in the notes) so the table fits 100 columns; the
# terminal table breaks them in two lines, Markdown keeps one.
_TABLE_HEAD = (
    "GPU",
    "memory\nGiB",
    "needs\nGiB",
    "fits",
    "headroom\nGiB",
    "max batch\n(fit)",
    "max seq\n(fit)",
    "step ms\n(est.)",
    "$/h",
    "$/M tok\n(est.)",
)
HEAD = tuple(h.replace("\n", " ") for h in _TABLE_HEAD)
SIGNIFICANT = 3


def _title(r: PlanReport) -> str:
    what = {"infer": "inference", "lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tune"}[r.task]
    parts = [f"{r.model} · {what} · {r.setting} · batch {r.batch} × seq {r.seq:,}"]
    if r.new_tokens:
        parts.append(f"+{r.new_tokens:,} new tokens")
    if r.lora_r is not None:
        parts.append(f"r={r.lora_r}")
    if r.optimizer:
        parts.append(r.optimizer)
    if r.grad_checkpointing:
        parts.append("grad ckpt")
    if r.num_gpus > 1:
        parts.append(f"{r.num_gpus} GPUs {r.shard}")
    return " · ".join(parts)


def significant(x: float | None, digits: int = SIGNIFICANT) -> str:
    """`x` with `digits` significant digits, never in exponent notation (0.000123, 1.23, 1,235)."""
    if x is None:
        return "—"
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def _cost_digits(r: PlanReport) -> int:
    """Significant digits for $/M tok: SIGNIFICANT, or more where the cheapest card would otherwise
    print the same number as another fitting card whose exact cost differs."""
    costs = [g.usd_per_million_tokens for g in r.gpus if g.fits and g.usd_per_million_tokens is not None]
    best = min(costs, default=None)
    digits = SIGNIFICANT
    while best is not None and digits < 15:
        if all(significant(c, digits) != significant(best, digits) for c in costs if c != best):
            break
        digits += 1
    return digits


def _gib(n: int) -> str:
    return significant(n / 2**30)


def _cells(g: GpuPlan, cost_digits: int = SIGNIFICANT) -> list[str]:
    seq = "—" if g.max_seq == 0 else f"{g.max_seq:,}" + (" (max)" if g.max_seq_capped else "")
    return [
        g.name + (" ★" if g.cheapest else ""),
        _gib(g.memory_bytes),
        _gib(g.required_bytes),
        VERDICT[g.verdict],
        _gib(g.headroom_bytes),
        f"{g.max_batch:,}" if g.max_batch else "—",
        seq,
        "—" if g.step_s is None else significant(g.step_s * 1000),
        "—" if g.usd_per_hour is None else "$" + significant(g.usd_per_hour),
        "—" if g.usd_per_million_tokens is None else "$" + significant(g.usd_per_million_tokens, cost_digits),
    ]


def _bar(bd: Breakdown) -> Text:
    text = Text()
    total = bd.total_bytes or 1
    used = 0
    for name, _label, colour in BAR_PARTS:
        value = getattr(bd, name)
        width = round(BAR_WIDTH * (used + value) / total) - round(BAR_WIDTH * used / total)
        used += value
        text.append("█" * width, style=colour)
    return text


def _legend(bd: Breakdown) -> Text:
    text = Text()
    for name, label, colour in BAR_PARTS:
        value = getattr(bd, name)
        if value:
            text.append("■ ", style=colour)
            text.append(f"{label} {gib(value)}  ")
    return text


def plan_renderables(r: PlanReport) -> Group:
    table = Table(
        title=_title(r),
        title_style="bold",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
        pad_edge=False,
    )
    for i, name in enumerate(_TABLE_HEAD):
        table.add_column(
            name, justify="left" if i in (0, 3) else "right", style="bold" if i == 0 else None, no_wrap=i != 0
        )
    styles = {"fits": None, "offload": "yellow", "no": "dim"}
    digits = _cost_digits(r)
    for g in r.gpus:
        table.add_row(*_cells(g, digits), style="bold green" if g.cheapest else styles[g.verdict])
    bd = r.breakdown
    parts = [
        table,
        Text(""),
        Text(f"Memory at the peak ({bd.peak_phase}) per GPU: {gib(bd.total_bytes)} + CUDA context", style="bold"),
        _bar(bd),
        _legend(bd),
        Text(
            f"FLOPs per step per GPU: {count(r.flops_per_step)} (exact) · tokens per step: {count(r.tokens_per_step)}"
            + (f" · cheapest that fits: {r.cheapest}" if r.cheapest else " · no GPU fits without offload"),
        ),
    ]
    parts += [Text(f"• {note}", style="dim") for note in r.notes]
    return Group(*parts)


def render_plan_html(r: PlanReport) -> str:
    console = Console(record=True, width=170, file=io.StringIO())
    console.print(plan_renderables(r))
    return console.export_html(inline_styles=True)


def render_plan_md(r: PlanReport) -> str:
    bd = r.breakdown
    lines = [f"## {_title(r)}", ""]
    # md_table escapes a `|` in a cell: GPU names come from the user's --gpu-file
    lines += md_table(list(HEAD), [_cells(g, _cost_digits(r)) for g in r.gpus])
    lines += ["", f"### Memory at the peak ({bd.peak_phase}) per GPU: {gib(bd.total_bytes)} + CUDA context", ""]
    training_only = ("trainable_params_bytes", "grads_bytes", "optimizer_states_bytes")
    parts = [(name, label) for name, label, _ in BAR_PARTS if r.task != "infer" or name not in training_only]
    part_rows = [[label, count(getattr(bd, name)), gib(getattr(bd, name))] for name, label in parts]
    lines += md_table(["part", "bytes", "GiB"], [*part_rows, ["total", count(bd.total_bytes), gib(bd.total_bytes)]])
    lines.append("")
    lines.append(
        f"FLOPs per step per GPU: {count(r.flops_per_step)} (exact); cheapest that fits: {r.cheapest or 'none'}"
    )
    lines.append("")
    lines += [f"- {note}" for note in r.notes]
    return "\n".join(lines) + "\n"
