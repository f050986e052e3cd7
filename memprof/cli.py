"""memprof's command line: builds the parser from commands/, runs one, and turns user errors into
one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console

from memprof import __version__
from memprof.commands import COMMANDS
from memprof.errors import MemprofError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memprof",
        description="Memory and speed of Hugging Face causal LMs: exact from the config, proven by measuring.",
    )
    parser.add_argument("--version", action="version", version=f"memprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        doc = (type(command).__doc__ or command.__module__ and sys.modules[command.__module__].__doc__ or "").strip()
        p = sub.add_parser(command.name, help=command.help, description=doc or command.help)
        command.prepare_parser(p)
        p.set_defaults(_command=command)
    return parser


def make_console() -> Console:
    """stdout console; when piped, COLUMNS wide if set, else wide enough that tables do not wrap."""
    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
        console = Console(width=130)
    return console


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_command", None) is None:
        parser.print_help()
        return 2
    try:
        return args._command.run(args, make_console())
    except MemprofError as exc:
        print(f"memprof {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("memprof: interrupted", file=sys.stderr)
        return 130
