"""Re-render a saved `memprof profile`, `memprof footprint --json` or `memprof validate --save` result
(the JSON is the session; every format comes from it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from memprof.commands._common import add_output_args, emit, output_format


class ReportCommand:
    name = "report"
    help = "re-render a saved profile, footprint or validate result as a table, Markdown, HTML or JSON"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "file",
            type=Path,
            metavar="FILE",
            help="a JSON result written by `memprof profile`, `memprof footprint --json --out` or "
            "`memprof validate --save`",
        )
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from memprof.footprint import FootprintReport
        from memprof.profile import load_result
        from memprof.validate import ValidationReport

        output_format(args)  # a --json/--format contradiction is one line before any work
        report = load_result(args.file)  # either kind, or one line saying what is wrong with the file
        if isinstance(report, FootprintReport):
            from memprof.report.footprint import footprint_renderables, render_footprint_html, render_footprint_md

            emit(report, args, console, table=footprint_renderables, md=render_footprint_md, html=render_footprint_html)
        elif isinstance(report, ValidationReport):
            from memprof.report.validate import render_validate_html, render_validate_md, validate_renderables

            emit(report, args, console, table=validate_renderables, md=render_validate_md, html=render_validate_html)
        else:
            from memprof.report.profile import profile_renderables, render_profile_html, render_profile_md

            emit(report, args, console, table=profile_renderables, md=render_profile_md, html=render_profile_html)
        return 0
