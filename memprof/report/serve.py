"""Renderers for ServePlan (`memprof plan --task serve`): rich table, Markdown, HTML. Nothing here computes."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from memprof.report.common import md_table, render_html
from memprof.results.serve import ServeGpu, ServePlan
from memprof.units import count, gib, human_bytes, significant

_HEAD = (
    "GPU",
    "memory\nGiB",
    "for KV\nGiB",
    "max seqs",
    "vLLM\nseqs (est.)",
    "decode tok/s\n(est.)",
    "1 seq tok/s\n(est.)",
    "$/h",
    "$/M tok\n(est.)",
)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f}"  # the column header says GiB


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if x >= 10 ** (digits - 1) else f"{x:.{digits}g}"


def _cells(g: ServeGpu) -> list[str]:
    name = f"{g.name} ★" if g.cheapest else g.name  # as plan's table marks it
    return [
        name,
        _gib(g.memory_bytes),
        _gib(g.cache_budget_bytes) if g.cache_budget_bytes > 0 else "none",
        f"{g.max_concurrent_sequences:,}",
        f"{g.vllm_max_concurrent_sequences_est:,}" if g.vllm_max_concurrent_sequences_est >= 0 else "—",
        _num(g.decode_tokens_per_s_est),
        _num(g.single_decode_tokens_per_s_est),
        "$" + significant(g.usd_per_hour) if g.usd_per_hour else "—",
        "$" + significant(g.usd_per_million_tokens_est) if g.usd_per_million_tokens_est is not None else "—",
    ]


def _title(r: ServePlan) -> str:
    return f"{r.model} · serving {r.context:,}-token sequences at {r.setting}"


def _cache_line(r: ServePlan) -> str:
    return (
        f"KV cache ({r.kv_dtype}): {count(r.kv_cache_bytes_per_token)} bytes per token, "
        f"{human_bytes(r.sequence_kv_bytes)} per {r.context:,}-token sequence"
    )


def _answer(r: ServePlan) -> str:
    if r.cheapest is None:
        return "No GPU holds the weights, a prefill chunk and one sequence's cache."
    g = next(g for g in r.gpus if g.name == r.cheapest)
    return (
        f"★ lowest $/h that serves: {g.name}, ${significant(g.usd_per_hour)}/h, {g.max_concurrent_sequences:,} "
        f"sequences of {r.context:,} tokens at once"
    )


def _memory_line(r: ServePlan) -> str:
    return (
        f"Beside the caches: weights {gib(r.weights_bytes)}, one {r.prefill_chunk:,}-token prefill "
        f"{human_bytes(r.prefill_activation_bytes)}, CUDA context, tight-fit margin. {r.cache_layers} layers cache"
        + (f" ({r.sliding_layers} in a sliding window)" if r.sliding_layers else "")
        + "."
    )


def serve_renderables(r: ServePlan, *, verbose: bool = False) -> Group:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    for i, name in enumerate(_HEAD):
        table.add_column(name, justify="left" if i == 0 else "right", style="bold" if i == 0 else None, no_wrap=i != 0)
    for g in r.gpus:
        style = "bold green" if g.cheapest else (None if g.fits else "dim")
        table.add_row(*_cells(g), style=style)
    parts = [Text(_title(r), style="bold"), Text(_cache_line(r)), table, Text(_memory_line(r))]
    parts.append(Text(_answer(r), style="bold"))
    parts += [Text(f"• {note}", style="dim") for note in r.notes]
    return Group(*parts)


def render_serve_html(r: ServePlan) -> str:
    return render_html(serve_renderables(r, verbose=True), width=170)


def render_serve_md(r: ServePlan) -> str:
    lines = [f"## {_title(r)}", "", _cache_line(r), ""]
    lines += md_table([h.replace("\n", " ") for h in _HEAD], [_cells(g) for g in r.gpus])
    lines += ["", _memory_line(r), "", _answer(r), ""]
    lines += [f"- {note}" for note in r.notes]
    return "\n".join(lines) + "\n"
