"""First thing gpu_session.sh runs on the GPU machine: can everything it needs be imported, at the
versions memprof pins, and does torch see a GPU? One line either way; exit 1 if not, so no device
time goes to measurements that would fail on set-up.

    python3 scripts/gpu_preflight.py          # from the repository root, with PYTHONPATH as the session sets it
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
# module to import -> the distribution whose version memprof's pyproject.toml may pin
MODULES = {
    "memprof.cli": None,
    "pynvml": "nvidia-ml-py",
    "accelerate": "accelerate",
    "bitsandbytes": "bitsandbytes",
    "peft": "peft",
    "transformers": "transformers",
}


def _pins(pyproject: Path) -> dict[str, str]:
    """memprof's exact pins (name -> version) from pyproject.toml."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for text in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        req = Requirement(text)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def problems(
    modules: dict[str, str | None] | None = None, *, pyproject: Path = ROOT / "pyproject.toml", need_gpu: bool = True
) -> tuple[list[str], list[str]]:
    """(problems, found): what cannot be imported / is at another version than pinned / no GPU; and the versions."""
    modules = MODULES if modules is None else modules
    pins = _pins(pyproject)
    bad, found = [], []
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # ask NVML, as memprof's processes do
    try:  # the way the fork server imports it; if it cannot, each worker imports it itself (slower)
        from memprof.measure.nvml import import_bitsandbytes_without_cuda

        found.append(f"bitsandbytes without CUDA init: {'yes' if import_bitsandbytes_without_cuda() else 'NO'}")
    except BaseException as exc:
        bad.append(f"memprof.measure.nvml ({type(exc).__name__}: {exc})")
    for module, dist in modules.items():
        try:
            importlib.import_module(module)
        except BaseException as exc:  # a native library's SystemExit too: report it, never die of it
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            bad.append(f"{module} ({type(exc).__name__}: {first})" if first else f"{module} ({type(exc).__name__})")
            continue
        if dist is None:
            found.append(module)
            continue
        try:  # the first distribution on sys.path: the carried wheel when PYTHONPATH puts it first
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        pinned = pins.get(dist)
        if pinned is not None and version != pinned:
            bad.append(f"{module} is {version}, memprof pins {dist}=={pinned}")
        found.append(f"{module} {version}")
    if need_gpu and not bad:
        import torch

        if not torch.cuda.is_available():
            bad.append("torch sees no CUDA GPU")
        else:
            found.append(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    return bad, found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    bad, found = problems(need_gpu="--no-gpu" not in args)
    if bad:
        print("preflight FAILED: " + "; ".join(bad))
        return 1
    print("preflight ok: " + ", ".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
