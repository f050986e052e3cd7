"""Predictions equal real loads, byte for byte, for every catalog architecture and every setting."""

from __future__ import annotations

import pytest
from conftest import ARCH_MODELS, tiny_config

from memprof.inventory import build_inventory
from memprof.predict import predict_setting, tensor_bytes
from memprof.settings import SETTINGS, Setting


def _load(path, setting: Setting):
    """The same from_pretrained call that `footprint --measure` makes, in this process."""
    from memprof.measure.worker import load_pretrained

    return load_pretrained(str(path), setting, device_map="cpu")


@pytest.mark.parametrize("setting_name", list(SETTINGS))
@pytest.mark.parametrize("arch", list(ARCH_MODELS))
def test_footprint_and_true_bytes_equal_real_load(arch, setting_name, tiny_model_dir):
    from memprof.tensors import true_bytes

    setting = SETTINGS[setting_name]
    predicted = predict_setting(build_inventory(tiny_config(arch)), setting)
    model = _load(tiny_model_dir(arch), setting)
    assert model.get_memory_footprint() == predicted.footprint_bytes
    assert true_bytes(model) == predicted.true_bytes
    assert sum(p.numel() for p in model.parameters()) == predicted.params or setting.quant in ("nf4", "fp4")


@pytest.mark.parametrize("setting_name", ["int8", "nf4-dq"])
def test_unquantized_dtype_override_equals_real_load(setting_name, tiny_model_dir):
    """--dtype fp16 keeps embeddings, norms and lm_head in float16 instead of bf16."""
    from memprof.tensors import true_bytes

    setting = SETTINGS[setting_name].with_dtype("float16")
    predicted = predict_setting(build_inventory(tiny_config("llama")), setting)
    model = _load(tiny_model_dir("llama"), setting)
    assert model.get_memory_footprint() == predicted.footprint_bytes
    assert true_bytes(model) == predicted.true_bytes
    assert model.model.embed_tokens.weight.dtype.itemsize == 2 and str(model.lm_head.weight.dtype) == "torch.float16"


def test_double_quantization_saves_bytes_that_footprint_does_not_show():
    from memprof.inventory import inventory_for
    from memprof.models import resolve_model

    inventory = inventory_for(resolve_model("meta-llama/Llama-3.1-8B"))
    nf4 = predict_setting(inventory, SETTINGS["nf4"])
    nf4_dq = predict_setting(inventory, SETTINGS["nf4-dq"])
    assert nf4.footprint_bytes == nf4_dq.footprint_bytes
    # 6,979,321,856 quantized values in 224 linears = 109,051,904 blocks of 64. Absmax goes from
    # 4 bytes to 1 per block (-327,155,712); each layer adds a 1 KiB table copy and a 4-byte offset
    # (+230,272) and a float32 absmax per 256 blocks (+1,703,936).
    assert nf4.true_bytes - nf4_dq.true_bytes == 327_155_712 - 230_272 - 1_703_936


def test_double_quantization_costs_bytes_on_tiny_layers():
    """Each double-quantized layer copies a 1 KiB code table: on tiny layers that outweighs the saving."""
    inventory = build_inventory(tiny_config("llama"))
    assert (
        predict_setting(inventory, SETTINGS["nf4-dq"]).true_bytes
        > predict_setting(inventory, SETTINGS["nf4"]).true_bytes
    )


def test_4bit_quant_state_of_one_layer_by_hand():
    """A 4096x4096 linear: 8,388,608 packed bytes; 262,144 blocks of 64."""
    from memprof.inventory import TensorRecord

    weight = TensorRecord("q.weight", (4096, 4096), "auto", "param", quant_out_features=4096)
    nf4 = tensor_bytes(weight, SETTINGS["nf4"])
    assert nf4.stored_bytes == 4096 * 4096 // 2
    assert nf4.quant_state_bytes == 262_144 * 4 + 16 * 4
    dq = tensor_bytes(weight, SETTINGS["nf4-dq"])
    assert dq.quant_state_bytes == 262_144 + 16 * 4 + 1024 * 4 + 256 * 4 + 4
    int8 = tensor_bytes(weight, SETTINGS["int8"])
    assert (int8.stored_bytes, int8.quant_state_bytes) == (4096 * 4096, 4096 * 4)


@pytest.mark.parametrize("setting_name", ["int8", "nf4", "nf4-dq"])
@pytest.mark.parametrize("arch", ["llama", "llama-tied", "gpt2", "bloom"])
def test_kbit_training_cast_equals_peft_prepare_model_for_kbit_training_on_a_real_load(
    arch, setting_name, tiny_model_dir
):
    """The QLoRA recipe casts the unquantized fp16/bf16 params to float32: the arithmetic equals peft's real cast."""
    from peft import prepare_model_for_kbit_training

    from memprof.predict import kbit_training_cast
    from memprof.tensors import true_bytes

    setting = SETTINGS[setting_name]
    inventory = build_inventory(tiny_config(arch))
    predicted = kbit_training_cast(inventory, setting)
    model = prepare_model_for_kbit_training(_load(tiny_model_dir(arch), setting), use_gradient_checkpointing=False)
    assert true_bytes(model) == predicted.true_bytes > predict_setting(inventory, setting).true_bytes
    cast = sum(p.numel() for p in model.parameters() if p.dtype.is_floating_point and p.dtype.itemsize == 4)
    assert cast == predicted.cast_params  # every float32 param after the recipe is one it cast (tiny configs load bf16)


@pytest.mark.parametrize("setting_name", ["int8", "nf4-dq"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "bloom"])
def test_kbit_training_step_bytes_equal_plans_simulated_qlora_step(arch, setting_name):
    """During the step (after the first forward) bitsandbytes' Linear4bit has cast its bias back to the
    compute dtype: the base's bytes then equal what plan's simulated QLoRA step holds as weights + quant state."""
    from memprof.predict import kbit_training_cast
    from memprof.simulate import StepSimulator, StepSpec

    config = tiny_config(arch)
    predicted = kbit_training_cast(build_inventory(config), SETTINGS[setting_name])
    sim = StepSimulator(config, StepSpec(task="lora", setting=setting_name), layers=2).run(2, 16)
    held = next(p for p in sim.phases if p.phase == "zero_grad").breakdown
    assert held["weights"] + held["quant_state"] == predicted.step_true_bytes
    has_4bit_biases = arch != "llama" and setting_name == "nf4-dq"
    assert (predicted.step_true_bytes < predicted.true_bytes) == has_4bit_biases
