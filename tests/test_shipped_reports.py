"""The measured reports in reports/: each Markdown is its saved JSON as `memprof report` renders it
now (under the command line that made it), so a change of the renderer cannot leave them stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from memprof.report import renderer
from memprof.results import load_result

REPORTS = Path(__file__).resolve().parent.parent / "reports"
PAIRS = [p for p in sorted(REPORTS.glob("*-cpu-*.json")) if p.with_suffix(".md").is_file()]


def test_there_are_reports_to_check():
    assert len(PAIRS) >= 4


@pytest.mark.parametrize("saved", PAIRS, ids=lambda p: p.stem)
def test_a_shipped_report_is_its_json_rendered_now(saved):
    text = saved.with_suffix(".md").read_text(encoding="utf-8")
    if text.startswith("Command: "):
        text = text.split("\n", 2)[2]  # the command line and the blank line under it
    result = load_result(saved)
    assert text == renderer(result, "md")(result)
