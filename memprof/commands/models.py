"""List the built-in model catalog."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from memprof import catalog
from memprof.catalog import CatalogModel
from memprof.commands._common import add_output_args, emit, output_format
from memprof.report.common import md_table, render_html

HEAD = ["hub id", "aliases", "parameters"]


def _title() -> str:
    return f"memprof catalog (default: {catalog.default_model()})"


def _rows(models: tuple[CatalogModel, ...]) -> list[list[str]]:
    return [[m.hub_id, ", ".join(m.aliases), f"{m.published_params:,}"] for m in models]


def models_table(models: tuple[CatalogModel, ...]) -> Table:
    table = Table(title=_title())
    table.add_column(HEAD[0], style="bold")
    table.add_column(HEAD[1])
    table.add_column(HEAD[2], justify="right")
    for cells in _rows(models):
        table.add_row(*cells)
    return table


def render_models_md(models: tuple[CatalogModel, ...]) -> str:
    return "\n".join([f"## {_title()}", "", *md_table(HEAD, _rows(models))]) + "\n"


def render_models_html(models: tuple[CatalogModel, ...]) -> str:
    return render_html(models_table(models), width=120)


def render_models_json(models: tuple[CatalogModel, ...]) -> str:
    """A list of {hub_id, aliases, params}: the shape `memprof models --json` has always printed."""
    return json.dumps(
        [{"hub_id": m.hub_id, "aliases": list(m.aliases), "params": m.published_params} for m in models], indent=2
    )


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
