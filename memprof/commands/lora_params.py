"""How many parameters a LoRA / DoRA configuration trains, where they sit, and what the adapter costs.

Counts equal peft's get_nb_trainable_parameters() for the same LoraConfig and model, before any
download or GPU: catalog models answer from the shipped inventory in well under a second, others
through peft on the meta device. --setting adds the base weights at a load setting, so weights,
adapter, gradients and AdamW states are seen together.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from memprof.analyses.lora_params import lora_params, lora_sweep
from memprof.commands._common import add_model_args, add_output_args, emit, output_format
from memprof.lora.options import BIAS_MODES, parse_alpha, parse_dropout, parse_rank
from memprof.settings import SETTINGS


class LoraParamsCommand:
    name = "lora-params"
    help = "trainable parameters, adapter size and training-state bytes of a LoRA/DoRA config (peft's counts)"

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None:
        add_model_args(parser)
        # Numbers are taken as text and checked by memprof.lora.options, so a bad value is one line, not argparse's usage.
        parser.add_argument("--r", metavar="R", default="8", help="LoRA rank (default 8)")
        parser.add_argument("--alpha", metavar="ALPHA", help="lora_alpha (default 2*r)")
        parser.add_argument("--dropout", metavar="P", help="lora_dropout (default 0.0; changes no count)")
        parser.add_argument(
            "--target",
            metavar="NAMES",
            help="comma list of module names (suffix-matched like peft), or attention, mlp, all-linear "
            "(default: peft's default targets for the architecture)",
        )
        parser.add_argument("--dora", action="store_true", help="DoRA: adds a magnitude vector per adapted layer")
        parser.add_argument(
            "--modules-to-save",
            metavar="NAMES",
            help="comma list of modules trained in full, e.g. lm_head,embed_tokens",
        )
        parser.add_argument("--bias", metavar="MODE", default="none", help=f"{' | '.join(BIAS_MODES)} (default none)")
        parser.add_argument("--sweep", metavar="RANKS", help="one row per rank, e.g. 8,16,32,64,128 (overrides --r)")
        parser.add_argument(
            "--setting",
            metavar="SETTING",
            help=f"also show the base weights at this load setting ({', '.join(SETTINGS)}) plus the training state",
        )
        add_output_args(parser)

    def run(self, args: argparse.Namespace, console: Console) -> int:
        output_format(args)  # a --json/--format contradiction is one line before any work
        options = dict(
            alpha=parse_alpha(args.alpha),
            target=args.target,
            dropout=parse_dropout(args.dropout),
            dora=args.dora,
            modules_to_save=args.modules_to_save,
            bias=args.bias,
            setting=args.setting,
            allow_download=args.allow_download,
            trust_remote_code=args.trust_remote_code,
        )
        if args.sweep:
            result = lora_sweep(args.model, ranks=args.sweep, **options)
        else:
            result = lora_params(args.model, r=parse_rank(args.r), **options)
        emit(result, args, console)
        return 0
