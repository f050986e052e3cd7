"""Renderers for PlanReport: rich table with a stacked memory bar, Markdown, HTML. Nothing here computes."""

from __future__ import annotations

import io

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from memprof.report.common import md_table, with_charts
from memprof.results.plan import Breakdown, GpuPlan, PlanReport
from memprof.units import count, gib, significant

# (field, label, colour, character without colour) of the stacked bar, bottom to top of the step's memory
BAR_PARTS = (
    ("weights_bytes", "weights", "blue", "█"),
    ("trainable_params_bytes", "trainable", "cyan", "▓"),
    ("grads_bytes", "grads", "magenta", "▒"),
    ("optimizer_states_bytes", "optimizer", "yellow", "░"),
    ("activations_bytes", "activations", "green", "#"),
    ("inputs_bytes", "inputs", "white", "="),
    ("kv_cache_bytes", "KV cache", "bright_red", "+"),
    ("dequant_transient_bytes", "in-kernel", "bright_black", "*"),  # bitsandbytes kernels' own buffers
    ("gathered_layers_bytes", "gathered", "bright_blue", "%"),
)
BAR_WIDTH = 72
# Short headers (units in the header, explanations in the notes) so the table fits 100 columns; the
# terminal table breaks them in two lines, Markdown keeps one.
_TABLE_HEAD = (
    "GPU",
    "memory\nGiB",
    "needs\nGiB",
    "verdict",
    "headroom\nGiB",
    "max batch\n(fit)",
    "max seq\n(fit)",
    "step ms\n(est.)",
    "$/h",
    "$/M tok\n(est.)",
)
HEAD = tuple(h.replace("\n", " ") for h in _TABLE_HEAD)
GPUS_HEAD = "GPUs"  # the column --num-gpus auto adds after the card's name


def _head(r: PlanReport, *, wrapped: bool) -> tuple[str, ...]:
    head = _TABLE_HEAD if wrapped else HEAD
    return (head[0], GPUS_HEAD, *head[1:]) if r.num_gpus_auto else head


SIGNIFICANT = 3


def _title(r: PlanReport) -> str:
    what = {"infer": "inference", "lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tune"}[r.task]
    if r.lora_r is not None:
        what += f" r={r.lora_r}"
    batch = f"batch {r.batch:,} × seq {r.seq:,}" + (f" +{r.new_tokens:,} new" if r.new_tokens else "")
    setting = f"{r.precision} {r.setting}" if r.task == "full" else r.setting  # e.g. "mixed bf16"
    parts = [r.model, what, setting, batch]
    if r.optimizer and r.optimizer != "adamw":  # AdamW, the default, is named in the details
        parts.append(r.optimizer)
    if r.task != "infer":
        parts.append("grad ckpt " + ("on" if r.grad_checkpointing else "off"))
    if r.num_gpus_auto:
        parts.append(f"{r.shard}, fewest GPUs")
    elif r.num_gpus > 1:
        parts.append(f"{r.num_gpus} GPUs {r.shard}")
    return " · ".join(parts)


def _cost_digits(r: PlanReport) -> int:
    """Significant digits for $/h, what the star is chosen on: SIGNIFICANT, or more where the starred
    card would otherwise print the same price as another fitting card whose exact price differs."""
    costs = [g.usd_per_hour for g in r.gpus if g.fits and g.usd_per_hour is not None]
    best = min(costs, default=None)
    digits = SIGNIFICANT
    while best is not None and digits < 15:
        if all(significant(c, digits) != significant(best, digits) for c in costs if c != best):
            break
        digits += 1
    return digits


def _gib(n: int) -> str:
    return significant(n / 2**30)


def _cells(g: GpuPlan, cost_digits: int = SIGNIFICANT, *, auto: bool = False) -> list[str]:
    seq = "—" if g.max_seq == 0 else f"{g.max_seq:,}" + (" (max)" if g.max_seq_capped else "")
    return [
        g.name + (" ★" if g.cheapest else ""),
        *([f"{g.num_gpus}" if g.fits else f">{g.num_gpus}"] if auto else []),
        _gib(g.memory_bytes),
        _gib(g.required_bytes),
        g.verdict,
        _gib(g.headroom_bytes),
        f"{g.max_batch:,}" if g.max_batch else "—",
        seq,
        "—" if g.step_s is None else significant(g.step_s * 1000),
        "—" if g.usd_per_hour is None else "$" + significant(g.usd_per_hour, cost_digits),
        "—" if g.usd_per_million_tokens is None else "$" + significant(g.usd_per_million_tokens),
    ]


class _Bar:
    """The stacked memory bar and its legend: coloured blocks, or one character per kind where the
    console has no colour (every block would look the same)."""

    def __init__(self, bd: Breakdown) -> None:
        self.bd = bd

    def __rich_console__(self, console, options):
        plain = console.color_system is None or console.no_color
        yield _bar(self.bd, plain=plain)
        yield _legend(self.bd, plain=plain)


def _bar(bd: Breakdown, *, plain: bool = False) -> Text:
    text = Text()
    total = bd.total_bytes or 1
    used = 0
    for name, _label, colour, char in BAR_PARTS:
        value = getattr(bd, name)
        width = round(BAR_WIDTH * (used + value) / total) - round(BAR_WIDTH * used / total)
        used += value
        text.append((char if plain else "█") * width, style=colour)
    return text


def _legend(bd: Breakdown, *, plain: bool = False) -> Text:
    """One entry per kind that holds bytes, in GiB (said in the heading, so that the legend fits a line)."""
    text = Text()
    for name, label, colour, char in BAR_PARTS:
        value = getattr(bd, name)
        if value:
            if text:
                text.append(" ")  # one space between entries: the marks set them apart
            text.append(char if plain else "■", style=colour)
            text.append(f" {label} {value / 2**30:.2f}")
    return text


def plan_renderables(r: PlanReport, *, verbose: bool = False) -> Group:
    """The table, the memory bar and the short notes; with `verbose`, how every number is made too."""
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
        pad_edge=False,
    )
    head = _head(r, wrapped=True)
    styles = {"fits": None, "tight": "yellow", "offload": "yellow", "no": "dim"}
    digits = _cost_digits(r)
    rows = [_cells(g, digits, auto=r.num_gpus_auto) for g in r.gpus]
    for i, name in enumerate(head):
        left = i == 0 or name == "verdict"
        # no cell is ever cut ("$0.…" would be a wrong number): a terminal narrower than the table
        # wraps its lines instead of rich shrinking columns, the card's name first, to nothing
        widest = max([len(str(row[i])) for row in rows] + [len(line) for line in name.split("\n")])
        table.add_column(
            name, justify="left" if left else "right", style="bold" if i == 0 else None, no_wrap=True, min_width=widest
        )
    for g, cells in zip(r.gpus, rows, strict=True):
        table.add_row(*cells, style="bold green" if g.cheapest else styles[g.verdict])
    bd = r.breakdown
    parts = [
        # the title above the table, not the table's own title: that one wraps at the table's width
        Text(_title(r), style="bold"),
        table,
        Text(""),
        Text(
            f"Memory at the peak ({bd.peak_phase}) {_where(r)}: {gib(bd.total_bytes)}{_plus_context(r)}; in GiB:",
            style="bold",
        ),
        _Bar(bd),
        Text(_answer(r), style="bold"),
    ]
    parts += [Text(f"• {note}", style="dim") for note in r.notes]
    if not verbose:
        parts.append(Text("• --verbose: how each number is made", style="dim"))
    else:
        parts.append(
            Text(
                f"FLOPs per step per GPU: {count(r.flops_per_step)} (matmuls and attention, counted) · tokens per step: {count(r.tokens_per_step)}"
            )
        )
        if region_line(r):
            parts.append(Text(region_line(r)))
        parts += [Text(f"• {note}", style="dim") for note in r.details]
    return Group(*parts)


def _where(r: PlanReport) -> str:
    return "on this machine" if r.device == "cpu" else f"per GPU{_at(r)}"


def _plus_context(r: PlanReport) -> str:
    return "" if r.device == "cpu" else " + CUDA context"


def _at(r: PlanReport) -> str:
    """With --num-gpus auto, which count the breakdown is at (the starred card's)."""
    return f" at {r.num_gpus} GPU{'s' if r.num_gpus > 1 else ''} (the ★ card's)" if r.num_gpus_auto else ""


def _answer(r: PlanReport) -> str:
    """The line that answers the question: which card, how much left free, at what batch."""
    fitting = [g for g in r.gpus if g.verdict in ("fits", "tight")]
    if r.cheapest is None and not fitting:
        return "Nothing fits without offload." if r.device == "cpu" else "No GPU fits without offload."
    # the starred card; where no card that fits has a price (this machine, a --gpu-file card), the
    # first that fits, said without a star
    g = next(g for g in r.gpus if g.name == r.cheapest) if r.cheapest is not None else fitting[0]
    tight = " (tight)" if g.verdict == "tight" else ""
    batch = f"max batch {g.max_batch:,}" if g.max_batch else "not batch 1 with the margin free"
    cards = f"{g.num_gpus} × " if r.num_gpus_auto or g.num_gpus > 1 else ""
    per_gpu = " per GPU" if cards else ""
    if r.cheapest is None:
        return f"Fits: {cards}{g.name}{tight}, {_gib(g.headroom_bytes)} GiB free{per_gpu}; {batch} at seq {r.seq:,} (no price known, so no ★)"
    return (
        f"★ lowest $/h that fits: {cards}{g.name}{tight}, ${significant(g.usd_per_hour)}/h, {_gib(g.headroom_bytes)} "
        f"GiB free{per_gpu}; {batch} at seq {r.seq:,}"
    )


def render_plan_html(r: PlanReport) -> str:
    """The verbose screen, then the step over time (each region's peak) with the starred card's memory."""
    from memprof.measure.timeline import Timeline
    from memprof.report.timeline import timeline_svg

    console = Console(record=True, width=170, file=io.StringIO())
    console.print(plan_renderables(r, verbose=True))
    html = console.export_html(inline_styles=True)
    if not r.timeline:
        return html
    card = next((g for g in r.gpus if g.cheapest), r.gpus[0] if r.gpus else None)
    svg = timeline_svg(
        Timeline.from_json(r.timeline),
        title=f"{r.model}: the step per GPU, each region's peak in step order (simulated)",
        gpu_name=None if card is None or r.device == "cpu" else f"{card.name} less its CUDA context",
        gpu_bytes=None if card is None or r.device == "cpu" else card.memory_bytes - card.context_bytes,
        x_label="the step's regions in order (each point: the region's simulated peak and what held it)",
    )
    return with_charts(html, [svg])


_BLOCKS = "▁▂▃▄▅▆▇█"


def region_line(r: PlanReport) -> str:
    """One glyph per recorded region, in step order, from the lowest region peak (▁) to the peak (█)."""
    points = (r.timeline or {}).get("points") or []
    if not points:
        return ""
    low, high = min(p["bytes"] for p in points), max(p["bytes"] for p in points)
    span = max(high - low, 1)
    glyphs = "".join(_BLOCKS[min(7, (p["bytes"] - low) * 8 // span)] for p in points)
    names = [ph["name"] for ph in r.timeline["phases"]]
    return f"Over the step ({names[0]} → {names[-1]}, each region's peak): {glyphs}"


def render_plan_md(r: PlanReport) -> str:
    bd = r.breakdown
    lines = [f"## {_title(r)}", ""]
    head = _head(r, wrapped=False)
    # md_table escapes a `|` in a cell: GPU names come from the user's --gpu-file
    lines += md_table(list(head), [_cells(g, _cost_digits(r), auto=r.num_gpus_auto) for g in r.gpus])
    lines += ["", f"### Memory at the peak ({bd.peak_phase}) {_where(r)}: {gib(bd.total_bytes)}{_plus_context(r)}", ""]
    training_only = ("trainable_params_bytes", "grads_bytes", "optimizer_states_bytes")
    parts = [(name, label) for name, label, _, _ in BAR_PARTS if r.task != "infer" or name not in training_only]
    part_rows = [[label, count(getattr(bd, name)), gib(getattr(bd, name))] for name, label in parts]
    lines += md_table(["part", "bytes", "GiB"], [*part_rows, ["total", count(bd.total_bytes), gib(bd.total_bytes)]])
    lines.append("")
    lines.append(
        f"FLOPs per step per GPU: {count(r.flops_per_step)} (matmuls and attention, counted); "
        f"lowest $/h that fits: {r.cheapest or 'none'}"
    )
    lines.append("")
    lines += [f"- {note}" for note in (*r.notes, *r.details)]
    return "\n".join(lines) + "\n"
