"""Device-level GPU memory as NVML sees it (includes the CUDA context), sampled in a thread.

`torch.cuda.max_memory_allocated` counts what the caching allocator handed out;
`max_memory_reserved` what it holds from the driver; NVML's `used` is everything the device has
in use: reserved memory, the CUDA context, cuBLAS workspaces, and other processes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuInfo:
    name: str
    driver: str | None
    memory_bytes: int | None


def gpu_info(index: int = 0) -> GpuInfo | None:
    """Name, driver version and total memory of GPU `index` from NVML, or None without NVML/GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no GPU: all mean "no NVML here"
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        total = pynvml.nvmlDeviceGetMemoryInfo(handle).total
        return GpuInfo(_text(name), _text(driver), int(total))
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlPeakSampler:
    """Samples NVML `used` bytes of one GPU every `interval_s` in a daemon thread; keeps the peak.

        with NvmlPeakSampler(0) as s:
            work()
        s.peak_bytes        # None when NVML is unavailable

    Sampling misses spikes shorter than the interval; the allocator peaks beside it are exact.
    """

    def __init__(self, index: int = 0, *, interval_s: float = 0.005) -> None:
        self.index = index
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None
        self._pynvml = None

    def __enter__(self) -> NvmlPeakSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self._pynvml = pynvml
        except Exception:
            return self
        self._sample()
        self._thread = threading.Thread(target=self._run, name="memprof-nvml", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        used = int(self._pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        self.samples += 1
        if self.peak_bytes is None or used > self.peak_bytes:
            self.peak_bytes = used

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def reset(self) -> None:
        """Forget the peak so far (the next sample starts a new one)."""
        self.peak_bytes = None
        if self._pynvml is not None:
            self._sample()

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._sample()
        if self._pynvml is not None:
            self._pynvml.nvmlShutdown()
        return False
