"""memprof's pytest plugin: `@pytest.mark.limit_torch_memory("24 GiB", device="auto")`.

Registered by installing memprof (the `pytest11` entry point). A marked test fails when its peak
of torch tensor memory is over the limit, with the peak, the limit and the largest tensors at the
peak in the failure text (memprof.testing measures; pytest-memray's `limit_memory` is the model for
Python heap memory). On CUDA the peak is the caching allocator's (reset when the test starts); on
the CPU it is memprof's exact live-tensor tracker, counting the tensors the test makes and those its
fixtures hand it. Unmarked tests are not tracked at all. A LIMIT that is not a size is a collection
error in one line.

This module is imported by every pytest run where memprof is installed: it imports neither torch
nor the rest of memprof until a marked test is collected.
"""

from __future__ import annotations

import pytest

MARKER = "limit_torch_memory"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(limit, device='auto'): fail the test when its peak of torch tensor memory is over LIMIT "
        "(e.g. '24 GiB'): the CUDA allocator's peak, or on the CPU memprof's live-tensor tracker",
    )


def _marker_options(mark: pytest.Mark) -> tuple[object, str]:
    """(limit, device) of a marker, checked: a MemoryLimitError says what is wrong."""
    from memprof.testing import MemoryLimitError, check_device, parse_limit

    kwargs = dict(mark.kwargs)
    args = list(mark.args)
    if "limit" in kwargs:
        args.insert(0, kwargs.pop("limit"))
    device = kwargs.pop("device", "auto")
    if len(args) != 1 or kwargs:
        raise MemoryLimitError(
            f"{MARKER} takes one limit and an optional device=, e.g. {MARKER}('24 GiB', device='cuda')"
        )
    parse_limit(args[0])
    check_device(device)
    return args[0], device


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Check each marked test's options while collecting, so a bad LIMIT is a collection error."""
    made = yield
    items = made if isinstance(made, list) else [made] if made is not None else []
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        for mark in item.iter_markers(MARKER):
            from memprof.errors import MemprofError

            try:
                _marker_options(mark)
            except MemprofError as exc:
                raise collector.CollectError(f"{item.nodeid}: @pytest.mark.{MARKER}: {exc}") from None
    return made


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    mark = pyfuncitem.get_closest_marker(MARKER)
    if mark is None:
        return (yield)
    from memprof.errors import MemprofError
    from memprof.testing import check_limit, measure_torch_memory

    limit, device = _marker_options(mark)
    try:
        measuring = measure_torch_memory(device, holders=pyfuncitem.funcargs.values())
        measurement = measuring.__enter__()
    except MemprofError as exc:
        pytest.fail(f"@pytest.mark.{MARKER}: {exc}", pytrace=False)
    try:
        result = yield
    except BaseException:
        measuring.__exit__(None, None, None)  # stop tracking; the test's own failure is the report
        raise
    measuring.__exit__(None, None, None)
    failed = check_limit(limit, measurement.peak)
    if failed is not None:
        pytest.fail(failed.long_repr(), pytrace=False)
    return result
