"""Re-render a saved `memprof profile`, `memprof footprint --json`, `memprof validate --save`, `memprof plan
--json` (--task serve too), `memprof lora-params --json` or `memprof compare --json` result (the JSON is the session; every format comes from it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from memprof.commands._common import add_output_args, emit, output_format


class ReportCommand:
    name = "report"
    help = "re-render a saved profile, footprint, validate, plan, lora-params or compare result (table, md, html, json)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "file",
            type=Path,
            metavar="FILE",
            help="a JSON result written by `memprof profile`, `memprof footprint --json --out`, "
            "`memprof validate --save`, or the --json of `memprof plan`, `memprof lora-params` or `memprof compare`",
        )
        parser.add_argument(
            "--verbose", "-v", action="store_true", help="plan and serve tables: how each number is made, as plan -v"
        )
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from memprof.results import load_result

        output_format(args)  # a --json/--format contradiction is one line before any work
        report = load_result(args.file)  # any kind, or one line saying what is wrong with the file
        emit(report, args, console, verbose=args.verbose)  # the kind's renderers (memprof.report.RENDERERS)
        return 0
