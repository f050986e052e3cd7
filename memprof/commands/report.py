"""Re-render a saved `memprof profile` result (the JSON is the session; every format comes from it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from memprof.commands._common import add_output_args, emit


class ReportCommand:
    name = "report"
    help = "re-render a saved profile result as a table, Markdown, HTML or JSON"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", type=Path, metavar="FILE", help="a JSON result written by `memprof profile`")
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from memprof.profile import ProfileReport
        from memprof.report.profile import profile_renderables, render_profile_html, render_profile_md

        report = ProfileReport.load(args.file)
        emit(report, args, console, table=profile_renderables, md=render_profile_md, html=render_profile_html)
        return 0
