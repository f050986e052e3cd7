"""The step's model as fake tensors, built and prepared as the profiler loads it (bitsandbytes layers
quantized by bitsandbytes' own functions, LoRA by peft), its optimizer, and the paths transformers and
bitsandbytes are made to take on fake CPU tensors: the ones a real eager run takes on the device
planned for. What of bitsandbytes is simulated and what is not: memprof.simulate's docstring.
"""

from __future__ import annotations

import contextlib

from memprof.simulate.spec import StepSpec
from memprof.step import make_optimizer as step_optimizer


def _swap_in_bitsandbytes_layers(model, setting) -> None:
    """Swap the linears bitsandbytes quantizes for its layers, on the meta device, as from_pretrained
    does: transformers' own `replace_with_bnb_linear` and skip rules (GPT-2's Conv1D becomes an
    (out, in) linear); `_fake_quantize` gives them their quantized weights."""
    import torch
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import HfQuantizer

    from memprof.settings import bnb_config, keep_gpu_weight_layout

    skip = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    # from_pretrained swaps with the load dtype as torch's default: the layers' biases take it
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, setting.dtype))
    try:
        replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=bnb_config(setting))
    finally:
        torch.set_default_dtype(default)
    keep_gpu_weight_layout(model)  # as memprof's real loads (memprof.settings)
    # what from_pretrained sets after loading; peft reads it to pick its bitsandbytes LoRA layers
    model.is_loaded_in_4bit = setting.four_bit
    model.is_loaded_in_8bit = not setting.four_bit


def _fake_quantize(model, mode) -> None:
    """Quantize every bitsandbytes layer's (meta) weight with bitsandbytes' own functions under `mode`.

    Their fake kernels give the packed weight and quant state (absmax, code, nested state; int8's
    SCB) their real shapes and dtypes. The weight becomes a plain fake Parameter carrying the
    attributes the layers read: a FakeTensor cannot become a Params4bit/Int8Params subclass.
    """
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import int8_vectorwise_quant, quantize_4bit

    # double quantization passes bitsandbytes' real 256-entry code table to its kernels: made here
    # (bitsandbytes caches it on first use; made under the mode it would read fake values)
    if "dynamic" not in bnb.functional.name2qmap:
        bnb.functional.name2qmap["dynamic"] = bnb.functional.create_dynamic_map()
    strict, mode.allow_non_fake_inputs = mode.allow_non_fake_inputs, True
    try:
        with mode:
            for module in model.modules():
                if isinstance(module, bnb.nn.Linear4bit):
                    w = module.weight
                    packed, state = quantize_4bit(
                        torch.empty(w.shape, dtype=torch.bfloat16),
                        blocksize=w.blocksize,
                        compress_statistics=w.compress_statistics,
                        quant_type=w.quant_type,
                        quant_storage=w.quant_storage,
                    )
                    p = torch.nn.Parameter(packed, requires_grad=False)
                    for name in ("blocksize", "compress_statistics", "quant_type", "quant_storage"):
                        setattr(p, name, getattr(w, name))
                    p.quant_state, p.bnb_quantized, p.module = state, True, module
                    module.quant_state = state
                    module._parameters["weight"] = p
                elif isinstance(module, bnb.nn.Linear8bitLt):
                    cb, scb, _ = int8_vectorwise_quant(torch.empty(module.weight.shape, dtype=torch.float16))
                    p = torch.nn.Parameter(cb, requires_grad=False)
                    p.CB, p.SCB, p.has_fp16_weights = cb, scb, False
                    module._parameters["weight"] = p
                    # LLM.int8()'s outlier columns are data-dependent (a dynamic size in the fake kernels):
                    # the simulation runs the decomposition-free path, see memprof.simulate's docstring
                    module.state.threshold = 0.0
    finally:
        mode.allow_non_fake_inputs = strict


def _fakeify(model, mode, device: str = "cpu") -> None:
    """Replace every parameter and buffer not fake yet by an uninitialised fake tensor of its shape and dtype."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor

    memo: dict[int, object] = {}
    with mode:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is None or isinstance(p, FakeTensor):  # bitsandbytes weights quantized under the mode
                    continue
                if id(p) not in memo:  # tied weights stay tied
                    memo[id(p)] = torch.nn.Parameter(
                        torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=p.requires_grad
                    )
                module._parameters[name] = memo[id(p)]
            for name, b in list(module._buffers.items()):
                if b is None:
                    continue
                if id(b) not in memo:
                    memo[id(b)] = torch.zeros(b.shape, dtype=b.dtype, device=device)
                module._buffers[name] = memo[id(b)]


def build_step_model(config: dict, spec: StepSpec, mode, *, trust_remote_code: bool = False):
    """The model of the step as fake tensors under `mode`, loaded and prepared as the profiler does.

    Built and prepared (LoRA, casts) on the meta device, then made fake: torch cannot move fake
    parameters between dtypes inside a module (`_apply` swaps tensors), which peft does.
    """
    from memprof.inventory import build_meta_model
    from memprof.libraries import import_library
    from memprof.settings import get_setting
    from memprof.step import weights_dtype

    import_library("peft")  # and bitsandbytes with it, its kernels compiled on first use (memprof.libraries)
    setting = get_setting(spec.setting)
    dtype = weights_dtype(setting.dtype, spec.precision)
    model = build_meta_model(config, dtype=dtype, trust_remote_code=trust_remote_code)
    if setting.quantized:
        _swap_in_bitsandbytes_layers(model, setting)
    model = prepare_step_model(model, spec)
    if setting.quantized:
        _fake_quantize(model, mode)
    _fakeify(model, mode)
    return model


def prepare_step_model(model, spec: StepSpec):
    """The profiler's preparation (memprof.step.prepare_model) of a loaded model, real or fake."""
    from memprof.settings import get_setting
    from memprof.step import prepare_model

    target = list(spec.target) if isinstance(spec.target, tuple) else spec.target
    return prepare_model(
        model,
        task="lora" if spec.task == "qlora" else spec.task,
        quantized=get_setting(spec.setting).quantized,
        lora_r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        target=target,
        grad_checkpointing=spec.grad_checkpointing,
    )


def make_optimizer(params, spec: StepSpec, mode=None):
    """The step's optimizer (memprof.step.make_optimizer), with AdamW foreach when planning for CUDA.

    bitsandbytes' 8-bit optimizers build their two 256-entry code tables (qmap1/qmap2, one pair per
    optimizer, shared by its parameters) from real values (`tolist()`) in the constructor: under a
    FakeTensorMode `mode` they are built outside it and then made fake. Their states are then made by
    bitsandbytes' own `init_state` in the first step, and updated by its fake kernels (see the optimizer
    paragraph of memprof.simulate's docstring).
    """
    if spec.optimizer == "adamw":
        return step_optimizer(params, spec.optimizer, foreach=True if spec.device == "cuda" else None)
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

    if not isinstance(mode, FakeTensorMode):
        return step_optimizer(params, spec.optimizer)
    with unset_fake_temporarily():
        optimizer = step_optimizer(params, spec.optimizer)
    optimizer.name2qmap = {name: mode.from_tensor(code) for name, code in optimizer.name2qmap.items()}
    return optimizer


@contextlib.contextmanager
def _bitsandbytes_paths(spec: StepSpec):
    """Take the Python path bitsandbytes takes on the device planned for; quiet its per-call log.

    The simulation's tensors are CPU tensors, for which bitsandbytes trains LLM.int8() layers through
    MatMul8bitFp (dequantize, then matmul); on CUDA it runs MatMul8bitLt (int8 matmuls of the
    quantized input, which it saves for backward).
    """
    import logging

    from memprof.settings import get_setting

    setting = get_setting(spec.setting)
    if not setting.quantized or setting.four_bit:  # LLM.int8() alone takes another path on CUDA
        yield
        return
    import bitsandbytes
    from bitsandbytes.autograd._functions import MatMul8bitLt, MatmulLtState

    original = bitsandbytes.matmul
    log = logging.getLogger("bitsandbytes.autograd._functions")
    level = log.level

    def matmul(A, B, out=None, state=None, threshold=0.0, bias=None):
        state = state or MatmulLtState()
        if threshold > 0.0:
            state.threshold = threshold
        return MatMul8bitLt.apply(A, B, out, bias, state)

    if spec.device == "cuda":
        bitsandbytes.matmul = matmul
    log.setLevel(logging.ERROR)  # "inputs will be cast from bfloat16 to float16", once per matmul
    try:
        yield
    finally:
        bitsandbytes.matmul = original
        log.setLevel(level)


@contextlib.contextmanager
def _eager_mask_paths():
    """Make transformers take the mask path a real eager run takes.

    transformers treats fake tensors like a compile trace and then always builds the (b, 1, s, s)
    packed-sequence mask, because it cannot read the position ids. A real eager run reads them and,
    for unpacked rows (the profiler's input: one sequence per row, default positions), finds no
    packing and builds no mask. The simulated inputs are unpacked, so the answer is known: None.
    """
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original
