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
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from memprof.results import load_result
        from memprof.results.footprint import FootprintReport
        from memprof.results.lora import LoraReport, LoraSweep
        from memprof.results.plan import PlanReport
        from memprof.results.profile import ProfileComparison
        from memprof.results.serve import ServePlan
        from memprof.results.validate import ValidationReport

        output_format(args)  # a --json/--format contradiction is one line before any work
        report = load_result(args.file)  # any kind, or one line saying what is wrong with the file
        if isinstance(report, FootprintReport):
            from memprof.report.footprint import footprint_renderables, render_footprint_html, render_footprint_md

            emit(report, args, console, table=footprint_renderables, md=render_footprint_md, html=render_footprint_html)
        elif isinstance(report, ValidationReport):
            from memprof.report.validate import render_validate_html, render_validate_md, validate_renderables

            emit(report, args, console, table=validate_renderables, md=render_validate_md, html=render_validate_html)
        elif isinstance(report, ServePlan):
            from memprof.report.serve import render_serve_html, render_serve_md, serve_renderables

            emit(report, args, console, table=serve_renderables, md=render_serve_md, html=render_serve_html)
        elif isinstance(report, PlanReport):
            from memprof.report.plan import plan_renderables, render_plan_html, render_plan_md

            emit(report, args, console, table=plan_renderables, md=render_plan_md, html=render_plan_html)
        elif isinstance(report, (LoraReport, LoraSweep)):
            from memprof.report.lora import lora_renderables, render_lora_html, render_lora_md

            emit(report, args, console, table=lora_renderables, md=render_lora_md, html=render_lora_html)
        elif isinstance(report, ProfileComparison):
            from memprof.report.profile import compare_renderables, render_compare_html, render_compare_md

            emit(report, args, console, table=compare_renderables, md=render_compare_md, html=render_compare_html)
        else:
            from memprof.report.profile import profile_renderables, render_profile_html, render_profile_md

            emit(report, args, console, table=profile_renderables, md=render_profile_md, html=render_profile_html)
        return 0
