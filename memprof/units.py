"""Number formatting for humans. Binary units are labelled as such (GiB = 2**30 bytes)."""

from __future__ import annotations


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
