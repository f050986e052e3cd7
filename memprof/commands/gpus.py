"""List the GPU table `memprof plan` uses: memory, CUDA context, bf16 TFLOP/s, bandwidth, indicative price."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from memprof import catalog
from memprof.report.plan import significant
from memprof.report.units import gib

GPU_FILE_HELP = (
    'JSON file of cards to add or override: {"gpus": [ENTRY, ...]}. An entry named like a shipped card (see '
    '`memprof gpus`) changes only the fields it gives, e.g. {"name": "T4", "usd_per_hour": 0.25}; any '
    "other name is a new card and needs name, memory_mib, context_mib (CUDA context in MiB), "
    "bf16_dense_tflops, memory_bandwidth_gbs and usd_per_hour: finite numbers > 0 (context_mib may be 0). Optional: "
    "context_measured (true/false), tier_gb, note"
)


class GpusCommand:
    name = "gpus"
    help = "list the GPU table (memory, context, bf16 TFLOP/s, bandwidth, indicative $/hour)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--gpu-file", type=Path, metavar="FILE", help=GPU_FILE_HELP)
        parser.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        table_data = catalog.gpus_with(args.gpu_file)
        if args.json:
            rows = [{**dataclasses.asdict(g), "usable_bytes": g.usable_bytes} for g in table_data]
            print(json.dumps(rows, indent=2))
            return 0
        table = Table(title="GPUs (prices: indicative on-demand USD/hour; override with --gpu-file)")
        for i, name in enumerate(("GPU", "memory", "CUDA context", "usable", "bf16 TFLOP/s", "GB/s", "$/hour", "note")):
            table.add_column(name, justify="left" if i in (0, 7) else "right", style="bold" if i == 0 else None)
        for g in table_data:
            context = gib(g.context_bytes) + ("" if g.context_measured else f" ({g.context_label})")
            table.add_row(
                g.name,
                gib(g.memory_bytes),
                context,
                gib(g.usable_bytes),
                f"{g.bf16_dense_tflops:,.0f}",
                f"{g.memory_bandwidth_gbs:,.0f}",
                "$" + significant(g.usd_per_hour),
                g.note,
            )
        console.print(table)
        return 0
