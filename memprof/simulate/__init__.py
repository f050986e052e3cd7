"""Simulate one training or inference step on fake tensors and count its live bytes and FLOPs exactly.

The step is the one `memprof profile` runs (measure/profile_worker.py): the transformers model at
the setting's dtype, peft LoRA (r, alpha, targets, dropout 0) or every parameter trainable,
`torch.optim.AdamW(trainable, lr=1e-5)`, then `zero_grad(set_to_none=True)`, forward with labels,
backward, `optimizer.step()`; for inference `model(input_ids, use_cache=False)` under no_grad, or
prefill + one decode step with the KV cache when new tokens are asked for. It runs under
`FakeTensorMode` on the CPU: no memory is allocated and no arithmetic is done, but every op's
output shapes, dtypes and lifetimes are real, so `LiveBytesTracker` sees the exact live bytes and
`FlopCounterMode` the exact FLOPs, for any architecture, attention implementation, gradient
checkpointing, sequence length and LoRA targets. The peak is measured on the second step (the
first one creates AdamW's states), tracking what the profiler tracks, so on the CPU the simulation
equals the profiler's measured live-tensor peak (tests/test_simulate.py proves it).

bitsandbytes layers are simulated for real: transformers swaps them in as from_pretrained does, each
weight is quantized by bitsandbytes' own functions under FakeTensorMode (its fake kernels give the
packed weight and quant state their real shapes), and the step runs its real autograd functions
(MatMul4Bit, MatMul8bitLt on CUDA / MatMul8bitFp on the CPU) and peft's bitsandbytes LoRA layers.

bitsandbytes' 8-bit AdamW (`--optimizer adamw8bit`, `paged_adamw8bit`) runs for real too: its own
`init_state` makes the states in the warm-up step (uint8 state1/state2 and float32 absmax1/absmax2
per 256-element block for tensors of at least `min_8bit_size` = 4,096 elements, float32 state1/state2
below that; the two 256-entry float32 code tables qmap1/qmap2 are one pair per optimizer, shared by
all its parameters), and its update is bitsandbytes' fake kernel, which allocates nothing, like the
fused CUDA kernel. Its CPU kernel is Python whose float32 working copies live inside the op, where no
dispatch mode sees them: the profiler's tracker does not count them either. Paged states are made as
on the CPU (the simulation's tensors are CPU tensors): ordinary tensors of the same bytes.

What the simulation cannot see:
- Inside bitsandbytes' kernels: gemm_4bit dequantizes the weight to the compute dtype, and
  int8_scaled_mm makes an int32 product, in buffers no trace sees (plan.py adds them:
  `dequant_transient_bytes`). LLM.int8()'s outlier decomposition depends on the data (the fake
  kernels give it a dynamic size), so int8 runs without it: its outlier columns are not counted.
- The CUDA caching allocator (fragmentation, block rounding), kernel workspaces (cuBLAS,
  flash-attention) and the CUDA context: they are not tensors. The context is a per-GPU constant
  in catalog/gpus.json; fragmentation is not modelled (see plan notes).
- CUDA-only kernel choices: the simulation runs CPU dispatch. AdamW's CUDA default (foreach) is
  reproduced by passing foreach=True when planning for CUDA; scaled_dot_product_attention's
  CUDA backends (flash / memory-efficient) are not, the CPU flash kernel's tensors are traced.

Scaling: a step's live bytes at any moment are sums of tensors whose sizes are products of
{1, b} and {1, s, s^2} (batch appears at most once in a shape, sequence at most twice: attention
scores and masks), so each moment's bytes are exactly a polynomial in the basis FIT_BASIS. A
phase's peak is the largest of its moments, and which moment is largest changes with (b, s) (e.g.
the logits' grads for long inputs, the embedding's grads for short ones), so `fit` solves every
moment's polynomial from 6 simulated points (the moments line up: the same ops run at every
(b, s) >= 2) and takes the largest at the point asked for; moments no (b, s) can make the largest
are pruned first. Phases are split into regions (`_Regions`: LM head, top and bottom layers,
embeddings) so that moments line up across depths too. Batch 1 can take other ops than larger
batches (views instead of copies); it gets its own fit where it does. `ModelFit.fit_error_bytes`
reports the error at a point the fit was not solved on. Depth: with identical layers (or identical
groups of `layer_types`), every category of bytes and the FLOPs are affine in the layer count, so a
70B model is simulated at 2 and 3 layers (or groups; depth 1 is a special case) and extrapolated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import metadata

from memprof.inventory import config_key
from memprof.io import cache_dir, write_json_atomic
from memprof.settings import get_setting
from memprof.simulate.config import (
    LAYER_ATTRIBUTE_KEYS,
    layer_count,
    layer_period,
    max_positions,
    seq_ranges,
    sliding_window,
    with_layers,
)
from memprof.simulate.fit import (
    StepFit,
    _peak_error,
    check_point,
    extrapolate,
    fit,
    fit_points,
    prune_moments,
)
from memprof.simulate.spec import CATEGORIES, OPTIMIZERS, TASKS, PhasePeak, Simulation, StepSpec
from memprof.step import autocast as step_autocast
from memprof.step import make_optimizer as step_optimizer
from memprof.step import train_step

SIM_FORMAT = 10  # 9: FLOPs count the CPU attention kernel; 10: loss lives through the optimizer, --precision


# ---------------------------------------------------------------------------------------------
# building the step (mirrors profile_worker._train; see the module docstring)


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
    model.is_loaded_in_4bit = setting.quant != "int8"
    model.is_loaded_in_8bit = setting.quant == "int8"


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
                    # the simulation runs the decomposition-free path, see the module docstring
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
    from memprof.settings import get_setting
    from memprof.step import weights_dtype

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
    bitsandbytes' own `init_state` in the first step, and updated by its fake kernels (see the module
    docstring's optimizer paragraph).
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


# ---------------------------------------------------------------------------------------------
# tracking


def _model_parts(model, optimizer=None) -> dict[str, list]:
    from memprof.step import model_parts

    return model_parts(model, optimizer)


def _moment_tracker():
    """A LiveBytesTracker that calls `on_op()` after every op it counts (the recorder's sampler)."""
    from memprof.measure.tracker import LiveBytesTracker

    class MomentTracker(LiveBytesTracker):
        on_op = None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = super().__torch_dispatch__(func, types, args, kwargs)
            if self.on_op is not None:
                self.on_op()
            return out

    return MomentTracker()


def _flop_counter():
    """A dispatch mode adding up the FLOPs of the ops it sees, in `flops`, with the table profile
    counts with (measure.flops: torch's formulas, bitsandbytes' matmuls, CPU attention).

    Unlike FlopCounterMode it does not track modules: that registers grad hooks which hold grads
    until a module's backward is done, changing the live bytes the tracker counts in the same step.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    from memprof.measure.flops import flop_registry

    registry = flop_registry()

    class FlopCount(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += int(formula(*args, **kwargs, out_val=out))
            return out

    return FlopCount()


class _PhaseRecorder:
    """Per-region peaks with the breakdown at each peak, and every moment's live bytes, on one tracker.

    A phase is one region unless `_Regions` splits it: each kept region's peak and its breakdown
    become one PhasePeak, and its moments (live bytes at its start and after each op; the peak is
    their maximum) go to Simulation.moments with the grads and KV-cache bytes where they change.
    """

    def __init__(self, tracker, categories, *, kv_bytes=None) -> None:
        self.tracker = tracker
        self.categories = categories  # () -> dict[str, tensors]; called at the end of each region
        self.kv_bytes = kv_bytes  # () -> KV-cache bytes now (generation), or None
        self.phases: list[PhasePeak] = []
        self.moments: dict[str, dict[str, list[int]]] = {}
        self.region: str | None = None  # the region being recorded; None outside a phase
        self.keep = True
        self._grads: dict[int, int] = {}  # id(param) -> bytes of its grad, kept by grad hooks
        self._grads_bytes = 0
        self._samples: list[tuple[int, int, int]] = []
        tracker.on_op = self._sample

    def grad_hooks(self, params) -> list:
        """Hooks that keep the bytes of the grads made so far (what backward's moments hold as grads)."""

        def hook(p) -> None:
            nbytes = p.grad.untyped_storage().nbytes() if p.grad is not None else 0
            self._grads_bytes += nbytes - self._grads.get(id(p), 0)
            self._grads[id(p)] = nbytes

        return [p.register_post_accumulate_grad_hook(hook) for p in params]

    def _sample(self) -> None:
        if self.region is not None:
            kv = self.kv_bytes() if self.kv_bytes is not None else 0
            self._samples.append((int(self.tracker.current_bytes), self._grads_bytes, kv))

    def _start(self, name: str, keep: bool) -> None:
        self.tracker.reset_peak()
        self.region, self.keep = name, keep
        self._samples = []
        self._sample()

    @contextlib.contextmanager
    def phase(self, name: str, held: dict | None = None):
        """`held`: categories taken before the phase (tensors it frees, e.g. zero_grad's grads), kept
        alive until the breakdown is taken so they are classified; released before the next phase."""
        self._start(name, True)
        yield
        self._close(held)
        self.region = None

    def split(self, name: str, *, keep: bool = True) -> None:
        """End the current region now (its peak and breakdown) and go on recording as region `name`;
        a region started with keep=False is not recorded."""
        if self.region is None or self.region == name:
            return
        self._close(None)
        self._start(name, keep)

    def _close(self, held: dict | None) -> None:
        if not self.keep:
            return
        breakdown = self.tracker.breakdown_at_peak(held if held is not None else self.categories())
        breakdown["activations_temporaries"] = breakdown.pop("other")
        full = {c: int(breakdown.get(c, 0)) for c in CATEGORIES}
        self.phases.append(PhasePeak(self.region, int(self.tracker.peak_bytes), full))
        total, grads, kv = (list(series) for series in zip(*self._samples, strict=True))
        # a series that does not change within the region is kept as its one value
        self.moments[self.region] = {
            name: values if len(set(values)) > 1 else values[:1]
            for name, values in (("total", total), ("grads", grads), ("kv_cache", kv))
        }


def _decoder_layers(model, count: int):
    """The ModuleList of the model's `count` decoder layers (all of one class), or None."""
    import torch

    for module in model.modules():
        same_class = isinstance(module, torch.nn.ModuleList) and len({type(m) for m in module}) == 1
        if same_class and count and len(module) == count:
            return module
    return None


class _Regions:
    """Split forward and backward into regions whose peak stays at one moment across (batch, seq).

    A phase's peak is the largest of its moments' live bytes. Each moment's bytes is a polynomial in
    FIT_BASIS, but which moment is the largest can change with (batch, seq), and a maximum of
    polynomials is not one: e.g. a full fine-tune's backward peaks at the logits' grads (~b*s*vocab)
    for long inputs and at the embedding's backward (every grad live) for short ones. So the peak is
    recorded per region and each region is fitted on its own:

    - forward: layers (embeddings and decoder layers; saved activations only grow, so the top layer
      holds the peak) | forward: lm head (logits and loss)
    - backward: loss (down to the logits' grad) | backward: lm head | backward: top layers (the last
      `period` layers, the first ones backward runs through: most activations still live) |
      backward: bottom layers (the first `period` layers: most grads live) | backward: embeddings
      (when their output needs a grad).

    The layers between top and bottom are not recorded: with identical layers (or groups of
    `period` layers) a moment's bytes are affine in the layer's index (activations freed and grads
    made at a constant rate per layer), so their peak is at most the top's or the bottom's.
    """

    def __init__(self, model, rec: _PhaseRecorder, *, layers: int = 0, period: int = 1) -> None:
        self.rec = rec
        self.head = model.get_output_embeddings()
        self.embed = model.get_input_embeddings()
        stack = _decoder_layers(model, layers) if layers >= 2 * period else None
        # (layer, region its input's grad hook starts): backward reaches a layer's input once it is done with it
        self.boundaries = []
        if stack is not None:
            after_top = "backward: bottom layers" if layers == 2 * period else "backward: middle layers"
            self.boundaries.append((stack[layers - period], after_top))
            if layers > 2 * period:
                self.boundaries.append((stack[period], "backward: bottom layers"))
        self.after_head = "backward: top layers" if stack is not None else "backward: layers"
        self.handles: list = []

    def __enter__(self) -> _Regions:
        if self.head is not None:
            self.handles.append(self.head.register_forward_pre_hook(self._head_pre))
            self.handles.append(self.head.register_forward_hook(self._head_post))
        if self.embed is not None:
            self.handles.append(self.embed.register_forward_hook(self._embed_post))
        for layer, region in self.boundaries:
            self.handles.append(layer.register_forward_pre_hook(self._layer_pre(region), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def first(self, phase: str) -> str:
        """The name of the phase's first region."""
        if self.head is None:
            return phase
        return "backward: loss" if phase == "backward" else f"{phase}: layers"

    def _in_forward_layers(self) -> bool:
        return self.rec.region in ("forward: layers", "prefill: layers", "decode: layers")

    def _on_grad(self, tensor, region: str, *, keep: bool = True) -> None:
        if getattr(tensor, "requires_grad", False):
            tensor.register_hook(lambda grad: self.rec.split(region, keep=keep))

    def _head_pre(self, module, args) -> None:
        if not self._in_forward_layers():
            return
        self.rec.split(f"{self.rec.region.split(':')[0]}: lm head")
        self._on_grad(args[0] if args else None, self.after_head)

    def _head_post(self, module, args, out) -> None:
        if self.rec.region == "forward: lm head":
            self._on_grad(out, "backward: lm head")

    def _embed_post(self, module, args, out) -> None:
        if self.rec.region == "forward: layers":
            self._on_grad(out, "backward: embeddings")

    def _layer_pre(self, region: str):
        def hook(module, args, kwargs) -> None:
            if self.rec.region == "forward: layers":  # not the recomputation of gradient checkpointing
                x = args[0] if args else kwargs.get("hidden_states")
                self._on_grad(x, region, keep=region != "backward: middle layers")

        return hook


@contextlib.contextmanager
def _bitsandbytes_paths(spec: StepSpec):
    """Take the Python path bitsandbytes takes on the device planned for; quiet its per-call log.

    The simulation's tensors are CPU tensors, for which bitsandbytes trains LLM.int8() layers through
    MatMul8bitFp (dequantize, then matmul); on CUDA it runs MatMul8bitLt (int8 matmuls of the
    quantized input, which it saves for backward).
    """
    import logging

    from memprof.settings import get_setting

    if get_setting(spec.setting).quant != "int8":
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


def _cache_tensors(cache) -> list:
    if cache is None:
        return []
    out = []
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "untyped_storage"):
                out.append(t)
    return out


class StepSimulator:
    """One fake model of `layers` layers, reused for steps at several (batch, seq)."""

    def __init__(
        self, config: dict, spec: StepSpec, *, layers: int, trust_remote_code: bool = False, real_model=None
    ) -> None:
        """`real_model`: run the same step on this prepared real model instead (for equality tests)."""
        import torch
        from torch._subclasses.fake_tensor import FakeTensorMode
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        self.config = with_layers(config, layers)
        self.spec = spec
        self.layers = layers
        self.period = layer_period(self.config)
        self.vocab = int(self.config.get("vocab_size", 2))
        if real_model is not None:
            self.mode = contextlib.nullcontext()
            self.model = real_model
        else:
            self.mode = FakeTensorMode()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. peft's deprecated is_gradient_checkpointing lookup
                self.model = build_step_model(self.config, spec, self.mode, trust_remote_code=trust_remote_code)
        self.optimizer = None
        self._warmed_up = False
        if spec.task == "infer":
            self.model.eval()
        else:
            self.model.train()
            with self.mode:
                trainable = [p for p in self.model.parameters() if p.requires_grad]
                self.optimizer = make_optimizer(trainable, spec, self.mode)
        self._torch = torch

    def _ids(self, batch: int, seq: int):
        with self.mode:
            return self._torch.randint(0, self.vocab, (batch, seq))

    def run(self, batch: int, seq: int) -> Simulation:
        """Simulate the step at (batch, seq), counting its FLOPs as it runs.

        Training: the first run on this simulator warms up with one step (AdamW creates its states
        in it); later runs start from the state the previous one left (params, grads, AdamW states:
        the same tensors whatever the shape), so each point costs one step.
        """
        torch = self._torch
        ids = self._ids(batch, seq)
        model, optimizer = self.model, self.optimizer
        counter = _flop_counter()
        with self.mode, _eager_mask_paths(), _bitsandbytes_paths(self.spec), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers/peft deprecations are not the user's business
            if self.spec.task != "infer":
                compute = get_setting(self.spec.setting).dtype
                if not self._warmed_up:
                    train_step(model, optimizer, ids, precision=self.spec.precision, compute_dtype=compute)
                    self._warmed_up = True
                with counter, _moment_tracker() as tracker:
                    rec = _PhaseRecorder(tracker, lambda: {**_model_parts(model, optimizer), "inputs": [ids]})
                    tracker.track(*_model_parts(model, optimizer).values(), ids)
                    held = {**_model_parts(model, optimizer), "inputs": [ids]}
                    with rec.phase("zero_grad", held):  # the last moment the previous step's grads are live
                        optimizer.zero_grad(set_to_none=True)
                    held.clear()  # the grads are freed here, before the forward phase
                    hooks = rec.grad_hooks(p for p in model.parameters() if p.requires_grad)
                    with _Regions(model, rec, layers=self.layers, period=self.period) as regions:
                        with (
                            rec.phase(regions.first("forward")),
                            step_autocast(self.spec.precision, compute, ids.device.type),
                        ):
                            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                        with rec.phase(regions.first("backward")):
                            loss.backward()
                    for hook in hooks:
                        hook.remove()
                    with rec.phase("optimizer"):
                        optimizer.step()
                    del loss  # held through the update, as in step.train_step (a training loop logs it)
                flops = counter.flops
            elif self.spec.new_tokens == 0:
                # the profiler's forward: no_grad, no cache, logits for every position
                with counter, _moment_tracker() as tracker:
                    rec = _PhaseRecorder(tracker, lambda: {**_model_parts(model), "inputs": [ids]})
                    tracker.track(*_model_parts(model).values(), ids)
                    with (
                        _Regions(model, rec, layers=self.layers, period=self.period) as regions,
                        rec.phase(regions.first("forward")),
                        torch.no_grad(),
                    ):
                        model(input_ids=ids, use_cache=False)
                flops = counter.flops
            else:
                rec, flops = self._generate(batch, seq, ids, counter)
        return Simulation(self.layers, batch, seq, tuple(rec.phases), int(flops), rec.moments)

    def _generate(self, batch: int, seq: int, ids, counter):
        """Prefill `seq` tokens into a KV cache, grow the cache by new_tokens - 1, decode one token.

        The cache grows through its own `update()` (so sliding-window layers keep what they keep);
        the last decode step, the largest, runs for real. Logits for the last position only, as
        `generate()` asks for them.
        """
        from transformers import DynamicCache

        torch = self._torch
        model = self.model
        state: dict = {}

        def kv_bytes() -> int:
            storages = {
                t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in _cache_tensors(state.get("cache"))
            }
            return sum(storages.values())

        with counter, _moment_tracker() as tracker:
            rec = _PhaseRecorder(
                tracker,
                lambda: {**_model_parts(model), "inputs": [ids], "kv_cache": _cache_tensors(state.get("cache"))},
                kv_bytes=kv_bytes,
            )
            tracker.track(*_model_parts(model).values(), ids)
            with torch.no_grad(), _Regions(model, rec, layers=self.layers, period=self.period) as regions:
                # the cache the model would create itself, made first so that its tensors are classified
                # as KV cache in every region of the prefill
                state["cache"] = DynamicCache(config=model.config)
                with rec.phase(regions.first("prefill")):
                    model(input_ids=ids, past_key_values=state["cache"], use_cache=True, logits_to_keep=1)
                prefill_flops = counter.flops
                grow = self.spec.new_tokens - 1
                cache = state["cache"]
                if grow > 0:
                    for i, layer in enumerate(cache.layers):
                        k, v = layer.keys, layer.values
                        shape = (k.shape[0], k.shape[1], grow, k.shape[3])
                        cache.update(
                            torch.empty(shape, dtype=k.dtype), torch.empty(shape[:3] + (v.shape[3],), dtype=v.dtype), i
                        )
                step_ids = ids[:, -1:]
                with rec.phase(regions.first("decode")):
                    model(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)

        # FLOPs of the whole generation: prefill + new_tokens decode steps, each costed at the last
        # (longest-cache) step: an upper bound within one step's attention FLOPs per token.
        return rec, prefill_flops + self.spec.new_tokens * (counter.flops - prefill_flops)


# ---------------------------------------------------------------------------------------------
# the cached entry point


def _versions() -> dict:
    """What a cached simulation depends on besides config and spec: memprof's own code (its version)
    and every library whose modules the step runs (bitsandbytes: the quantized settings' layers)."""
    from memprof import version  # at call time, so a test can change the version

    out = {"format": SIM_FORMAT, "memprof": version.__version__}
    for dist in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cache_key(config: dict, spec: StepSpec, kind: str, extra: dict) -> tuple[str, dict]:
    """A cache entry's file name and the payload it is the digest of (kept in the entry, so a shipped
    one can be checked against the versions and spec it was made for)."""
    payload = {"config": config_key(config), "spec": spec.key(), "kind": kind, **extra, **_versions()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    return f"{digest}.json", payload


def _cache_path(config: dict, spec: StepSpec, kind: str, extra: dict):
    return cache_dir() / "simulations" / _cache_key(config, spec, kind, extra)[0]


def _entries(name: str) -> Iterator[dict]:
    """The cache entry `name` from the user's cache, then from the simulations shipped for the catalog
    (catalog/simulations: what a default `memprof plan` of each catalog model leaves in the cache,
    made by `python -m memprof.catalog.regenerate`). The name is the digest of the whole key
    (config, spec, points, memprof/torch/transformers/peft/bitsandbytes versions): an entry is only
    ever read for exactly the key it was made for."""
    from memprof.catalog import SIMULATIONS_DIR

    for folder in (cache_dir() / "simulations", SIMULATIONS_DIR):
        path = folder / name
        if path.is_file():
            with contextlib.suppress(ValueError, OSError):
                yield json.loads(path.read_text())


def _read_entry(name: str) -> dict | None:
    return next(_entries(name), None)


def _write_entry(name: str, data: dict) -> None:
    with contextlib.suppress(OSError):  # a read-only cache only costs the recomputation
        write_json_atomic(cache_dir() / "simulations" / name, data)


@dataclass(frozen=True)
class ModelFit:
    """The step of the whole model at any (batch, seq): a fit per simulated depth, extrapolated in depth."""

    layers: int
    simulated_layers: tuple[int, ...]
    fits: tuple[StepFit, ...]  # one per simulated depth
    # the step at the requested (batch, seq): a direct simulation (extrapolated in depth), or with
    # from_fit the fit's value there
    direct: Simulation
    fit_error_bytes: int  # |fit - simulation| at points the fit was not solved on, max over phases
    from_cache: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    seq_range: tuple[int, int] = (1, 1 << 20)  # the prompt lengths the fit holds for (seq_ranges)
    # `direct` is the fit's value, not a simulation of that point: an earlier simulation's fit (of the
    # same config and spec) holds for this (batch, seq) and was exact at its check point
    # (fit_error_bytes 0); also for seq < 4, which is always read off the fit
    from_fit: bool = False
    # the (batch, seq) whose simulation made the fits (the requested one, unless from_fit)
    fitted_at: tuple[int, int] = (0, 0)
    # the batch >= 2 fit's error at its check point (part of fit_error_bytes), with every phase's
    # breakdown fitted category by category counted too (what a from_fit answer reports)
    check_error_bytes: int = 0
    # batch 1 against the batch >= 2 fit at the requested seq (part of fit_error_bytes); None where
    # that was not checked (fitted at batch >= 2, or batch 1 has its own fit)
    batch1_error_bytes: int | None = None

    def at(self, batch: int, seq: int) -> Simulation:
        """The fitted step at (batch, seq) with `layers` layers (each depth's fit, extrapolated exactly)."""
        sims = [f.at(batch, seq) for f in self.fits]
        return sims[0] if len(sims) == 1 else extrapolate(sims[0], sims[1], self.layers)

    def breakdown_at(self, batch: int, seq: int) -> Simulation | None:
        """The step at (batch, seq) from every phase's breakdown at its peak fitted category by category
        (what a direct simulation reports), where that agrees with the moments' fit on every phase's
        peak; None where it does not (the peak moved to another moment)."""
        plain = replace(self, fits=tuple(_breakdown_only(f) for f in self.fits)).at(batch, seq)
        moments = self.at(batch, seq)
        if [p.peak_bytes for p in plain.phases] != [p.peak_bytes for p in moments.phases]:
            return None
        return plain

    @property
    def batch1_exact(self) -> bool:
        """Whether batch 1 is exactly on the batch >= 2 fit: it was simulated at batch 1, and the fit
        missed it by 0 bytes."""
        return self.batch1_error_bytes == 0


@dataclass(frozen=True)
class _Request:
    """What a fit at (batch, seq) is made from: the depths, the fitted range, its points."""

    batch: int
    seq: int
    total_layers: int
    depths: tuple[int, ...]
    seq_range: tuple[int, int]
    points: tuple[tuple[int, int], ...]
    check: tuple[int, int]
    requested: tuple[int, int]
    batch1: tuple[tuple[int, int], ...]

    @classmethod
    def make(cls, config: dict, spec: StepSpec, batch: int, seq: int, total_layers: int) -> _Request:
        period = layer_period(config)
        # Depth 1 is a special case (e.g. generation's peak moves), so 2 and 3 periods; shallow models directly.
        depths = (2 * period, 3 * period) if total_layers > 3 * period else (total_layers,)
        ranges = seq_ranges(config, spec.new_tokens)
        lo, hi = next((r for r in ranges if r[0] <= seq <= r[1]), ranges[-1])
        points = fit_points(batch, seq, lo, hi)
        batch1 = tuple((1, s) for s in sorted({s for _, s in points})) if batch == 1 else ()
        return cls(
            batch, seq, total_layers, depths, (lo, hi), points, check_point(points), (batch, max(4, seq)), batch1
        )

    def key_extra(self) -> dict:
        """The key of this request's simulations (the format of SIM_FORMAT 10's cache)."""
        return {
            "depths": list(self.depths),
            "points": [list(p) for p in self.points],
            "check": list(self.check),
            "batch": self.batch,
        }

    def index_extra(self) -> dict:
        """The key of the fits made for this range at these depths, whatever (batch, seq) made them."""
        return {"depths": list(self.depths), "seq_range": list(self.seq_range)}


def _breakdown_only(step_fit: StepFit) -> StepFit:
    batch1 = _breakdown_only(step_fit.batch1) if step_fit.batch1 is not None else None
    return replace(step_fit, moment_coefficients={}, batch1=batch1)


def _breakdown_error(fitted: Simulation | None, direct: Simulation) -> int:
    if fitted is None:
        return max(p.peak_bytes for p in direct.phases)
    return max(
        abs(p.breakdown[c] - q.breakdown[c])
        for p, q in zip(fitted.phases, direct.phases, strict=True)
        for c in CATEGORIES
    )


def _model_fit(data: dict, req: _Request) -> ModelFit:
    """The fits and the direct answer from a request's simulations (`data`, a cache entry)."""
    depths = req.depths
    per_depth = [
        {(d["batch"], d["seq"]): Simulation.from_json(d) for d in data["per_depth"][str(depth)]} for depth in depths
    ]
    points, check, requested, batch1 = req.points, req.check, req.requested, req.batch1
    own_batch1 = bool(batch1) and all(p in per_depth[0] for p in batch1)
    fits = tuple(fit([sims[p] for p in points], [sims[p] for p in batch1] if own_batch1 else ()) for sims in per_depth)

    def simulated(point) -> Simulation:
        if len(depths) == 1:
            return per_depth[0][point]
        return extrapolate(per_depth[0][point], per_depth[1][point], req.total_layers)

    model_fit = ModelFit(
        req.total_layers,
        depths,
        fits,
        simulated(requested),
        0,
        seq_range=req.seq_range,
        fitted_at=(req.batch, req.seq),
    )
    err = _peak_error(model_fit.at(*check), simulated(check))
    check_err = max(err, _breakdown_error(model_fit.breakdown_at(*check), simulated(check)))
    batch1_err = None
    if req.batch == 1 and not own_batch1:  # batch 1 from the batch >= 2 fit: its error counts too
        batch1_err = _peak_error(model_fit.at(*requested), simulated(requested))
        err = max(err, batch1_err)
    fits = tuple(replace(f, max_fit_error_bytes=err, check_points=(check,)) for f in fits)
    model_fit = replace(
        model_fit, fits=fits, fit_error_bytes=err, check_error_bytes=check_err, batch1_error_bytes=batch1_err
    )
    if req.seq >= 4:
        return replace(model_fit, direct=simulated(requested))
    return replace(model_fit, direct=model_fit.at(req.batch, req.seq), from_fit=True)


def _from_an_exact_fit(config: dict, spec: StepSpec, req: _Request) -> ModelFit | None:
    """The requested step read off a fit made earlier for the same config, spec, depths and range
    (listed in the cache's index of them, or the shipped one), where that fit is exact: it missed its
    check point by 0 bytes, and for batch 1 it was made at batch 1 and missed batch 1 by 0 bytes."""
    name, _ = _cache_key(config, spec, "fits", req.index_extra())
    for index in _entries(name):
        for entry in index.get("fits", ()):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if entry["check_error_bytes"] != 0 or (req.batch == 1 and not entry["batch1_exact"]):
                    continue
                made = _Request.make(config, spec, int(entry["batch"]), int(entry["seq"]), req.total_layers)
                if made.depths != req.depths or made.seq_range != req.seq_range:
                    continue
                data = _read_entry(_cache_key(config, spec, "fit", made.key_extra())[0])
                if data is None:
                    continue
                model_fit = _model_fit(data, made)
                if model_fit.check_error_bytes != 0 or (req.batch == 1 and not model_fit.batch1_exact):
                    continue  # the entry's own simulations decide, not the index
                direct = model_fit.breakdown_at(req.batch, req.seq)
                if direct is None:
                    continue
                return replace(model_fit, direct=direct, from_cache=True, from_fit=True)
    return None


def _index_fit(config: dict, spec: StepSpec, req: _Request, model_fit: ModelFit) -> None:
    """Add a fit just made to the cache's index of the fits of its range (see _from_an_exact_fit)."""
    name, payload = _cache_key(config, spec, "fits", req.index_extra())
    path = cache_dir() / "simulations" / name
    fits = []
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            fits = [e for e in json.loads(path.read_text())["fits"] if [e["batch"], e["seq"]] != [req.batch, req.seq]]
    entry = {"batch": req.batch, "seq": req.seq, "check_error_bytes": model_fit.check_error_bytes}
    fits.append({**entry, "batch1_exact": model_fit.batch1_exact})
    _write_entry(name, {"fits": fits, "key": payload})


def simulate_model(
    config: dict,
    spec: StepSpec,
    *,
    batch: int,
    seq: int,
    layers: int | None = None,
    trust_remote_code: bool = False,
    use_cache: bool = True,
    on_progress=None,
) -> ModelFit:
    """Simulate MODEL's step at reduced depth, fit each depth's (batch, seq) polynomials, and
    extrapolate to `layers` (default: the config's); checks the fit against a direct simulation at a
    point it was not solved on. The requested (batch, seq) is simulated directly, unless (with
    `use_cache`) a fit made earlier for the same config and spec holds for it and was exact: then it
    is read off that fit (`from_fit`), without importing torch.

    Batch 1: when the batch >= 2 fit misses the direct simulation at (1, seq) by more than 1/10,000
    of a phase's peak, batch 1 gets its own fit in seq (two more points). `on_progress(message)` is
    told what is being simulated (nothing when the cache answers).
    """
    total_layers = layers if layers is not None else layer_count(config)
    req = _Request.make(config, spec, batch, seq, total_layers)
    depths, points, check, requested, batch1 = req.depths, req.points, req.check, req.requested, req.batch1
    name, payload = _cache_key(config, spec, "fit", req.key_extra())

    say = on_progress or (lambda _message: None)

    def compute() -> dict:
        simulators = {}
        for d in depths:
            say(f"building the fake model at {d} layers")
            simulators[d] = StepSimulator(config, spec, layers=d, trust_remote_code=trust_remote_code)
        runs: dict[int, dict[tuple[int, int], Simulation]] = {d: {} for d in depths}

        def run_all(wanted) -> None:
            for depth, simulator in simulators.items():
                todo = [p for p in dict.fromkeys(wanted) if p not in runs[depth]]
                for i, point in enumerate(todo, 1):
                    say(f"simulating the step at {depth} layers, batch {point[0]} × seq {point[1]:,} ({i}/{len(todo)})")
                    runs[depth][point] = simulator.run(*point)

        run_all((requested, *points, check))
        if batch == 1 and any(_batch1_differs(runs[d], points) for d in depths):
            run_all(batch1)
        out = {}
        for depth, sims in runs.items():
            # keep only the moments the fits need (see prune_moments): the cache stays small
            groups = [list(points)] + ([list(batch1)] if batch1 and all(p in sims for p in batch1) else [])
            kept = {}
            for group in groups:
                kept.update(zip(group, prune_moments([sims[p] for p in group]), strict=True))
            out[str(depth)] = [kept.get(p, replace(sim, moments={})).to_json() for p, sim in sims.items()]
        return {"per_depth": out, "key": payload}

    if not use_cache:
        return _model_fit(compute(), req)
    data = _read_entry(name)
    if data is not None:
        return replace(_model_fit(data, req), from_cache=True)
    reused = _from_an_exact_fit(config, spec, req)
    if reused is not None:
        return reused
    data = compute()
    _write_entry(name, data)
    model_fit = _model_fit(data, req)
    _index_fit(config, spec, req, model_fit)
    return model_fit


def _batch1_differs(runs: dict[tuple[int, int], Simulation], points) -> bool:
    """Whether batch 1 is not on the batch >= 2 fit (by more than 1/10,000 of a phase's peak)."""
    step_fit = fit([runs[p] for p in points])
    (s0,) = {s for b, s in runs if b == 1}
    direct = runs[(1, s0)]
    fitted = step_fit.at(1, s0)
    return any(
        abs(p.peak_bytes - q.peak_bytes) * 10_000 > q.peak_bytes
        for p, q in zip(fitted.phases, direct.phases, strict=True)
    )


__all__ = [
    "build_step_model",
    "check_point",
    "extrapolate",
    "fit",
    "fit_points",
    "LAYER_ATTRIBUTE_KEYS",
    "layer_count",
    "max_positions",
    "ModelFit",
    "OPTIMIZERS",
    "PhasePeak",
    "prepare_step_model",
    "prune_moments",
    "seq_ranges",
    "simulate_model",
    "Simulation",
    "sliding_window",
    "StepFit",
    "StepSimulator",
    "StepSpec",
    "TASKS",
    "with_layers",
]
