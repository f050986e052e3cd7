"""Bytes a model holds at a load setting: pure arithmetic over the inventory. Never imports torch.

Two totals per setting:
- footprint_bytes: what transformers' `get_memory_footprint()` returns, i.e. the sum of
  `nelement() * element_size()` over parameters and buffers. For a 4-bit layer that is the packed
  uint8 weight only; for an int8 layer the int8 weight only.
- true_bytes: every byte the model's tensors hold, counting each storage once. On top of the
  footprint that is bitsandbytes' quant state, which lives outside parameters and buffers
  (memprof.quant: each quantization's bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from memprof.inventory import Inventory, TensorRecord
from memprof.quant import FLOAT32_BYTES
from memprof.settings import DTYPE_BYTES, Setting


@dataclass(frozen=True)
class TensorBytes:
    """Bytes of one tensor at a setting: as a parameter/buffer, and its quant state beside it."""

    stored_bytes: int  # nelement() * element_size() of the parameter or buffer itself
    quant_state_bytes: int  # SCB, absmax, code tables, nested state: outside parameters and buffers


def tensor_bytes(record: TensorRecord, setting: Setting) -> TensorBytes:
    if not (setting.quantized and record.quantizable):
        return TensorBytes(record.numel * DTYPE_BYTES[record.dtype_when_loaded(setting.dtype)], 0)
    return TensorBytes(
        *setting.quantization.weight_bytes(record.numel, record.quant_out_features, setting.double_quant)
    )


@dataclass(frozen=True)
class SettingPrediction:
    setting: str
    params: int
    footprint_bytes: int
    true_bytes: int
    quant_state_bytes: int
    quantized_params: int  # parameters stored in int8 / 4-bit
    unquantized_bytes: int  # bytes of tensors that stay in a float dtype (embeddings, norms, lm_head...)
    unquantized_dtype: str


def predict_setting(inventory: Inventory, setting: Setting) -> SettingPrediction:
    footprint = quant_state = quantized_params = unquantized = 0
    for record in inventory.tensors:
        b = tensor_bytes(record, setting)
        footprint += b.stored_bytes
        quant_state += b.quant_state_bytes
        if setting.quantized and record.quantizable:
            quantized_params += record.numel
        else:
            unquantized += b.stored_bytes
    return SettingPrediction(
        setting=setting.name,
        params=inventory.param_count,
        footprint_bytes=footprint,
        true_bytes=footprint + quant_state,
        quant_state_bytes=quant_state,
        quantized_params=quantized_params,
        unquantized_bytes=unquantized,
        unquantized_dtype=setting.dtype,
    )


@dataclass(frozen=True)
class KbitTrainingCast:
    """The base model under the QLoRA recipe: right after it is prepared, and during the training step."""

    cast_params: int  # fp16/bf16 parameters bitsandbytes left unquantized, now float32
    true_bytes: int  # every byte of the base right after the cast, quant state included
    step_true_bytes: int  # the same during the training step (4-bit layers' biases back in the compute dtype)


def kbit_training_cast(inventory: Inventory, setting: Setting) -> KbitTrainingCast:
    """What peft's `prepare_model_for_kbit_training` (memprof.step: LoRA on a quantized setting) makes
    of the weights at `setting`: it casts every float16/bfloat16 *parameter* that is not a 4-bit
    Params4bit to float32. int8 weights are int8 (not cast); buffers keep their dtype; a tied
    parameter is one tensor, cast once. Then each bitsandbytes Linear4bit's first forward casts its
    bias to the compute dtype (the load dtype here) again, so the step holds those biases at that
    dtype (Linear8bitLt casts its bias to its input's dtype: float32 after the recipe, unchanged).

    The simulation runs peft's and bitsandbytes' code itself; tests/test_predict.py proves this
    arithmetic equal to the real cast and to the simulated step.
    """
    quantized_layers = {t.name.removesuffix(".weight") for t in inventory.params if setting.quantized and t.quantizable}
    four_bit = setting.four_bit
    cast_params = cast_extra = step_extra = 0
    for record in inventory.params:
        if setting.quantized and record.quantizable:
            continue
        dtype = record.dtype_when_loaded(setting.dtype)
        after_cast = DTYPE_BYTES[dtype]
        if dtype in ("float16", "bfloat16"):
            cast_params += record.numel
            after_cast = FLOAT32_BYTES
            cast_extra += record.numel * (FLOAT32_BYTES - DTYPE_BYTES[dtype])
        if four_bit and record.name.endswith(".bias") and record.name.removesuffix(".bias") in quantized_layers:
            step_extra += record.numel * (DTYPE_BYTES[setting.dtype] - after_cast)
    after = predict_setting(inventory, setting).true_bytes + cast_extra
    return KbitTrainingCast(cast_params, after, after + step_extra)
