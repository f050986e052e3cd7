"""List the built-in model catalog."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from memprof import catalog


class ModelsCommand:
    name = "models"
    help = "list the built-in catalog of model configs (usable offline by hub id or alias)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args: argparse.Namespace, console: Console) -> int:
        models = catalog.catalog_models()
        if args.json:
            print(
                json.dumps(
                    [{"hub_id": m.hub_id, "aliases": list(m.aliases), "params": m.published_params} for m in models],
                    indent=2,
                )
            )
            return 0
        table = Table(title=f"memprof catalog (default: {catalog.default_model()})")
        table.add_column("hub id", style="bold")
        table.add_column("aliases")
        table.add_column("parameters", justify="right")
        for m in models:
            table.add_row(m.hub_id, ", ".join(m.aliases), f"{m.published_params:,}")
        console.print(table)
        return 0
