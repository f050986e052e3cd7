"""Load MODEL at each setting and measure what a user will hit: load time and bytes, forward latency
and throughput, a training step (LoRA/QLoRA or full) with achieved FLOP/s and its peak memory by
kind, and, with --max-gpu-memory or --gpu, the CPU-offload plan under that budget.

Each setting runs in a fresh subprocess; out of memory, a crash or --timeout is a row with its
reason, not the end of the run, and the exit code is 1 if any setting failed (0 when all ran).

The JSON result is the session: it is saved (atomically, after every setting) to --out FILE.json,
or by default to ./reports/profile-MODEL-DEVICE-TIME.json (./reports/ is created if missing), and
stderr says where. --format/--json choose what is printed on stdout; to write Markdown or HTML to a
file, render the saved JSON: `memprof report FILE.json --format md --out report.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from memprof.commands._common import (
    add_grad_checkpointing_arg,
    add_lora_step_args,
    add_model_args,
    add_precision_arg,
    add_settings_arg,
    emit,
    output_format,
)
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
            help="training step: lora (QLoRA on 4-bit), full, none (default lora)",
        )
        add_lora_step_args(parser)
        add_grad_checkpointing_arg(parser)
        add_precision_arg(parser)
        budget = parser.add_mutually_exclusive_group()
        budget.add_argument(
            "--max-gpu-memory",
            metavar="SIZE",
            help="GPU budget for the offload plan, e.g. 15GiB (default: no offload plan)",
        )
        budget.add_argument(
            "--gpu",
            metavar="NAME",
            help="GPU budget = a catalog card's memory (names as `memprof plan --gpus`, e.g. T4, h100)",
        )
        parser.add_argument(
            "--generate",
            type=int,
            default=0,
            metavar="N",
            help="also time model.generate of exactly N greedy new tokens: prefill, decode tok/s, KV cache (default 0: off)",
        )
        parser.add_argument(
            "--cache", choices=("dynamic", "static"), default="dynamic", help="--generate's KV cache (default dynamic)"
        )
        parser.add_argument(
            "--nproc",
            type=int,
            default=1,
            metavar="N",
            help="run the training step in N ranks under torch.distributed (gloo on cpu, nccl on cuda; default 1)",
        )
        parser.add_argument(
            "--shard",
            choices=("ddp", "fsdp", "zero2", "zero3"),
            help="with --nproc: ddp (default), fsdp/zero3 (FSDP2, reshard after forward), zero2 (FSDP2, no reshard)",
        )
        parser.add_argument(
            "--snapshot",
            type=Path,
            metavar="FILE.pickle",
            help="cuda: record one training step's allocator history for PyTorch's memory viewer "
            "(FILE-SETTING.pickle for several settings)",
        )
        parser.add_argument("--threads", type=int, help="torch CPU threads in each worker (default: torch's)")
        parser.add_argument(
            "--timeout",
            type=float,
            metavar="S",
            help="kill a setting's worker after S seconds (> 0); its row says so (default: no limit)",
        )
        parser.add_argument("--json", action="store_true", help="print the result JSON (same as --format json)")
        parser.add_argument("--format", choices=FORMATS, help="what to print on stdout (default: table)")
        parser.add_argument(
            "--out",
            type=Path,
            metavar="FILE.json",
            help="where to save the JSON result; must end in .json, its directory must exist "
            "(default: ./reports/profile-MODEL-DEVICE-TIME.json, creating ./reports/). "
            "Not the --format output: for a Markdown or HTML file run `memprof report FILE.json --format md --out F`",
        )

    def run(self, args: argparse.Namespace, console: Console) -> int:
        from memprof.analyses.profile import default_result_path, gpu_budget

        output_format(args)  # --json with --format md|html is one line before any setting runs
        if args.threads is not None and args.threads < 1:
            raise ProfileOptionError("--threads must be >= 1")
        budget = args.max_gpu_memory
        if args.gpu:
            budget = gpu_budget(args.gpu)[1]
        out = args.out.expanduser() if args.out is not None else None
        if out is not None and out.suffix.lower() != ".json":
            rendered = output_format(args) in ("md", "html")
            fmt, target = (output_format(args), out) if rendered else ("md", "FILE")
            raise ProfileOptionError(
                f"--out {out} must end in .json: profile saves its JSON result there (--format only chooses what "
                f"is printed); for a {fmt} file, run `memprof report RESULT.json --format {fmt} --out {target}`"
            )
        made_dir = None
        if out is None:
            out = default_result_path(args.model or "default", args.device)
            if not out.parent.exists():
                out.parent.mkdir(parents=True)
                made_dir = out.parent
        try:
            report = self._profile(args, budget, out)
        except KeyboardInterrupt:
            print(f"memprof profile: interrupted; results so far saved to {out}", file=sys.stderr)
            return 130
        except BaseException:
            if made_dir is not None:  # nothing was measured: leave no empty ./reports/ behind
                with contextlib.suppress(OSError):
                    made_dir.rmdir()
            raise
        shown = argparse.Namespace(**{**vars(args), "out": None})
        emit(report, shown, console)
        print(f"saved {out} (re-render with `memprof report {out}`)", file=sys.stderr)
        failed = [f"{r.setting} ({r.error})" for r in report.settings if r.error]
        if failed:
            print(f"memprof profile: {len(failed)} setting(s) failed: {'; '.join(failed)}", file=sys.stderr)
            return 1
        return 0

    def _profile(self, args: argparse.Namespace, budget, out: Path):
        """Run the library function, with a progress line on stderr when it is a terminal."""
        from memprof.analyses.profile import profile
        from memprof.settings import parse_settings

        err = Console(stderr=True)
        progress = None
        if err.is_terminal:  # piped, rich would print a blank line on stop, before any error message
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
            total = len(parse_settings(args.settings))  # what profile runs: no repeats, no blank items
            task = progress.add_task("starting", total=total, setting="")
        started: list[str] = []

        def on_progress(setting: str, phase: str) -> None:
            if setting and phase == "starting":
                started.append(setting)
            if progress is not None:
                progress.update(task, description=phase, setting=setting, completed=max(0, len(started) - 1))

        with progress if progress is not None else contextlib.nullcontext():
            return profile(
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
                precision=args.precision,
                max_gpu_memory=budget,
                threads=args.threads,
                save_to=out,
                command=shlex.join(["memprof", *sys.argv[1:]]),
                allow_download=args.allow_download,
                trust_remote_code=args.trust_remote_code,
                on_progress=on_progress,
                timeout_s=args.timeout,
                generate=args.generate,
                cache=args.cache,
                nproc=args.nproc,
                shard=args.shard,
                snapshot=args.snapshot,
            )
