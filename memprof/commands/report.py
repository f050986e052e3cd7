"""Re-render a saved `memprof profile` or `memprof footprint --json` result (the JSON is the session;
every format comes from it)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from rich.console import Console

from memprof.commands._common import add_output_args, emit
from memprof.errors import ResultFileError


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
        import json

        from memprof.footprint import FOOTPRINT_KIND, FootprintReport
        from memprof.profile import ProfileReport
        from memprof.report.footprint import footprint_renderables, render_footprint_html, render_footprint_md
        from memprof.report.profile import profile_renderables, render_profile_html, render_profile_md

        with contextlib.suppress(OSError, ValueError):
            if json.loads(args.file.read_text()).get("kind") == FOOTPRINT_KIND:
                report = _load_footprint(args.file, FootprintReport)
                emit(
                    report,
                    args,
                    console,
                    table=footprint_renderables,
                    md=render_footprint_md,
                    html=render_footprint_html,
                )
                return 0
        report = ProfileReport.load(args.file)  # says in one line what is wrong with any other file
        emit(report, args, console, table=profile_renderables, md=render_profile_md, html=render_profile_html)
        return 0


def _load_footprint(path: Path, cls):
    import json

    try:
        return cls.from_json(json.loads(path.read_text()))
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ResultFileError(f"{path} is not a valid memprof footprint result ({exc})") from None
