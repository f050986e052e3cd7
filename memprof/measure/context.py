"""Measure the CUDA context: device memory a process holds that no torch allocator statistic shows.

NVML's `used` counts everything on the card; `torch.cuda.memory_reserved()` what the caching
allocator took from the driver (cuBLAS workspaces included: torch allocates them through it). So

    context = (used after CUDA is initialised and cuBLAS has run) - (used before) - reserved

is the CUDA context, the CUDA/cuBLAS/cuDNN modules loaded onto the card and the driver's own
per-process state: the constant `memprof plan` adds per card (catalog/gpus.json `context_mib`).
It must run in a process that has not touched CUDA yet, and is read with other processes on the
card subtracted (the `before` reading).
"""

from __future__ import annotations

from dataclasses import dataclass

from memprof.errors import DeviceError

MIB = 1 << 20


@dataclass(frozen=True)
class CudaContext:
    device_name: str
    driver: str | None
    torch_version: str
    cuda_version: str | None
    memory_bytes: int  # the card's total, as NVML reports it
    used_before_bytes: int  # NVML used before this process initialised CUDA (other processes)
    used_after_bytes: int  # NVML used after init, a bf16 matmul and a float32 one
    reserved_bytes: int  # torch.cuda.memory_reserved() then
    context_bytes: int  # used_after - used_before - reserved
    catalog_name: str | None  # the catalog card this device is, if any

    @property
    def context_mib(self) -> int:
        """Rounded up to whole MiB: what a --gpu-file entry takes."""
        return -(-self.context_bytes // MIB)

    def gpu_file_entry(self) -> dict:
        """An entry for `memprof plan --gpu-file` giving this card's measured context. A card outside
        the catalog is a new card there, which needs its memory too (its speed and price stay unknown)."""
        if self.catalog_name:
            return {"name": self.catalog_name, "context_mib": self.context_mib, "context_measured": True}
        memory_mib = self.memory_bytes // MIB  # whole MiB, rounded down: never more than the card has
        return {
            "name": self.device_name,
            "memory_mib": memory_mib,
            "context_mib": self.context_mib,
            "context_measured": True,
        }


def context_bytes(used_before: int, used_after: int, reserved: int) -> int:
    return used_after - used_before - reserved


def measure_cuda_context(index: int = 0) -> CudaContext:
    """Initialise CUDA in this process and read what it cost on CUDA device `index` (see the module docstring).

    Every card's NVML reading is taken before CUDA exists here; which card is CUDA's `index` is
    known only after (CUDA_VISIBLE_DEVICES may hide and reorder cards), matched by UUID or PCI id.
    """
    import os

    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() through NVML, not CUDA
    import torch

    if not torch.cuda.is_available():
        raise DeviceError("measuring the CUDA context needs a CUDA GPU, and torch sees none here")
    if torch.cuda.is_initialized():
        raise DeviceError("CUDA is already initialised in this process; measure the context in a fresh one")
    import pynvml

    from memprof.measure.nvml import _text, nvml_handle_for_cuda_device, uuid_key

    pynvml.nvmlInit()
    try:
        before_by_uuid = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            before_by_uuid[uuid_key(pynvml.nvmlDeviceGetUUID(handle))] = int(
                pynvml.nvmlDeviceGetMemoryInfo(handle).used
            )
        device = torch.device("cuda", index)
        # load what a profiled step loads: the context, cuBLAS (bf16 and fp32 GEMMs) and its workspace
        for dtype in (torch.bfloat16, torch.float32):
            a = torch.ones(256, 256, dtype=dtype, device=device)
            (a @ a).sum().item()
        torch.cuda.synchronize(device)
        reserved = int(torch.cuda.memory_reserved(device))
        handle = nvml_handle_for_cuda_device(pynvml, index)
        if handle is None:
            raise DeviceError(
                f"NVML lists no card with the UUID or PCI id of CUDA device {index}; cannot read its memory"
            )
        after = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        before = before_by_uuid[uuid_key(pynvml.nvmlDeviceGetUUID(handle))]
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    finally:
        pynvml.nvmlShutdown()
    from memprof.catalog import gpu_for_device_name  # after the readings: nothing imported may touch CUDA first

    name = torch.cuda.get_device_name(device)
    card = gpu_for_device_name(name)
    return CudaContext(
        device_name=name,
        driver=driver,
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        memory_bytes=total,
        used_before_bytes=before,
        used_after_bytes=after,
        reserved_bytes=reserved,
        context_bytes=context_bytes(before, after, reserved),
        catalog_name=card.name if card else None,
    )
