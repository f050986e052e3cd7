"""List the GPU table `memprof plan` uses: memory, CUDA context, bf16 TFLOP/s, bandwidth, indicative price."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from memprof import catalog
from memprof.catalog import Gpu
from memprof.commands._common import add_output_args, emit, output_format
from memprof.report.common import md_table, render_html
from memprof.report.plan import significant
from memprof.report.units import gib

GPU_FILE_HELP = (
    'JSON file of cards to add or override: {"gpus": [ENTRY, ...]}. An entry named like a shipped card (see '
    '`memprof gpus`) changes only the fields it gives, e.g. {"name": "T4", "usd_per_hour": 0.25}; any '
    "other name is a new card and needs name, memory_mib, context_mib (CUDA context in MiB), "
    "bf16_dense_tflops, memory_bandwidth_gbs and usd_per_hour: finite numbers > 0 (context_mib may be 0). Optional: "
    "context_measured (true/false), tier_gb, note"
)

TITLE = "GPUs (prices: indicative on-demand USD/hour; override with --gpu-file)"
HEAD = ["GPU", "memory", "CUDA context", "usable", "bf16 TFLOP/s", "GB/s", "$/hour", "note"]


def _rows(gpus: tuple[Gpu, ...]) -> list[list[str]]:
    rows = []
    for g in gpus:
        context = gib(g.context_bytes) + ("" if g.context_measured else f" ({g.context_label})")
        rows.append(
            [
                g.name,
                gib(g.memory_bytes),
                context,
                gib(g.usable_bytes),
                f"{g.bf16_dense_tflops:,.0f}",
                f"{g.memory_bandwidth_gbs:,.0f}",
                "$" + significant(g.usd_per_hour),
                g.note,
            ]
        )
    return rows


def gpus_table(gpus: tuple[Gpu, ...]) -> Table:
    table = Table(title=TITLE)
    for i, name in enumerate(HEAD):
        table.add_column(name, justify="left" if i in (0, 7) else "right", style="bold" if i == 0 else None)
    for cells in _rows(gpus):
        table.add_row(*cells)
    return table


def render_gpus_md(gpus: tuple[Gpu, ...]) -> str:
    return "\n".join([f"## {TITLE}", "", *md_table(HEAD, _rows(gpus))]) + "\n"


def render_gpus_html(gpus: tuple[Gpu, ...]) -> str:
    return render_html(gpus_table(gpus), width=140)


def render_gpus_json(gpus: tuple[Gpu, ...]) -> str:
    """A list of the cards' fields plus usable_bytes: the shape `memprof gpus --json` has always printed."""
    return json.dumps([{**dataclasses.asdict(g), "usable_bytes": g.usable_bytes} for g in gpus], indent=2)


class GpusCommand:
    name = "gpus"
    help = "list the GPU table (memory, context, bf16 TFLOP/s, bandwidth, indicative $/hour)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--gpu-file", type=Path, metavar="FILE", help=GPU_FILE_HELP)
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        output_format(args)  # a --json/--format contradiction is one line
        emit(
            catalog.gpus_with(args.gpu_file),
            args,
            console,
            table=gpus_table,
            md=render_gpus_md,
            html=render_gpus_html,
            as_json=render_gpus_json,
        )
        return 0
