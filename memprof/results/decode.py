"""Reading saved results: one reader of JSON files, and typed decoding of a result's dataclasses.

Errors are in words, never in Python's: a file that is not a result, or a field of the wrong type,
is a ResultFileError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from memprof.errors import ResultFileError


def read_result_json(path: Path) -> dict:
    """The JSON object in a saved result file, or ResultFileError saying in one line why not."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ResultFileError(f"{path} is not a memprof result: it is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ResultFileError(f"{path} is not a memprof result: its JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise ResultFileError(
            f"{path} is not a memprof result: it holds a JSON {_json_type(data)}, where a result is an object"
        )
    return data


def fields_from_json(cls, data: object, where: str = "") -> dict:
    """The fields of dataclass `cls` in JSON object `data`, each present (or defaulted) and of its type.

    Unknown keys are dropped, so files from newer versions still load. A missing or ill-typed field
    is a ResultFileError that names it: "missing field 'settings[0].load.load_s'".
    """
    if not isinstance(data, dict):
        raise ResultFileError(f"field '{where}' should be an object, not a JSON {_json_type(data)}")
    values, missing = {}, []
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is not dataclasses.MISSING:
                values[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                values[f.name] = f.default_factory()
            else:
                missing.append(f"'{name}'")
            continue
        value = data[f.name]
        if not _conforms(value, f.type):
            raise ResultFileError(f"field '{name}' should be {_describe_type(f.type)}, not a JSON {_json_type(value)}")
        values[f.name] = value
    if missing:
        raise ResultFileError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return values


def dataclass_from_json(cls, data: object, where: str = ""):
    """Dataclass `cls` rebuilt from its `dataclasses.asdict` JSON, nested dataclasses and tuples
    included; fields_from_json checks each level, so a bad file is a ResultFileError naming the field."""
    import typing

    hints = typing.get_type_hints(cls)
    values = fields_from_json(cls, data, where)
    for f in dataclasses.fields(cls):
        values[f.name] = _decode_value(hints[f.name], values[f.name], f"{where}.{f.name}" if where else f.name)
    try:
        return cls(**values)
    except (TypeError, ValueError):  # fields typed above; a guard, in words
        raise ResultFileError(f"its fields do not make a {cls.__name__}") from None


def _decode_value(annotation, value: object, where: str):
    import types
    import typing

    if dataclasses.is_dataclass(annotation):
        return dataclass_from_json(annotation, value, where)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in args:  # the alternative the JSON value is: a dataclass for an object, a tuple for a list
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return dataclass_from_json(arg, value, where)
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return _decode_value(arg, value, where)
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(_decode_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    return value


def _json_list(value: object, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ResultFileError(f"field '{where}' should be a list, not a JSON {_json_type(value)}")
    return list(value)


def _kind_text(data: object) -> str:
    kind = data.get("kind") if isinstance(data, dict) else None
    return 'it has no "kind"' if kind is None else f'its "kind" is {json.dumps(kind)}'


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"


def _split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside brackets: 'tuple[str, ...] | None' -> ['tuple[str, ...] ', ' None']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _conforms(value: object, annotation: str) -> bool:
    """Whether a JSON value fits a field's annotation (a string: these modules postpone annotations)."""
    return any(_conforms_one(value, alt.strip()) for alt in _split_top(str(annotation), "|"))


def _conforms_one(value: object, annotation: str) -> bool:
    base, _, inner = annotation.partition("[")
    args = [a.strip() for a in _split_top(inner[:-1], ",")] if inner else []
    if base == "None":
        return value is None
    if base in ("int", "float"):
        numbers = int if base == "int" else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base == "bool":
        return isinstance(value, bool)
    if base == "dict":
        return isinstance(value, dict) and (len(args) != 2 or all(_conforms(v, args[1]) for v in value.values()))
    if base in ("tuple", "list"):
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] == "...":
            return all(_conforms(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(_conforms(v, a) for v, a in zip(value, args, strict=True)))
    return True  # a nested dataclass: its own fields_from_json checks it


def _describe_type(annotation: str) -> str:
    words = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "dict": "an object"}
    words |= {"tuple": "a list", "list": "a list", "None": "null"}
    alts = [words.get(a.strip().partition("[")[0], "an object") for a in _split_top(str(annotation), "|")]
    return " or ".join(dict.fromkeys(alts))
