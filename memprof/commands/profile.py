"""Load MODEL at each setting and measure what a user will hit: load time and bytes, forward latency
and throughput, a training step (LoRA/QLoRA or full) with achieved TFLOP/s and its peak memory by
kind, and, with --max-gpu-memory or --gpu, the CPU-offload plan under that budget.

Each setting runs in a fresh subprocess; out of memory or a crash is a row, not the end of the run.
The JSON result is saved (atomically, after every setting) under reports/ or to --out, and
`memprof report FILE` re-renders it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from memprof.commands._common import add_lora_step_args, add_model_args, add_settings_arg, emit
from memprof.errors import ProfileOptionError
from memprof.report import FORMATS


class ProfileCommand:
    name = "profile"
    help = "measure load, forward, training step and peak memory at each setting, each in a fresh process"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_model_args(parser)
        add_settings_arg(parser)
        parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default cpu)")
        parser.add_argument("--batch", type=int, default=1, help="sequences per forward/step (default 1)")
        parser.add_argument("--seq", type=int, default=512, help="tokens per sequence (default 512)")
        parser.add_argument("--repeats", type=int, default=10, help="timed repeats per phase (default 10)")
        parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls per phase (default 2)")
        parser.add_argument(
            "--train",
            choices=("lora", "full", "none"),
            default="lora",
            help="training step: lora (QLoRA on 4-bit), full, none",
        )
        add_lora_step_args(parser)
        parser.add_argument("--grad-checkpointing", action="store_true", help="gradient checkpointing in the step")
        budget = parser.add_mutually_exclusive_group()
        budget.add_argument("--max-gpu-memory", metavar="SIZE", help="GPU budget for the offload plan, e.g. 15GiB")
        budget.add_argument("--gpu", metavar="NAME", help="GPU budget = a catalog card's memory, e.g. T4")
        parser.add_argument("--threads", type=int, help="torch CPU threads in each worker (default: torch's)")
        parser.add_argument("--timeout", type=float, metavar="S", help="kill a setting's worker after S seconds")
        parser.add_argument("--json", action="store_true", help="print the result JSON (same as --format json)")
        parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
        parser.add_argument(
            "--out", type=Path, metavar="FILE", help="where to save the JSON result (default reports/profile-...json)"
        )

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from memprof.profile import default_result_path, gpu_budget, profile
        from memprof.report.profile import profile_renderables, render_profile_html, render_profile_md

        if args.threads is not None and args.threads < 1:
            raise ProfileOptionError("--threads must be >= 1")
        budget = args.max_gpu_memory
        if args.gpu:
            budget = gpu_budget(args.gpu)[1]
        out = args.out or default_result_path(args.model or "default", args.device)
        err = Console(stderr=True)
        progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[setting]}"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} settings"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        total = len(args.settings.split(",")) if args.settings else 5
        started: list[str] = []

        def on_progress(setting: str, phase: str) -> None:
            if setting and phase == "starting":
                started.append(setting)
            progress.update(task, description=phase, setting=setting, completed=max(0, len(started) - 1))

        task = progress.add_task("starting", total=total, setting="")
        try:
            with progress:
                report = profile(
                    args.model,
                    settings=args.settings,
                    device=args.device,
                    batch=args.batch,
                    seq=args.seq,
                    repeats=args.repeats,
                    warmup=args.warmup,
                    train=args.train,
                    lora_r=args.lora_r,
                    lora_alpha=args.lora_alpha,
                    target=args.target,
                    grad_checkpointing=args.grad_checkpointing,
                    max_gpu_memory=budget,
                    threads=args.threads,
                    save_to=out,
                    command=shlex.join(["memprof", *sys.argv[1:]]),
                    allow_download=args.allow_download,
                    trust_remote_code=args.trust_remote_code,
                    on_progress=on_progress,
                    timeout_s=args.timeout,
                )
        except KeyboardInterrupt:
            print(f"memprof profile: interrupted; results so far saved to {out}", file=sys.stderr)
            return 130
        shown = argparse.Namespace(**{**vars(args), "out": None})
        emit(report, shown, console, table=profile_renderables, md=render_profile_md, html=render_profile_html)
        print(f"saved {out}", file=sys.stderr)
        failed = [r.setting for r in report.settings if r.error]
        if failed:
            print(f"memprof profile: failed or out of memory at: {', '.join(failed)} (see the rows)", file=sys.stderr)
        return 0
