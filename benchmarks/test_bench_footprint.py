"""Speed goals of the estimate path (run with `nox -s bench`).

Goal from issue 2: `memprof footprint meta-llama/Llama-3.1-405B` answers in less wall time than
`python -c "import torch"` takes on the same machine.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from memprof import footprint

ROUNDS = 7


def _wall_s(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def _median_wall_s(argv: list[str]) -> float:
    _wall_s(argv)  # warm the page cache
    return statistics.median(_wall_s(argv) for _ in range(ROUNDS))


def test_footprint_405b_cli_is_faster_than_importing_torch(benchmark):
    cli = [sys.executable, "-m", "memprof", "footprint", "meta-llama/Llama-3.1-405B", "--json"]
    import_torch_s = _median_wall_s([sys.executable, "-c", "import torch"])
    benchmark.extra_info["import_torch_median_s"] = import_torch_s
    benchmark.pedantic(subprocess.run, args=(cli,), kwargs={"check": True, "capture_output": True}, rounds=ROUNDS)
    cli_median_s = benchmark.stats.stats.median
    benchmark.extra_info["ratio_to_import_torch"] = cli_median_s / import_torch_s
    assert cli_median_s < import_torch_s, f"footprint took {cli_median_s:.2f}s, import torch {import_torch_s:.2f}s"


def test_footprint_405b_in_process(benchmark):
    report = benchmark(footprint, "meta-llama/Llama-3.1-405B")
    assert report.params == 405_853_388_800
