"""The kinds of saved result, below every analysis: each kind's dataclasses (one module per kind),
and `load_result`, which reads any saved result and decodes it by its "kind".

`memprof report` re-renders what `load_result` returns; every result saves as `dataclasses.asdict`.
"""

from __future__ import annotations

from pathlib import Path

from memprof.errors import ResultFileError
from memprof.measure.load import MeasuredLoad
from memprof.results.decode import _json_list, _kind_text, dataclass_from_json, fields_from_json, read_result_json
from memprof.results.footprint import FOOTPRINT_KIND, FootprintReport, SettingFootprint
from memprof.results.lora import LORA_KIND, LORA_SWEEP_KIND, LoraReport, LoraSweep
from memprof.results.plan import PLAN_KIND, PlanReport
from memprof.results.profile import COMPARE_KIND, RESULT_KIND, ProfileComparison, ProfileReport
from memprof.results.serve import SERVE_KIND, ServePlan
from memprof.results.validate import VALIDATE_KIND, ValidationReport


def load_result(path: Path):
    """A saved `memprof profile`, `memprof footprint --json`, `memprof validate --save`, `memprof plan
    --json` or `memprof lora-params --json` result, told apart by its "kind"."""
    path = Path(path)
    data = read_result_json(path)
    kind = data.get("kind")
    decoded = {PLAN_KIND: ("plan", PlanReport), LORA_KIND: ("lora-params", LoraReport)}
    decoded[LORA_SWEEP_KIND] = ("lora-params --sweep", LoraSweep)
    decoded[COMPARE_KIND] = ("compare", ProfileComparison)
    decoded[SERVE_KIND] = ("plan --task serve", ServePlan)
    if kind in decoded:
        command, cls = decoded[kind]
        try:
            return dataclass_from_json(cls, data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof {command} result: {exc}") from None
    if kind == RESULT_KIND:
        try:
            return ProfileReport.from_json(data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof profile result: {exc}") from None
    if kind == FOOTPRINT_KIND:
        try:
            return _footprint_from_json(data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof footprint result: {exc}") from None
    if kind == VALIDATE_KIND:
        try:
            return ValidationReport.from_json(data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof validate result: {exc}") from None
    raise ResultFileError(
        f"{path} is not a memprof profile, footprint, validate, plan, lora-params or compare result "
        f"({_kind_text(data)}); "
        f'FILE must be saved by `memprof profile` ("kind": "{RESULT_KIND}"), '
        f'`memprof footprint --json --out` ("kind": "{FOOTPRINT_KIND}"), '
        f'`memprof validate --save` ("kind": "{VALIDATE_KIND}"), `memprof plan --json --out` ("kind": "{PLAN_KIND}"), '
        f'`memprof lora-params --json --out` ("kind": "{LORA_KIND}" or "{LORA_SWEEP_KIND}") '
        f'or `memprof compare --json --out` ("kind": "{COMPARE_KIND}")'
    )


def _footprint_from_json(data: dict):
    values = fields_from_json(FootprintReport, data)
    rows = []
    for i, row in enumerate(_json_list(values["settings"], "settings")):
        row = fields_from_json(SettingFootprint, row, f"settings[{i}]")
        if row.get("measured") is not None:
            row["measured"] = fields_from_json(MeasuredLoad, row["measured"], f"settings[{i}].measured")
        rows.append(row)
    values["settings"] = rows
    try:
        return FootprintReport.from_json(values)
    except (TypeError, KeyError, ValueError, AttributeError):  # complete and typed above; a guard, in words
        raise ResultFileError("its fields do not make a footprint report") from None


__all__ = ["dataclass_from_json", "fields_from_json", "load_result", "read_result_json"]
