"""The one FLOP table memprof counts with: torch's FlopCounterMode formulas plus the ops it lacks.

Both the profiler (`count_flops` on the real step) and plan's simulation (simulate/recorder.py's counter
on fake tensors) build their table with `flop_mapping()`, so the two count the same ops the same way.

torch's table (torch/utils/flop_counter.py) has the CUDA attention kernels but not the CPU one:
`aten._scaled_dot_product_flash_attention_for_cpu` and its backward, which is what SDPA runs on the
CPU and what the simulation traces. Without them a step's FLOPs are exactly linear in seq. They are
counted here with torch's own sdpa formulas, as torch counts `_scaled_dot_product_flash_attention`
(same leading arguments: query, key, value; backward: grad_out, query, key, value).
"""

from __future__ import annotations

from collections.abc import Callable

# What a FLOP count means, for the reports that print one.
COUNTED_NOTE = (
    "FLOPs are counted op by op: every matmul (2·m·k·n, bitsandbytes' matmuls too) and attention by "
    "torch's formulas (SDPA: 4·b·h·s_q·s_k·d forward, 10·b·h·s_q·s_k·d backward, which recomputes the "
    "scores; eager attention: its matmuls). The full s_q×s_k score matrix is counted, also under a causal "
    "mask, where the kernels skip up to about half of it. Elementwise ops, softmax, norms, the loss and "
    "the optimizer are not counted."
)

# bitsandbytes' ops that multiply A (..., K) by a (N, K) weight.
_BNB_MATMULS = ("gemm_4bit", "gemv_4bit", "int8_mixed_scaled_mm", "int8_linear_matmul")


def _matmul_like(a_shape, *args, out_shape=None, **kwargs) -> int:
    """2 * numel(out) * K, like aten.mm."""
    import torch

    out = out_shape
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], (list, tuple, torch.Size)):
        out = out[0]  # ops returning (out, extra)
    numel = 1
    for d in out:
        numel *= d
    return 2 * numel * a_shape[-1]


def flop_mapping() -> dict:
    """FlopCounterMode's `custom_mapping`: formulas (on shapes) for the ops torch's table lacks.

    bitsandbytes' matmuls, and the CPU flash-attention kernel forward and backward with torch's
    `sdpa_flop` / `sdpa_backward_flop` (unwrapped: FlopCounterMode wraps custom formulas itself).
    """
    import contextlib

    import torch
    from torch.utils import flop_counter

    aten = torch.ops.aten
    mapping = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", flop_counter.sdpa_flop),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", flop_counter.sdpa_backward_flop),
    ):
        op = getattr(aten, name)
        if op not in flop_counter.flop_registry:  # a later torch may count it itself
            mapping[op] = formula.__wrapped__
    ops = getattr(torch.ops, "bitsandbytes", None)
    for name in _BNB_MATMULS:
        with contextlib.suppress(AttributeError, RuntimeError):
            mapping[getattr(ops, name)] = _matmul_like  # FlopCounterMode looks ops up by overload packet
    return mapping


def flop_registry() -> dict:
    """Overload packet -> formula(*args, out_val=, **kwargs): torch's table with `flop_mapping()` added."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=flop_mapping()).flop_registry


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn`, counted by torch's FlopCounterMode with `flop_mapping()`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())
