"""Renderers: turn finished result dataclasses into text. Nothing here computes or measures."""

from __future__ import annotations

FORMATS = ("table", "json", "md", "html")
