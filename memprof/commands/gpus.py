"""List the GPU table `memprof plan` uses: memory, CUDA context, bf16 TFLOP/s, bandwidth, indicative price."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from memprof import catalog
from memprof.commands._common import add_output_args, emit, output_format
from memprof.report.catalog import (
    context_table,
    gpus_table,
    render_context_html,
    render_context_md,
    render_gpus_html,
    render_gpus_json,
    render_gpus_md,
)

GPU_FILE_HELP = (
    'JSON file of cards to add or override: {"gpus": [ENTRY, ...]}. An entry named like a shipped card (see '
    '`memprof gpus`) changes only the fields it gives, e.g. {"name": "T4", "usd_per_hour": 0.25}; any '
    "other name is a new card and needs name, memory_mib and context_mib (CUDA context in MiB; may be 0). "
    "Optional: bf16_dense_tflops, memory_bandwidth_gbs and usd_per_hour (without them plan estimates no step time "
    "or cost for the card), context_measured (true/false), tier_gb, note. Numbers: finite and > 0"
)


class GpusCommand:
    name = "gpus"
    help = "list the GPU table (memory, context, bf16 TFLOP/s, bandwidth, indicative $/hour)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--gpu-file", type=Path, metavar="FILE", help=GPU_FILE_HELP)
        parser.add_argument(
            "--measure-context",
            action="store_true",
            help="measure this machine's CUDA context (NVML used minus torch's reserved memory, in a process that "
            "has not touched CUDA) and print it with a --gpu-file entry that gives it to `memprof plan`",
        )
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        output_format(args)  # a --json/--format contradiction is one line
        if args.measure_context:
            from memprof.measure.context import measure_cuda_context

            emit(
                measure_cuda_context(),
                args,
                console,
                table=context_table,
                md=render_context_md,
                html=render_context_html,
            )
            return 0
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
