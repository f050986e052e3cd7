"""Option values the commands share: comma lists (settings, ranks, sequence lengths, tasks, names)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from memprof.errors import MemprofError

T = TypeVar("T")


def comma_list(
    value: str | Sequence, parse: Callable[[object], T], *, empty: MemprofError, strip: bool = False
) -> tuple[T, ...]:
    """'a, b,a' (or a sequence) -> (parse('a'), parse(' b')), in the given order, without repeats.

    Blank items of a string are skipped, the others reach `parse` as written (with `strip`, without
    their spaces); a sequence's items reach it as they are. `empty` is raised when none is left.
    """
    items = _items(value, strip)
    if not items:
        raise empty
    return _unique(parse(item) for item in items)


def name_list(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """'a, b,,a' (or a sequence of names) -> ('a', 'b'): stripped, blanks skipped, without repeats;
    () for None or nothing (the caller's default applies)."""
    if value is None:
        return ()
    return _unique(name for name in (str(item).strip() for item in _items(value, strip=True)) if name)


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
