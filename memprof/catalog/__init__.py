"""The built-in catalog: real model configs and their inventories, and a GPU table. Data, not code.

Reading the catalog never imports torch or transformers, so answers for catalog models are instant.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CATALOG_DIR = Path(__file__).parent
CONFIGS_DIR = CATALOG_DIR / "configs"
INVENTORIES_DIR = CATALOG_DIR / "inventories"
# the simulations a default `memprof plan` of each catalog model makes (memprof.simulate reads them)
SIMULATIONS_DIR = CATALOG_DIR / "simulations"


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
    context (a per-card constant in gpus.json; `context_measured` says whether memprof measured it,
    `context_given` that a user's --gpu-file gave it). A speed or price of 0.0 is unknown (a --gpu-file
    card that did not give it): plan then estimates no step time or cost for the card."""

    name: str
    memory_bytes: int
    bf16_dense_tflops: float
    memory_bandwidth_gbs: float
    usd_per_hour: float
    tier_gb: int
    context_bytes: int = 0
    context_measured: bool = False
    note: str = ""
    context_given: bool = False

    @property
    def usable_bytes(self) -> int:
        return self.memory_bytes - self.context_bytes

    @property
    def context_label(self) -> str:
        """Where the context figure comes from: measured, given in a --gpu-file, or a shipped estimate."""
        if self.context_measured:
            return "measured"
        return "given" if self.context_given else "not measured"


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


GPU_REQUIRED_FIELDS = ("name", "memory_mib", "context_mib")
# Optional for a new card, so that what `memprof gpus --measure-context` prints for any card is an entry
# plan takes: without them (0.0 in Gpu: unknown) plan fits memory but estimates no step time or cost.
GPU_SPEED_FIELDS = ("bf16_dense_tflops", "memory_bandwidth_gbs", "usd_per_hour")
GPU_OPTIONAL_FIELDS = (*GPU_SPEED_FIELDS, "context_measured", "tier_gb", "note")
GPU_FILE_EXAMPLE = (
    '{"gpus": [{"name": "T4", "usd_per_hour": 0.25}, {"name": "My card", "memory_mib": 49152, "context_mib": 512, '
    '"bf16_dense_tflops": 180, "memory_bandwidth_gbs": 960, "usd_per_hour": 1.2}]}'
)
# fields that must be finite numbers > 0 -> what they are
_POSITIVE_NUMBERS = {
    "memory_mib": "total memory in MiB",
    "bf16_dense_tflops": "dense bf16 TFLOP/s",
    "memory_bandwidth_gbs": "memory bandwidth in GB/s",
    "usd_per_hour": "USD per hour",
}


def _number(value, *, where: str, field: str, what: str, zero_ok: bool = False) -> float:
    from memprof.errors import GpuFileError

    bound = ">= 0" if zero_ok else "> 0"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        raise GpuFileError(f"{where}: {field} must be a finite number {bound} ({what}), not {json.dumps(value)}")
    return value


def _gpu_from_json(g, where: str, base: Gpu | None = None, *, user: bool = False) -> Gpu:
    """One entry of a GPU file (`user`: a --gpu-file, not the shipped table). With `base` (the shipped
    card of the same name) omitted fields keep the shipped values; without it every required field
    must be there."""
    from memprof.errors import GpuFileError

    if not isinstance(g, dict):
        raise GpuFileError(f'{where}: must be an object like {{"name": "T4", ...}}, not {json.dumps(g)}')
    name = g.get("name")
    if not isinstance(name, str) or not name.strip():
        raise GpuFileError(f"{where}: name must be a non-empty string, not {json.dumps(name)}")
    name = name.strip()
    where = f"{where} ({name!r})"
    unknown = sorted(set(g) - set(GPU_REQUIRED_FIELDS) - set(GPU_OPTIONAL_FIELDS))
    if unknown:
        known = ", ".join((*GPU_REQUIRED_FIELDS, *GPU_OPTIONAL_FIELDS))
        raise GpuFileError(f"{where}: unknown field {', '.join(unknown)}; the fields are {known}")
    if base is None:
        missing = [k for k in GPU_REQUIRED_FIELDS if k not in g]
        if missing:
            raise GpuFileError(
                f"{where}: not a shipped card (see `memprof gpus`), so it needs {', '.join(missing)} too"
                + (" (the CUDA context in MiB; 0 to count none)" if missing == ["context_mib"] else "")
            )
    values = {}
    for field, what in _POSITIVE_NUMBERS.items():
        if field in g:
            values[field] = _number(g[field], where=where, field=field, what=what)
    memory_bytes = round(values["memory_mib"] * 2**20) if "memory_mib" in values else base.memory_bytes
    context_bytes = base.context_bytes if base is not None else 0
    context_given = base.context_given if base is not None else False
    context_measured = base.context_measured if base is not None else False
    if "context_mib" in g:
        what = "the CUDA context in MiB"
        context_bytes = round(
            _number(g["context_mib"], where=where, field="context_mib", what=what, zero_ok=True) * 2**20
        )
        context_given, context_measured = user, False
    if "context_measured" in g:
        if not isinstance(g["context_measured"], bool):
            raise GpuFileError(
                f"{where}: context_measured must be true or false, not {json.dumps(g['context_measured'])}"
            )
        context_measured = g["context_measured"]
    if context_bytes >= memory_bytes:
        raise GpuFileError(
            f"{where}: context_mib ({context_bytes / 2**20:g}) must be less than memory_mib ({memory_bytes / 2**20:g})"
        )
    tier_gb = base.tier_gb if base is not None and "memory_mib" not in g else round(memory_bytes / 1e9)
    if "tier_gb" in g:
        tier = g["tier_gb"]
        if isinstance(tier, bool) or not isinstance(tier, int) or tier <= 0:
            raise GpuFileError(f"{where}: tier_gb must be a whole number > 0 (marketed GB), not {json.dumps(tier)}")
        tier_gb = tier
    note = base.note if base is not None else ""
    if "note" in g:
        if not isinstance(g["note"], str):
            raise GpuFileError(f"{where}: note must be a string, not {json.dumps(g['note'])}")
        note = g["note"]

    def pick(field: str, inherited: float) -> float:
        return float(values[field]) if field in values else inherited

    return Gpu(
        name=name if base is None else base.name,
        memory_bytes=memory_bytes,
        bf16_dense_tflops=pick("bf16_dense_tflops", base.bf16_dense_tflops if base else 0.0),
        memory_bandwidth_gbs=pick("memory_bandwidth_gbs", base.memory_bandwidth_gbs if base else 0.0),
        usd_per_hour=pick("usd_per_hour", base.usd_per_hour if base else 0.0),
        tier_gb=tier_gb,
        context_bytes=context_bytes,
        context_measured=context_measured,
        note=note,
        context_given=context_given,
    )


def _norm_gpu_name(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _read_gpu_file(file: Path) -> list:
    from memprof.errors import GpuFileError

    shape = f'an object {{"gpus": [...]}}, e.g. {GPU_FILE_EXAMPLE}'
    try:
        data = json.loads(Path(file).expanduser().read_text())
    except OSError as exc:
        raise GpuFileError(f"cannot read GPU file {file}: {exc.strerror}") from None
    except ValueError as exc:
        raise GpuFileError(f"GPU file {file} is not valid JSON: {exc}") from None
    if isinstance(data, list):
        raise GpuFileError(f"GPU file {file} is a list; it must be {shape}")
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise GpuFileError(f"GPU file {file} must be {shape}")
    return data["gpus"]


@cache
def _shipped_gpus() -> tuple[Gpu, ...]:
    file = CATALOG_DIR / "gpus.json"
    return tuple(_gpu_from_json(g, f"{file}: gpus[{i}]") for i, g in enumerate(_read_gpu_file(file)))


def gpus(path: Path | None = None) -> tuple[Gpu, ...]:
    """The GPU table shipped with memprof, or the cards of a user's file (raises GpuFileError).

    A user's entry named like a shipped card (case, spaces and dashes ignored) overrides only the
    fields it gives; any other entry is a new card and needs every field of GPU_REQUIRED_FIELDS.
    """
    from memprof.errors import GpuFileError

    if path is None:
        return _shipped_gpus()
    shipped = {_norm_gpu_name(g.name): g for g in _shipped_gpus()}
    out: list[Gpu] = []
    seen: dict[str, int] = {}
    for i, g in enumerate(_read_gpu_file(path)):
        where = f"{path}: gpus[{i}]"
        name = g.get("name") if isinstance(g, dict) else None
        key = _norm_gpu_name(name) if isinstance(name, str) else ""
        if key and key in seen:
            raise GpuFileError(f"{where}: {name!r} is already gpus[{seen[key]}]; give each card once")
        gpu = _gpu_from_json(g, where, shipped.get(key) if key else None, user=True)
        seen[key] = i
        out.append(gpu)
    return tuple(out)


def gpus_with(user_file: Path | None = None) -> tuple[Gpu, ...]:
    """The shipped table with a user's file applied: an entry named like a shipped card replaces it
    (with the fields it omits kept), new names are added at the end."""
    table = list(gpus())
    if user_file is None:
        return tuple(table)
    for gpu in gpus(user_file):
        same = [i for i, g in enumerate(table) if _norm_gpu_name(g.name) == _norm_gpu_name(gpu.name)]
        if same:
            table[same[0]] = gpu
        else:
            table.append(gpu)
    return tuple(table)


def _gpu_matches(name: str, table: tuple[Gpu, ...]) -> list[Gpu]:
    """The cards `name` may mean: the one whose name it is (case, spaces and dashes ignored), else every
    card whose name has a word starting with it ("h100" -> H100 80GB, "4090" -> RTX 4090)."""
    key = _norm_gpu_name(name)
    if not key:
        return []
    exact = [g for g in table if _norm_gpu_name(g.name) == key]
    if exact:
        return exact[:1]
    return [
        g
        for g in table
        if any(_norm_gpu_name(" ".join(g.name.split()[i:])).startswith(key) for i in range(len(g.name.split())))
    ]


def find_gpu(name: str, table: tuple[Gpu, ...] | None = None) -> Gpu | None:
    """The card a user's GPU name means in `table` (default: the shipped one), or None if it means none
    or several. The one rule for GPU names on every command (plan --gpus/--gpu, profile --gpu)."""
    matches = _gpu_matches(name, gpus() if table is None else table)
    return matches[0] if len(matches) == 1 else None


def lookup_gpu(name: str, table: tuple[Gpu, ...] | None = None, *, error: type[Exception], hint: str = "") -> Gpu:
    """find_gpu, or `error` (the command's option error) in one line: the cards the name could mean,
    or the known ones (+ `hint`)."""
    table = gpus() if table is None else table
    matches = _gpu_matches(name, table)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise error(f"GPU {name!r} could be {' or '.join(g.name for g in matches)}; give one of them")
    known = ", ".join(g.name for g in table)
    raise error(f"unknown GPU {name!r}; known: {known}" + (f" ({hint})" if hint else ""))


def gpu_for_device_name(device_name: str | None, table: tuple[Gpu, ...] | None = None) -> Gpu | None:
    """The card a CUDA device name is ('NVIDIA H100 80GB HBM3' -> H100 80GB), or None: the longest
    card name whose every word is in the device name (so "H100 80GB" wins over a bare "H100")."""
    if not device_name:
        return None
    words = device_name.lower()
    table = gpus() if table is None else table
    matches = [g for g in table if all(tok in words for tok in g.name.lower().split())]
    return max(matches, key=lambda g: len(g.name), default=None)
