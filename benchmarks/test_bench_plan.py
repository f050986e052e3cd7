"""Speed goals of `memprof plan` (issue 16), as ratios to `python -c "import torch"` in the same run.

1. A catalog model at default options, first plan on an empty cache: < 1.0 (the shipped simulations).
2. Another batch or seq after the first plan of the same model and options: < 0.5 (read off the fit);
   batch 1 at another seq once simulates batch 1's own fit (less than a first plan), then is read off too.
3. A local config's first plan (a model not in the catalog): < 4.0.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 5
# Qwen2.5-1.5B's config.json: not in the catalog, so nothing shipped answers its plan
LOCAL_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
    "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 8960,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 12,
    "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip


def _wall_s(argv: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def _import_torch_s() -> float:
    argv = [sys.executable, "-c", "import torch"]
    _wall_s(argv)  # warm the page cache
    return statistics.median(_wall_s(argv) for _ in range(ROUNDS))


def _plan(*args: str) -> list[str]:
    return [sys.executable, "-m", "memprof", "plan", *args, "--json"]


def _env(cache: Path) -> dict:
    import os

    return {**os.environ, "MEMPROF_CACHE_DIR": str(cache)}


def _record(benchmark, name: str, times: list[float], torch_s: float) -> float:
    ratio = statistics.median(times) / torch_s
    benchmark.extra_info.update({"import_torch_median_s": torch_s, f"{name}_median_s": statistics.median(times)})
    benchmark.extra_info[f"{name}_ratio_to_import_torch"] = ratio
    return ratio


def test_first_default_plan_of_a_catalog_model_is_faster_than_importing_torch(benchmark):
    torch_s = _import_torch_s()
    times = []
    for _ in range(ROUNDS):
        with tempfile.TemporaryDirectory() as empty:
            times.append(_wall_s(_plan("llama-3.1-8b"), _env(Path(empty))))
    benchmark.pedantic(lambda: None, rounds=1)
    ratio = _record(benchmark, "first_catalog_plan", times, torch_s)
    assert ratio < 1.0, f"first plan {statistics.median(times):.2f}s, import torch {torch_s:.2f}s"


def test_local_config_first_plan_then_other_batches_and_seqs(benchmark, tmp_path):
    model = tmp_path / "qwen2.5-1.5b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LOCAL_CONFIG))
    torch_s = _import_torch_s()
    first = []
    for i in range(3):  # each on an empty cache: every round simulates
        first.append(_wall_s(_plan(str(model)), _env(tmp_path / f"cache-{i}")))
    # batch 1 (the default) at another seq: batch 1's own fit is simulated once (it is not on the
    # larger batches' polynomial), then read off like the others
    batch1_fit = [_wall_s(_plan(str(model), "--seq", "700"), _env(tmp_path / "cache-0"))]
    later = [
        _wall_s(_plan(str(model), "--batch", str(b), "--seq", str(s)), _env(tmp_path / "cache-0"))
        for b, s in ((2, 512), (4, 1000), (8, 300), (3, 4096), (16, 2048), (1, 1000), (1, 300), (1, 2000))
    ]
    benchmark.pedantic(lambda: None, rounds=1)
    first_ratio = _record(benchmark, "local_first_plan", first, torch_s)
    later_ratio = _record(benchmark, "later_plan", later, torch_s)
    batch1_ratio = _record(benchmark, "first_batch1_plan_at_another_seq", batch1_fit, torch_s)
    assert later_ratio < 0.5, f"later plans {statistics.median(later):.2f}s, import torch {torch_s:.2f}s"
    assert max(later) / torch_s < 0.5, f"the slowest later plan {max(later):.2f}s, import torch {torch_s:.2f}s"
    assert first_ratio < 4.0, f"local first plan {statistics.median(first):.2f}s, import torch {torch_s:.2f}s"
    assert batch1_ratio < first_ratio, (
        f"batch 1's own fit {batch1_fit[0]:.2f}s, a first plan {statistics.median(first):.2f}s"
    )
