"""`memprof lora-params`: peft's own counts for a LoRA/DoRA config, the fast path proven equal to peft,
the adapter file to the byte, and bad input as one line with exit code 2."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys

import pytest
from conftest import tiny_config
from rich.console import Console

from memprof import lora_params, lora_sweep
from memprof.analyses.lora_params import safetensors_file_bytes
from memprof.catalog import catalog_models
from memprof.cli import main
from memprof.errors import UnsupportedTargetError
from memprof.inventory import build_meta_model
from memprof.lora.count import check_wrappable
from memprof.lora.options import PEFT_DEFAULT_TARGETS
from memprof.models import resolve_model
from memprof.report.lora import lora_renderables

CATALOG = [m.hub_id for m in catalog_models()]
RANKS = (1, 8, 16, 64, 128)


def _without_method(report) -> dict:
    """Everything a report says except which path answered (and the note naming it)."""
    data = dataclasses.asdict(report)
    del data["method"], data["notes"]
    return data


def _peft_config(report, **options):
    """The LoraConfig a user would write for what the report resolved."""
    from peft import LoraConfig

    if report.target == "all-linear":
        targets = "all-linear"
    elif report.target == "peft default":
        targets = None
    else:
        targets = list(report.target_modules)
    return LoraConfig(
        r=report.r,
        lora_alpha=report.alpha,
        target_modules=targets,
        use_dora=report.dora,
        bias=report.bias,
        modules_to_save=list(report.modules_to_save) or None,
        task_type="CAUSAL_LM",
        **options,
    )


def _peft_on_meta(hub_id: str, report):
    """peft itself, on the meta-device model: (trainable, all) from get_nb_trainable_parameters."""
    from peft import get_peft_model

    model = build_meta_model(resolve_model(hub_id).config)
    return get_peft_model(model, _peft_config(report), low_cpu_mem_usage=True).get_nb_trainable_parameters()


# --- the seed figures ------------------------------------------------------------------------------


def test_bloom_3b_r8_on_query_key_value_trains_2_457_600_of_3_005_015_040():
    report = lora_params("bigscience/bloom-3b", r=8, target="query_key_value")
    assert (report.trainable_params, report.all_params) == (2_457_600, 3_005_015_040)
    assert report.method == "inventory" and report.adapted_layers == 30
    [row] = report.per_module
    assert (row.name, row.layers, row.in_features, row.out_features) == ("query_key_value", 30, 2560, 7680)
    assert row.params_per_layer == 8 * (2560 + 7680)
    assert _peft_on_meta("bigscience/bloom-3b", report) == (2_457_600, 3_005_015_040)


def test_llama_3_1_8b_r32_alpha64_on_q_k_v_o_equals_peft():
    report = lora_params("meta-llama/Llama-3.1-8B", r=32, alpha=64, target="q_proj,k_proj,v_proj,o_proj")
    assert report.alpha == 64 and report.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert report.adapted_layers == 128
    assert _peft_on_meta("meta-llama/Llama-3.1-8B", report) == (report.trainable_params, report.all_params)
    assert report.trainable_params == 27_262_976
    assert report.trainable_percent == pytest.approx(100 * 27_262_976 / 8_057_524_224)


def test_no_model_means_llama_3_1_8b_with_peft_default_targets_and_alpha_2r():
    report = lora_params(r=16)
    assert report.model == "meta-llama/Llama-3.1-8B"
    assert report.target == "peft default" and report.target_modules == ("q_proj", "v_proj")
    assert report.alpha == 32 and report.scaling == 2.0


# --- the fast path is peft's answer, for every catalog model ----------------------------------------


def test_fast_path_default_targets_are_peft_s_table_for_every_catalog_architecture():
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table

    for model_type in {resolve_model(hub_id).model_type for hub_id in CATALOG}:
        expected = peft_table.get(model_type)
        assert PEFT_DEFAULT_TARGETS[model_type] == (None if expected is None else tuple(expected)), model_type


@pytest.mark.parametrize(("index", "hub_id"), list(enumerate(CATALOG)))
def test_fast_path_equals_peft_on_every_linear_of_every_catalog_model(index, hub_id):
    """all-linear wraps every linear, so this proves the per-module counts, DoRA magnitudes, bias modes and
    the saved state dict of the inventory path against peft on the meta model; rank, DoRA and bias vary."""
    options = dict(
        r=RANKS[index % len(RANKS)],
        target="all-linear",
        dora=index % 2 == 1,
        bias=("none", "all", "lora_only")[index % 3],
    )
    fast = lora_params(hub_id, **options)
    exact = lora_params(hub_id, **options, method="peft")
    assert (fast.method, exact.method) == ("inventory", "peft")
    assert _without_method(fast) == _without_method(exact)


@pytest.mark.parametrize(("index", "hub_id"), list(enumerate(CATALOG)))
def test_presets_adapt_exactly_the_modules_peft_matches_on_every_catalog_model(index, hub_id):
    """For peft's default targets, attention and mlp: the modules peft's own matcher picks on the real module
    tree are the ones counted. (Per-module counts are proven by the all-linear test above.)"""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    model = build_meta_model(resolve_model(hub_id).config)
    keys = [k for k, _ in model.named_modules() if k]
    base_params = sum(p.numel() for p in model.parameters())
    for offset, preset in enumerate((None, "attention", "mlp")):
        r = RANKS[(index + offset) % len(RANKS)]
        if preset is None and PEFT_DEFAULT_TARGETS[model.config.model_type] is None:
            with pytest.raises(UnsupportedTargetError, match="no default LoRA targets"):
                lora_params(hub_id, r=r)
            continue
        report = lora_params(hub_id, r=r, target=preset)
        assert report.method == "inventory"
        # what peft's _prepare_adapter_config hands its matcher: the table entry, or the names given
        targets = peft_table[model.config.model_type] if preset is None else report.target_modules
        config = LoraConfig(r=r, target_modules=list(targets))
        matched = [model.get_submodule(k) for k in keys if check_target_module_exists(config, k)]
        assert matched and all(isinstance(m, (nn.Linear, Conv1D)) for m in matched)
        shapes = [(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m.weight.shape for m in matched]
        assert report.adapted_layers == len(matched)
        assert report.trainable_params == sum(r * (i + o) for i, o in shapes)
        assert report.all_params == base_params + report.trainable_params


@pytest.mark.parametrize("hub_id", ["openai-community/gpt2", "meta-llama/Llama-3.2-1B"])
def test_every_preset_at_several_ranks_equals_peft_get_nb_trainable_parameters(hub_id):
    from peft import get_peft_model

    model = build_meta_model(resolve_model(hub_id).config)
    for preset in (None, "attention", "mlp", "all-linear"):
        for r in (1, 16, 128):
            report = lora_params(hub_id, r=r, target=preset)
            peft_model = get_peft_model(model, _peft_config(report), low_cpu_mem_usage=True)
            assert peft_model.get_nb_trainable_parameters() == (report.trainable_params, report.all_params)
            model = peft_model.unload()  # the same base, LoRA layers removed, for the next config


def test_attention_and_mlp_presets_name_the_blocks_linears():
    assert lora_params("meta-llama/Llama-3.1-8B", target="attention").target_modules == (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    )
    assert lora_params("meta-llama/Llama-3.1-8B", target="mlp").target_modules == ("gate_proj", "up_proj", "down_proj")
    # GPT-2 names both projections c_proj: the preset qualifies them with the block.
    assert lora_params("gpt2", target="attention").target_modules == ("c_attn", "attn.c_proj")
    assert lora_params("gpt2", target="mlp").target_modules == ("c_fc", "mlp.c_proj")
    assert lora_params("bigscience/bloom-3b", target="mlp").target_modules == ("dense_h_to_4h", "dense_4h_to_h")


def test_catalog_answers_without_importing_torch_or_peft():
    code = (
        "import sys; from memprof import lora_params; "
        "lora_params('meta-llama/Llama-3.1-405B', r=64, target='all-linear', dora=True, setting='nf4-dq'); "
        "assert 'torch' not in sys.modules and 'peft' not in sys.modules, 'imported torch/peft'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- tiny real models: peft on real CPU weights, and the adapter file it writes -----------------------

TINY_CASES = [
    ("llama", dict(r=8)),
    ("llama", dict(r=4, target="all-linear", dora=True, modules_to_save="lm_head")),
    ("llama", dict(r=16, alpha=8, target="attention")),
    ("llama-tied", dict(r=4, target="mlp", modules_to_save="embed_tokens")),
    ("bloom", dict(r=8, bias="all")),
    ("bloom", dict(r=4, target="mlp", dora=True, bias="lora_only")),
    ("gpt2", dict(r=8, bias="lora_only")),
    ("gpt2", dict(r=2, target="all-linear", dora=True, bias="all")),
    ("gpt2", dict(r=4, target="attention,lm_head")),
]


def _real_model(config: dict):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(config)
    torch.manual_seed(0)
    hf_config = AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)  # as memprof's meta model


@pytest.mark.parametrize(("arch", "options"), TINY_CASES)
def test_counts_and_adapter_file_equal_peft_on_tiny_real_models(arch, options, tmp_path):
    import torch
    from peft import get_peft_model

    config = tiny_config(arch)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(config))
    report = lora_params(str(model_dir), **options)
    assert report.method == "peft"  # not a catalog model: peft on the meta model

    peft_model = get_peft_model(_real_model(config), _peft_config(report))
    assert peft_model.get_nb_trainable_parameters() == (report.trainable_params, report.all_params)
    assert sum(row.params for row in report.per_module) == report.trainable_params
    peft_model.save_pretrained(tmp_path / "fp32")
    assert (tmp_path / "fp32" / "adapter_model.safetensors").stat().st_size == report.adapter_file_bytes.fp32
    peft_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert (tmp_path / "bf16" / "adapter_model.safetensors").stat().st_size == report.adapter_file_bytes.bf16


def test_safetensors_size_is_exact_for_mixed_names_and_shapes():
    import torch
    from safetensors.torch import save

    tensors = {"b.lora_B.weight": (3, 2), "a.lora_A.weight": (2, 5), "z": (7,), "m.lora_magnitude_vector": (11,)}
    for dtype in ("float32", "bfloat16"):
        real = save({k: torch.zeros(s, dtype=getattr(torch, dtype)) for k, s in tensors.items()}, {"format": "pt"})
        assert safetensors_file_bytes(list(tensors.items()), dtype) == len(real)


def test_4bit_printout_of_peft_differs_from_the_logical_count_only_for_odd_sized_weights(tmp_path):
    """bitsandbytes packs n 4-bit values into ceil(n/2) bytes; peft counts 2 per byte, so each quantized
    weight with an odd number of values counts one extra. memprof reports the logical count and peft's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = tiny_config("llama")
    # gate/up/down hold 35*45 values: odd. (q/k/v/o: 35*50, even.)
    config.update(hidden_size=35, num_attention_heads=5, num_key_value_heads=5, intermediate_size=45)
    (tmp_path / "config.json").write_text(json.dumps(config))
    _real_model(config).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    report = lora_params(str(tmp_path), r=4, target="all-linear", setting="nf4")

    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        device_map="cpu",
        dtype=torch.bfloat16,
    )
    peft_4bit = get_peft_model(quantized, LoraConfig(r=4, target_modules="all-linear"))
    assert peft_4bit.get_nb_trainable_parameters() == (report.trainable_params, report.base.peft_printout_all_params)
    assert report.base.peft_printout_all_params == report.all_params + 2 * 3  # 2 layers x gate, up, down
    assert any("odd number of values" in note for note in report.notes)


# --- memory figures --------------------------------------------------------------------------------


def test_setting_adds_the_base_true_bytes_to_the_training_state():
    from memprof import footprint

    report = lora_params("meta-llama/Llama-3.1-8B", r=16, target="all-linear", setting="nf4-dq")
    base_bytes = footprint("meta-llama/Llama-3.1-8B", settings="nf4-dq").settings[0].true_bytes
    state = report.training_state
    assert state.weights_bytes == 4 * report.trainable_params  # LoRA weights are float32 in peft
    assert state.total_bytes == 4 * state.weights_bytes  # + grads + AdamW exp_avg + exp_avg_sq
    assert report.base.true_bytes == base_bytes
    assert report.base.total_bytes == base_bytes + state.total_bytes
    assert report.base.peft_printout_all_params == report.all_params  # every Llama weight has an even size


def test_a_quantized_setting_shows_the_base_after_qloras_fp32_cast():
    """nf4-dq Llama-3.1-8B: 5.31 GiB loaded, 7.27 GiB once prepare_model_for_kbit_training has cast the bf16
    embeddings, LM head and norms to float32 (what plan's QLoRA step holds)."""
    from memprof.inventory import inventory_for
    from memprof.predict import kbit_training_cast
    from memprof.report.lora import summary_rows
    from memprof.settings import get_setting
    from memprof.units import human_bytes

    report = lora_params("meta-llama/Llama-3.1-8B", r=32, target="attention", setting="nf4-dq")
    base = report.base
    inventory = inventory_for(resolve_model("meta-llama/Llama-3.1-8B"))
    cast = kbit_training_cast(inventory, get_setting("nf4-dq"))
    unquantized = sum(t.numel for t in inventory.params if not t.quantizable)
    assert base.qlora_cast_params == cast.cast_params == unquantized  # Llama's unquantized params are all bf16
    assert base.qlora_true_bytes == cast.true_bytes == base.true_bytes + 2 * unquantized  # bf16 -> float32
    assert base.qlora_step_true_bytes == base.qlora_true_bytes  # no biases in Llama's 4-bit layers
    assert base.qlora_total_bytes == base.qlora_step_true_bytes + report.training_state.total_bytes
    assert human_bytes(base.true_bytes) == "5.31 GiB" and human_bytes(base.qlora_true_bytes) == "7.27 GiB"
    rows = dict(summary_rows(report))
    assert f"{base.qlora_true_bytes:,} B" in rows["  after the QLoRA fp32 cast"]
    assert any("prepare_model_for_kbit_training" in note and "float32" in note for note in report.notes)


def test_an_unquantized_setting_has_no_qlora_cast():
    from memprof.report.lora import summary_rows

    report = lora_params("meta-llama/Llama-3.1-8B", setting="bf16")
    assert report.base.qlora_true_bytes is None and report.base.qlora_total_bytes is None
    assert not any("QLoRA" in label for label, _ in summary_rows(report))


def test_4bit_biases_back_in_the_compute_dtype_are_shown_for_the_step():
    """Qwen2's q/k/v projections have biases: the 4-bit layers cast them back to bf16 in their forward."""
    report = lora_params("Qwen/Qwen2.5-0.5B", setting="nf4")
    base = report.base
    assert base.qlora_step_true_bytes < base.qlora_true_bytes
    assert base.qlora_total_bytes == base.qlora_step_true_bytes + report.training_state.total_bytes


def test_modules_to_save_copies_are_trained_in_the_base_dtype():
    report = lora_params("meta-llama/Llama-3.2-1B", modules_to_save="lm_head", setting="bf16")
    assert report.method == "peft"
    copy = next(row for row in report.per_module if row.kind == "modules_to_save")
    lora = sum(row.params for row in report.per_module if row.kind == "lora")
    assert copy.name == "lm_head" and copy.params == 128_256 * 2048
    assert report.trainable_params == lora + copy.params
    assert report.training_state.weights_bytes == 4 * lora + 2 * copy.params


def test_sweep_has_one_row_per_rank_and_linear_counts():
    sweep = lora_sweep("meta-llama/Llama-3.1-8B", ranks="8,16,32,64,128", target="attention")
    assert [row.r for row in sweep.rows] == [8, 16, 32, 64, 128]
    assert [row.alpha for row in sweep.rows] == [16, 32, 64, 128, 256]
    assert [row.trainable_params // row.r for row in sweep.rows] == [sweep.rows[0].trainable_params // 8] * 5


# --- output --------------------------------------------------------------------------------------


def test_json_has_the_documented_shape(capsys):
    assert main(["lora-params", "bigscience/bloom-3b", "--target", "query_key_value", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "bigscience/bloom-3b" and data["r"] == 8 and data["alpha"] == 16
    assert data["target_modules"] == ["query_key_value"]
    assert (data["trainable_params"], data["all_params"]) == (2_457_600, 3_005_015_040)
    assert isinstance(data["trainable_percent"], float)
    assert data["adapter_bytes"] == {"fp32": 4 * 2_457_600, "bf16": 2 * 2_457_600}
    assert data["per_module"][0]["name"] == "query_key_value" and data["per_module"][0]["layers"] == 30


def test_sweep_json_is_model_and_rows(capsys):
    assert main(["lora-params", "gpt2", "--sweep", "8,64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"kind", "model", "rows"} and data["kind"] == "memprof.lora-sweep"
    assert data["model"] == "openai-community/gpt2"
    assert [row["r"] for row in data["rows"]] == [8, 64]
    assert data["rows"][1]["trainable_params"] == 8 * data["rows"][0]["trainable_params"]


@pytest.mark.parametrize(
    "result",
    [
        lambda: lora_params(r=32, alpha=64, target="attention", dora=True, setting="nf4-dq"),
        lambda: lora_params("gpt2", target="all-linear", bias="all"),
        lambda: lora_sweep(ranks="8,16,32,64,128", target="all-linear", setting="nf4-dq"),
    ],
)
def test_table_fits_100_columns_and_shows_every_figure(result):
    report = result()
    buf = io.StringIO()
    Console(file=buf, width=100, color_system=None).print(lora_renderables(report))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    first = report.rows[0] if hasattr(report, "rows") else report
    assert f"{first.trainable_params:,}" in text and ", ".join(first.target_modules) in text
    if not hasattr(report, "rows"):
        assert f"alpha={first.alpha:g}" in text and f"{first.adapter_file_bytes.fp32:,} B" in text
        assert "training state" in text
        for row in first.per_module:
            assert row.name in text and f"{row.params:,}" in text
    if first.base is not None:
        assert "nf4-dq" in text


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_md_and_html_write_to_out(fmt, tmp_path, capsys):
    out = tmp_path / f"lora.{fmt}"
    assert main(["lora-params", "gpt2", "--r", "16", "--format", fmt, "--out", str(out)]) == 0
    text = out.read_text()
    assert "c_attn" in text and "589,824" in text  # 12 x 16*(768+2304)


# --- bad input: one line, exit code 2 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--r", "0"], "rank must be a positive integer"),
        (["--r", "-4"], "rank must be a positive integer"),
        (["--r", "eight"], "rank must be a positive integer"),
        (["--alpha", "big"], "alpha must be a number"),
        (["--sweep", "8,x"], "rank must be a positive integer"),
        (["--bias", "some"], "unknown bias mode"),
        (["--target", "q_proj,qproj"], "no module named 'qproj'"),
        (["--modules-to-save", "head_lm"], "no module named 'head_lm'"),
        (["--setting", "nf3"], "unknown setting"),
        (["microsoft/Phi-3-mini-4k-instruct"], "no default LoRA targets"),
        (["gpt2", "--dora", "--target", "ln_1"], "peft cannot wrap transformer.h.0.ln_1 (LayerNorm) with DoRA"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, expected, capsys):
    assert main(["lora-params", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("memprof lora-params: error: ") and expected in captured.err


def test_unknown_target_lists_the_linear_modules_the_model_has(capsys):
    assert main(["lora-params", "--target", "query"]) == 2
    err = capsys.readouterr().err
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in err


def test_dora_cannot_wrap_multihead_attention():
    from torch import nn

    attention = nn.MultiheadAttention(8, 2)
    check_wrappable("attn", attention, dora=False)  # LoRA can
    with pytest.raises(UnsupportedTargetError, match="cannot apply DoRA"):
        check_wrappable("attn", attention, dora=True)


def test_an_unknown_module_to_save_names_the_models_own_candidates():
    from memprof.errors import UnknownTargetError

    with pytest.raises(UnknownTargetError) as error:
        lora_params("gpt2", modules_to_save="embed_tokens")
    message = str(error.value)
    assert "'embed_tokens'" in message and "wte" in message and "lm_head" in message
