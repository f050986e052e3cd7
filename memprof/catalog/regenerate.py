"""Rebuild the shipped inventories from the installed transformers: `python -m memprof.catalog.regenerate`.

tests/test_catalog.py checks that the shipped files equal what this produces.
"""

from __future__ import annotations

import sys

from memprof.catalog import catalog_models
from memprof.inventory import build_inventory, shipped_inventory_path
from memprof.io import write_json_atomic


def regenerate() -> list[str]:
    written = []
    for entry in catalog_models():
        inventory = build_inventory(entry.config())
        path = shipped_inventory_path(entry.hub_id)
        write_json_atomic(path, inventory.to_json(), indent=None)
        written.append(f"{entry.hub_id}: {inventory.param_count:,} parameters, {len(inventory.tensors)} tensors")
    return written


if __name__ == "__main__":
    for line in regenerate():
        print(line)
    sys.exit(0)
