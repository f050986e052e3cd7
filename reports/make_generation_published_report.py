"""memprof's generation-memory prediction beside published GPU measurements, with the error.

The measurements: optimum's benchmark of Llama-2-13b-chat-hf on an A100-SXM4-80GB (optimum
tests/benchmark/README.md, commit 87fcf9f0, Nov 2023; PyTorch 2.0.1, transformers 4.35,
bitsandbytes 0.41.1). `generate` with a 512-token random prompt and exactly 512 new tokens (min =
max); "bnb" is 4-bit fp4 with fp16 compute, no double quantization. Their metric, in MB (10^6 bytes):
torch's allocated peak plus (nvidia-smi peak minus torch's reserved peak), so it includes the CUDA
context. memprof's figure is plan's requirement on the A100 80GB: the simulated peak of the step plus
the card's CUDA context (an estimate until measured). Nothing in memprof is tuned to these numbers.

Re-run: .venv/bin/python reports/make_generation_published_report.py
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from memprof.analyses.plan import plan
from memprof.commands._common import write_atomic

HERE = Path(__file__).parent
CONFIG = HERE / "configs" / "llama-2-13b-chat-hf.json"  # the published config.json's fields
GPU = "A100 80GB"
# (run, batch, new tokens, setting, published MB)
PUBLISHED = (
    ("generate 512 + 512", 1, 512, "fp16", 29152.98),
    ("generate 512 + 512", 1, 512, "fp4", 11018.36),
    ("generate 512 + 512", 16, 512, "fp16", 53986.51),
    ("generate 512 + 512", 16, 512, "fp4", 35532.37),
    ("prefill 512 (1 new token)", 1, 1, "fp16", 27999.54),
    ("prefill 512 (1 new token)", 1, 1, "fp4", 9952.65),
)


def main() -> None:
    rows = []
    for run, batch, new_tokens, setting, published_mb in PUBLISHED:
        report = plan(
            str(CONFIG), task="infer", setting=setting, batch=batch, seq=512, new_tokens=new_tokens, gpus=(GPU,)
        )
        gpu = report.gpus[0]
        predicted_mb = gpu.required_bytes / 1e6
        rows.append(
            {
                "run": run,
                "batch": batch,
                "setting": setting,
                "published_mb": published_mb,
                "predicted_mb": round(predicted_mb, 2),
                "error_pct": round(100 * (predicted_mb - published_mb) / published_mb, 2),
                # transformers 4.35 kept the cache as tuples remade by torch.cat every decode step, and
                # generate held the previous step's tuple until the forward returned: two whole caches
                # at once. Shown beside memprof's figure, not folded into it (memprof simulates
                # transformers 5's DynamicCache, which grows one layer at a time).
                "with_second_cache_mb": round(
                    predicted_mb + (report.breakdown.kv_cache_bytes / 1e6 if new_tokens > 1 else 0), 2
                ),
                "weights_bytes": report.breakdown.weights_bytes,
                "kv_cache_bytes": report.breakdown.kv_cache_bytes,
                "peak_phase": report.breakdown.peak_phase,
                "context_bytes": gpu.context_bytes,
            }
        )
        rows[-1]["second_cache_error_pct"] = round(
            100 * (rows[-1]["with_second_cache_mb"] - published_mb) / published_mb, 2
        )
        print(rows[-1])
    write_atomic(HERE / "generation-published.json", json.dumps({"gpu": GPU, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Generation memory: memprof's prediction beside published GPU measurements",
        "",
        f"Made by `reports/make_generation_published_report.py` on {datetime.date.today()} (no GPU needed:",
        "`memprof plan --task infer` simulates the step on fake tensors).",
        "",
        "Measured: optimum's benchmark of Llama-2-13b-chat-hf on an A100-SXM4-80GB (optimum",
        "`tests/benchmark/README.md`, Nov 2023: PyTorch 2.0.1, transformers 4.35, bitsandbytes 0.41.1);",
        "512-token prompt, exactly 512 new tokens; fp4 = bitsandbytes 4-bit fp4, fp16 compute. Their",
        "metric (MB = 10^6 bytes) is torch's allocated peak plus nvidia-smi's peak minus torch's reserved",
        "peak, so it holds the CUDA context; memprof's is the simulated peak plus the card's context",
        "estimate (512 MiB, not yet measured by memprof).",
        "",
        "| run | batch | setting | published MB | memprof MB | error | + a second cache (4.35) | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['batch']} | {r['setting']} | {r['published_mb']:,.2f} | {r['predicted_mb']:,.2f} | "
            f"{r['error_pct']:+.1f}% | {r['with_second_cache_mb']:,.2f} | {r['second_cache_error_pct']:+.1f}% |"
        )
    lines += [
        "",
        "memprof simulates transformers 5, whose DynamicCache grows in place layer by layer. The",
        "benchmark ran transformers 4.35, whose cache was a tuple of tensors remade by `torch.cat` at every",
        "decode step while `generate` still held the previous step's tuple: two whole caches live at once.",
        "The last two columns add that second copy (for runs that decode) to memprof's figure: the",
        "difference then falls to a few percent at batch 16, where the cache is large, which says the gap is",
        "that version's cache, not memprof's count. The rest: the CUDA context is memprof's estimate, and",
        "4.35 computed the prompt's logits for every position (transformers 5: the last one only). The fp4",
        "rows at batch 1 stay about 1 GB under, which this report does not explain: bitsandbytes 0.41's",
        "4-bit path is not the 0.50 one memprof runs.",
    ]
    write_atomic(HERE / "generation-published.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
