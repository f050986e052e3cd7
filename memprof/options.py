"""Option values the commands share: comma lists (settings, ranks, sequence lengths, tasks)."""

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
    if isinstance(value, str):
        items = [t.strip() if strip else t for t in value.split(",") if t.strip()]
    else:
        items = list(value)
    if not items:
        raise empty
    out: list[T] = []
    for item in items:
        parsed = parse(item)
        if parsed not in out:
            out.append(parsed)
    return tuple(out)
