"""Exact bytes of live tensor storages, counted with a torch dispatch mode.

`LiveBytesTracker` sees every op dispatched while it is active. Each distinct storage an op's
outputs live in is counted once (views and in-place results add nothing), and a weakref
finalizer on the untyped storage subtracts its bytes the moment the storage is freed, so
`current_bytes` and `peak_bytes` are exact for the tensors the tracker knows about: those created
by ops inside it, plus any registered with `track()` (weights loaded earlier, inputs).

It depends only on torch, so it works on any device and under FakeTensorMode (fake tensors have
meta storages whose nbytes are the real sizes).

A storage resized in place without an op is seen too: FSDP2 frees a layer's unsharded parameters
after its forward and backward with `untyped_storage().resize_(0)` (and allocates them again with
`resize_(n)`), which no dispatch mode sees, while autograd still holds the tensors. While a tracker
is active, `UntypedStorage.resize_` tells it (`_storage_resized`); without that, every layer's
unsharded parameters would count as live until the step ends.

    with LiveBytesTracker() as t:
        t.track(model)                       # count the weights that already exist
        with t.phase("forward"):
            model(x)
    t.peak_bytes, t.phase_peak_bytes["forward"], t.breakdown_at_peak({"weights": params})
"""

from __future__ import annotations

import bisect
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

BEFORE_TRACKING = "before tracking"  # made_by of storages registered with track(), with describe


@dataclass
class _Record:
    """One storage's life: its bytes and the event numbers at which it appeared and was freed.

    With `describe`, also what made it (an op, or BEFORE_TRACKING) and the first tensor seen on it
    (its shape and dtype), kept as objects: turned into text only for `held_at_peak`."""

    nbytes: int
    born: int
    died: int | None = None
    made_by: object = None
    shape: object = None
    dtype: object = None


@dataclass(frozen=True)
class HeldStorage:
    """A storage live at the peak: its bytes, what made it, a tensor's shape and dtype on it, and its
    kind where a category passed to `held_at_peak` claims it (else None)."""

    nbytes: int
    made_by: str | None
    shape: tuple[int, ...] | None
    dtype: str | None
    kind: str | None = None


_ACTIVE: list[LiveBytesTracker] = []  # trackers inside their `with` block, told of storage resizes
# while wrapped: UntypedStorage.resize_ as torch has it, and whether the class itself defines it (else
# it is inherited, and is inherited again once no tracker is active)
_SAVED_RESIZE: tuple[Callable, bool] | None = None


def _resize_seen(storage, size):
    out = _SAVED_RESIZE[0](storage, size)
    for tracker in tuple(_ACTIVE):
        tracker._storage_resized(storage)
    return out


def _watch_storage_resizes(tracker: LiveBytesTracker) -> None:
    global _SAVED_RESIZE
    import torch

    if _SAVED_RESIZE is None:
        _SAVED_RESIZE = (torch.UntypedStorage.resize_, "resize_" in vars(torch.UntypedStorage))
        torch.UntypedStorage.resize_ = _resize_seen
    _ACTIVE.append(tracker)


def _unwatch_storage_resizes(tracker: LiveBytesTracker) -> None:
    global _SAVED_RESIZE
    import torch

    if tracker in _ACTIVE:
        _ACTIVE.remove(tracker)
    if not _ACTIVE and _SAVED_RESIZE is not None:
        resize, own = _SAVED_RESIZE
        if own:
            torch.UntypedStorage.resize_ = resize
        else:
            del torch.UntypedStorage.resize_
        _SAVED_RESIZE = None


class LiveBytesTracker(TorchDispatchMode):
    """Counts the bytes of live tensor storages; see the module docstring."""

    def __init__(self, *, real_only: bool = False, describe: bool = False) -> None:
        """`real_only`: leave out meta storages (fake and meta tensors hold no memory), for measuring
        code that may itself simulate on fake tensors. `describe`: keep what made each storage."""
        super().__init__()
        self._real_only = real_only
        self._describe = describe
        self._live: dict[int, _Record] = {}  # StorageImpl address -> record, while alive
        self._records: list[_Record] = []
        self._event = 0
        self._peak_event = 0
        self.current_bytes = 0
        self.peak_bytes = 0
        self.phase_peak_bytes: dict[str, int] = {}
        self._phases: list[str] = []
        self.phase_events: list[tuple[str, int, int]] = []  # (name, start_event, end_event) per phase() block
        self._resizes: list[tuple[int, _Record, int]] = []  # (event, record, delta bytes)

    def __enter__(self):
        _watch_storage_resizes(self)
        try:
            return super().__enter__()
        except BaseException:
            _unwatch_storage_resizes(self)
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            _unwatch_storage_resizes(self)

    # -- counting -------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        made_by = func if self._describe else None
        for t in tree_flatten(out)[0]:
            self._see(t, made_by)
        return out

    def track(self, *objs) -> int:
        """Count tensors that already exist (tensors, modules' params/buffers/grads, iterables of them).

        Returns the bytes newly counted (storages already known add nothing).
        """
        before = self.current_bytes
        for t in _tensors(objs):
            self._see(t, BEFORE_TRACKING if self._describe else None)
        return self.current_bytes - before

    def _see(self, t, made_by: object = None) -> None:
        import torch

        if not isinstance(t, torch.Tensor):
            return
        storage = _local(t).untyped_storage()
        if self._real_only and storage.device.type == "meta":
            return
        key = storage._cdata
        nbytes = storage.nbytes()
        record = self._live.get(key)
        if record is not None:
            self._resize(record, nbytes)  # resized in place (resize_, out= ops)
            return
        self._event += 1
        record = _Record(nbytes, self._event)
        if self._describe:
            record.made_by, record.shape, record.dtype = made_by, t.shape, t.dtype
        self._live[key] = record
        self._records.append(record)
        weakref.finalize(storage, self._free, key, record)
        self._grow(nbytes)

    def _storage_resized(self, storage) -> None:
        """A storage resized in place outside dispatch (UntypedStorage.resize_): a known one's bytes
        change as an op's in-place resize does. One never seen is left to the op that outputs it."""
        record = self._live.get(storage._cdata)
        if record is not None:
            self._resize(record, storage.nbytes())

    def _resize(self, record: _Record, nbytes: int) -> None:
        if record.nbytes != nbytes:
            self._event += 1  # its own event, so every event is one change (kind_series is exact)
            self._resizes.append((self._event, record, nbytes - record.nbytes))
            self._grow(nbytes - record.nbytes)
            record.nbytes = nbytes

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
        start_event = self._event
        try:
            yield
        finally:
            self._phases.remove(name)
            self.phase_events.append((name, start_event, self._event))

    def reset_peak(self) -> None:
        """Start a new peak from the bytes live now."""
        self.peak_bytes = self.current_bytes
        self._peak_event = self._event

    def key_of(self, t) -> int:
        return _local(t).untyped_storage()._cdata

    def held_at_peak(self, largest: int = 5, categories: dict[str, Iterable] | None = None) -> list[HeldStorage]:
        """The `largest` storages live at the peak, biggest first (needs `describe=True`).

        `categories` as in `breakdown_at_peak` (tensors alive now) names the kind of those it holds."""
        if not self._describe:
            raise ValueError("held_at_peak needs LiveBytesTracker(describe=True)")
        kinds: dict[int, str] = {}
        for name, objs in (categories or {}).items():
            for t in _tensors([objs]):
                record = self._live.get(self.key_of(t))
                if record is not None:
                    kinds.setdefault(id(record), name)
        event = self._peak_event
        at_peak = {id(r): r for r in self._records if r.born <= event and (r.died is None or r.died > event)}
        nbytes = self._nbytes_at(event, at_peak)
        largest_first = sorted(at_peak.values(), key=lambda r: nbytes[id(r)], reverse=True)
        return [
            HeldStorage(
                nbytes[id(r)], str(r.made_by), tuple(r.shape), str(r.dtype).removeprefix("torch."), kinds.get(id(r))
            )
            for r in largest_first[:largest]
        ]

    @property
    def peak_event(self) -> int:
        """The moment of the peak (an event number), for `breakdown_at` after later phases ran."""
        return self._peak_event

    def breakdown_at_peak(self, categories: dict[str, Iterable]) -> dict[str, int]:
        """Bytes live at the peak, split by category; what no category claims goes to "other".

        `categories` maps a name to tensors (or modules, or iterables) alive now; a storage is
        claimed by the first category that names it. The values sum to `peak_bytes`.
        """
        return self.breakdown_at(self._peak_event, categories)

    def breakdown_at(self, event: int, categories: dict[str, Iterable]) -> dict[str, int]:
        """As `breakdown_at_peak`, at an earlier moment (a phase's peak_event)."""
        at_peak = {id(r): r for r in self._records if r.born <= event and (r.died is None or r.died > event)}
        nbytes = self._nbytes_at(event, at_peak)
        result: dict[str, int] = {}
        for name, objs in categories.items():
            total = 0
            for t in _tensors([objs]):
                record = self._live.get(self.key_of(t))
                if record is not None and id(record) in at_peak:
                    total += nbytes[id(at_peak.pop(id(record)))]
            result[name] = total
        result["other"] = sum(nbytes[id(r)] for r in at_peak.values())
        return result

    def _nbytes_at(self, event: int, records: dict[int, _Record]) -> dict[int, int]:
        """Each record's bytes at `event` (id -> bytes): its bytes now, less the resizes after it
        (FSDP2 frees and re-allocates unsharded parameters in place many times a step)."""
        nbytes = {key: r.nbytes for key, r in records.items()}
        for at, record, delta in self._resizes:
            if at > event and id(record) in nbytes:
                nbytes[id(record)] -= delta
        return nbytes

    def bytes_over_events(self, tensors: Iterable, events: list[int]) -> list[int]:
        """Bytes of the storages of `tensors` (alive now) live at each of `events` (ascending), as
        `breakdown_at` counts them at each: from the event that made each to the one that freed it,
        at its size then. `kind_series` answers this for every event; this costs only these storages'
        lives, as a simulated step's every region asks it."""
        records = {}
        for t in _tensors([tensors]):
            record = self._live.get(self.key_of(t))
            if record is not None:
                records[id(record)] = record
        resized: dict[int, int] = {}  # record -> bytes resized since it was born (its bytes then: now less these)
        delta = [0] * (len(events) + 1)
        for at, record, change in self._resizes:
            if id(record) in records:
                resized[id(record)] = resized.get(id(record), 0) + change
                delta[bisect.bisect_left(events, at)] += change
        for record in records.values():
            first = bisect.bisect_left(events, record.born)
            end = len(events) if record.died is None else bisect.bisect_left(events, record.died)
            born_bytes = record.nbytes - resized.get(id(record), 0)
            delta[first] += born_bytes
            delta[end] -= record.nbytes
        return list(accumulate(delta[: len(events)]))

    @property
    def last_event(self) -> int:
        """The number of the latest event (0 before any): event e is the state after the e-th change."""
        return self._event

    def kind_series(
        self, categories: dict[str, Iterable], *, other: str = "other", earlier: Iterable[dict[int, str]] = ()
    ) -> dict[str, array]:
        """Live bytes of each kind after every event: `series[kind][e]` for e in 0..last_event.

        Exact, from the storages' lives: kinds are claimed as in `breakdown_at` (the first category
        naming a storage alive now claims it; the rest, freed ones included, is `other`), so at any
        event the kinds sum to the live bytes then, their maximum over all events is `peak_bytes`
        (without `reset_peak`), and at `peak_event` they equal `breakdown_at_peak(categories)`.
        `earlier`: snapshots from `claims` taken before, which name first
        (the previous step's grads, freed by zero_grad, stay grads rather than `other`).
        O(records + events); int64 arrays, 8 bytes per event and kind.
        Each `phase_events` block (name, start, end) covers events start..end (start: on entry).
        """
        if other in categories:
            raise ValueError(f"{other!r} is both a category and the name for the rest")
        claimed: dict[int, str] = {}
        for snapshot in [*earlier, self.claims(categories)]:
            for key, name in snapshot.items():
                claimed.setdefault(key, name)
        names = list(dict.fromkeys([*categories, *(n for n in claimed.values() if n != other), other]))
        n = self._event + 1
        deltas = {name: array("q", bytes(8 * n)) for name in names}
        resized: dict[int, int] = {}
        for event, record, delta in self._resizes:
            deltas[claimed.get(id(record), other)][event] += delta
            resized[id(record)] = resized.get(id(record), 0) + delta
        for r in self._records:
            d = deltas[claimed.get(id(r), other)]
            d[r.born] += r.nbytes - resized.get(id(r), 0)  # its bytes when born
            if r.died is not None:
                d[r.died] -= r.nbytes
        return {name: array("q", accumulate(d)) for name, d in deltas.items()}

    def claims(self, categories: dict[str, Iterable]) -> dict[int, str]:
        """Which kind each storage alive now is (the first category naming it), as an opaque snapshot
        for `kind_series(earlier=...)`: what is freed before then keeps its kind."""
        claimed: dict[int, str] = {}
        for name, objs in categories.items():
            for t in _tensors([objs]):
                record = self._live.get(self.key_of(t))
                if record is not None:
                    claimed.setdefault(id(record), name)
        return claimed


def _local(t):
    """A DTensor (FSDP2's sharded parameters and grads) holds its local shard: that is its memory."""
    return getattr(t, "_local_tensor", t)


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
