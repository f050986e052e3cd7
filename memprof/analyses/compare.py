"""`compare`: two saved profiles side by side, metric by metric, with the timings within the runs'
noise marked, and both runs' training-step timelines for the settings they share."""

from __future__ import annotations

from memprof.results.profile import ComparisonRow, ProfileComparison, ProfileReport, SettingProfile

COMPARED_METRICS = (
    "load.load_s",
    "load.true_bytes",
    "load.peak_bytes",
    "forward.median_ms",
    "forward.tokens_per_s",
    "forward.peak_bytes",
    "train.median_ms",
    "train.tokens_per_s",
    "train.tflops",
    "train.peak_bytes",
)


def _metric(row: SettingProfile, path: str) -> float | None:
    phase, name = path.split(".")
    part = getattr(row, phase)
    return None if part is None else getattr(part, name)


def _describe(report: ProfileReport) -> str:
    where = report.env.get("gpu_name") or report.env.get("cpu") or report.device
    return f"{report.model} on {report.device} ({where}), batch {report.batch} x seq {report.seq}, {report.created}"


def _within_noise(a, b, metric: str, same_work: bool) -> bool:
    """Whether the runs' own spread explains the difference: the medians differ by no more than their
    IQRs added. A rate (tokens/s, FLOP/s: the work over the median) shares that only when both runs
    did the same work per step; with another batch or seq its change is the work's, never noise."""
    if getattr(a, "iqr_ms", None) is None or getattr(b, "iqr_ms", None) is None:  # load: one timing, no IQR
        return False
    if not metric.endswith("median_ms") and not same_work:
        return False
    return abs(b.median_ms - a.median_ms) <= a.iqr_ms + b.iqr_ms


def compare_reports(a: ProfileReport, b: ProfileReport) -> ProfileComparison:
    """The settings both runs measured, metric by metric, with B / A ratios."""
    b_rows = {r.setting: r for r in b.settings}
    same_work = (a.batch, a.seq, a.train) == (b.batch, b.seq, b.train)
    rows = []
    for ra in a.settings:
        rb = b_rows.get(ra.setting)
        if rb is None:
            continue
        for metric in COMPARED_METRICS:
            va, vb = _metric(ra, metric), _metric(rb, metric)
            ratio = vb / va if va and vb is not None else None
            noise = ratio is not None and _within_noise(
                getattr(ra, metric.split(".")[0]), getattr(rb, metric.split(".")[0]), metric, same_work
            )
            timed = metric.split(".")[1] in ("median_ms", "tokens_per_s", "tflops")
            rows.append(ComparisonRow(ra.setting, metric, va, vb, ratio, within_noise=timed and noise))
    notes = []
    only = sorted({r.setting for r in a.settings} ^ set(b_rows))
    if only:
        notes.append(f"in one run only: {', '.join(only)}")
    for field_name in ("model", "device", "batch", "seq", "train"):
        if getattr(a, field_name) != getattr(b, field_name):
            notes.append(f"{field_name} differs: {getattr(a, field_name)} vs {getattr(b, field_name)}")
    timelines = {
        ra.setting: (ra.train.timeline, b_rows[ra.setting].train.timeline)
        for ra in a.settings
        if ra.setting in b_rows
        and ra.train is not None
        and ra.train.timeline
        and b_rows[ra.setting].train is not None
        and b_rows[ra.setting].train.timeline
    }
    return ProfileComparison(_describe(a), _describe(b), tuple(rows), tuple(notes), timelines)


__all__ = ["compare_reports"]
