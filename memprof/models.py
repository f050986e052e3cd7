"""Resolve MODEL (a directory, a config.json, a catalog name, or a hub id in the local HF cache).

Resolution reads JSON only: no torch, no transformers, no network unless `allow_download=True`.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from memprof import catalog
from memprof.errors import ConfigError, UnknownModelError


@dataclass(frozen=True)
class ResolvedModel:
    """A model memprof can answer for: its config and where it came from."""

    name: str  # what to call it in reports: the hub id for catalog/cache models, else the path
    source: str  # "catalog", "path", "hf-cache" or "download"
    config: dict
    weights_dir: Path | None = None  # a directory that may hold safetensors weights

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    def safetensors_files(self) -> tuple[Path, ...]:
        if self.weights_dir is None:
            return ()
        return tuple(sorted(self.weights_dir.glob("*.safetensors")))

    def pickle_files(self) -> tuple[Path, ...]:
        if self.weights_dir is None:
            return ()
        return tuple(sorted(self.weights_dir.glob("*.bin")) + sorted(self.weights_dir.glob("*.pt")))


def read_config(path: Path) -> dict:
    """Read and check a config.json: a JSON object with a model_type."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(config).__name__}")
    if not isinstance(config.get("model_type"), str):
        raise ConfigError(f'{path} has no "model_type"; memprof needs it to pick the transformers model class')
    return config


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _find_in_hf_cache(hub_id: str) -> Path | None:
    """The snapshot directory of `hub_id` holding config.json, preferring the revision refs/main names."""
    repo = hf_cache_dir() / ("models--" + hub_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = snapshots / ref.read_text().strip()
        if (snapshot / "config.json").is_file():
            return snapshot
    candidates = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
    return max(candidates, key=lambda s: s.stat().st_mtime) if candidates else None


# One request to the hub, with this timeout and no retries, before the download. hf_hub_download alone
# retries a network error five times with backoff (about 24 s, logging each try) before it gives up.
DOWNLOAD_TIMEOUT_S = 5.0


def _download_config(hub_id: str) -> Path:
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise UnknownModelError("--allow-download needs huggingface_hub: pip install huggingface_hub") from None
    try:
        get_hf_file_metadata(hf_hub_url(hub_id, "config.json"), timeout=DOWNLOAD_TIMEOUT_S)
        return Path(hf_hub_download(hub_id, "config.json", etag_timeout=DOWNLOAD_TIMEOUT_S)).parent
    except Exception as exc:  # the hub client raises many types; the user needs the one line
        raise UnknownModelError(_download_error(hub_id, exc, endpoint=constants.ENDPOINT)) from None


def _download_error(hub_id: str, exc: Exception, *, endpoint: str) -> str:
    """One line for a failed config.json download: what went wrong and what would work."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    first_line = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    what = f"could not download config.json of {hub_id!r}"
    local = "give a local model directory or a catalog name (see `memprof models`)"
    if isinstance(exc, OfflineModeIsEnabled):
        return f"{what}: HF_HUB_OFFLINE is set; unset it to download, or {local}"
    if isinstance(exc, GatedRepoError):
        return f"{what}: the repository is gated; accept its terms on the hub and log in (`hf auth login`)"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{what}: no such model on {endpoint} (or it is private: log in with `hf auth login`); check the id"
    if isinstance(exc, EntryNotFoundError):
        return f"{what}: the repository has no config.json; {local}"
    if isinstance(exc, HfHubHTTPError):
        return f"{what} from {endpoint}: {first_line}"
    return (
        f"{what}: cannot reach {endpoint} ({first_line}; gave up after one try, {DOWNLOAD_TIMEOUT_S:g} s timeout); "
        f"check the network, proxy or HF_ENDPOINT, or {local}"
    )


def _close_names(name: str) -> list[str]:
    names = [m.hub_id for m in catalog.catalog_models()] + [a for m in catalog.catalog_models() for a in m.aliases]
    lower = {n.lower(): n for n in names}
    return [lower[n] for n in difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.5)]


def resolve_model(model: str | None = None, *, allow_download: bool = False) -> ResolvedModel:
    """Find MODEL's config. Order: existing path, catalog, local HF cache, then (if allowed) the hub."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise UnknownModelError(f"a model is a catalog name, a hub id or a path, not {model!r}")
    name = os.fspath(model) if model else catalog.default_model()
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            config_path = path / "config.json"
            if not config_path.is_file():
                raise ConfigError(f"{path} has no config.json; give a model directory or a path to its config.json")
            return ResolvedModel(str(path), "path", read_config(config_path), path)
        return ResolvedModel(str(path), "path", read_config(path), path.parent)

    entry = catalog.find_catalog_model(name)
    if entry is not None:
        return ResolvedModel(entry.hub_id, "catalog", entry.config())

    if name.count("/") == 1 and not name.startswith((".", "/")):
        snapshot = _find_in_hf_cache(name)
        if snapshot is not None:
            return ResolvedModel(name, "hf-cache", read_config(snapshot / "config.json"), snapshot)
        if allow_download:
            snapshot = _download_config(name)
            return ResolvedModel(name, "download", read_config(snapshot / "config.json"), snapshot)

    looks_like_path = name.startswith((".", "/", "~")) or name.endswith(".json") or name.count("/") > 1
    if looks_like_path:
        raise UnknownModelError(
            f"no such file or directory: {name!r}; give a model directory, its config.json, a catalog name "
            "(see `memprof models`) or a hub id"
        )
    hint = _close_names(name)
    close = f" Close catalog names: {', '.join(hint)}." if hint else ""
    raise UnknownModelError(
        f"unknown model {name!r}: not a path, not in the built-in catalog (see `memprof models`), "
        f"and not in the local Hugging Face cache ({hf_cache_dir()}).{close} "
        "Pass --allow-download to fetch a hub model's config.json."
    )
