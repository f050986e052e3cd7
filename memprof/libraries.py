"""Importing peft and bitsandbytes, the libraries whose layers memprof runs, without paying at import
for kernels it may never call.

bitsandbytes 0.50 wraps several of its default CPU kernels in `torch.compile` when it is imported
(backends/default/ops.py, `_try_torch_compile`). The first `torch.compile(fn)` of a process imports
dynamo's and inductor's compiler stack: about a second here, most of what `import bitsandbytes`
costs, paid by every plan and lora-params run that imports peft (peft imports bitsandbytes when it is
installed), though neither calls a compiled kernel. While bitsandbytes is imported through here,
`torch.compile(fn, ...)` returns a function that compiles `fn` on its first call instead: what runs
is the same compiled function, and a compile that fails still fails where bitsandbytes catches it
(its wrapper's call), falling back to `fn` as before. torch.compile itself is restored at once.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys


@contextlib.contextmanager
def _compile_on_first_call():
    import torch

    real = torch.compile

    def deferred(model=None, **options):
        if model is None:  # torch.compile(**options) as a decorator factory
            return lambda fn: deferred(fn, **options)
        compiled = None

        @functools.wraps(model)
        def call(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                compiled = real(model, **options)
            return compiled(*args, **kwargs)

        return call

    torch.compile = deferred
    try:
        yield
    finally:
        torch.compile = real


def import_library(name: str):
    """`import name` (peft, bitsandbytes or a module of theirs), bitsandbytes' import-time
    torch.compile calls deferred to their first use; the module."""
    if name in sys.modules or "bitsandbytes" in sys.modules:
        return importlib.import_module(name)
    with _compile_on_first_call():
        return importlib.import_module(name)
