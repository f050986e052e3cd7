"""Measure real loads: each setting in a fresh subprocess, from local safetensors or random weights."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from memprof.errors import DeviceError, MeasureError, SettingError
from memprof.models import ResolvedModel
from memprof.settings import Setting


@dataclass(frozen=True)
class MeasuredLoad:
    """What one real `from_pretrained` load held and cost. `error` is set instead when it failed."""

    footprint_bytes: int | None = None
    true_bytes: int | None = None
    load_s: float | None = None
    peak_bytes: int | None = None
    peak_kind: str | None = None
    peak_rss_bytes: int | None = None
    reserved_peak_bytes: int | None = None
    error: str | None = None


def check_device(device: str, settings: tuple[Setting, ...]) -> None:
    """Fail early, in one line, when the device or bitsandbytes cannot run what was asked."""
    if device not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}; use cpu or cuda")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu")
    if device == "cuda":
        # this process only plans and starts workers: its CUDA context would sit in their NVML peaks,
        # and importing bitsandbytes (peft does too) would create one (see import_bitsandbytes_without_cuda)
        from memprof.measure.nvml import import_bitsandbytes_without_cuda

        import_bitsandbytes_without_cuda()
    quantized = [s.name for s in settings if s.quantized]
    if quantized:
        try:
            import bitsandbytes  # noqa: F401
        except Exception as exc:  # ImportError, or a broken native library
            raise SettingError(
                f"settings {', '.join(quantized)} need bitsandbytes, which cannot be imported here ({exc}); "
                "install bitsandbytes>=0.50 or choose fp32/fp16/bf16"
            ) from None


def _run_worker(request: dict, *, timeout_s: float | None = None) -> dict:
    """Run one worker task (memprof.measure.worker) in a fresh process; failures become {"error": ...}."""
    from memprof.measure.fresh import run_fresh

    finished = run_fresh("memprof.measure.worker:run", request, timeout_s=timeout_s)
    if finished.result is not None:
        return finished.result
    return {"error": f"worker {finished.exit_reason()}"}


@contextmanager
def weights_for(
    model: ResolvedModel, *, trust_remote_code: bool = False, bf16_bytes_hint: int | None = None
) -> Iterator[tuple[Path, str]]:
    """A directory with safetensors weights for the model, and a description of where they came from.

    The model's own safetensors when it has them; else random weights written to a temporary
    directory. Pickled weights (*.bin) are never loaded.
    """
    if model.safetensors_files():
        yield model.weights_dir, f"local safetensors in {model.weights_dir}"
        return
    note = "random weights (no local safetensors)"
    if model.pickle_files():
        note = "random weights (only pickled *.bin weights found; memprof never loads pickles)"
    needed = bf16_bytes_hint
    free = available_bytes("cpu")
    if needed is not None and free is not None and needed > free:
        raise MeasureError(
            f"random weights for {model.name} need {needed / 2**30:.2f} GiB of host memory in bf16, "
            f"{free / 2**30:.2f} GiB available; measure a directory with safetensors weights, or a smaller model"
        )
    with tempfile.TemporaryDirectory(prefix="memprof-weights-") as tmp:
        result = _run_worker(
            {"task": "materialize", "config": model.config, "out_dir": tmp, "trust_remote_code": trust_remote_code}
        )
        if "error" in result:
            raise MeasureError(f"could not create random weights for {model.name}: {result['error']}")
        yield Path(tmp), note


def measure_load(weights_dir: Path, setting: Setting, *, device: str, trust_remote_code: bool = False) -> MeasuredLoad:
    result = _run_worker(
        {
            "task": "load",
            "weights_dir": str(weights_dir),
            "setting": dataclasses.asdict(setting),
            "device": device,
            "trust_remote_code": trust_remote_code,
        }
    )
    known = {f.name for f in dataclasses.fields(MeasuredLoad)}
    return MeasuredLoad(**{k: v for k, v in result.items() if k in known})


def available_bytes(device: str) -> int | None:
    """Memory a new load could use: MemAvailable on the CPU, free memory on the GPU; None if unknown."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _too_big(needed_bytes: int | None, device: str) -> str | None:
    free = available_bytes(device)
    if needed_bytes is None or free is None or needed_bytes <= free:
        return None
    where = "free GPU memory" if device == "cuda" else "available host memory"
    return f"skipped: the weights alone need {needed_bytes / 2**30:.2f} GiB, {free / 2**30:.2f} GiB {where}"


def measure_loads(
    model: ResolvedModel,
    settings: tuple[Setting, ...],
    *,
    device: str = "cpu",
    trust_remote_code: bool = False,
    predicted_true_bytes: dict[str, int] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, MeasuredLoad], str]:
    """Load the model once per setting, each in a fresh subprocess. Returns results and the weights' source.

    A setting whose predicted weights cannot fit in the memory available now is skipped with a
    reason instead of being run into the OOM killer.
    """
    check_device(device, settings)
    say = on_progress or (lambda _msg: None)
    predicted = predicted_true_bytes or {}
    bf16_bytes = predicted.get("bf16")
    say("preparing weights")
    with weights_for(model, trust_remote_code=trust_remote_code, bf16_bytes_hint=bf16_bytes) as (
        weights_dir,
        weights_note,
    ):
        results = {}
        for setting in settings:
            skipped = _too_big(predicted.get(setting.name), device)
            if skipped:
                results[setting.name] = MeasuredLoad(error=skipped)
                continue
            say(f"loading at {setting.name} on {device}")
            results[setting.name] = measure_load(
                weights_dir, setting, device=device, trust_remote_code=trust_remote_code
            )
    return results, weights_note
