"""Count the bytes a loaded model's tensors really hold, independently of memprof's predictions.

Walks every parameter and buffer and every tensor hanging off them or their modules (bitsandbytes
keeps SCB on Int8Params and a QuantState on Params4bit, outside `parameters()`), and sums each
distinct storage once, so tied weights and views are not double counted.
"""

from __future__ import annotations

from collections.abc import Iterator


def _tensors_in(obj, depth: int = 0) -> Iterator:
    """Tensors reachable from a parameter's or module's attributes (QuantState, MatmulLtState...)."""
    import torch

    if depth > 3 or obj is None:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
        if depth < 3:
            for value in getattr(obj, "__dict__", {}).values():
                yield from _tensors_in(value, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors_in(item, depth + 1)
        return
    if isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors_in(item, depth + 1)
        return
    if type(obj).__module__.startswith("bitsandbytes"):
        for value in vars(obj).values():
            yield from _tensors_in(value, depth + 1)


def held_tensors(model) -> Iterator:
    import torch

    for module in model.modules():
        yield from module.parameters(recurse=False)
        yield from module.buffers(recurse=False)
        for name, value in vars(module).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            if isinstance(value, torch.nn.Module):
                continue  # back-references (bnb params keep .module); those are walked as modules
            yield from _tensors_in(value)
        for p in module.parameters(recurse=False):
            yield from _tensors_in(vars(p), 1)


def true_bytes(model) -> int:
    """Bytes of all distinct tensor storages reachable from the model."""
    seen: dict[tuple[str, int], int] = {}
    for t in held_tensors(model):
        if t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if storage.nbytes() == 0:
            continue
        seen[key] = max(seen.get(key, 0), storage.nbytes())
    return sum(seen.values())
