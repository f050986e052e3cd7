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
    """One GPU model. memory_bytes is the total the driver reports; usable_bytes leaves out the CUDA
    context (a per-card constant in gpus.json; `context_measured` says whether memprof measured it)."""

    name: str
    memory_bytes: int
    bf16_dense_tflops: float
    memory_bandwidth_gbs: float
    usd_per_hour: float
    tier_gb: int
    context_bytes: int = 0
    context_measured: bool = False
    note: str = ""

    @property
    def usable_bytes(self) -> int:
        return self.memory_bytes - self.context_bytes


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


GPU_REQUIRED_FIELDS = ("name", "memory_mib", "bf16_dense_tflops", "memory_bandwidth_gbs", "usd_per_hour")


def _gpu_from_json(g: dict, where: str) -> Gpu:
    from memprof.errors import GpuFileError

    if not isinstance(g, dict):
        raise GpuFileError(f'{where}: each entry of "gpus" must be an object, got {g!r}')
    missing = [k for k in GPU_REQUIRED_FIELDS if k not in g]
    if missing:
        raise GpuFileError(f"{where}: GPU {g.get('name', '?')!r} lacks {', '.join(missing)}")
    try:
        memory_bytes = int(g["memory_mib"]) * 2**20
        gpu = Gpu(
            name=str(g["name"]),
            memory_bytes=memory_bytes,
            bf16_dense_tflops=float(g["bf16_dense_tflops"]),
            memory_bandwidth_gbs=float(g["memory_bandwidth_gbs"]),
            usd_per_hour=float(g["usd_per_hour"]),
            tier_gb=int(g.get("tier_gb", round(memory_bytes / 1e9))),
            context_bytes=int(g.get("context_mib", 0)) * 2**20,
            context_measured=bool(g.get("context_measured", False)),
            note=str(g.get("note", "")),
        )
    except (TypeError, ValueError):
        raise GpuFileError(f"{where}: GPU {g.get('name', '?')!r} has a non-numeric field") from None
    if gpu.memory_bytes <= 0 or gpu.bf16_dense_tflops <= 0 or gpu.memory_bandwidth_gbs <= 0 or gpu.usd_per_hour < 0:
        raise GpuFileError(f"{where}: GPU {gpu.name!r} needs positive memory, TFLOP/s and bandwidth")
    return gpu


def gpus(path: Path | None = None) -> tuple[Gpu, ...]:
    """The GPU table shipped with memprof, or a user's file of the same shape (raises GpuFileError)."""
    from memprof.errors import GpuFileError

    file = path or CATALOG_DIR / "gpus.json"
    try:
        data = json.loads(Path(file).expanduser().read_text())
    except OSError as exc:
        raise GpuFileError(f"cannot read GPU file {file}: {exc.strerror}") from None
    except ValueError as exc:
        raise GpuFileError(f"GPU file {file} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise GpuFileError(f'GPU file {file} must be {{"gpus": [{{"name": ..., "memory_mib": ...}}, ...]}}')
    return tuple(_gpu_from_json(g, str(file)) for g in data["gpus"])


def gpus_with(user_file: Path | None = None) -> tuple[Gpu, ...]:
    """The shipped table with a user's file applied: same name (case-insensitive) replaces, new names add."""
    table = list(gpus())
    if user_file is None:
        return tuple(table)
    for gpu in gpus(user_file):
        same = [i for i, g in enumerate(table) if g.name.lower() == gpu.name.lower()]
        if same:
            table[same[0]] = gpu
        else:
            table.append(gpu)
    return tuple(table)


def find_gpu(name: str, table: tuple[Gpu, ...]) -> Gpu | None:
    """Match a GPU by name, case-insensitively, ignoring spaces ("h100 80gb", "H100-80GB")."""

    def norm(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())

    key = norm(name)
    exact = [g for g in table if norm(g.name) == key]
    if exact:
        return exact[0]
    prefix = [g for g in table if norm(g.name).startswith(key)]
    return prefix[0] if len(prefix) == 1 else None
