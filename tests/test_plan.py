"""`memprof plan`: breakdown from the simulation, sharding arithmetic, sweeps, JSON contract, bad input."""

from __future__ import annotations

import json

import pytest

from memprof.cli import main
from memprof.errors import GpuFileError, PlanOptionError
from memprof.inventory import inventory_for
from memprof.models import resolve_model
from memprof.plan import plan
from memprof.predict import predict_setting
from memprof.settings import SETTINGS


@pytest.fixture
def model_dir(tiny_model_dir):
    return str(tiny_model_dir("llama"))


def test_full_fine_tune_weights_are_predict_true_bytes(model_dir):
    report = plan(model_dir, task="full", batch=2, seq=16, gpus=("H100",))
    inv = inventory_for(resolve_model(model_dir))
    exact = predict_setting(inv, SETTINGS["bf16"]).true_bytes
    assert report.breakdown.weights_bytes + report.breakdown.trainable_params_bytes == exact
    # AdamW: exp_avg and exp_avg_sq in the params' dtype (bf16), plus a float32 step counter per parameter
    states = 2 * report.breakdown.trainable_params_bytes + 4 * len(inv.params)
    assert report.breakdown.optimizer_states_bytes == states


def test_qlora_weights_are_nf4_true_bytes_with_fp32_unquantized(model_dir):
    report = plan(model_dir, task="qlora", batch=1, seq=16, gpus=("T4",))
    inv = inventory_for(resolve_model(model_dir))
    fp32_rest = predict_setting(
        inv, SETTINGS["nf4-dq"].__class__(**{**SETTINGS["nf4-dq"].__dict__, "dtype": "float32"})
    )
    assert report.setting == "nf4-dq"
    assert report.breakdown.weights_bytes == fp32_rest.true_bytes
    assert report.breakdown.dequant_transient_bytes == max(t.numel for t in inv.tensors if t.quantizable) * 2


def test_zero3_divides_weights_params_grads_states_and_gathers_two_layers(model_dir):
    one = plan(model_dir, task="full", batch=2, seq=16, gpus=("H100",))
    four = plan(model_dir, task="full", batch=2, seq=16, gpus=("H100",), num_gpus=4, shard="zero3")
    a, b = one.breakdown, four.breakdown
    assert b.weights_bytes == -(-a.weights_bytes // 4)
    assert b.trainable_params_bytes == -(-a.trainable_params_bytes // 4)
    assert b.optimizer_states_bytes == -(-a.optimizer_states_bytes // 4)
    # the peak may move to another phase once the persistent bytes shrink; what is unsharded is unchanged
    assert four.unsharded_total_bytes == a.total_bytes and b.total_bytes < a.total_bytes
    assert b.gathered_layers_bytes > 0 and a.gathered_layers_bytes == 0
    assert four.tokens_per_step == 4 * one.tokens_per_step


def test_zero2_divides_only_grads_and_optimizer_states(model_dir):
    one = plan(model_dir, task="full", batch=2, seq=16, gpus=("H100",))
    two = plan(model_dir, task="full", batch=2, seq=16, gpus=("H100",), num_gpus=2, shard="zero2")
    assert two.breakdown.weights_bytes == one.breakdown.weights_bytes
    assert two.breakdown.trainable_params_bytes == one.breakdown.trainable_params_bytes
    assert two.breakdown.optimizer_states_bytes == -(-one.breakdown.optimizer_states_bytes // 2)


def test_sweeps_are_the_largest_batch_and_seq_that_fit(model_dir, tmp_path):
    # A card just big enough for batch 3 at seq 16 according to the planner's own fit.
    probe = plan(model_dir, task="lora", batch=3, seq=16, gpus=("H100",))
    need = probe.breakdown.total_bytes
    gpu_file = tmp_path / "gpus.json"
    card = {"name": "Tiny", "memory_mib": 1, "bf16_dense_tflops": 1, "memory_bandwidth_gbs": 1, "usd_per_hour": 1}
    gpu_file.write_text(json.dumps({"gpus": [card]}))
    report = plan(model_dir, task="lora", batch=1, seq=16, gpus=("Tiny",), gpu_file=gpu_file)
    row = report.gpus[0]
    assert row.memory_bytes == 2**20 and row.context_bytes == 0
    assert (row.max_batch >= 3) == (need <= 2**20)


def test_cpu_device_plans_against_this_machine_with_cpu_defaults(model_dir):
    report = plan(model_dir, task="lora", batch=2, seq=16, device="cpu")
    assert report.device == "cpu" and len(report.gpus) == 1
    assert report.gpus[0].context_bytes == 0 and report.gpus[0].fits


def test_json_has_every_number(model_dir, capsys):
    assert main(["plan", model_dir, "--task", "lora", "--batch", "2", "--seq", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"model", "task", "setting", "batch", "seq", "breakdown", "gpus", "cheapest"} <= set(data)
    assert {"weights_bytes", "activations_bytes", "total_bytes"} <= set(data["breakdown"])
    row = data["gpus"][0]
    for key in ("name", "memory_bytes", "fits", "offload_bytes", "headroom_bytes", "max_batch", "max_seq"):
        assert key in row
    for key in ("step_s", "usd_per_hour", "usd_per_million_tokens"):
        assert key in row
    assert data["cheapest"] in [g["name"] for g in data["gpus"] if g["fits"]]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"task": "pretrain"}, "unknown task"),
        ({"task": "full", "setting": "nf4"}, "full fine-tune cannot train nf4"),
        ({"task": "qlora", "setting": "bf16"}, "needs a quantized setting"),
        ({"batch": 0}, "at least 1"),
        ({"seq": 0}, "at least 1"),
        ({"gpus": ("V100",)}, "known: T4"),
        ({"num_gpus": 2, "shard": "zero9"}, "unknown --shard"),
    ],
)
def test_bad_options_raise_one_clear_error(model_dir, kwargs, fragment):
    with pytest.raises(PlanOptionError, match=fragment):
        plan(model_dir, **kwargs)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"gpus": {}}',
        '{"gpus": [{"name": "X"}]}',
        '{"gpus": [{"name": "X", "memory_mib": "a", '
        '"bf16_dense_tflops": 1, "memory_bandwidth_gbs": 1, "usd_per_hour": 1}]}',
    ],
)
def test_malformed_gpu_file_is_one_line_and_exit_2(tmp_path, capsys, text):
    path = tmp_path / "g.json"
    path.write_text(text)
    assert main(["gpus", "--gpu-file", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gpu" in err.lower()
    with pytest.raises(GpuFileError):
        from memprof.catalog import gpus

        gpus(path)


def test_unknown_gpu_on_the_command_line_lists_the_known_ones(model_dir, capsys):
    assert main(["plan", model_dir, "--gpus", "V100"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'V100'" in err and "H100 80GB" in err and err.count("\n") == 1


def test_gpus_command_lists_the_catalog(capsys):
    assert main(["gpus", "--json"]) == 0
    names = [g["name"] for g in json.loads(capsys.readouterr().out)]
    for name in (
        "T4",
        "L4",
        "A10G",
        "RTX 4090",
        "A100 40GB",
        "A100 80GB",
        "L40S",
        "H100 80GB",
        "H200",
        "B200",
        "MI300X",
    ):
        assert name in names
