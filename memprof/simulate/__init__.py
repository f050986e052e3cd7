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

The modules, in the order a simulation goes: spec (what is asked, what a simulation gives), config
(layer count, depth, sequence ranges: torch-free), fake_model (the model on fake tensors, the path
patches), recorder (tracker, FLOP counter, phases and regions), simulator (StepSimulator: one step
at one depth), fit (the polynomials in (batch, seq) and the extrapolation in depth), cache (the disk
cache, user and shipped), model_fit (simulate_model, the cached entry point), workers (its steps
side by side in forked processes) and sharded (rank 0 of the FSDP2 step).
"""

from __future__ import annotations

from memprof.simulate.config import (
    LAYER_ATTRIBUTE_KEYS,
    layer_count,
    max_positions,
    seq_ranges,
    sliding_window,
    with_layers,
)
from memprof.simulate.fake_model import build_step_model, prepare_step_model
from memprof.simulate.fit import StepFit, check_point, extrapolate, fit, fit_points, prune_moments
from memprof.simulate.model_fit import ModelFit, simulate_model
from memprof.simulate.simulator import StepSimulator
from memprof.simulate.spec import OPTIMIZERS, TASKS, PhasePeak, Simulation, StepSpec

# what the rest of memprof imports from here, and the types simulate_model's answer is made of
__all__ = [
    "LAYER_ATTRIBUTE_KEYS",
    "OPTIMIZERS",
    "TASKS",
    "ModelFit",
    "PhasePeak",
    "Simulation",
    "StepFit",
    "StepSimulator",
    "StepSpec",
    "build_step_model",
    "check_point",
    "extrapolate",
    "fit",
    "fit_points",
    "layer_count",
    "max_positions",
    "prepare_step_model",
    "prune_moments",
    "seq_ranges",
    "simulate_model",
    "sliding_window",
    "with_layers",
]
