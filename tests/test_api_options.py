"""The Python API takes wrong values as the command line does: one MemprofError whose message names
the option and what it takes, never a TypeError or AttributeError from deep inside; NumPy integers
count as whole numbers; an option the task does not use is refused, not ignored."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import tiny_config

import memprof
from memprof.cli import main
from memprof.errors import MemprofError

MODEL = "llama-3.1-8b"  # a catalog model: its default plan is shipped, no simulation runs


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda: memprof.footprint(5), "a model is a catalog name, a hub id or a path, not 5"),
        (lambda: memprof.footprint(MODEL, settings=5), "5 is neither a comma-separated string nor a list"),
        (lambda: memprof.footprint(MODEL, dtype=5), "a dtype is a name"),
        (lambda: memprof.footprint(MODEL, measure="yes"), "measure takes True or False, not 'yes'"),
        (lambda: memprof.lora_params(MODEL, target=5), "target takes names"),
        (lambda: memprof.lora_params(MODEL, setting=5), "a setting is a name"),
        (lambda: memprof.lora_params(MODEL, modules_to_save=5), "modules_to_save takes names"),
        (lambda: memprof.lora_params(MODEL, method=5), "method must be 'auto'"),
        (lambda: memprof.lora_params(MODEL, dora="no"), "dora takes True or False"),
        (lambda: memprof.plan(5), "a model is a catalog name"),
        (lambda: memprof.plan(MODEL, setting=5), "a setting is a name"),
        (lambda: memprof.plan(MODEL, gpus=5), "gpus takes names"),
        (lambda: memprof.plan(MODEL, batch=2.0), "batch takes a whole number, not 2.0"),
        (lambda: memprof.plan(MODEL, seq="512"), "seq takes a whole number, not '512'"),
        (
            lambda: memprof.plan(MODEL, grad_checkpointing="no"),
            "grad_checkpointing takes True, False or None, not 'no'",
        ),
        (lambda: memprof.plan(MODEL, use_cache=1), "use_cache takes True or False, not 1"),
        (lambda: memprof.plan(MODEL, gpu_file=5), "gpu_file takes a path"),
        (lambda: memprof.plan(MODEL, target=5), "target takes names"),
        (lambda: memprof.plan(MODEL, shard=5), "unknown --shard 5"),
        (lambda: memprof.plan_serving(MODEL, kv_dtype=5), "kv_dtype takes a string, not 5"),
        (lambda: memprof.plan_serving(MODEL, prefill_chunk="x"), "prefill_chunk takes a whole number, not 'x'"),
        (lambda: memprof.plan_serving(MODEL, gpus=5), "gpus takes names"),
        (lambda: memprof.plan_serving(MODEL, context=2.5), "--context takes a number of tokens, not 2.5"),
        (lambda: memprof.validate(MODEL, seqs=5), "5 is neither a comma-separated string nor a list: --seqs"),
        (lambda: memprof.validate(MODEL, tasks=5), "5 is neither a comma-separated string nor a list: --tasks"),
    ],
)
def test_a_wrong_value_from_python_is_one_memprof_error_naming_the_option(call, said):
    with pytest.raises(MemprofError) as raised:
        call()
    assert said in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"new_tokens": 16}, "--new-tokens: not used by --task lora (for --task infer)"),
        ({"task": "infer", "optimizer": "adamw8bit"}, "--optimizer: not used by --task infer"),
        ({"task": "infer", "grad_checkpointing": False}, "--grad-checkpointing: not used by --task infer"),
        ({"task": "full", "lora_r": 16, "target": "q_proj"}, "--lora-r, --target: not used by --task full"),
        ({"shard": "fsdp"}, "--shard fsdp divides over several GPUs: give --num-gpus N (2 or more) or auto"),
        ({"device": "cpu", "gpus": "h100"}, "--gpus: not used by --device cpu, which plans this machine's memory"),
    ],
)
def test_an_option_the_task_does_not_use_is_refused_from_python_as_from_the_command_line(options, said, capsys):
    with pytest.raises(MemprofError) as raised:
        memprof.plan(MODEL, **options)
    assert said in str(raised.value)
    argv = ["plan", MODEL]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        else:
            argv += [flag, str(value)]
    assert main(argv) == 2
    assert said in capsys.readouterr().err


def test_numpy_integers_are_whole_numbers_and_give_the_plan_an_int_gives():
    by_int = memprof.plan(MODEL, batch=1, seq=512, num_gpus=1, lora_r=8)
    by_numpy = memprof.plan(MODEL, batch=np.int64(1), seq=np.int32(512), num_gpus=np.int64(1), lora_r=np.int64(8))
    assert by_numpy == by_int
    assert type(by_numpy.batch) is int and type(by_numpy.seq) is int  # the saved JSON stays plain
    assert dataclasses.asdict(by_numpy) == dataclasses.asdict(by_int)
    counted = memprof.lora_params(MODEL, r=np.int64(32))
    assert counted == memprof.lora_params(MODEL, r=32)


def test_data_parallel_inference_is_the_single_gpu_step_without_gradient_buckets(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config("llama")))
    one = memprof.plan(str(tmp_path), task="infer", batch=2, seq=16, gpus="h100")
    two = memprof.plan(str(tmp_path), task="infer", batch=2, seq=16, gpus="h100", num_gpus=2)
    assert two.breakdown == one.breakdown and two.shard == "ddp"
    notes = " ".join(two.notes + two.details)
    assert "inference keeps no gradient buckets" in notes
    assert "plus DDP's gradient buckets" not in notes and "Per GPU (ddp)" not in notes
