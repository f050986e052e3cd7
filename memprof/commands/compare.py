"""Show two saved `memprof profile` results side by side, with B / A ratios per setting and metric."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from memprof.commands._common import add_output_args, emit, output_format


class CompareCommand:
    name = "compare"
    help = "two saved profile results side by side, with ratios"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("a", type=Path, metavar="A", help="the baseline result JSON")
        parser.add_argument("b", type=Path, metavar="B", help="the result JSON to compare with it")
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from memprof.analyses.compare import compare_reports
        from memprof.results.profile import ProfileReport

        output_format(args)  # a --json/--format contradiction is one line before any work
        comparison = compare_reports(ProfileReport.load(args.a), ProfileReport.load(args.b))
        emit(comparison, args, console)
        return 0
