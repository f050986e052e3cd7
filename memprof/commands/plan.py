"""Which GPUs can run MODEL's inference or fine-tuning step, with how much headroom, at what batch and
context, at what cost. Memory is the exact live-tensor peak of the profiler's step simulated on fake
tensors (no GPU, no weights); step time and prices are labelled estimates."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from rich.console import Console

from memprof.analyses.plan import SHARDS, plan
from memprof.analyses.serve import DEFAULT_CONTEXT, DEFAULT_PREFILL_CHUNK, plan_serving
from memprof.commands._common import (
    add_grad_checkpointing_arg,
    add_lora_step_args,
    add_model_args,
    add_output_args,
    add_precision_arg,
    emit,
    output_format,
)
from memprof.commands.gpus import GPU_FILE_HELP
from memprof.errors import PlanOptionError
from memprof.options import name_list
from memprof.settings import SETTINGS
from memprof.simulate import OPTIMIZERS, TASKS


def _num_gpus(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number of GPUs or auto, not {text!r}") from None


# dest -> flag of the options one task uses and another does not (--gpus, --gpu-file, --setting and
# the output options apply to every task)
_OPTION_FLAGS = {
    "setting": "--setting",
    "context": "--context",
    "kv_dtype": "--kv-dtype",
    "prefill_chunk": "--prefill-chunk",
    "batch": "--batch",
    "seq": "--seq",
    "new_tokens": "--new-tokens",
    "optimizer": "--optimizer",
    "lora_r": "--lora-r",
    "lora_alpha": "--lora-alpha",
    "target": "--target",
    "grad_checkpointing": "--grad-checkpointing",
    "precision": "--precision",
    "num_gpus": "--num-gpus",
    "shard": "--shard",
    "device": "--device",
}
_SERVE_FLAGS = ("--setting", "--context", "--kv-dtype", "--prefill-chunk")


class PlanCommand:
    name = "plan"
    help = "which GPUs fit a model's inference / LoRA / QLoRA / full fine-tune step, max batch and context, cost"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        self._parser = parser  # its defaults tell which options were given (_check_applicable)
        add_model_args(parser)
        parser.add_argument(
            "--task",
            default="lora",
            help=f"one of {', '.join(TASKS)}, serve (default lora); serve: how many --context sequences a GPU holds",
        )
        parser.add_argument("--setting", help=f"one of {', '.join(SETTINGS)} (default bf16; nf4-dq for --task qlora)")
        parser.add_argument("--batch", type=int, default=1, help="batch size per GPU (default 1)")
        parser.add_argument(
            "--seq", type=int, default=512, help="sequence length (prompt length for infer; default 512)"
        )
        parser.add_argument(
            "--new-tokens", type=int, default=0, help="infer: tokens generated after the prompt (KV cache; default 0)"
        )
        parser.add_argument(
            "--context",
            type=int,
            default=None,
            help=f"serve: tokens per sequence, prompt plus generated (default {DEFAULT_CONTEXT}, or the model's "
            "positions where fewer)",
        )
        parser.add_argument(
            "--kv-dtype",
            help="serve: the KV cache's dtype, bf16, fp16, fp32 or fp8 (default: the setting's compute dtype)",
        )
        parser.add_argument(
            "--prefill-chunk",
            type=int,
            default=DEFAULT_PREFILL_CHUNK,
            help=f"serve: prompt tokens prefilled at once beside the caches (default {DEFAULT_PREFILL_CHUNK}, vLLM's)",
        )
        parser.add_argument("--optimizer", default="adamw", help=f"one of {', '.join(OPTIMIZERS)} (default adamw)")
        add_lora_step_args(parser)
        add_grad_checkpointing_arg(parser)
        add_precision_arg(parser)
        parser.add_argument(
            "--gpus",
            "--gpu",
            dest="gpus",
            type=name_list,
            metavar="LIST",
            help="comma list of GPU names as `memprof gpus` lists them, or a unique part (h100, 4090); default: all",
        )
        parser.add_argument("--gpu-file", type=Path, metavar="FILE", help=GPU_FILE_HELP)
        parser.add_argument(
            "--num-gpus",
            type=_num_gpus,
            default=1,
            metavar="N|auto",
            help="GPUs per job (data parallel; default 1); auto: the fewest of each card that fit, with --shard",
        )
        parser.add_argument("--shard", default="none", help=f"one of {', '.join(SHARDS)} (default none)")
        parser.add_argument(
            "--device",
            default="cuda",
            choices=("cuda", "cpu"),
            help="plan for the GPU table (cuda) or this CPU (default cuda; with --num-gpus N, one rank of an N-rank gloo run)",
        )
        parser.add_argument("--no-cache", action="store_true", help="re-simulate instead of reading the disk cache")
        parser.add_argument(
            "--verbose", "-v", action="store_true", help="under the table, how each number is made (always in md/html)"
        )
        add_output_args(parser)

    def _check_applicable(self, args: argparse.Namespace) -> None:
        """An option the task does not use is one line, not silently ignored."""
        given = [flag for dest, flag in _OPTION_FLAGS.items() if getattr(args, dest) != self._parser.get_default(dest)]
        if args.task == "serve":
            extra = [f for f in given if f not in _SERVE_FLAGS]
            if extra:
                raise PlanOptionError(
                    f"{', '.join(extra)}: not used by --task serve (one GPU, sequences of --context tokens); "
                    f"serve takes {', '.join(_SERVE_FLAGS)}"
                )
            return
        extra = [f for f in given if f in _SERVE_FLAGS[1:]]
        if extra:
            raise PlanOptionError(f"{', '.join(extra)}: for --task serve only")
        # the step tasks' own options: plan() checks them (plan.options.check_applicable)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        output_format(args)  # a --json/--format contradiction is one line before any work
        self._check_applicable(args)
        err = Console(stderr=True)
        # a spinner on a terminal only: piped or redirected stderr gets nothing but errors
        # "planning": a cached or fitted answer simulates nothing; a simulation says so through on_progress
        status = err.status("planning…") if err.is_terminal else contextlib.nullcontext()
        if args.task == "serve":
            with status:
                serving = plan_serving(
                    args.model,
                    setting=args.setting,
                    context=args.context,
                    kv_dtype=args.kv_dtype,
                    prefill_chunk=args.prefill_chunk,
                    gpus=args.gpus,
                    gpu_file=args.gpu_file,
                    allow_download=args.allow_download,
                    trust_remote_code=args.trust_remote_code,
                    use_cache=not args.no_cache,
                    on_progress=status.update if err.is_terminal else None,
                )
            emit(serving, args, console, verbose=args.verbose)
            return 0
        with status:
            report = plan(
                args.model,
                task=args.task,
                setting=args.setting,
                batch=args.batch,
                seq=args.seq,
                new_tokens=args.new_tokens,
                optimizer=args.optimizer,
                lora_r=args.lora_r,
                lora_alpha=args.lora_alpha,
                target=args.target,
                grad_checkpointing=args.grad_checkpointing,
                precision=args.precision,
                gpus=args.gpus,
                gpu_file=args.gpu_file,
                num_gpus=args.num_gpus,
                shard=args.shard,
                device=args.device,
                allow_download=args.allow_download,
                trust_remote_code=args.trust_remote_code,
                use_cache=not args.no_cache,
                on_progress=status.update if err.is_terminal else None,
            )
        emit(report, args, console, verbose=args.verbose)
        return 0
