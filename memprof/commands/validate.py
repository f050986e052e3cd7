"""Publish memprof's own prediction error: for each task and sequence length, `memprof plan`'s
predicted peak memory next to the peak `memprof profile` really measures for the same step.

Tasks: infer (bf16 forward), lora (bf16 LoRA step), qlora (nf4-dq QLoRA step). On the CPU the
measured peak is the exact live-tensor peak and the traced prediction should equal it byte for
byte; on CUDA it is the allocator peak, with the reserved and NVML peaks beside it.

A measurement that fails (out of memory, --timeout, a crash) is a row with its reason and the exit
code is 1; bad input is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from pathlib import Path

from rich.console import Console

from memprof.analyses.validate import DEFAULT_SEQS, DEFAULT_TASKS, DISTRIBUTED_TASKS, TASK_MAP
from memprof.commands._common import (
    add_lora_step_args,
    add_model_args,
    add_output_args,
    emit,
    output_format,
    write_atomic,
)
from memprof.errors import ValidateOptionError
from memprof.report.jsonout import render_json


class ValidateCommand:
    name = "validate"
    help = "memprof's own prediction error: plan's predicted peak memory vs profile's measured peak, per task and seq"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_model_args(parser)
        parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
        parser.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
        parser.add_argument(
            "--seqs",
            default=",".join(map(str, DEFAULT_SEQS)),
            metavar="LIST",
            help=f"comma list of sequence lengths (default {','.join(map(str, DEFAULT_SEQS))})",
        )
        parser.add_argument(
            "--tasks",
            metavar="LIST",
            help=f"comma list of {', '.join(TASK_MAP)} (default {','.join(DEFAULT_TASKS)}; "
            f"with --nproc {','.join(DISTRIBUTED_TASKS)})",
        )
        parser.add_argument(
            "--nproc",
            type=int,
            default=1,
            metavar="N",
            help="measure the step in N ranks (profile --nproc) against plan --num-gpus N (default 1)",
        )
        parser.add_argument(
            "--shard", choices=("ddp", "fsdp", "zero2", "zero3"), help="with --nproc: the shard mode (default ddp)"
        )
        add_lora_step_args(parser)
        parser.add_argument("--threads", type=int, help="torch CPU threads in each measurement (default: torch's)")
        parser.add_argument(
            "--timeout",
            type=float,
            metavar="S",
            help="kill a measurement after S seconds (> 0); its rows say so (default: no limit)",
        )
        add_output_args(parser)
        parser.add_argument(
            "--save",
            type=Path,
            metavar="FILE.json",
            help="also write the JSON result to FILE.json (atomically), whatever --format prints",
        )

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from memprof.analyses.validate import validate

        output_format(args)  # a --json/--format contradiction is one line before any work
        for path in (args.out, args.save):  # measuring takes minutes: an unwritable path is refused first
            if path is not None:
                _check_writable(path.expanduser())
        err = Console(stderr=True)
        # a spinner on a terminal only: piped or redirected stderr gets nothing but errors
        status = err.status("validating…") if err.is_terminal else contextlib.nullcontext()
        with status:
            report = validate(
                args.model,
                device=args.device,
                batch=args.batch,
                seqs=args.seqs,
                tasks=args.tasks,
                lora_r=args.lora_r,
                lora_alpha=args.lora_alpha,
                target=args.target,
                threads=args.threads,
                timeout_s=args.timeout,
                allow_download=args.allow_download,
                trust_remote_code=args.trust_remote_code,
                command=shlex.join(["memprof", *sys.argv[1:]]),
                on_progress=(lambda msg: status.update(msg)) if err.is_terminal else None,
                nproc=args.nproc,
                shard=args.shard,
            )
        emit(report, args, console)
        if args.save is not None:
            write_atomic(args.save, render_json(report) + "\n")
            print(f"wrote {args.save}", file=sys.stderr)
        failed = [r for r in report.rows if r.error]
        if failed:
            reasons = "; ".join(f"{r.task} seq {r.seq} ({r.error})" for r in failed)
            print(f"memprof validate: {len(failed)} row(s) failed: {reasons}", file=sys.stderr)
            return 1
        return 0


def _check_writable(path: Path) -> None:
    if path.is_dir():
        raise ValidateOptionError(f"cannot write {path}: it is a directory; give a file name")
    if not path.parent.is_dir():
        raise ValidateOptionError(f"cannot write {path}: directory {path.parent} does not exist")
