"""`python -m memprof` as gpu_session.sh runs it under DRY_RUN=1: the exact command line goes through
memprof's own parser, and its model, settings, seqs and budget through the library's own parsers;
nothing is loaded or measured. A wrong or abbreviated option is argparse's one line and exit 2, like memprof's.

    python3 scripts/memprof_argcheck.py profile meta-llama/Llama-3.2-1B --device cuda --settings bf16 ...
"""

from __future__ import annotations

import argparse
import sys

from memprof.cli import UsageError, build_parser
from memprof.errors import MemprofError


def check(argv: list[str]) -> str:
    """What the line would run, in words; raises UsageError (memprof's parser) or MemprofError when it would not."""
    parser = build_parser()
    # stricter than memprof: an abbreviated option works today and turns ambiguous when an option
    # sharing its prefix is added, so the script spells every option out
    for sub in [parser, *_subparsers(parser)]:
        sub.allow_abbrev = False
    args = parser.parse_args(argv)
    if getattr(args, "_command", None) is None:
        raise MemprofError("no memprof command on this line")
    if getattr(args, "model", None):
        from memprof.models import resolve_model

        resolve_model(args.model, allow_download=False)  # the script's models are catalog configs: offline
    if getattr(args, "settings", None):
        from memprof.settings import parse_settings

        parse_settings(args.settings)
    if getattr(args, "seqs", None):
        from memprof.analyses.validate import parse_seqs

        parse_seqs(args.seqs)
    if getattr(args, "max_gpu_memory", None):
        from memprof.analyses.profile import parse_bytes

        parse_bytes(args.max_gpu_memory)
    return f"memprof {args.command}: parses ({' '.join(argv[1:])})"


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [
        p
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for p in action.choices.values()
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        print(check(argv))
    except UsageError as exc:  # memprof's own one line for a command line it cannot parse
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
    except MemprofError as exc:
        print(f"memprof {argv[0] if argv else ''}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
