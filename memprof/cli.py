"""memprof's command line: builds the parser from commands/, runs one, and turns user errors into
one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import atexit
import os
import re
import sys
from typing import NoReturn

from rich.console import Console

from memprof import __version__
from memprof.commands import COMMANDS
from memprof.errors import MemprofError


class UsageError(Exception):
    """A command line argparse cannot parse; main() prints it as one line and returns 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


_KINDS = {"int": "a whole number", "float": "a number"}


class _Parser(argparse.ArgumentParser):
    """argparse, but an unparsable command line is one line (what was wrong, what would work), not the
    usage block: error() raises UsageError for main() instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(self.prog, self._explain(message))

    def _explain(self, message: str) -> str:
        # argparse says "argument --r: invalid int value: 'abc'": name the kind of value wanted and
        # show one that works (the option's default where it has one).
        m = re.fullmatch(r"argument (\S+): invalid (\w+) value: (.*)", message)
        if m and m.group(2) in _KINDS:
            names, value = m.group(1), m.group(3)
            flag = names.split("/")[0]
            example = next((a.default for a in self._actions if flag in a.option_strings), None)
            example = example if isinstance(example, (int, float)) and not isinstance(example, bool) else 1
            return f"{flag} wants {_KINDS[m.group(2)]}, not {value} (e.g. {flag} {example})"
        m = re.fullmatch(r"argument (\S+): expected one argument", message)
        if m:
            return f"{m.group(1).split('/')[0]} needs a value after it (see `{self.prog} --help`)"
        if "(choose from" in message:  # argparse already lists what would work
            return message
        return f"{message} (see `{self.prog} --help`)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="memprof",
        description="Memory and speed of Hugging Face causal LMs: exact from the config, proven by measuring.",
    )
    parser.add_argument("--version", action="version", version=f"memprof {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            # name the command the options were given to, not bare `memprof`
            command = getattr(args, "_command", None)
            prog = f"memprof {command.name}" if command is not None else "memprof"
            raise UsageError(prog, f"unrecognized arguments: {' '.join(unknown)} (see `{prog} --help`)")
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
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
    except BrokenPipeError:
        # the reader went away (`| true`, a closed pager): nothing more to say, and nowhere to say it;
        # stdout points at /dev/null so that the final flush does not fail again (Python's docs, "SIGPIPE")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def run() -> NoReturn:
    """The `memprof` executable: main(), then leave without the interpreter's teardown.

    Tearing down an interpreter that has imported torch, transformers and peft takes 0.6-1.0 s here
    (freeing every module's objects one by one) and does nothing a finished command needs; the exit
    handlers (atexit, weakref finalizers such as temporary directories, logging) still run, and the
    output is flushed. An exception main() does not turn into a code leaves the ordinary way.
    """
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # a closed pipe or stream: nothing left to write to
        pass
    atexit._run_exitfuncs()
    os._exit(code)
