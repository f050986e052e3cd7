"""List the built-in model catalog."""

from __future__ import annotations

import argparse

from rich.console import Console

from memprof import catalog
from memprof.commands._common import add_output_args, emit, output_format
from memprof.report.catalog import models_table, render_models_html, render_models_json, render_models_md


class ModelsCommand:
    name = "models"
    help = "list the built-in catalog of model configs (usable offline by hub id or alias)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        output_format(args)  # a --json/--format contradiction is one line
        emit(
            catalog.catalog_models(),
            args,
            console,
            table=models_table,
            md=render_models_md,
            html=render_models_html,
            as_json=render_models_json,
        )
        return 0
