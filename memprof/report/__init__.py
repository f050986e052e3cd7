"""Renderers: turn finished result dataclasses into text. Nothing here computes or measures.

One registry says which function renders each kind of result in each format: `renderer(result, fmt)`.
`table` gives a rich renderable for the terminal, every other format gives text; `json` is the
dataclass as a dict (jsonout.render_json) unless a kind names its own. The report modules are
imported only when a result of theirs is rendered.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from memprof.results.footprint import FootprintReport
from memprof.results.lora import LoraReport, LoraSweep
from memprof.results.plan import PlanReport
from memprof.results.profile import ProfileComparison, ProfileReport
from memprof.results.serve import ServePlan
from memprof.results.validate import ValidationReport

FORMATS = ("table", "json", "md", "html")

# result type -> (its module in memprof.report, the function rendering it in each format)
RENDERERS: dict[type, tuple[str, dict[str, str]]] = {
    FootprintReport: (
        "footprint",
        {"table": "footprint_renderables", "md": "render_footprint_md", "html": "render_footprint_html"},
    ),
    LoraReport: ("lora", {"table": "lora_renderables", "md": "render_lora_md", "html": "render_lora_html"}),
    LoraSweep: ("lora", {"table": "lora_renderables", "md": "render_lora_md", "html": "render_lora_html"}),
    PlanReport: ("plan", {"table": "plan_renderables", "md": "render_plan_md", "html": "render_plan_html"}),
    ServePlan: ("serve", {"table": "serve_renderables", "md": "render_serve_md", "html": "render_serve_html"}),
    ProfileReport: (
        "profile",
        {"table": "profile_renderables", "md": "render_profile_md", "html": "render_profile_html"},
    ),
    ProfileComparison: (
        "profile",
        {"table": "compare_renderables", "md": "render_compare_md", "html": "render_compare_html"},
    ),
    ValidationReport: (
        "validate",
        {"table": "validate_renderables", "md": "render_validate_md", "html": "render_validate_html"},
    ),
}


def renderer(result, fmt: str) -> Callable:
    """The function that renders `result` in `fmt` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    entry = next((RENDERERS[cls] for cls in type(result).__mro__ if cls in RENDERERS), None)
    if entry is None:
        raise TypeError(f"no renderer for a {type(result).__name__}: add it to memprof.report.RENDERERS")
    module, functions = entry
    if fmt == "json" and "json" not in functions:
        module, name = "jsonout", "render_json"
    else:
        name = functions[fmt]
    return getattr(importlib.import_module(f"memprof.report.{module}"), name)
