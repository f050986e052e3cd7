"""The disk cache of simulations: an entry is named by the digest of everything it depends on (config,
spec, what was simulated, SIM_FORMAT, the versions of memprof and of every library the step runs),
and read from the user's cache, then from the simulations shipped for the catalog."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from importlib import metadata

from memprof.inventory import config_key
from memprof.io import cache_dir, write_json_atomic
from memprof.simulate.spec import StepSpec

SIM_FORMAT = (
    12  # 11: zero_grad's moment holds its grads as grads; 12: every moment's grads as the breakdown classifies them
)


def _versions() -> dict:
    """What a cached simulation depends on besides config and spec: memprof's own code (its version)
    and every library whose modules the step runs (bitsandbytes: the quantized settings' layers)."""
    from memprof import version  # at call time, so a test can change the version

    out = {"format": SIM_FORMAT, "memprof": version.__version__}
    for dist in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cache_key(config: dict, spec: StepSpec, kind: str, extra: dict) -> tuple[str, dict]:
    """A cache entry's file name and the payload it is the digest of (kept in the entry, so a shipped
    one can be checked against the versions and spec it was made for)."""
    payload = {"config": config_key(config), "spec": spec.key(), "kind": kind, **extra, **_versions()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    return f"{digest}.json", payload


def user_entry_path(name: str):
    """Where the user's cache keeps the entry `name` (the one rule for the folder)."""
    return cache_dir() / "simulations" / name


def _cache_path(config: dict, spec: StepSpec, kind: str, extra: dict):
    return user_entry_path(_cache_key(config, spec, kind, extra)[0])


def _entries(name: str) -> Iterator[dict]:
    """The cache entry `name` from the user's cache, then from the simulations shipped for the catalog
    (catalog/simulations: what a default `memprof plan` of each catalog model leaves in the cache,
    made by `python -m memprof.catalog.regenerate`). The name is the digest of the whole key
    (config, spec, points, memprof/torch/transformers/peft/bitsandbytes versions): an entry is only
    ever read for exactly the key it was made for."""
    from memprof.catalog import SIMULATIONS_DIR

    for path in (user_entry_path(name), SIMULATIONS_DIR / name):
        if path.is_file():
            with contextlib.suppress(ValueError, OSError):
                yield json.loads(path.read_text())


def _read_entry(name: str) -> dict | None:
    return next(_entries(name), None)


def _write_entry(name: str, data: dict) -> None:
    with contextlib.suppress(OSError):  # a read-only cache only costs the recomputation
        write_json_atomic(user_entry_path(name), data)
