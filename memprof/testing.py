"""Memory budgets in tests: what `@pytest.mark.limit_torch_memory` measures, and `assert_fits`.

Two halves, for two kinds of CI:
- `measure_torch_memory()` measures the torch tensor memory a block of code really holds at its
  peak: on CUDA the caching allocator's peak (`torch.cuda.max_memory_allocated`, reset at the
  start, so tensors that already exist count), on the CPU memprof's live-tensor tracker (tensors
  the block makes, plus those handed to it). The pytest plugin (memprof.pytest_plugin) wraps each
  marked test in it and fails the test over its limit.
- `assert_fits(gpu, model, ...)` needs no GPU: it plans the step (memprof.plan) and fails with the
  plan's breakdown when the step does not fit the card, so a team pins its training config's memory.

Like cli.py, this is an edge of the package (a surface users call from their tests): it may render,
with memprof.report.testing. Imports of torch happen inside the functions: importing this module
(and the plugin) is cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from memprof.errors import MemprofError

DEVICES = ("auto", "cpu", "cuda")


class MemoryLimitError(MemprofError):
    """A memory limit that cannot be read, or a device that is not here."""


@dataclass(frozen=True)
class HeldTensor:
    """A storage live at the peak, biggest first in TorchMemoryPeak.held."""

    nbytes: int
    kind: str  # weights, trainable parameters, grads, optimizer states, created before, activations and temporaries
    made_by: str | None  # the op that made it, where the tracker saw it made
    shape: tuple[int, ...] | None
    dtype: str | None


@dataclass(frozen=True)
class TorchMemoryPeak:
    """The peak of torch tensor memory over a block, and what held it."""

    device: str  # "cpu" or "cuda"
    peak_bytes: int
    method: str  # how peak_bytes was measured
    tracked_peak_bytes: int  # the live-tensor tracker's peak (the same number on the CPU)
    held: tuple[HeldTensor, ...] = ()  # the largest storages at the tracker's peak


@dataclass(frozen=True)
class MemoryLimitExceeded:
    """A failed budget: the limit and the measured peak. `long_repr()` is the test's failure text."""

    limit_bytes: int
    limit_text: str
    peak: TorchMemoryPeak

    def long_repr(self) -> str:
        from memprof.report.testing import render_limit_exceeded

        return render_limit_exceeded(self)


def parse_limit(limit: object) -> int:
    """'24 GiB', '512MiB', '16GB' or a number of bytes -> bytes; anything else is a MemoryLimitError."""
    from memprof.analyses.profile import parse_bytes

    if isinstance(limit, bool) or not isinstance(limit, (int, str)):
        raise MemoryLimitError(f"limit {limit!r} is not a size; write e.g. '24 GiB', '512 MiB' or a number of bytes")
    if isinstance(limit, int):
        if limit < 0:
            raise MemoryLimitError(f"limit {limit!r} is negative; give a size such as '24 GiB'")
        return limit
    try:
        return parse_bytes(limit.replace(" ", ""))
    except MemprofError:
        raise MemoryLimitError(
            f"cannot read limit {limit!r} as a size; write e.g. '24 GiB', '512 MiB', '16GB' or a number of bytes"
        ) from None


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise MemoryLimitError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    return device


@dataclass
class _Measurement:
    """Filled in when the `measure_torch_memory` block ends."""

    device: str
    peak: TorchMemoryPeak | None = None
    _tracker: object = field(default=None, repr=False)


def _resolve_device(device: str) -> str:
    import torch

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MemoryLimitError("device='cuda' but torch sees no CUDA device here; use device='auto' or 'cpu'")
    return device


@contextlib.contextmanager
def measure_torch_memory(device: str = "auto", *, holders: Iterable = ()) -> Iterator[_Measurement]:
    """Measure the block's peak of torch tensor memory; `.peak` is set when the block ends.

    `holders` (tensors, modules, optimizers, or containers of them: a test's fixtures) are counted
    from the start on the CPU, and name the kind of what they hold (weights, grads, optimizer
    states) in `.peak.held`. Fake and meta tensors hold no memory and are not counted.
    """
    import torch

    from memprof.measure.tracker import BEFORE_TRACKING, LiveBytesTracker

    holders = list(holders)
    measurement = _Measurement(_resolve_device(device))
    cuda = measurement.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tracker = LiveBytesTracker(real_only=True, describe=True)
    with tracker:
        tracker.track(*_tensors_of(holders))
        yield measurement
    if cuda:
        torch.cuda.synchronize()
        peak_bytes = int(torch.cuda.max_memory_allocated())
        method = "CUDA caching allocator peak (torch.cuda.max_memory_allocated, reset at the start)"
    else:
        peak_bytes = tracker.peak_bytes
        method = "exact live-tensor peak (memprof's dispatch-mode tracker)"
    held = tracker.held_at_peak(largest=5, categories=_categories(holders))
    measurement.peak = TorchMemoryPeak(
        device=measurement.device,
        peak_bytes=peak_bytes,
        method=method,
        tracked_peak_bytes=tracker.peak_bytes,
        held=tuple(
            HeldTensor(
                nbytes=h.nbytes,
                kind=h.kind or ("created before" if h.made_by == BEFORE_TRACKING else "activations and temporaries"),
                made_by=None if h.made_by == BEFORE_TRACKING else h.made_by,
                shape=h.shape,
                dtype=h.dtype,
            )
            for h in held
        ),
    )


def check_limit(limit: object, peak: TorchMemoryPeak) -> MemoryLimitExceeded | None:
    """None when `peak` is within `limit`; else what failed (pytest-memray's pattern)."""
    limit_bytes = parse_limit(limit)
    if peak.peak_bytes <= limit_bytes:
        return None
    return MemoryLimitExceeded(limit_bytes=limit_bytes, limit_text=str(limit), peak=peak)


def _tensors_of(holders: list) -> list:
    """What the tracker can count: tensors and modules as they are; an optimizer's states."""
    import torch

    out = []
    for h in holders:
        if isinstance(h, torch.optim.Optimizer):
            out.append([v for state in h.state.values() for v in state.values() if isinstance(v, torch.Tensor)])
        elif isinstance(h, (torch.Tensor, torch.nn.Module, list, tuple, dict)):
            out.append(h)
    return out


def _categories(holders: list) -> dict[str, list]:
    """Kinds of the holders' tensors, as alive now (after the block): the first that names one wins."""
    import torch

    from memprof.step import model_parts

    kinds: dict[str, list] = {"weights": [], "trainable parameters": [], "grads": [], "optimizer states": []}
    optimizers = [h for h in holders if isinstance(h, torch.optim.Optimizer)]
    for h in holders:
        if isinstance(h, torch.nn.Module):
            parts = model_parts(h, None)
            kinds["weights"] += parts["weights"] + parts["quant_state"]
            kinds["trainable parameters"] += parts["trainable_params"]
            kinds["grads"] += parts["grads"]
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                kinds["trainable parameters"].append(p)
                if p.grad is not None:
                    kinds["grads"].append(p.grad)
        kinds["optimizer states"] += _tensors_of([opt])
    return kinds


def assert_fits(gpu: str, model: str | None = None, **plan_options):
    """Plan `model`'s step on the catalog card `gpu` and fail (AssertionError, with the plan's first
    screen) when it does not fit; return the PlanReport when it does.

    `plan_options` are memprof.plan's keywords: task, setting, batch, seq, lora_r, target, ...
    """
    from memprof.analyses.plan import plan

    report = plan(model, gpus=(gpu,), **plan_options)
    row = report.gpus[0]
    if not row.fits:
        from memprof.report.testing import render_does_not_fit

        raise AssertionError(render_does_not_fit(report, row))
    return report
