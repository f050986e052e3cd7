"""The load settings (fp32 ... nf4-dq) as plain data.

A setting says how `from_pretrained` is called: the dtype of the tensors that stay unquantized and,
for the bitsandbytes settings, which quantization (memprof.quant: its bytes, kernel transients and
`BitsAndBytesConfig`) with or without double quantization. Nothing here imports torch;
`bnb_config()` does, lazily, when a real load needs the config object.
"""

from __future__ import annotations

from dataclasses import dataclass

from memprof.errors import SettingError
from memprof.options import comma_list
from memprof.quant import QUANTIZATIONS, Quantization

# Bytes per element of the dtypes that appear in model inventories.
DTYPE_BYTES = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


@dataclass(frozen=True)
class Setting:
    """One way of loading a model."""

    name: str
    dtype: str  # dtype of every tensor that is not quantized (embeddings, norms, lm_head, biases)
    quant: str | None = None  # None or a key of memprof.quant.QUANTIZATIONS: "int8", "nf4", "fp4"
    double_quant: bool = False
    description: str = ""

    @property
    def quantized(self) -> bool:
        return self.quant is not None

    @property
    def quantization(self) -> Quantization | None:
        return QUANTIZATIONS[self.quant] if self.quant else None

    @property
    def four_bit(self) -> bool:
        return self.quantized and self.quantization.four_bit

    def with_dtype(self, dtype: str) -> Setting:
        """The same setting with another dtype for the unquantized tensors (and 4-bit compute)."""
        if dtype not in FLOAT_DTYPES:
            raise SettingError(f"unknown dtype {dtype!r}; use one of {', '.join(FLOAT_DTYPES)}")
        if not self.quantized:
            return self
        return Setting(self.name, dtype, self.quant, self.double_quant, self.description)


FLOAT_DTYPES = ("float32", "float16", "bfloat16")

SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("fp32", "float32", description="float32 weights"),
        Setting("fp16", "float16", description="float16 weights"),
        Setting("bf16", "bfloat16", description="bfloat16 weights"),
        Setting("int8", "bfloat16", "int8", description="bitsandbytes LLM.int8 (int8 weights + row scales)"),
        Setting("nf4", "bfloat16", "nf4", description="bitsandbytes 4-bit NormalFloat, bf16 compute"),
        Setting(
            "nf4-dq",
            "bfloat16",
            "nf4",
            double_quant=True,
            description="nf4 with double quantization of the absmax constants, bf16 compute",
        ),
        Setting("fp4", "bfloat16", "fp4", description="bitsandbytes 4-bit float, bf16 compute"),
    )
}

DEFAULT_SETTINGS = ("fp32", "bf16", "int8", "nf4", "nf4-dq")

DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "float": "float32", "half": "float16"}


def parse_dtype(text: str) -> str:
    """'bf16' or 'bfloat16' -> 'bfloat16'."""
    if not isinstance(text, str):
        raise SettingError(f"a dtype is a name, one of fp32, fp16, bf16, not {text!r}")
    dtype = DTYPE_ALIASES.get(text.strip().lower(), text.strip().lower())
    if dtype not in FLOAT_DTYPES:
        raise SettingError(f"unknown dtype {text!r}; use one of fp32, fp16, bf16")
    return dtype


def get_setting(name: str) -> Setting:
    if not isinstance(name, str):
        raise SettingError(f"a setting is a name, one of {', '.join(SETTINGS)}, not {name!r}")
    try:
        return SETTINGS[name.strip().lower()]
    except KeyError:
        raise SettingError(f"unknown setting {name!r}; use one of {', '.join(SETTINGS)}") from None


def parse_settings(text: str | None, *, dtype: str | None = None) -> tuple[Setting, ...]:
    """'fp32,nf4-dq' -> the Settings, in the given order, without repeats.

    `dtype` replaces the bf16 default of the quantized settings' unquantized tensors.
    """

    def parse(name) -> Setting:
        try:
            setting = get_setting(name)
        except SettingError as exc:
            raise SettingError(f"{exc} (or a comma-separated list of them)") from None
        return setting if dtype is None else setting.with_dtype(parse_dtype(dtype))

    empty = SettingError(f"no setting given; use one or more of {', '.join(SETTINGS)}")
    return comma_list(DEFAULT_SETTINGS if text is None else text, parse, empty=empty)


def bnb_config(setting: Setting):
    """The `transformers.BitsAndBytesConfig` for a quantized setting, else None. Imports torch."""
    if not setting.quantized:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = setting.quantization.bnb_config_kwargs(setting.dtype, setting.double_quant)
    if "bnb_4bit_compute_dtype" in kwargs:
        kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
    return BitsAndBytesConfig(**kwargs)


# bitsandbytes 0.50 branches on the CPU it runs on: on CPUs with AVX512-BF16 (Zen 4, Sapphire
# Rapids and later), `Linear4bit.forward` in eval mode with an input that needs no grad repacks the
# 4-bit weight into a CPU-only layout (`_convert_weight_packed_for_cpu`): it rewrites `weight.data`
# and the quant state (double quantization's absmax becomes float32, so the true bytes change),
# asserts out_features % 32 == 0, and leaves a model that a later training step cannot run. No GPU
# ever holds that layout. memprof keeps it out of every load it measures and every model it
# simulates, so a CPU measurement stands for what a GPU holds, the same on every CPU.
CPU_REPACKING_NOTE = (
    "bitsandbytes' CPU-only repacking of 4-bit weights (AVX512-BF16 CPUs) is off: the CPU holds "
    "the weights in the layout a GPU holds"
)


def keep_gpu_weight_layout(model) -> int:
    """Turn off bitsandbytes' AVX512-BF16 CPU repacking on every 4-bit layer of `model`.

    The switch is the layer's own `support_avx512bf16_for_cpu`, which `Linear4bit.__init__` sets
    from the CPU and `forward` reads. Returns the number of layers switched (0 when the model has
    none, or bitsandbytes is not imported: then nothing can have made such a layer)."""
    import sys

    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return 0
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)
