"""memprof.libraries: bitsandbytes' import-time torch.compile calls deferred to the first call of what
they compile, the same function then, and torch.compile itself untouched outside the import."""

from __future__ import annotations

import sys
import textwrap

import torch

from memprof.libraries import import_library


def test_torch_compile_runs_at_the_first_call_not_at_import(tmp_path, monkeypatch):
    compiled = []

    def counting_compile(fn=None, **options):
        compiled.append((fn.__name__, options))
        return lambda *args: ("compiled", fn(*args))

    monkeypatch.setattr(torch, "compile", counting_compile)
    (tmp_path / "compiles_at_import.py").write_text(
        textwrap.dedent(
            """
            import torch

            def double(x):
                return 2 * x

            fast_double = torch.compile(double, dynamic=False)

            @torch.compile(fullgraph=True)
            def triple(x):
                return 3 * x
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)  # as in a process that has not imported it
    module = import_library("compiles_at_import")
    assert compiled == []  # nothing compiled while importing
    assert torch.compile is counting_compile  # restored at once
    assert module.fast_double(4) == ("compiled", 8) and module.fast_double(5) == ("compiled", 10)
    assert module.triple(2) == ("compiled", 6)
    assert compiled == [("double", {"dynamic": False}), ("triple", {"fullgraph": True})]  # once each
    assert module.fast_double.__name__ == "double"


def test_a_compile_that_fails_fails_at_the_call_where_bitsandbytes_falls_back(tmp_path, monkeypatch):
    def failing_compile(fn=None, **options):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", failing_compile)
    (tmp_path / "falls_back.py").write_text(
        textwrap.dedent(
            """
            import torch

            def add_one(x):
                return x + 1

            compiled = torch.compile(add_one)

            def wrapper(x):  # bitsandbytes' _try_torch_compile: the compiled call, else the function
                try:
                    return compiled(x)
                except Exception:
                    return add_one(x)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    assert import_library("falls_back").wrapper(1) == 2


def test_bitsandbytes_imports_through_it_and_its_kernels_still_run():
    bnb = import_library("bitsandbytes")
    a = torch.randint(-127, 127, (3, 8), dtype=torch.int8)
    b = torch.randint(-127, 127, (5, 8), dtype=torch.int8)
    out = torch.ops.bitsandbytes.int8_linear_matmul(a, b)
    assert torch.equal(out, a.int() @ b.int().T)
    assert bnb.__name__ == "bitsandbytes"


def test_peft_without_the_compiler_stack():
    """What the deferral saves: importing peft (and bitsandbytes with it) imports no inductor."""
    import subprocess

    code = (
        "import sys; from memprof.libraries import import_library; import_library('peft'); "
        "print('bitsandbytes' in sys.modules, 'torch._inductor.compile_fx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
