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
    """A saved `memprof profile`, `footprint --json`, `validate --save`, `plan --json` (serve too),
    `lora-params --json` or `compare --json` result, told apart by its "kind" (KINDS)."""
    path = Path(path)
    data = read_result_json(path)
    kind = data.get("kind")
    if kind in KINDS:
        name, _, decode = KINDS[kind]
        try:
            return decode(data)
        except ResultFileError as exc:
            raise ResultFileError(f"{path} is not a valid memprof {name} result: {exc}") from None
    names = ", ".join(dict.fromkeys(name.split(" ")[0] for name, _, _ in KINDS.values()))
    saved_by = ", ".join(f'`memprof {command}` ("kind": "{k}")' for k, (_, command, _) in KINDS.items())
    raise ResultFileError(
        f"{path} is not a memprof result of a kind it knows ({names}; {_kind_text(data)}); "
        f"FILE must be saved by one of {saved_by}"
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


# kind -> (what the result is, the command that saves it, its decoder): one line per kind, so
# load_result's error lists every kind there is
KINDS = {
    RESULT_KIND: ("profile", "profile", ProfileReport.from_json),
    FOOTPRINT_KIND: ("footprint", "footprint --json --out", _footprint_from_json),
    VALIDATE_KIND: ("validate", "validate --save", ValidationReport.from_json),
    PLAN_KIND: ("plan", "plan --json --out", lambda data: dataclass_from_json(PlanReport, data)),
    SERVE_KIND: (
        "plan --task serve",
        "plan --task serve --json --out",
        lambda data: dataclass_from_json(ServePlan, data),
    ),
    LORA_KIND: ("lora-params", "lora-params --json --out", lambda data: dataclass_from_json(LoraReport, data)),
    LORA_SWEEP_KIND: (
        "lora-params --sweep",
        "lora-params --sweep ... --json --out",
        lambda data: dataclass_from_json(LoraSweep, data),
    ),
    COMPARE_KIND: ("compare", "compare --json --out", lambda data: dataclass_from_json(ProfileComparison, data)),
}
