"""Device-level GPU memory as NVML sees it (includes the CUDA context), sampled in a thread.

`torch.cuda.max_memory_allocated` counts what the caching allocator handed out;
`max_memory_reserved` what it holds from the driver; NVML's `used` is everything the device has
in use: reserved memory, the CUDA context, cuBLAS workspaces, and other processes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuInfo:
    name: str
    driver: str | None
    memory_bytes: int | None


def gpu_info(index: int = 0) -> GpuInfo | None:
    """Name, driver version and total memory of CUDA device `index`, from NVML, without initialising
    CUDA (see `nvml_index_before_cuda`); None without NVML, GPU, or a device CUDA would call `index`."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no GPU: all mean "no NVML here"
        return None
    try:
        nvml_index = nvml_index_before_cuda(pynvml, index)
        if nvml_index is None:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        total = pynvml.nvmlDeviceGetMemoryInfo(handle).total
        return GpuInfo(_text(name), _text(driver), int(total))
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


# ---------------------------------------------------------------------------------------------
# which NVML device is CUDA device i: CUDA_VISIBLE_DEVICES may hide and reorder cards, so NVML's
# index i (PCI order, every card) and CUDA's ordinal i (visible cards only) need not be one card


def uuid_key(value) -> str:
    """A card's UUID in one spelling: NVML and CUDA_VISIBLE_DEVICES write 'GPU-58bd...', torch '58bd...'."""
    text = _text(value).strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def nvml_handle_for_cuda_device(pynvml, index: int):
    """The NVML handle of the card this process's CUDA calls device `index`, or None if none matches.

    Matched by UUID (torch.cuda.get_device_properties(index).uuid against nvmlDeviceGetUUID), else by
    PCI domain/bus/device; never by position (except where the machine has one card and CUDA sees
    it: then there is no other to confuse it with). Needs CUDA initialised (get_device_properties does
    that), so it is for processes that own CUDA: the workers and the context measurement.
    """
    import torch

    props = torch.cuda.get_device_properties(index)
    uuid = uuid_key(getattr(props, "uuid", "") or "")
    pci = tuple(getattr(props, f"pci_{part}_id", None) for part in ("domain", "bus", "device"))
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    if uuid:
        for handle in handles:
            if uuid_key(pynvml.nvmlDeviceGetUUID(handle)) == uuid:
                return handle
    if None not in pci:
        for handle in handles:
            info = pynvml.nvmlDeviceGetPciInfo(handle)
            if (int(info.domain), int(info.bus), int(info.device)) == pci:
                return handle
    if len(handles) == 1 and torch.cuda.device_count() == 1:  # one card on the machine, one seen: that one
        return handles[0]
    return None


def nvml_index_before_cuda(pynvml, index: int) -> int | None:
    """NVML's index of what CUDA will call device `index`, read from CUDA_VISIBLE_DEVICES; CUDA untouched.

    For the parent process, which must never initialise CUDA (its context would sit on the card the
    workers measure). Entries are ordinals or UUID prefixes ('GPU-58bd'), as CUDA reads them; an
    ordinal means NVML's index only in PCI order, which CUDA follows with CUDA_DEVICE_ORDER=PCI_BUS_ID
    (scripts/gpu_session.sh sets it). None when CUDA would see no such device.
    """
    count = int(pynvml.nvmlDeviceGetCount())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return index if 0 <= index < count else None
    entries = [entry.strip() for entry in visible.split(",")]
    if not 0 <= index < len(entries) or not entries[index]:
        return None
    entry = entries[index]
    if entry.isdigit():
        return int(entry) if int(entry) < count else None
    key = uuid_key(entry)
    found = [
        i
        for i in range(count)
        if uuid_key(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))).startswith(key)
    ]
    return found[0] if len(found) == 1 else None  # CUDA ignores an ambiguous prefix too


# ---------------------------------------------------------------------------------------------
# bitsandbytes without CUDA


def import_bitsandbytes_without_cuda() -> bool:
    """Import bitsandbytes (which `import peft` imports too) without initialising CUDA here.

    bitsandbytes picks its native library at import by asking torch every device's compute
    capability, and torch answers that by initialising CUDA. In the measurement fork server that
    makes every forked worker fail ("Cannot re-initialize CUDA in forked subprocess"); in the parent
    it would hold a CUDA context on the card the workers' NVML peaks count. So, on a machine with a
    GPU and CUDA not yet initialised, the capability is read from NVML for the import. True when
    bitsandbytes is imported; False when it cannot be, or not safely (no NVML): then the process
    that owns CUDA imports it itself. Needs PYTORCH_NVML_BASED_CUDA_CHECK=1 for is_available() to
    leave CUDA alone too (set by the fork server and gpu_session.sh).
    """
    if "bitsandbytes" in sys.modules:
        return True
    import torch

    guard = contextlib.nullcontext()
    if torch.cuda.is_available() and not torch.cuda.is_initialized():
        try:
            guard = _capability_from_nvml(torch, _nvml_capabilities(torch))
        except Exception:  # no NVML here: leave bitsandbytes to the process that owns CUDA
            return False
    try:
        with guard:
            import bitsandbytes  # noqa: F401
    except Exception:  # a broken bitsandbytes: the worker that needs it reports it
        return False
    return True


def _nvml_capabilities(torch) -> dict[int, tuple[int, int]]:
    """Compute capability of every CUDA device, by CUDA ordinal, read from NVML."""
    import pynvml

    pynvml.nvmlInit()
    try:
        capabilities = {}
        for cuda_index in range(torch.cuda.device_count()):
            nvml_index = nvml_index_before_cuda(pynvml, cuda_index)
            if nvml_index is None:
                raise RuntimeError(f"NVML has no device for CUDA device {cuda_index}")
            handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            capabilities[cuda_index] = (int(major), int(minor))
        return capabilities
    finally:
        pynvml.nvmlShutdown()


@contextlib.contextmanager
def _capability_from_nvml(torch, capabilities: dict[int, tuple[int, int]]) -> Iterator[None]:
    """torch.cuda.get_device_capability answers from `capabilities` while inside, touching no CUDA."""

    def capability(device=None) -> tuple[int, int]:
        index = getattr(device, "idx", device)  # bitsandbytes passes torch.cuda.device(i)
        if isinstance(index, torch.device):
            index = index.index
        return capabilities[0 if index is None else int(index)]

    original = torch.cuda.get_device_capability
    torch.cuda.get_device_capability = capability
    try:
        yield
    finally:
        torch.cuda.get_device_capability = original


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlPeakSampler:
    """Samples NVML `used` bytes of CUDA device `index` every `interval_s` in a daemon thread; keeps the peak.

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
        except Exception:
            return self
        try:
            self._handle = nvml_handle_for_cuda_device(pynvml, self.index)
        except Exception:
            self._handle = None
        if self._handle is None:  # no card matches: no NVML peak rather than another card's
            pynvml.nvmlShutdown()
            return self
        self._pynvml = pynvml
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
