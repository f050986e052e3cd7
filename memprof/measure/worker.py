"""The child side of a footprint measurement: `run(request, result_path)` in a fresh process
(memprof.measure.fresh), or by hand `python -m memprof.measure.worker REQUEST.json RESULT.json`.

Each load runs in a fresh process so no setting's memory (or allocator cache) leaks into the next.
The result is written atomically as JSON; an exception becomes {"error": "..."} with the kind of
failure, and the traceback goes to stderr for debugging.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path


def rss_peak_bytes() -> int:
    """This process's peak resident set size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def load_pretrained(weights_dir: str, setting, *, device_map, trust_remote_code: bool = False, **kwargs):
    """The one `from_pretrained` call memprof measures: safetensors only, the setting's dtype and
    BitsAndBytesConfig (`quantization_config=` in kwargs overrides it, e.g. for offload)."""
    import torch
    from transformers import AutoModelForCausalLM

    from memprof.settings import bnb_config, keep_gpu_weight_layout

    kwargs.setdefault("quantization_config", bnb_config(setting))
    model = AutoModelForCausalLM.from_pretrained(
        weights_dir,
        dtype=getattr(torch, setting.dtype),
        device_map=device_map,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        **kwargs,
    )
    keep_gpu_weight_layout(model)  # the same layers on every CPU (memprof.settings)
    return model


def materialize(request: dict) -> dict:
    """Write random weights for a config as safetensors, so quantized loads go through from_pretrained."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(request["config"])
    model_type = values.pop("model_type")
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        values.pop(key, None)
    config = AutoConfig.for_model(model_type, **values)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.bfloat16, trust_remote_code=request.get("trust_remote_code", False)
    )
    model.save_pretrained(request["out_dir"], safe_serialization=True)
    return {"ok": True}


def load(request: dict) -> dict:
    import torch
    from transformers.utils import logging as hf_logging

    from memprof.settings import Setting, bnb_config
    from memprof.tensors import true_bytes

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    setting = Setting(**request["setting"])
    device = request["device"]
    quantization_config = bnb_config(setting)
    if quantization_config is not None:
        import bitsandbytes  # noqa: F401  (fail here, clearly, if bitsandbytes cannot run)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        baseline_allocated = torch.cuda.memory_allocated()
    rss_baseline = rss_peak_bytes()
    start = time.perf_counter()
    model = load_pretrained(
        request["weights_dir"],
        setting,
        device_map=device,
        trust_remote_code=request.get("trust_remote_code", False),
        quantization_config=quantization_config,
    )
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    result = {
        "footprint_bytes": int(model.get_memory_footprint()),
        "true_bytes": int(true_bytes(model)),
        "load_s": load_s,
        "peak_rss_bytes": rss_peak_bytes(),
        "rss_baseline_bytes": rss_baseline,
    }
    if cuda:
        result["peak_bytes"] = int(torch.cuda.max_memory_allocated() - baseline_allocated)
        result["peak_kind"] = "CUDA allocator peak during load (torch.cuda.max_memory_allocated)"
        result["reserved_peak_bytes"] = int(torch.cuda.max_memory_reserved())
        result["gpu_name"] = torch.cuda.get_device_name()
    else:
        result["peak_bytes"] = result["peak_rss_bytes"] - rss_baseline
        result["peak_kind"] = (
            "process RSS peak during load, above the RSS after imports; safetensors pages that stay "
            "memory-mapped (file dtype = load dtype) count only once touched"
        )
    return result


TASKS = {"materialize": materialize, "load": load}


def run(request: dict, result_path: str, send=None) -> None:
    """Entry point in a fresh process (memprof.measure.fresh): do the task, write the result atomically."""
    result_path = Path(result_path)
    try:
        result = TASKS[request["task"]](request)
    except Exception as exc:  # every failure becomes a result the parent can show in one line
        traceback.print_exc()
        kind = "out of memory" if "out of memory" in str(exc).lower() else type(exc).__name__
        result = {"error": f"{kind}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")}
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)


def main(argv: list[str]) -> int:
    """`python -m memprof.measure.worker REQUEST.json RESULT.json`: the same, by hand, for debugging."""
    run(json.loads(Path(argv[0]).read_text()), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
