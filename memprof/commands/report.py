"""Re-render a saved `memprof profile` or `memprof footprint --json` result (the JSON is the session;
every format comes from it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from memprof.commands._common import add_output_args, emit, output_format


class ReportCommand:
    name = "report"
    help = "re-render a saved profile or footprint result as a table, Markdown, HTML or JSON"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "file",
            type=Path,
            metavar="FILE",
            help="a JSON result written by `memprof profile` or `memprof footprint --json --out`",
        )
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from memprof.footprint import FootprintReport
        from memprof.profile import load_result

        output_format(args)  # a --json/--format contradiction is one line before any work
        report = load_result(args.file)  # either kind, or one line saying what is wrong with the file
        if isinstance(report, FootprintReport):
            from memprof.report.footprint import footprint_renderables, render_footprint_html, render_footprint_md

            emit(report, args, console, table=footprint_renderables, md=render_footprint_md, html=render_footprint_html)
        else:
            from memprof.report.profile import profile_renderables, render_profile_html, render_profile_md

            emit(report, args, console, table=profile_renderables, md=render_profile_md, html=render_profile_html)
        return 0
