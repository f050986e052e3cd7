"""Failure texts of memprof.testing: a test over its torch memory limit, a step that does not fit."""

from __future__ import annotations

from memprof.report.common import render_text
from memprof.units import human_bytes


def render_limit_exceeded(failed) -> str:
    """`failed`: a memprof.testing.MemoryLimitExceeded. The peak, the limit, and what held the peak."""
    peak = failed.peak
    over = peak.peak_bytes - failed.limit_bytes
    lines = [
        f"torch memory peak {human_bytes(peak.peak_bytes)} ({peak.peak_bytes:,} bytes) is over the limit "
        f"{failed.limit_text!r} = {human_bytes(failed.limit_bytes)} by {human_bytes(over)}",
        f"measured on {peak.device}: {peak.method}",
    ]
    if peak.held:
        where = (
            "at the peak" if peak.device == "cpu" else f"at the tracker's peak ({human_bytes(peak.tracked_peak_bytes)})"
        )
        lines.append(f"largest tensors {where}:")
        for h in peak.held:
            shape = "x".join(map(str, h.shape)) if h.shape else "scalar"
            made = f", made by {h.made_by}" if h.made_by else ""
            lines.append(f"  {human_bytes(h.nbytes):>11}  {h.kind}: {h.dtype} [{shape}]{made}")
    return "\n".join(lines)


def render_does_not_fit(report, row) -> str:
    """`report`: a PlanReport planned for one card; `row` its GpuPlan. One line, then plan's first screen."""
    from memprof.report.plan import plan_renderables

    head = (
        f"{report.model} {report.task} (batch {report.batch}, seq {report.seq}) does not fit {row.name}: it needs "
        f"{human_bytes(row.required_bytes)}, the card has {human_bytes(row.memory_bytes)} "
        f"(short by {human_bytes(-row.headroom_bytes)}); memprof plan's breakdown:"
    )
    return head + "\n" + render_text(plan_renderables(report), width=100)
