"""Flags and output handling shared by every command."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from memprof.errors import MemprofError, OptionError
from memprof.io import write_text_atomic
from memprof.report import FORMATS, renderer


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="model directory, config.json, catalog name (see `memprof models`) or hub id in the local HF cache; "
        "default meta-llama/Llama-3.1-8B",
    )
    parser.add_argument(
        "--allow-download", action="store_true", help="fetch the config.json from the Hugging Face hub if not local"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub (off: never run remote code)"
    )


def add_settings_arg(parser: argparse.ArgumentParser) -> None:
    from memprof.settings import DEFAULT_SETTINGS, SETTINGS

    parser.add_argument(
        "--settings",
        metavar="LIST",
        help=f"comma list of {', '.join(SETTINGS)} (default: {','.join(DEFAULT_SETTINGS)})",
    )


def add_lora_step_args(parser: argparse.ArgumentParser) -> None:
    """LoRA options of the training step, with the meaning and defaults of `memprof lora-params`."""
    from memprof.step import DEFAULT_LORA_R

    parser.add_argument(
        "--lora-r", "--r", dest="lora_r", type=int, default=DEFAULT_LORA_R, help=f"LoRA rank (default {DEFAULT_LORA_R})"
    )
    parser.add_argument(
        "--lora-alpha", "--alpha", dest="lora_alpha", type=float, help="LoRA alpha (default 2 x rank, as lora-params)"
    )
    parser.add_argument(
        "--target",
        metavar="LIST",
        help="LoRA targets as in lora-params: module names, attention, mlp, all-linear (default: peft's)",
    )


def add_grad_checkpointing_arg(parser: argparse.ArgumentParser) -> None:
    """--grad-checkpointing / --no-grad-checkpointing; neither: the task's default (memprof.step)."""
    parser.add_argument(
        "--grad-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gradient checkpointing in the step (default: on for QLoRA, as peft's prepare_model_for_kbit_training; "
        "off otherwise)",
    )


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    """--precision pure|mixed for full fine-tunes; neither: the task's default (memprof.step)."""
    from memprof.step import PRECISIONS

    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="full fine-tunes: mixed = fp32 master weights, forward under bf16/fp16 autocast (Trainer bf16=True; "
        "the default for a 16-bit setting); pure = weights, grads and AdamW states all in the setting's dtype",
    )


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (same as --format json)")
    # default None, not "table": an explicit --format that contradicts --json must be seen (output_format)
    parser.add_argument("--format", choices=FORMATS, help="output format (default: table)")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write the output to FILE (atomically) instead of stdout"
    )


def output_format(args: argparse.Namespace) -> str:
    """The chosen format: --json means --format json; --json with another --format is a user error.

    Commands call it first, so a contradiction is one line before any work, not after it."""
    if args.json and args.format not in (None, "json"):
        raise OptionError(
            f"--json and --format {args.format} contradict each other: give --json (same as --format json) "
            f"or --format {args.format}, not both"
        )
    return "json" if args.json else args.format or "table"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all; unwritable paths are a user error, in one line."""
    path = path.expanduser()
    if path.is_dir():
        raise MemprofError(f"cannot write {path}: it is a directory; give a file name, e.g. {path / 'result.json'}")
    if not path.parent.is_dir():
        raise MemprofError(f"cannot write {path}: directory {path.parent} does not exist")
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise MemprofError(f"cannot write {path}: {exc.strerror or exc}") from None


def emit(
    result,
    args: argparse.Namespace,
    console: Console,
    *,
    verbose: bool = False,
    table: Callable | None = None,
    md: Callable[[object], str] | None = None,
    html: Callable[[object], str] | None = None,
    as_json: Callable[[object], str] | None = None,
) -> None:
    """Render `result` in the chosen format to stdout or --out, with the renderer memprof.report
    registers for its kind; `table`, `md`, `html`, `as_json` render what has no kind (the catalog's
    lists). `verbose` goes to the table renderers that take it (plan's)."""
    fmt = output_format(args)
    render = {"table": table, "md": md, "html": html, "json": as_json}.get(fmt) or renderer(result, fmt)
    if fmt == "table":
        takes_verbose = "verbose" in inspect.signature(render).parameters
        shown = render(result, verbose=True) if verbose and takes_verbose else render(result)
        if args.out is None:
            console.print(shown, crop=False)  # a table wider than the terminal wraps, it is not cut
            return
        capture = Console(width=140, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        capture.print(shown)
        text = capture.export_text()
    else:
        text = render(result) + ("\n" if fmt == "json" else "")
    if args.out is not None:
        write_atomic(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
