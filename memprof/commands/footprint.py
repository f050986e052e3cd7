"""Bytes of a model's weights at each load setting, exact for get_memory_footprint and true bytes.

Answers from the model's config in about a second, without torch, for catalog models. With
--measure it loads the model for real at each setting, each in a fresh process, and compares.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from memprof.analyses.footprint import footprint
from memprof.commands._common import add_model_args, add_output_args, add_settings_arg, emit, output_format


class FootprintCommand:
    name = "footprint"
    help = "bytes of the weights at fp32 / bf16 / int8 / nf4 / nf4-dq (exact), optionally measured"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_model_args(parser)
        add_settings_arg(parser)
        parser.add_argument(
            "--dtype", metavar="DTYPE", help="dtype of what stays unquantized in int8/4-bit settings (default bf16)"
        )
        parser.add_argument(
            "--measure", action="store_true", help="load the model for real at each setting and compare"
        )
        parser.add_argument(
            "--device", choices=("cpu", "cuda"), help="device for --measure (default cpu); only with --measure"
        )
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        output_format(args)  # a --json/--format contradiction is one line before any work
        err = Console(stderr=True)
        with err.status("measuring…") if args.measure else _nullcontext() as status:
            report = footprint(
                args.model,
                settings=args.settings,
                dtype=args.dtype,
                measure=args.measure,
                device=args.device,
                allow_download=args.allow_download,
                trust_remote_code=args.trust_remote_code,
                on_progress=(lambda msg: status.update(msg)) if status is not None else None,
            )
        emit(report, args, console)
        failed = [r.setting for r in report.settings if r.mismatches or (r.measured and r.measured.error)]
        if failed:
            print(f"memprof: measured differs from predicted, or failed, for: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
