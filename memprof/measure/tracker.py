"""Exact bytes of live tensor storages, counted with a torch dispatch mode.

`LiveBytesTracker` sees every op dispatched while it is active. Each distinct storage an op's
outputs live in is counted once (views and in-place results add nothing), and a weakref
finalizer on the untyped storage subtracts its bytes the moment the storage is freed, so
`current_bytes` and `peak_bytes` are exact for the tensors the tracker knows about: those created
by ops inside it, plus any registered with `track()` (weights loaded earlier, inputs).

It depends only on torch, so it works on any device and under FakeTensorMode (fake tensors have
meta storages whose nbytes are the real sizes).

    with LiveBytesTracker() as t:
        t.track(model)                       # count the weights that already exist
        with t.phase("forward"):
            model(x)
    t.peak_bytes, t.phase_peak_bytes["forward"], t.breakdown_at_peak({"weights": params})
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class _Record:
    """One storage's life: its bytes and the event numbers at which it appeared and was freed."""

    nbytes: int
    born: int
    died: int | None = None


class LiveBytesTracker(TorchDispatchMode):
    """Counts the bytes of live tensor storages; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, _Record] = {}  # StorageImpl address -> record, while alive
        self._records: list[_Record] = []
        self._event = 0
        self._peak_event = 0
        self.current_bytes = 0
        self.peak_bytes = 0
        self.phase_peak_bytes: dict[str, int] = {}
        self._phases: list[str] = []

    # -- counting -------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._see(t)
        return out

    def track(self, *objs) -> int:
        """Count tensors that already exist (tensors, modules' params/buffers/grads, iterables of them).

        Returns the bytes newly counted (storages already known add nothing).
        """
        before = self.current_bytes
        for t in _tensors(objs):
            self._see(t)
        return self.current_bytes - before

    def _see(self, t) -> None:
        import torch

        if not isinstance(t, torch.Tensor):
            return
        storage = t.untyped_storage()
        key = storage._cdata
        nbytes = storage.nbytes()
        record = self._live.get(key)
        if record is not None:
            if record.nbytes != nbytes:  # resized in place (resize_, out= ops)
                self._grow(nbytes - record.nbytes)
                record.nbytes = nbytes
            return
        self._event += 1
        record = _Record(nbytes, self._event)
        self._live[key] = record
        self._records.append(record)
        weakref.finalize(storage, self._free, key, record)
        self._grow(nbytes)

    def _free(self, key: int, record: _Record) -> None:
        if self._live.get(key) is record:
            del self._live[key]
        self._event += 1
        record.died = self._event
        self.current_bytes -= record.nbytes

    def _grow(self, delta: int) -> None:
        self.current_bytes += delta
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self._peak_event = self._event
        for name in self._phases:
            if self.current_bytes > self.phase_peak_bytes[name]:
                self.phase_peak_bytes[name] = self.current_bytes

    # -- phases and peaks -----------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the peak of live bytes while the block runs as `phase_peak_bytes[name]` (max over repeats)."""
        self.phase_peak_bytes[name] = max(self.phase_peak_bytes.get(name, 0), self.current_bytes)
        self._phases.append(name)
        try:
            yield
        finally:
            self._phases.remove(name)

    def reset_peak(self) -> None:
        """Start a new peak from the bytes live now."""
        self.peak_bytes = self.current_bytes
        self._peak_event = self._event

    def key_of(self, t) -> int:
        return t.untyped_storage()._cdata

    def breakdown_at_peak(self, categories: dict[str, Iterable]) -> dict[str, int]:
        """Bytes live at the peak, split by category; what no category claims goes to "other".

        `categories` maps a name to tensors (or modules, or iterables) alive now; a storage is
        claimed by the first category that names it. The values sum to `peak_bytes`.
        """
        at_peak = {
            id(r): r
            for r in self._records
            if r.born <= self._peak_event and (r.died is None or r.died > self._peak_event)
        }
        result: dict[str, int] = {}
        for name, objs in categories.items():
            total = 0
            for t in _tensors([objs]):
                record = self._live.get(self.key_of(t))
                if record is not None and id(record) in at_peak:
                    total += at_peak.pop(id(record)).nbytes
            result[name] = total
        result["other"] = sum(r.nbytes for r in at_peak.values())
        return result


def _tensors(objs) -> Iterator:
    """Tensors in objs: tensors, modules (parameters, buffers and their grads), or nested iterables."""
    import torch

    for obj in objs:
        if obj is None:
            continue
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                yield p
                if p.grad is not None:
                    yield p.grad
            yield from obj.buffers()
        elif isinstance(obj, dict):
            yield from _tensors(obj.values())
        elif isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
            yield from _tensors(obj)
