"""`memprof plan`: breakdown from the simulation, sharding arithmetic, sweeps, JSON contract, bad input."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace

import pytest
from conftest import tiny_config
from rich.console import Console

from memprof.analyses.plan import plan
from memprof.analyses.plan.notes import fit_note
from memprof.catalog import gpus, gpus_with
from memprof.cli import main
from memprof.errors import GpuFileError, MemprofError, PlanOptionError
from memprof.inventory import inventory_for
from memprof.models import resolve_model
from memprof.predict import predict_setting
from memprof.report.plan import _title, plan_renderables, render_plan_md, significant
from memprof.settings import SETTINGS


@pytest.fixture
def model_dir(tiny_model_dir):
    return str(tiny_model_dir("llama"))


def _card(name: str, **fields) -> dict:
    """A complete new card for a --gpu-file."""
    card = {"name": name, "memory_mib": 1024, "context_mib": 0, "bf16_dense_tflops": 1, "memory_bandwidth_gbs": 1}
    return {**card, "usd_per_hour": 1, **fields}


@pytest.fixture(scope="module")
def lora_report(tiny_model_dir, tmp_path_factory):
    """One LoRA plan over the whole GPU table, shared by the rendering tests (its own cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMPROF_CACHE_DIR", str(tmp_path_factory.mktemp("memprof-cache")))
        return plan(str(tiny_model_dir("llama")), task="lora", batch=2, seq=16)


@pytest.mark.parametrize(("precision", "held"), [("pure", "bf16"), ("mixed", "fp32")])
def test_full_fine_tune_weights_are_predict_true_bytes(model_dir, precision, held):
    report = plan(model_dir, task="full", batch=2, seq=16, gpus=("H100",), precision=precision)
    inv = inventory_for(resolve_model(model_dir))
    exact = predict_setting(inv, SETTINGS[held]).true_bytes  # mixed precision holds fp32 master weights
    assert report.breakdown.weights_bytes + report.breakdown.trainable_params_bytes == exact
    # AdamW: exp_avg and exp_avg_sq in the params' dtype, plus a float32 step counter per parameter
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
    numel = max(t.numel for t in inv.tensors if t.quantizable)
    # the bf16 weight gemm_4bit dequantizes, and (double quantization) its float32 absmax first
    assert report.breakdown.dequant_transient_bytes == numel * 2 + -(-numel // 64) * 4


def test_zero3_divides_weights_params_grads_states_and_gathers_two_layers(model_dir):
    one = plan(model_dir, task="full", batch=2, seq=16, gpus=("H100",))
    four = plan(
        model_dir, task="full", batch=2, seq=16, gpus=("H100",), num_gpus=4, shard="zero3", simulate_sharding=False
    )
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
    two = plan(
        model_dir, task="full", batch=2, seq=16, gpus=("H100",), num_gpus=2, shard="zero2", simulate_sharding=False
    )
    assert two.breakdown.weights_bytes == one.breakdown.weights_bytes
    assert two.breakdown.trainable_params_bytes == one.breakdown.trainable_params_bytes
    assert two.breakdown.optimizer_states_bytes == -(-one.breakdown.optimizer_states_bytes // 2)


def test_sweeps_are_the_largest_batch_and_seq_that_fit(model_dir, tmp_path):
    # A card just big enough for batch 3 at seq 16 according to the planner's own fit.
    probe = plan(model_dir, task="lora", batch=3, seq=16, gpus=("H100",))
    need = probe.breakdown.total_bytes
    gpu_file = tmp_path / "gpus.json"
    gpu_file.write_text(json.dumps({"gpus": [_card("Tiny", memory_mib=1025)]}))  # the 1 GiB margin + 1 MiB
    report = plan(model_dir, task="lora", batch=1, seq=16, gpus=("Tiny",), gpu_file=gpu_file)
    row = report.gpus[0]
    assert row.memory_bytes == 2**30 + 2**20 and row.context_bytes == 0 and row.margin_bytes == 2**30
    assert (row.max_batch >= 3) == (need <= 2**20)  # the sweeps leave the margin free


def test_cpu_device_plans_against_this_machine_with_cpu_defaults(model_dir):
    report = plan(model_dir, task="lora", batch=2, seq=16, device="cpu")
    assert report.device == "cpu" and len(report.gpus) == 1
    assert report.gpus[0].context_bytes == 0 and report.gpus[0].fits


def test_json_has_every_number_and_stderr_stays_empty(model_dir, capsys):
    assert main(["plan", model_dir, "--task", "lora", "--batch", "2", "--seq", "16", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no spinner when stderr is not a terminal, no transformers/peft warnings
    data = json.loads(captured.out)
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


def test_qlora_plans_a_conv1d_model_like_gpt2(tiny_model_dir):
    model_dir = str(tiny_model_dir("gpt2"))
    report = plan(model_dir, task="qlora", batch=2, seq=16, gpus=("T4",))
    inv = inventory_for(resolve_model(model_dir))
    fp32_rest = predict_setting(inv, replace(SETTINGS["nf4-dq"], dtype="float32"))
    # prepare_model_for_kbit_training casts the 4-bit layers' biases to float32 too, but
    # Linear4bit.forward casts them back to the compute dtype (bf16) for good on its first call
    quantized = {t.name.removesuffix(".weight") for t in inv.tensors if t.quantizable}
    biases = sum(t.numel for t in inv.tensors if t.name.removesuffix(".bias") in quantized and t.name.endswith(".bias"))
    assert biases > 0
    assert report.breakdown.weights_bytes == fp32_rest.true_bytes - 2 * biases
    assert report.breakdown.trainable_params_bytes > 0 and report.gpus[0].fits


def test_inference_counts_the_model_as_weights_not_trainable(model_dir):
    report = plan(model_dir, task="infer", batch=2, seq=16, gpus=("T4",))
    inv = inventory_for(resolve_model(model_dir))
    assert report.breakdown.trainable_params_bytes == 0
    assert report.breakdown.weights_bytes == predict_setting(inv, SETTINGS["bf16"]).true_bytes
    assert "trainable" not in _render(report)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"seq": 129}, "--seq 129 is longer than the model's 128 positions; use --seq <= 128"),
        ({"task": "infer", "seq": 100, "new_tokens": 29}, "--seq 100 + --new-tokens 29 = 129 is longer"),
    ],
)
def test_sequences_beyond_the_model_positions_are_rejected(model_dir, kwargs, fragment):
    with pytest.raises(PlanOptionError, match=re.escape(fragment)):
        plan(model_dir, **kwargs)


def test_sequence_beyond_the_model_positions_is_one_line_and_exit_2(model_dir, capsys):
    assert main(["plan", model_dir, "--task", "infer", "--seq", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "longer than the model's 128 positions" in err


def _render(report, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(plan_renderables(report))
    return console.file.getvalue()


def test_table_fits_100_columns_one_line_per_gpu_and_whole_headers(lora_report):
    text = _render(lora_report)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "…" not in text
    for g in lora_report.gpus:
        row = next(line for line in text.splitlines() if line.startswith(g.name))
        assert "$" + significant(g.usd_per_hour) in row  # the whole row on one line
    assert "max batch" in text and "(fit)" in text


def test_small_costs_and_step_times_show_significant_digits(lora_report):
    assert significant(0.000123456) == "0.000123" and significant(12.3456) == "12.3"
    assert significant(1234.5) == "1,234" or significant(1234.5) == "1,235"
    text = _render(lora_report)
    for g in lora_report.gpus:
        assert significant(g.usd_per_million_tokens) != "0.000"
        assert "$" + significant(g.usd_per_million_tokens) in text
        assert significant(g.step_s * 1000) in text
    markdown = render_plan_md(lora_report)
    assert "$" + significant(lora_report.gpus[0].usd_per_million_tokens) in markdown


def test_near_tie_for_cheapest_is_decided_on_exact_cost_and_printed_apart(model_dir, tmp_path):
    gpu_file = tmp_path / "gpus.json"
    cards = [_card("Pricier", usd_per_hour=1.0001), _card("Cheaper", usd_per_hour=1.0)]
    gpu_file.write_text(json.dumps({"gpus": cards}))
    report = plan(model_dir, task="lora", batch=2, seq=16, gpus=("Pricier", "Cheaper"), gpu_file=gpu_file)
    assert report.cheapest == "Cheaper"
    pricier, cheaper = report.gpus
    assert cheaper.cheapest and cheaper.usd_per_hour < pricier.usd_per_hour
    rows = {line.split()[0]: line for line in _render(report).splitlines() if line.startswith(("Pricier", "Cheaper"))}
    assert rows["Pricier"].split()[-2] != rows["Cheaper"].split()[-2]  # $/h printed with enough digits


def test_fit_error_above_1_percent_of_a_card_is_called_out_with_its_size(lora_report):
    small, big = (replace(lora_report.gpus[0], name=n, memory_bytes=m) for n, m in (("Small", 2**30), ("Big", 2**40)))
    quiet = fit_note(1000, [small, big])
    assert "under 1% of every card" in quiet
    loud = fit_note(2**28, [small, big])  # 25% of Small, 0.02% of Big
    assert "268,435,456 bytes" in loud and "25.0% of the memory of Small" in loud and "Big" not in loud


BAD_GPU_ENTRIES = [
    ({**_card("X"), "memory_mib": float("inf")}, "memory_mib must be a finite number > 0"),
    ({**_card("X"), "bf16_dense_tflops": float("nan")}, "bf16_dense_tflops must be a finite number > 0"),
    ({**_card("X"), "memory_bandwidth_gbs": True}, "memory_bandwidth_gbs must be a finite number > 0"),
    ({**_card("X"), "usd_per_hour": 0}, "usd_per_hour must be a finite number > 0"),
    ({**_card("X"), "usd_per_hour": "1"}, "usd_per_hour must be a finite number > 0"),
    ({**_card("X"), "context_mib": -1}, "context_mib must be a finite number >= 0"),
    ({**_card("X"), "context_mib": 1024}, "context_mib (1024) must be less than memory_mib (1024)"),
    ({**_card("X"), "name": ""}, "name must be a non-empty string"),
    ({**_card("X"), "name": 3}, "name must be a non-empty string"),
    ({**_card("X"), "usd_per_hr": 1}, "unknown field usd_per_hr"),
    ({k: v for k, v in _card("X").items() if k != "context_mib"}, "needs context_mib too"),
    ({"name": "T4", "context_measured": "yes"}, "context_measured must be true or false"),
    ("T4", "must be an object"),
]


@pytest.mark.parametrize("entry, fragment", BAD_GPU_ENTRIES)
def test_every_field_of_a_gpu_file_is_checked_in_one_line_naming_entry_and_field(tmp_path, capsys, entry, fragment):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"gpus": [_card("Fine"), entry]}))
    assert main(["gpus", "--gpu-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "gpus[1]" in err


def test_huge_number_in_a_gpu_file_is_an_error_not_an_overflow(tmp_path, capsys):
    path = tmp_path / "w.json"
    path.write_text(
        '{"gpus": [{"name": "X", "memory_mib": 1e400, "context_mib": 0, "bf16_dense_tflops": 1, '
        '"memory_bandwidth_gbs": 1, "usd_per_hour": 1}]}'
    )
    assert main(["gpus", "--gpu-file", str(path)]) == 2
    assert "memory_mib must be a finite number > 0 (total memory in MiB), not Infinity" in capsys.readouterr().err


def test_gpu_file_that_is_a_plain_list_gets_the_expected_shape(tmp_path, capsys):
    path = tmp_path / "w.json"
    path.write_text(json.dumps([_card("X")]))
    assert main(["gpus", "--gpu-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is a list" in err and '{"gpus": [' in err and err.count("\n") == 1


def test_gpu_file_override_keeps_the_shipped_fields_it_omits(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"gpus": [{"name": "t4", "usd_per_hour": 0.2}]}))
    shipped = next(g for g in gpus() if g.name == "T4")
    (t4,) = [g for g in gpus_with(path) if g.name == "T4"]
    assert t4 == replace(shipped, usd_per_hour=0.2)
    assert len(gpus_with(path)) == len(gpus())


def test_context_from_a_gpu_file_is_labelled_given_not_unmeasured(tmp_path, capsys):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"gpus": [_card("Mine", context_mib=0), {"name": "T4", "usd_per_hour": 0.2}]}))
    assert main(["gpus", "--gpu-file", str(path)]) == 0
    out = capsys.readouterr().out
    mine = next(line for line in out.splitlines() if "Mine" in line)
    t4 = next(line for line in out.splitlines() if "T4" in line)
    assert "(given)" in mine and "not measured" not in mine
    assert "(est.)" in t4  # the shipped estimate it kept


@pytest.mark.parametrize("command", ["gpus", "plan"])
def test_gpu_file_format_is_documented_in_help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for word in ('{"gpus": [ENTRY, ...]}', "memory_mib", "context_mib", "usd_per_hour", "changes only the fields"):
        assert word in text


@pytest.mark.parametrize("optimizer", ["adamw8bit", "paged_adamw8bit"])
def test_8bit_optimizer_cpu_plan_equals_the_real_bitsandbytes_step_byte_for_byte(tiny_model_dir, optimizer):
    """plan --device cpu against bitsandbytes' real optimizer stepping the real model on this CPU, with the
    profiler's loader and live-tensor tracker: the same peak and the same optimizer states."""
    from conftest import tiny_config

    from memprof.measure.worker import load_pretrained
    from memprof.simulate import StepSimulator, StepSpec, prepare_step_model

    model_dir = str(tiny_model_dir("llama"))
    report = plan(model_dir, task="full", batch=2, seq=16, optimizer=optimizer, device="cpu", precision="pure")
    spec = StepSpec(task="full", optimizer=optimizer, precision="pure")
    real_model = prepare_step_model(load_pretrained(model_dir, SETTINGS["bf16"], device_map="cpu"), spec)
    real = StepSimulator(tiny_config("llama"), spec, layers=2, real_model=real_model).run(2, 16)
    assert report.breakdown.total_bytes == real.peak_bytes
    assert report.breakdown.optimizer_states_bytes == real.peak_phase.breakdown["optimizer_states"]
    adamw = plan(model_dir, task="full", batch=2, seq=16, device="cpu", precision="pure")
    assert report.breakdown.optimizer_states_bytes < adamw.breakdown.optimizer_states_bytes


def test_notes_name_the_optimizer_that_was_simulated(model_dir):
    """foreach AdamW's note only for AdamW; the 8-bit ones say what their states are, paged what is paged."""
    notes = {
        name: " ".join(plan(model_dir, task="lora", batch=2, seq=16, gpus=("T4",), optimizer=name).details)
        for name in ("adamw", "adamw8bit", "paged_adamw8bit")
    }
    assert "foreach=True" in notes["adamw"] and "absmax" not in notes["adamw"]
    for name in ("adamw8bit", "paged_adamw8bit"):
        assert "foreach" not in notes[name] and f"{name}: bitsandbytes' own init_state" in notes[name]
    assert "unified memory" in notes["paged_adamw8bit"] and "unified memory" not in notes["adamw8bit"]
    cpu = " ".join(plan(model_dir, task="lora", batch=2, seq=16, device="cpu", optimizer="paged_adamw8bit").details)
    assert "does not page on the CPU" in cpu and "unified memory" not in cpu


# -- verdicts a user can act on -------------------------------------------------------------------


def test_qlora_checkpoints_by_default_and_no_grad_checkpointing_turns_it_off(model_dir, capsys):
    on = plan(model_dir, task="qlora", batch=2, seq=16, gpus=("H100",))
    off = plan(model_dir, task="qlora", batch=2, seq=16, gpus=("H100",), grad_checkpointing=False)
    assert on.grad_checkpointing and not off.grad_checkpointing
    assert on.breakdown.activations_bytes < off.breakdown.activations_bytes  # the simulation ran checkpointed
    assert not plan(model_dir, task="lora", batch=2, seq=16, gpus=("H100",)).grad_checkpointing
    assert "grad ckpt on" in _title(on) and "grad ckpt off" in _title(off)
    argv = ["plan", model_dir, "--task", "qlora", "--batch", "2", "--seq", "16", "--gpus", "H100", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["grad_checkpointing"] is True  # the resolved value is saved
    assert main([*argv, "--no-grad-checkpointing"]) == 0
    assert json.loads(capsys.readouterr().out)["grad_checkpointing"] is False


def test_title_states_checkpointing_for_every_training_task(model_dir):
    for task in ("lora", "full"):
        report = plan(model_dir, task=task, batch=2, seq=16, gpus=("H100",))
        assert "grad ckpt off" in _title(report)
        # a catalog name's title fits one line at 100 columns
        assert _render(replace(report, model="meta-llama/Llama-3.1-70B")).splitlines()[0] == _title(report).replace(
            report.model, "meta-llama/Llama-3.1-70B"
        )


def _gpu_file(tmp_path, *cards) -> str:
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"gpus": list(cards)}))
    return path


def test_star_is_the_lowest_price_per_hour_not_the_roofline_cost_per_token(model_dir, tmp_path):
    # Fast costs more per hour but, on the roofline, far less per token: the star stays on the known price
    cards = _card("Fast", memory_mib=8192, bf16_dense_tflops=1000, memory_bandwidth_gbs=5000, usd_per_hour=3)
    gpu_file = _gpu_file(tmp_path, cards, _card("Slow", memory_mib=8192, usd_per_hour=1))
    report = plan(model_dir, task="lora", batch=2, seq=16, gpus=("Fast", "Slow"), gpu_file=gpu_file)
    fast, slow = report.gpus
    assert fast.usd_per_million_tokens < slow.usd_per_million_tokens and report.cheapest == "Slow"
    text = _render(report)
    assert "$/M tok" in text and "(est.)" in text and "lowest $/h" in text


def test_a_fit_within_the_margin_is_tight_in_the_table_and_json_and_loses_the_star(model_dir, tmp_path, capsys):
    need = plan(model_dir, task="lora", batch=2, seq=16, gpus=("H100",)).breakdown.total_bytes
    tight_mib = -(-need // 2**20) + 1  # fits with about a MiB free: far under the 1 GiB margin
    cards = (_card("Snug", memory_mib=tight_mib, usd_per_hour=0.5), _card("Roomy", memory_mib=4096, usd_per_hour=2))
    gpu_file = _gpu_file(tmp_path, *cards)
    report = plan(model_dir, task="lora", batch=2, seq=16, gpus=("Snug", "Roomy"), gpu_file=gpu_file)
    snug, roomy = report.gpus
    assert snug.fits and snug.verdict == "tight" and 0 <= snug.headroom_bytes < snug.margin_bytes == 2**30
    assert roomy.verdict == "fits" and report.cheapest == "Roomy"  # the cheaper card is tight
    assert snug.max_batch == 0  # nothing fits with the margin left free
    row = next(line for line in _render(report).splitlines() if line.startswith("Snug"))
    assert " tight " in row
    argv = ["plan", model_dir, "--batch", "2", "--seq", "16", "--gpus", "Snug,Roomy", "--gpu-file", str(gpu_file)]
    assert main([*argv, "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["gpus"][0]
    assert entry["verdict"] == "tight" and entry["headroom_bytes"] == snug.headroom_bytes
    only_snug = plan(model_dir, task="lora", batch=2, seq=16, gpus=("Snug",), gpu_file=gpu_file)
    assert only_snug.cheapest == "Snug"  # tight ones are starred when nothing fits with the margin


def test_first_screen_is_the_answer_short_notes_and_details_behind_verbose(lora_report):
    report = replace(lora_report, model="meta-llama/Llama-3.1-8B")
    text = _render(report)
    lines = text.splitlines()
    assert lines[0] == _title(report)  # the title on one line
    notes = [line for line in lines[lines.index(next(x for x in lines if x.startswith("★"))) + 1 :]]
    assert len(notes) <= 6 and "--verbose" in text
    verbose = io.StringIO()
    Console(file=verbose, width=100, color_system=None).print(plan_renderables(report, verbose=True))
    assert len(verbose.getvalue().splitlines()) > len(lines) + 5 and "roofline ESTIMATE" in verbose.getvalue()
    assert "roofline ESTIMATE" in render_plan_md(report)


def test_without_colour_each_kind_in_the_bar_has_its_own_character(lora_report):
    text = _render(lora_report)
    lines = text.splitlines()
    legend = lines[next(i for i, line in enumerate(lines) if line.startswith("Memory at the peak")) + 2]
    marks = re.findall(r"(\S) [a-zA-Z -]+ [\d.]+", legend)
    assert len(marks) >= 3 and len(set(marks)) == len(marks)


def test_num_gpus_auto_is_the_fewest_cards_whose_shards_fit_by_the_same_division(tmp_path, capsys):
    # 16 layers: with 2, the two gathered layers would be the whole model and sharding would not help
    model_dir = tmp_path / "deep"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({**tiny_config("llama"), "num_hidden_layers": 16}))
    model_dir = str(model_dir)
    per_gpu = {
        n: plan(
            model_dir,
            task="lora",
            batch=2,
            seq=16,
            gpus=("H100",),
            num_gpus=n,
            shard="fsdp" if n > 1 else "none",  # one GPU is not sharded (plan refuses --shard there)
            simulate_sharding=False,
        ).breakdown
        for n in (1, 2, 4)
    }
    assert per_gpu[4].total_bytes < per_gpu[2].total_bytes < per_gpu[1].total_bytes
    memory = 2**30 + (per_gpu[4].total_bytes + per_gpu[2].total_bytes) // 2  # 4 fit with the 1 GiB margin, 2 not
    gpu_file = _gpu_file(tmp_path, _card("Mid", memory_mib=memory / 2**20, usd_per_hour=0.5))
    auto = plan(model_dir, task="lora", batch=2, seq=16, gpus=("Mid", "H100"), gpu_file=gpu_file, num_gpus="auto",
                shard="fsdp")  # fmt: skip
    mid, h100 = auto.gpus
    assert (mid.num_gpus, mid.verdict, mid.required_bytes) == (4, "fits", per_gpu[4].total_bytes)
    assert mid.usd_per_hour == 2 and h100.num_gpus == 1 and auto.num_gpus_auto
    assert auto.cheapest == "Mid" and auto.num_gpus == 4 and auto.breakdown == per_gpu[4]
    text = _render(auto)
    assert "GPUs" in text and "fsdp, fewest GPUs" in _title(auto)
    assert re.search(r"^Mid ★\s+4\s", text, re.M)
    argv = ["plan", model_dir, "--batch", "2", "--seq", "16", "--gpus", "Mid", "--gpu-file", str(gpu_file)]
    assert main([*argv, "--num-gpus", "auto", "--shard", "fsdp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"][0]["num_gpus"] == 4
    with pytest.raises(PlanOptionError, match="--shard zero2, zero3 or fsdp"):
        plan(model_dir, task="lora", batch=2, seq=16, num_gpus="auto")
    try:  # argparse's own error: an exit of 2 (or a return of 2, however cli.main reports it)
        code = main([*argv, "--num-gpus", "many"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "auto" in capsys.readouterr().err


def test_mixed_precision_plan_equals_the_measured_profile_peak_on_cpu(model_dir, tmp_path):
    """--precision mixed is one step (memprof.step): fp32 masters, forward under bf16 autocast. plan's
    predicted train peak equals profile's measured live-tensor peak byte for byte, and it is the
    default of a bf16 full fine-tune, named in the title."""
    from memprof.analyses.profile import profile
    from memprof.report.profile import render_profile_md

    predicted = plan(model_dir, task="full", setting="bf16", batch=2, seq=16, device="cpu")
    pure = plan(model_dir, task="full", setting="bf16", batch=2, seq=16, device="cpu", precision="pure")
    assert predicted.precision == "mixed" and "mixed bf16" in _title(predicted) and "pure bf16" in _title(pure)
    assert predicted.breakdown.total_bytes > 1.5 * pure.breakdown.total_bytes  # fp32 masters, grads, states
    measured = profile(model_dir, settings="bf16", train="full", batch=2, seq=16, repeats=1, warmup=0, threads=1)
    train = measured.settings[0].train
    assert measured.settings[0].error is None and train.precision == "mixed"
    assert train.peak_bytes == predicted.breakdown.total_bytes
    assert "mixed precision" in render_profile_md(measured)
    assert plan(model_dir, task="full", setting="fp32", batch=2, seq=16, device="cpu").precision == "pure"
    with pytest.raises(MemprofError, match="full fine-tunes"):
        plan(model_dir, task="lora", batch=2, seq=16, precision="mixed")


def test_progress_says_what_is_simulated_and_nothing_from_the_cache(model_dir):
    said: list[str] = []
    plan(model_dir, task="lora", batch=2, seq=16, gpus=("H100",), on_progress=said.append)
    assert any("simulating 2 layers, batch 2 × seq 16" in m for m in said)
    again: list[str] = []
    plan(model_dir, task="lora", batch=2, seq=16, gpus=("H100",), on_progress=again.append)
    assert again == []  # answered by the cache


def test_a_4bit_cpu_plan_says_bitsandbytes_cpu_repacking_is_off(model_dir):
    """Profile measures 4-bit CPU loads in the GPU's weight layout (settings.keep_gpu_weight_layout);
    the CPU plan it is checked against says so, the GPU plan (no repacking there) does not."""
    from memprof.settings import CPU_REPACKING_NOTE

    cpu = plan(model_dir, task="qlora", batch=2, seq=16, device="cpu")
    assert any(CPU_REPACKING_NOTE in d for d in cpu.details)
    gpu = plan(model_dir, task="qlora", batch=2, seq=16, gpus=("T4",))
    assert not any(CPU_REPACKING_NOTE in d for d in gpu.details)


def test_plan_carries_the_step_region_by_region_and_draws_it(tmp_path, capsys):
    from memprof.cli import main
    from memprof.report.plan import region_line

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(tiny_config("llama")))
    r = plan(str(model_dir), task="full", batch=2, seq=16, gpus=("H100",))
    points = r.timeline["points"]
    assert [p["bytes"] for p in points] and max(p["bytes"] for p in points) == r.breakdown.total_bytes
    assert r.timeline["phases"][0]["name"] == "zero_grad" and r.timeline["phases"][-1]["name"] == "optimizer"
    assert all(sum(p["kinds"].values()) == p["bytes"] for p in points)
    assert region_line(r).count("█") >= 1
    assert (
        main(
            [
                "plan",
                str(model_dir),
                "--task",
                "full",
                "--batch",
                "2",
                "--seq",
                "16",
                "--gpus",
                "H100",
                "--format",
                "html",
            ]
        )
        == 0
    )
    html = capsys.readouterr().out
    assert html.count("<svg") == 1 and "H100" in html and "peak" in html


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "serve", "--num-gpus", "2", "--shard", "fsdp"], "--num-gpus, --shard: not used by --task serve"),
        (["--task", "serve", "--batch", "4"], "--batch: not used by --task serve"),
        (["--context", "512"], "--context: for --task serve only"),
        (["--shard", "fsdp"], "--shard fsdp divides over several GPUs"),
        (["--task", "lora", "--new-tokens", "5"], "--new-tokens: not used by --task lora"),
        (["--task", "full", "--lora-r", "16"], "--lora-r: not used by --task full"),
        (["--task", "infer", "--optimizer", "adamw8bit"], "--optimizer: not used by --task infer"),
        (["--task", "foo"], "unknown task 'foo'; use one of infer, lora, qlora, full, serve"),
        (["--num-gpus", "100000", "--shard", "fsdp"], "--num-gpus must be from 1 to 4,096"),
    ],
)
def test_an_option_the_task_does_not_use_is_one_line_not_ignored(argv, message, capsys):
    assert main(["plan", "gpt2", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_the_python_api_takes_a_comma_list_of_gpus_and_rejects_wrong_types():
    assert [g.name for g in plan("gpt2", gpus="h100, l4", seq=128).gpus] == ["H100 80GB", "L4"]
    with pytest.raises(PlanOptionError, match="batch takes a whole number, not '2'"):
        plan("gpt2", batch="2")
    with pytest.raises(PlanOptionError, match="memprof.plan_serving"):
        plan("gpt2", task="serve")


def test_serve_defaults_to_the_models_positions_where_it_has_fewer():
    from memprof import plan_serving

    assert plan_serving("gpt2", gpus=("L4",)).context == 1024


def test_the_sweep_search_finds_what_bisection_finds_asking_the_same_first_points_of_every_card():
    from memprof.analyses.plan import _max_int

    def bisect(ok, hi, lo=1):
        if not ok(lo):
            return lo - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
        return lo

    asked: list[set[int]] = []
    for lo, hi in ((1, 1 << 20), (1, 1), (5, 9), (64, 131072), (3, 100)):
        for threshold in sorted({lo - 1, lo, lo + 1, hi - 1, hi, hi + 5, (lo + hi) // 3, lo + 37}):
            seen: set[int] = set()

            def ok(x, t=threshold, seen=seen):
                seen.add(x)
                return x <= t

            assert (
                _max_int(ok, hi, lo) == bisect(lambda x, t=threshold: x <= t, hi, lo) == max(lo - 1, min(hi, threshold))
            )
            if lo == 1 and hi == 1 << 20 and threshold >= 64:
                asked.append(seen)
    # cards whose answers differ still ask the same doubling points first (the plan caches them)
    assert {1, 2, 4, 8, 16, 32, 64} <= set.intersection(*asked)


def test_on_a_narrow_terminal_no_card_and_no_number_is_cut(capsys, monkeypatch):
    """80 columns: the table is wider; its lines run on (the terminal wraps them) rather than rich
    shrinking the cards' names to nothing or cutting a price to '$0.…'."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["plan", "llama-3.1-8b"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.split() and line.split()[0] in ("T4", "L4", "A10G", "H200")]
    assert len(table) == 4 and "…" not in "".join(table)
    assert all("$" in line for line in table)  # every row keeps its last columns, prices included
