"""Option values the commands and the Python API share: comma lists (settings, ranks, sequence
lengths, tasks, names), and the checks of an option's type that make a wrong one from Python one
MemprofError line, as the command line's parser makes it (whole numbers, switches, names, paths)."""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from memprof.errors import MemprofError, OptionError

T = TypeVar("T")


def comma_list(
    value: str | Sequence, parse: Callable[[object], T], *, empty: MemprofError, strip: bool = False
) -> tuple[T, ...]:
    """'a, b,a' (or a sequence) -> (parse('a'), parse(' b')), in the given order, without repeats.

    Blank items of a string are skipped, the others reach `parse` as written (with `strip`, without
    their spaces); a sequence's items reach it as they are. `empty` is raised when none is left.
    """
    if not _string_or_list(value):
        raise type(empty)(f"{value!r} is neither a comma-separated string nor a list: {empty}")
    items = _items(value, strip)
    if not items:
        raise empty
    return _unique(parse(item) for item in items)


def name_list(
    value: str | Sequence[str] | None, *, option: str = "a list of names", error: type[MemprofError] = OptionError
) -> tuple[str, ...]:
    """'a, b,,a' (or a sequence of names) -> ('a', 'b'): stripped, blanks skipped, without repeats;
    () for None or nothing (the caller's default applies). Anything else is one `error` naming `option`."""
    if value is None:
        return ()
    if not _string_or_list(value):
        raise error(f"{option} takes names, comma-separated or as a list of strings, not {value!r}")
    return _unique(name for name in (str(item).strip() for item in _items(value, strip=True)) if name)


def whole_number(value, option: str, *, error: type[MemprofError] = OptionError, wants: str = "a whole number") -> int:
    """`value` as an int: an int, or a number type that says it is a whole one (NumPy's integers, by
    __index__); a bool, a float or a string is one `error`: "`option` takes `wants`, not ..."."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise error(f"{option} takes {wants}, not {value!r}")
    return operator.index(value)


def switch(value, option: str, *, error: type[MemprofError] = OptionError, unset: bool = False) -> bool | None:
    """`value` as True or False (NumPy's bools too); None where `unset` allows it (the default applies).
    Anything else, "no" included, is one `error` naming `option`: a truthy string is not a yes."""
    if value is None and unset:
        return None
    if type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    allowed = "True, False or None" if unset else "True or False"
    raise error(f"{option} takes {allowed}, not {value!r}")


def text(value, option: str, *, error: type[MemprofError] = OptionError, unset: bool = False) -> str | None:
    """`value` as a string (a name or a keyword); None where `unset` allows it; anything else is one
    `error` naming `option`."""
    if value is None and unset:
        return None
    if not isinstance(value, str):
        raise error(f"{option} takes a string, not {value!r}")
    return value


def path(value, option: str, *, error: type[MemprofError] = OptionError, unset: bool = False) -> str | None:
    """`value` as a path string (a str or an os.PathLike); None where `unset` allows it; anything else
    is one `error` naming `option`."""
    if value is None and unset:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise error(f"{option} takes a path (a string or a pathlib.Path), not {value!r}")
    return os.fspath(value)


def _string_or_list(value) -> bool:
    """Whether `value` is what a list option takes: a string, or an iterable of items (not bytes or
    a dict, which iterate as something else)."""
    return isinstance(value, str) or (isinstance(value, Iterable) and not isinstance(value, (bytes, dict)))


def _items(value: str | Sequence, strip: bool) -> list:
    if isinstance(value, str):
        return [t.strip() if strip else t for t in value.split(",") if t.strip()]
    return list(value)


def _unique(items) -> tuple:
    out: list = []
    for item in items:
        if item not in out:
            out.append(item)
    return tuple(out)
