"""The built-in catalog: real model configs and their inventories, and a GPU table. Data, not code.

Reading the catalog never imports torch or transformers, so answers for catalog models are instant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CATALOG_DIR = Path(__file__).parent
CONFIGS_DIR = CATALOG_DIR / "configs"
INVENTORIES_DIR = CATALOG_DIR / "inventories"


@dataclass(frozen=True)
class CatalogModel:
    hub_id: str
    aliases: tuple[str, ...]
    config_file: str
    published_params: int

    @property
    def config_path(self) -> Path:
        return CONFIGS_DIR / self.config_file

    def config(self) -> dict:
        return json.loads(self.config_path.read_text())


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    bf16_dense_tflops: float
    memory_bandwidth_gbs: float
    usd_per_hour: float
    tier_gb: int


@cache
def _models_file() -> dict:
    return json.loads((CATALOG_DIR / "models.json").read_text())


def catalog_models() -> tuple[CatalogModel, ...]:
    return tuple(
        CatalogModel(m["hub_id"], tuple(m["aliases"]), m["config"], m["published_params"])
        for m in _models_file()["models"]
    )


def default_model() -> str:
    return _models_file()["default"]


def find_catalog_model(name: str) -> CatalogModel | None:
    """Match a hub id or alias, case-insensitively."""
    key = name.strip().lower()
    for model in catalog_models():
        if key == model.hub_id.lower() or key in model.aliases:
            return model
    return None


def gpus(path: Path | None = None) -> tuple[Gpu, ...]:
    """The GPU table shipped with memprof, or a user's file of the same shape."""
    data = json.loads((path or CATALOG_DIR / "gpus.json").read_text())
    return tuple(
        Gpu(
            name=g["name"],
            memory_bytes=int(g["memory_mib"]) * 2**20,
            bf16_dense_tflops=float(g["bf16_dense_tflops"]),
            memory_bandwidth_gbs=float(g["memory_bandwidth_gbs"]),
            usd_per_hour=float(g["usd_per_hour"]),
            tier_gb=int(g["tier_gb"]),
        )
        for g in data["gpus"]
    )
