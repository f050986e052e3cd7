"""The quantizations memprof knows, one entry each: how bitsandbytes stores a quantized weight (its
bytes and its quant state), what its matmul holds inside the kernel where no trace sees it, and how
`from_pretrained` asks for it. A load setting (memprof.settings) names one of these and a dtype.

Arithmetic only, no torch: footprint, lora-params and plan's fast path read it without importing
torch. The simulation runs bitsandbytes' real layers (memprof.simulate), and tests/test_predict.py
and tests/test_simulate.py hold these bytes equal to what bitsandbytes really allocates.

Bytes of one quantized weight of n values and `out_features` rows (bitsandbytes 0.50 defaults):
- int8 (LLM.int8, Linear8bitLt): the int8 weight, n bytes; quant state: one float32 scale per
  output row (SCB).
- nf4 / fp4 (Linear4bit, Params4bit): two 4-bit values per uint8, ceil(n/2) bytes; quant state: one
  float32 absmax per 64-value block and the 16-entry float32 code table, per layer. With double
  quantization the absmax are uint8, plus per layer one float32 absmax per 256 blocks, a float32
  offset and a copy of the 256-entry float32 dynamic code table.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT32_BYTES = 4
# bitsandbytes' defaults (Params4bit.blocksize on CUDA/CPU, quantize_4bit(compress_statistics=True)).
BNB_4BIT_BLOCKSIZE = 64
BNB_NESTED_BLOCKSIZE = 256
BNB_4BIT_CODE_ENTRIES = 16  # nf4 / fp4 lookup table, float32, one copy per quantized layer
BNB_DYNAMIC_CODE_ENTRIES = 256  # the 8-bit dynamic map that double quantization copies per layer
INT32_BYTES = 4  # int8_scaled_mm's product


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Quantization:
    """One bitsandbytes quantization of the linear layers' weights."""

    name: str  # what Setting.quant holds: "int8", "nf4", "fp4"
    bits: int  # 8: Linear8bitLt (int8 weights); 4: Linear4bit (packed Params4bit)
    description: str

    @property
    def four_bit(self) -> bool:
        return self.bits == 4

    def weight_bytes(self, numel: int, out_features: int, double_quant: bool) -> tuple[int, int]:
        """(bytes of the weight as a parameter, bytes of its quant state beside it)."""
        if not self.four_bit:
            return numel, out_features * FLOAT32_BYTES
        packed = _ceil_div(numel, 2)
        blocks = _ceil_div(numel, BNB_4BIT_BLOCKSIZE)
        code = BNB_4BIT_CODE_ENTRIES * FLOAT32_BYTES
        if not double_quant:
            return packed, blocks * FLOAT32_BYTES + code
        nested_absmax = _ceil_div(blocks, BNB_NESTED_BLOCKSIZE) * FLOAT32_BYTES
        nested_code = BNB_DYNAMIC_CODE_ENTRIES * FLOAT32_BYTES
        return packed, blocks + code + nested_absmax + nested_code + FLOAT32_BYTES  # + the offset

    def kernel_fixed_bytes(self, largest_numel: int, compute_dtype_bytes: int, double_quant: bool) -> int:
        """What the matmul holds inside bitsandbytes' kernel whatever the tokens, for the largest layer:
        gemm_4bit dequantizes the weight to the compute dtype (double quantized: its absmax to float32
        first). LLM.int8 holds nothing of this kind."""
        if not self.four_bit:
            return 0
        absmax = _ceil_div(largest_numel, BNB_4BIT_BLOCKSIZE) * FLOAT32_BYTES if double_quant else 0
        return largest_numel * compute_dtype_bytes + absmax

    def kernel_bytes_per_token(self, widest_out_features: int, int8_matmuls: bool) -> int:
        """What the matmul holds inside the kernel per token: MatMul8bitLt's int8_scaled_mm makes an
        int32 product (tokens x out_features) for the widest layer; none when int8 runs through
        MatMul8bitFp (the CPU's training path: dequantize, then matmul) or for 4-bit."""
        if self.four_bit or not int8_matmuls:
            return 0
        return INT32_BYTES * widest_out_features

    def bnb_config_kwargs(self, compute_dtype: str, double_quant: bool) -> dict:
        """The keywords of transformers' BitsAndBytesConfig (the dtype by name: the caller makes it a
        torch dtype)."""
        if not self.four_bit:
            return {"load_in_8bit": True}
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": self.name,
            "bnb_4bit_use_double_quant": double_quant,
            "bnb_4bit_compute_dtype": compute_dtype,
        }


QUANTIZATIONS: dict[str, Quantization] = {
    q.name: q
    for q in (
        Quantization("int8", 8, "LLM.int8: int8 weights + a float32 scale per row"),
        Quantization("nf4", 4, "4-bit NormalFloat, blocks of 64 with a float32 absmax"),
        Quantization("fp4", 4, "4-bit float, blocks of 64 with a float32 absmax"),
    )
}
