"""Rebuild the shipped catalog data from the installed libraries: `python -m memprof.catalog.regenerate`.

- inventories/: each catalog model's inventory (transformers' classes on the meta device).
- simulations/: the simulation cache entries a default `memprof plan MODEL` makes for each catalog
  model (simulate/cache.py reads them after the user's cache; each is named by the digest of its whole key,
  library versions included, so an entry is only used where it was made for exactly that).

tests/test_catalog.py checks the inventories, tests/test_shipped_simulations.py the simulations.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from memprof.catalog import SIMULATIONS_DIR, catalog_models
from memprof.inventory import build_inventory, shipped_inventory_path
from memprof.io import write_json_atomic


def regenerate_inventories() -> list[str]:
    written = []
    for entry in catalog_models():
        inventory = build_inventory(entry.config())
        path = shipped_inventory_path(entry.hub_id)
        write_json_atomic(path, inventory.to_json(), indent=None)
        written.append(f"{entry.hub_id}: {inventory.param_count:,} parameters, {len(inventory.tensors)} tensors")
    return written


def default_plan_simulations(hub_id: str, into: Path) -> list[Path]:
    """Run a default `memprof plan hub_id` on an empty cache in `into`; the simulation entries it wrote.

    The plan itself decides what is simulated (its default options, the seq ranges its sweeps reach),
    so the shipped entries are exactly what a user's first default plan would make.
    """
    from memprof.analyses.plan import plan  # a build script: the shipped data is what the analysis asks for

    before = os.environ.get("MEMPROF_CACHE_DIR")
    os.environ["MEMPROF_CACHE_DIR"] = str(into)
    try:
        report = plan(hub_id)
    finally:
        if before is None:
            os.environ.pop("MEMPROF_CACHE_DIR")
        else:
            os.environ["MEMPROF_CACHE_DIR"] = before
    assert not report.from_cache, f"{hub_id}: the plan was answered from a cache, not simulated"
    return sorted((into / "simulations").glob("*.json"))


def regenerate_simulations(hub_ids: list[str] | None = None) -> list[str]:
    ids = hub_ids or [entry.hub_id for entry in catalog_models()]
    SIMULATIONS_DIR.mkdir(exist_ok=True)
    if hub_ids is None:
        for old in SIMULATIONS_DIR.glob("*.json"):
            old.unlink()
    from memprof.errors import MemprofError

    written = []
    for hub_id in ids:
        with tempfile.TemporaryDirectory() as tmp:
            # the shipped entries must not answer the plan that rebuilds them
            try:
                files = _without_shipped(lambda tmp=tmp, hub_id=hub_id: default_plan_simulations(hub_id, Path(tmp)))
            except MemprofError as exc:  # e.g. peft has no default LoRA targets for Phi-3: nothing to ship
                written.append(f"{hub_id}: no default plan ({exc})")
                continue
            for path in files:
                shutil.copyfile(path, SIMULATIONS_DIR / path.name)
        written.append(f"{hub_id}: {len(files)} simulation cache entries")
    return written


def _without_shipped(run):
    """Run with no shipped simulations visible (a rebuild simulates everything)."""
    import memprof.catalog as catalog_module

    real = catalog_module.SIMULATIONS_DIR
    catalog_module.SIMULATIONS_DIR = Path(tempfile.mkdtemp(prefix="memprof-no-shipped-"))
    try:
        return run()
    finally:
        catalog_module.SIMULATIONS_DIR = real


if __name__ == "__main__":
    args = sys.argv[1:]
    lines = []
    if not args or args == ["inventories"]:
        lines += regenerate_inventories()
    if not args or args[0] == "simulations":
        lines += regenerate_simulations(args[1:] or None)
    for line in lines:
        print(line)
    sys.exit(0)
