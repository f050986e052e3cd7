"""Timing done right: warm up, synchronise the device, CUDA events on GPU, median and IQR."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one callable, in milliseconds."""

    median_ms: float
    iqr_ms: float  # interquartile range: q3 - q1
    min_ms: float
    samples_ms: tuple[float, ...]


def summarize(samples_ms: list[float] | tuple[float, ...]) -> Timing:
    """Median, interquartile range and minimum of samples (one sample: IQR 0)."""
    if not samples_ms:
        raise ValueError("no timing samples")
    ordered = sorted(samples_ms)
    if len(ordered) == 1:
        q1 = q3 = ordered[0]
    else:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    return Timing(statistics.median(ordered), q3 - q1, ordered[0], tuple(samples_ms))


def time_calls(fn: Callable[[], object], *, repeats: int, warmup: int = 1, device: str = "cpu") -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed, each call timed on its own.

    On CUDA each call is bracketed by CUDA events and the device is synchronised before the
    first event and after the last, so queued work from earlier calls is not charged to a later
    one; on CPU, perf_counter around each call.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            start_s = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start_s) * 1000)
    return summarize(samples)
