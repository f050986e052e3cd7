"""memprof.quant, the one home of each quantization's rules, against bitsandbytes' own functions: the
kernel transients plan adds, the BitsAndBytesConfig a load passes, and every setting naming one."""

from __future__ import annotations

import pytest
import torch

from memprof.quant import QUANTIZATIONS
from memprof.settings import DTYPE_BYTES, SETTINGS, bnb_config

QUANTIZED = [s for s in SETTINGS.values() if s.quantized]


def test_every_quantized_setting_names_a_quantization_and_every_quantization_has_a_setting():
    assert {s.quant for s in QUANTIZED} == set(QUANTIZATIONS)
    assert all(s.quantization is QUANTIZATIONS[s.quant] for s in QUANTIZED)
    assert not any(s.quantization or s.four_bit for s in SETTINGS.values() if not s.quantized)


@pytest.mark.parametrize("setting", QUANTIZED, ids=lambda s: s.name)
def test_bnb_config_is_what_transformers_is_asked_for(setting):
    from transformers import BitsAndBytesConfig

    if setting.quant == "int8":
        expected = BitsAndBytesConfig(load_in_8bit=True)
    else:
        expected = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=setting.quant,
            bnb_4bit_use_double_quant=setting.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, setting.dtype),
        )
    assert bnb_config(setting).to_dict() == expected.to_dict()


@pytest.mark.parametrize("setting", [s for s in QUANTIZED if s.four_bit], ids=lambda s: s.name)
@pytest.mark.parametrize("shape", [(96, 67), (128, 64)])  # a width that is not a multiple of the block too
def test_4bit_kernel_transient_is_what_dequantize_4bit_makes(setting, shape):
    """gemm_4bit dequantizes the weight (and, double quantized, first its absmax) inside the kernel:
    bitsandbytes' own dequantize functions make exactly these tensors."""
    from bitsandbytes import functional as F

    weight = torch.randn(shape, dtype=getattr(torch, setting.dtype))
    packed, state = F.quantize_4bit(
        weight, blocksize=64, compress_statistics=setting.double_quant, quant_type=setting.quant
    )
    made = []
    if setting.double_quant:
        absmax = F.dequantize_blockwise(state.absmax, state.state2)
        made.append(absmax.nelement() * absmax.element_size())
    dequantized = F.dequantize_4bit(packed, state)
    made.append(dequantized.nelement() * dequantized.element_size())
    numel = shape[0] * shape[1]
    expected = setting.quantization.kernel_fixed_bytes(numel, DTYPE_BYTES[setting.dtype], setting.double_quant)
    assert sum(made) == expected
    assert setting.quantization.kernel_bytes_per_token(shape[0], int8_matmuls=True) == 0


def test_int8_kernel_transient_is_the_int32_product_of_int8_linear_matmul():
    import bitsandbytes  # noqa: F401  registers torch.ops.bitsandbytes

    tokens, out_features, in_features = 5, 96, 67
    a = torch.randint(-127, 127, (tokens, in_features), dtype=torch.int8)
    b = torch.randint(-127, 127, (out_features, in_features), dtype=torch.int8)
    product = torch.ops.bitsandbytes.int8_linear_matmul(a, b)
    int8 = QUANTIZATIONS["int8"]
    assert product.nelement() * product.element_size() == tokens * int8.kernel_bytes_per_token(out_features, True)
    assert int8.kernel_bytes_per_token(out_features, int8_matmuls=False) == 0  # MatMul8bitFp: dequantize, matmul
    assert int8.kernel_fixed_bytes(out_features * in_features, 2, False) == 0


def test_quant_needs_no_torch():
    import subprocess
    import sys

    code = "import sys, memprof.quant, memprof.settings, memprof.predict; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
