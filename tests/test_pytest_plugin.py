"""The pytest plugin and memprof.testing: `@pytest.mark.limit_torch_memory(LIMIT)` and `assert_fits`.

The plugin tests run real inner pytest sessions (pytester, each in a fresh process: torch cannot be
imported twice in one), where the plugin is loaded the way a user gets it: through the installed
`pytest11` entry point.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from memprof.errors import MemprofError
from memprof.testing import MemoryLimitError, assert_fits, check_limit, measure_torch_memory, parse_limit

pytest_plugins = ["pytester"]

torch = pytest.importorskip("torch")

MIB = 2**20

ALLOCATES_4_MIB = """
import pytest, torch

@pytest.mark.limit_torch_memory({limit!r})
def test_allocates():
    x = torch.zeros(MIB, dtype=torch.float32)  # 4 MiB
    assert x.sum() == 0

MIB = 2**20
"""


def test_the_plugin_is_registered_by_installing_memprof():
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("memprof") == "memprof.pytest_plugin"


def test_a_test_over_its_limit_fails_with_the_measured_peak(pytester):
    pytester.makepyfile(ALLOCATES_4_MIB.format(limit="1 MiB"))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "torch memory peak 4.00 MiB (4,194,309 bytes) is over the limit '1 MiB' = 1.00 MiB by 3.00 MiB" in text
    assert "activations and temporaries: float32 [1048576], made by aten.zeros.default" in text
    assert "Traceback" not in text


def test_a_test_within_its_limit_passes(pytester):
    pytester.makepyfile(ALLOCATES_4_MIB.format(limit="16 MiB"))
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_without_the_marker_nothing_is_tracked(pytester):
    """An unmarked test runs with no dispatch mode active: torch sees no mode on its stack."""
    pytester.makepyfile(
        """
        import torch
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

        def test_unmarked():
            torch.zeros(2**20)
            assert _get_current_dispatch_mode_stack() == []
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_a_bad_limit_is_a_collection_error_in_one_line(pytester):
    pytester.makepyfile(ALLOCATES_4_MIB.format(limit="lots"))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*test_allocates: @pytest.mark.limit_torch_memory: cannot read limit 'lots' as a size; write e.g.*"]
    )
    assert "Traceback" not in result.stdout.str()


def test_a_bad_device_is_a_collection_error(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.limit_torch_memory("1 GiB", device="tpu")
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown device 'tpu'; use one of auto, cpu, cuda*"])


def test_fixtures_count_and_the_failure_names_their_kinds(pytester):
    """A model from a fixture counts from the start; the failure names weights, grads and states."""
    pytester.makepyfile(
        """
        import pytest, torch

        @pytest.fixture
        def model():
            return torch.nn.Linear(512, 512)  # 1 MiB of weights

        @pytest.mark.limit_torch_memory("2 MiB")
        def test_step(model):
            opt = torch.optim.AdamW(model.parameters())
            model(torch.ones(4, 512)).sum().backward()
            opt.step()
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "trainable parameters: float32 [512x512]" in text  # the fixture's weight, counted
    assert "grads: float32 [512x512]" in text


def test_fake_tensors_hold_no_memory():
    """A simulation on fake tensors (what plan does) counts nothing: they hold no memory."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with measure_torch_memory("cpu") as m, FakeTensorMode():
        torch.empty(2**30, dtype=torch.float32) * 2  # 4 GiB each, if they were real
    assert m.peak.peak_bytes == 0


@pytest.mark.limit_torch_memory("16 MiB")
def test_planning_llama_8b_qlora_on_fake_tensors_holds_almost_no_real_memory():
    """plan simulates Llama-3.1-8B's QLoRA step (tens of GiB if real) on fake tensors: guarded by the
    marker, a change that materialised real tensors in the simulation fails here."""
    from memprof.analyses.plan import plan

    report = plan("meta-llama/Llama-3.1-8B", task="qlora", seq=256, gpus=("H100 80GB",))
    assert report.breakdown.total_bytes > 5 * 2**30


@pytest.mark.parametrize(
    "text, expected",
    [("24 GiB", 24 * 2**30), ("512MiB", 512 * MIB), ("16GB", 16 * 10**9), ("1 KiB", 1024), (4096, 4096)],
)
def test_limits_read_as_sizes(text, expected):
    assert parse_limit(text) == expected


@pytest.mark.parametrize("bad", ["", "GiB", "ten MiB", -1, 1.5, None, True])
def test_bad_limits_are_one_line_errors(bad):
    with pytest.raises(MemoryLimitError) as info:
        parse_limit(bad)
    assert isinstance(info.value, MemprofError) and "\n" not in str(info.value)


def test_check_limit_returns_none_within_and_the_failure_over():
    with measure_torch_memory("cpu") as m:
        torch.ones(1024)  # 4 KiB, freed at once
    assert m.peak.peak_bytes == 4096
    assert check_limit("4 KiB", m.peak) is None
    failed = check_limit("1 KiB", m.peak)
    assert failed is not None and failed.limit_bytes == 1024


def test_assert_fits_returns_the_plan_when_the_step_fits():
    report = assert_fits("H100 80GB", "meta-llama/Llama-3.2-1B", task="lora", seq=256)
    assert report.gpus[0].fits


def test_assert_fits_fails_with_the_plans_breakdown_when_it_does_not():
    with pytest.raises(AssertionError) as info:
        assert_fits("RTX 4090", "meta-llama/Llama-3.1-8B", task="full", setting="bf16", seq=256)
    text = str(info.value)
    assert text.startswith("meta-llama/Llama-3.1-8B full (batch 1, seq 256) does not fit RTX 4090: it needs")
    first, *screen = text.splitlines()
    assert first.endswith("memprof plan's breakdown:") and "short by" in first
    assert any(line.startswith("meta-llama/Llama-3.1-8B") for line in screen)  # plan's title line
    assert "grads" in text and "optimizer" in text  # the breakdown at the peak


def test_the_shipped_example_passes_and_fails_once_its_budget_is_too_small(pytester):
    """examples/test_memory_budget.py, run as a user runs it; with a quarter of its budget the
    training step (128 MiB of weights, grads and AdamW states) must fail."""
    from pathlib import Path

    example = (Path(__file__).parent.parent / "examples" / "test_memory_budget.py").read_text()
    pytester.makepyfile(test_memory_budget=example)
    pytester.runpytest_subprocess().assert_outcomes(passed=2)
    pytester.makepyfile(test_memory_budget=example.replace('"192 MiB"', '"48 MiB"'))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    assert "over the limit '48 MiB'" in result.stdout.str()
