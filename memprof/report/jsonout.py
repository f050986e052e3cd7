"""JSON rendering: the result dataclasses as plain dicts (the machine-readable contract)."""

from __future__ import annotations

import dataclasses
import json


def _drop_none_measured(obj):
    if isinstance(obj, dict):
        return {k: _drop_none_measured(v) for k, v in obj.items() if not (k == "measured" and v is None)}
    if isinstance(obj, (list, tuple)):
        return [_drop_none_measured(v) for v in obj]
    return obj


def to_dict(result) -> dict:
    return _drop_none_measured(dataclasses.asdict(result))


def render_json(result) -> str:
    return json.dumps(to_dict(result), indent=2)
