"""Files and sizes, for every layer: atomic writes, memprof's cache directory, sizes written by users,
and this machine's memory."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from memprof.errors import ProfileOptionError


def cache_dir() -> Path:
    if os.environ.get("MEMPROF_CACHE_DIR"):
        return Path(os.environ["MEMPROF_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "memprof"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` so that readers see the old file or the whole new one, never a half. The directory
    must exist; OSError (from creating the temporary file on) is the caller's to put in words."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict, *, indent: int | None = None) -> None:
    """Write JSON atomically (write_text_atomic), creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_bytes(text: str) -> int:
    """'15GiB' -> 15 * 2**30; '16GB' -> 16 * 10**9; '1024' -> 1024 bytes."""
    match = _SIZE.match(str(text))
    if not match:
        raise ProfileOptionError(f"cannot read {text!r} as a size; write e.g. 15GiB, 16000MiB or 16GB")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    binary = "i" in unit
    scale = 2 ** (10 * "kmgt".index(unit[0]) + 10) if binary else _UNITS[unit.rstrip("b") or "b"]
    return int(number * scale)


def host_memory_bytes() -> int:
    """This machine's physical memory (on Linux equal to /proc/meminfo's MemTotal); 0 where unknown.
    The one reading for plan's CPU row and profile's CPU offload budget."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
