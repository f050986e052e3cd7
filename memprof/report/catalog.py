"""Render the built-in catalogs: models (`memprof models`) and GPUs (`memprof gpus`)."""

from __future__ import annotations

import dataclasses
import json

from rich.table import Table

from memprof import catalog
from memprof.catalog import CatalogModel, Gpu
from memprof.measure.context import CudaContext
from memprof.report.common import md_table, render_html
from memprof.report.plan import significant
from memprof.units import gib, human_bytes

MODELS_HEAD = ["hub id", "aliases", "parameters"]


def _md_section(title: str, head: list[str], rows: list[list[str]]) -> str:
    return "\n".join([f"## {title}", "", *md_table(head, rows)]) + "\n"


def _models_title() -> str:
    return f"memprof catalog (default: {catalog.default_model()})"


def _model_rows(models: tuple[CatalogModel, ...]) -> list[list[str]]:
    return [[m.hub_id, ", ".join(m.aliases), f"{m.published_params:,}"] for m in models]


def models_table(models: tuple[CatalogModel, ...]) -> Table:
    table = Table(title=_models_title())
    # a hub id is what users copy: never cut (fold it over lines if it must), the aliases wrap instead
    table.add_column(
        MODELS_HEAD[0],
        style="bold",
        no_wrap=True,
        overflow="fold",
        min_width=max(len(m.hub_id) for m in models) if models else None,
    )
    table.add_column(MODELS_HEAD[1], overflow="fold")
    table.add_column(MODELS_HEAD[2], justify="right")
    for cells in _model_rows(models):
        table.add_row(*cells)
    return table


def render_models_md(models: tuple[CatalogModel, ...]) -> str:
    return _md_section(_models_title(), MODELS_HEAD, _model_rows(models))


def render_models_html(models: tuple[CatalogModel, ...]) -> str:
    return render_html(models_table(models), width=120)


def render_models_json(models: tuple[CatalogModel, ...]) -> str:
    """A list of {hub_id, aliases, params}: the shape `memprof models --json` has always printed."""
    return json.dumps(
        [{"hub_id": m.hub_id, "aliases": list(m.aliases), "params": m.published_params} for m in models], indent=2
    )


GPUS_TITLE = "GPUs (prices: indicative on-demand USD/hour; override with --gpu-file)"
GPUS_HEAD = ["GPU", "memory", "CUDA context", "usable", "bf16 TFLOP/s", "GB/s", "$/hour", "note"]


# Short tags, so a context cell fits one line at 100 columns; GPUS_FOOTNOTE says what they mean.
_CONTEXT_TAG = {"not measured": "est.", "given": "given"}
GPUS_FOOTNOTE = (
    "CUDA context: (est.) a shipped estimate, not measured on this card; (given) from your --gpu-file; "
    "no tag: measured (`memprof gpus --measure-context` measures yours)"
)


def _gpu_rows(gpus: tuple[Gpu, ...]) -> list[list[str]]:
    rows = []
    for g in gpus:
        context = gib(g.context_bytes) + ("" if g.context_measured else f" ({_CONTEXT_TAG[g.context_label]})")
        rows.append(
            [
                g.name,
                gib(g.memory_bytes),
                context,
                gib(g.usable_bytes),
                # 0.0: unknown (a --gpu-file card that did not give it)
                f"{g.bf16_dense_tflops:,.0f}" if g.bf16_dense_tflops else "—",
                f"{g.memory_bandwidth_gbs:,.0f}" if g.memory_bandwidth_gbs else "—",
                "$" + significant(g.usd_per_hour) if g.usd_per_hour else "—",
                g.note,
            ]
        )
    return rows


def gpus_table(gpus: tuple[Gpu, ...]) -> Table:
    table = Table(title=GPUS_TITLE, caption=GPUS_FOOTNOTE, caption_justify="left")
    for i, name in enumerate(GPUS_HEAD):
        table.add_column(
            name,
            justify="left" if i in (0, 7) else "right",
            style="bold" if i == 0 else None,
            no_wrap=i != 7,  # numbers and names whole; only the note wraps
        )
    for cells in _gpu_rows(gpus):
        table.add_row(*cells)
    return table


def render_gpus_md(gpus: tuple[Gpu, ...]) -> str:
    return _md_section(GPUS_TITLE, GPUS_HEAD, _gpu_rows(gpus)) + f"\n{GPUS_FOOTNOTE}\n"


def render_gpus_html(gpus: tuple[Gpu, ...]) -> str:
    return render_html(gpus_table(gpus), width=140)


def render_gpus_json(gpus: tuple[Gpu, ...]) -> str:
    """A list of the cards' fields plus usable_bytes: the shape `memprof gpus --json` has always printed."""
    return json.dumps([{**dataclasses.asdict(g), "usable_bytes": g.usable_bytes} for g in gpus], indent=2)


def _context_rows(ctx: CudaContext) -> list[list[str]]:
    return [
        [
            "device",
            ctx.device_name + (f" (catalog: {ctx.catalog_name})" if ctx.catalog_name else " (not in the catalog)"),
        ],
        ["driver / torch / CUDA", f"{ctx.driver or '?'} / {ctx.torch_version} / {ctx.cuda_version or '?'}"],
        ["NVML used before CUDA init", human_bytes(ctx.used_before_bytes)],
        ["NVML used after init + GEMMs", human_bytes(ctx.used_after_bytes)],
        ["torch reserved", human_bytes(ctx.reserved_bytes)],
        ["CUDA context (after - before - reserved)", f"{human_bytes(ctx.context_bytes)} ({ctx.context_bytes:,} bytes)"],
        ["--gpu-file entry", json.dumps({"gpus": [ctx.gpu_file_entry()]})],
    ]


_CONTEXT_TITLE = "CUDA context of this machine (measured)"


def context_table(ctx: CudaContext) -> Table:
    table = Table(title=_CONTEXT_TITLE, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for cells in _context_rows(ctx):
        table.add_row(*cells)
    return table


def render_context_md(ctx: CudaContext) -> str:
    return _md_section(_CONTEXT_TITLE, ["what", "value"], _context_rows(ctx))


def render_context_html(ctx: CudaContext) -> str:
    return render_html(context_table(ctx), width=140)
