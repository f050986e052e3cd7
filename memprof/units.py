"""Number formatting for humans. Binary units are labelled as such (GiB = 2**30 bytes)."""

from __future__ import annotations

import math


def gib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**30:,.2f} GiB"


def human_bytes(n: int | None) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:,.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def percent(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def significant(x: float | None, digits: int = 3) -> str:
    """`x` with `digits` significant digits, never in exponent notation (0.000123, 1.23, 1,235)."""
    if x is None:
        return "—"
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"
