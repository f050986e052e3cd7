"""The child side of `memprof profile`: `run(request, result_path, send)` in a fresh process, or by
hand `python -m memprof.measure.profile_worker REQUEST RESULT`.

One setting per fresh process (memprof.measure.fresh): load, forward, training step, and (on a GPU
with a budget) an offloaded load. After each phase the result so far is written atomically to
RESULT, and each phase is sent to the parent as a message, so the parent can show progress and,
if this process is killed (host OOM, Ctrl-C), still report the phases that finished and the one
that did not. Out of memory inside a phase is a result: {"error": "out of memory during <phase>"}.

The parent side is `run_profile_worker()`, which imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from memprof.measure.flops import count_flops  # the one FLOP table, shared with plan's simulation

# ---------------------------------------------------------------------------------------------
# parent side


def run_profile_worker(
    request: dict, *, on_phase: Callable[[str], None] | None = None, timeout_s: float | None = None
) -> dict:
    """Run one setting's profile in a fresh process; returns its result dict (with "error" on failure).

    A process that dies keeps the phases it finished; the error names the exit reason and phase
    ("timed out after 60 s during train" when `timeout_s` ran out; "start-up" before the first phase).
    KeyboardInterrupt kills the child and propagates.
    """
    from memprof.measure.fresh import run_fresh

    say = on_phase or (lambda _phase: None)
    phase = "start-up"

    def on_message(message) -> None:
        nonlocal phase
        phase = message
        say(message)

    finished = run_fresh("memprof.measure.profile_worker:run", request, on_message=on_message, timeout_s=timeout_s)
    result = finished.result or {}
    if finished.exitcode == 0 and result.get("done"):
        return result
    if result.get("error") and not finished.timed_out:
        return result
    reason = finished.exit_reason() if finished.timed_out else f"worker {finished.exit_reason()}"
    result["error"] = f"{reason} during {phase}"
    result["failed_phase"] = phase
    return result


# ---------------------------------------------------------------------------------------------
# child side


def _rss_peak_bytes() -> int:
    from memprof.measure.worker import rss_peak_bytes

    return rss_peak_bytes()


class _Out:
    """The result so far, rewritten atomically after every phase."""

    def __init__(self, path: Path, send: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.data: dict = {}
        self.send = send or (lambda phase: print(f"PHASE {phase}", flush=True))

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)


def _announce(out: _Out, phase: str) -> None:
    out.data["phase"] = phase
    out.send(phase)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        if t.device.type == "meta":
            continue
        s = t.untyped_storage()
        seen[(str(t.device), s.data_ptr())] = s.nbytes()
    return sum(seen.values())


def _model_parts(model, optimizer=None) -> dict[str, list]:
    from memprof.step import model_parts

    return model_parts(model, optimizer)


def _gpu_peaks(sampler) -> dict:
    import torch

    return {
        "peak_bytes": int(torch.cuda.max_memory_allocated()),
        "reserved_peak_bytes": int(torch.cuda.max_memory_reserved()),
        "device_peak_bytes": sampler.peak_bytes if sampler is not None else None,
    }


def _reset_gpu_peaks(sampler) -> None:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    if sampler is not None:
        sampler.reset()


def profile_setting(request: dict, out: _Out) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    from memprof.measure.nvml import NvmlPeakSampler
    from memprof.measure.timing import time_calls
    from memprof.measure.tracker import LiveBytesTracker
    from memprof.measure.worker import load_pretrained
    from memprof.settings import Setting, bnb_config
    from memprof.step import autocast, weights_dtype
    from memprof.tensors import true_bytes

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    setting = Setting(**request["setting"])
    precision = request.get("precision", "pure")
    # mixed precision: fp32 master weights, every forward under autocast to the setting's dtype
    held = dataclasses.replace(setting, dtype=weights_dtype(setting.dtype, precision))
    device = request["device"]
    cuda = device == "cuda"
    batch, seq, repeats, warmup = request["batch"], request["seq"], request["repeats"], request["warmup"]
    tokens = batch * seq
    data = out.data
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    data["env"] = {"torch": torch.__version__, "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}
    if cuda:
        torch.cuda.init()
        data["env"]["gpu_name"] = torch.cuda.get_device_name()

    sampler = NvmlPeakSampler(torch.cuda.current_device()) if cuda else None
    phase = "load"
    try:
        with sampler if sampler is not None else contextlib.nullcontext():
            # -- load ---------------------------------------------------------------------
            _announce(out, "load")
            quantization_config = bnb_config(setting)
            if quantization_config is not None:
                import bitsandbytes  # noqa: F401  (fail here, clearly, if bitsandbytes cannot run)
            rss_before = _rss_peak_bytes()

            def load(device_map, qconfig=quantization_config, **kwargs):
                return load_pretrained(
                    request["weights_dir"],
                    held,
                    device_map=device_map,
                    trust_remote_code=request.get("trust_remote_code", False),
                    quantization_config=qconfig,
                    **kwargs,
                )

            if cuda:
                _reset_gpu_peaks(sampler)
                start = time.perf_counter()
                model = load(device)
                torch.cuda.synchronize()
                load_s = time.perf_counter() - start
                peaks = _gpu_peaks(sampler)
                peak_kind = "CUDA allocator peak (torch.cuda.max_memory_allocated)"
            else:
                tracker = LiveBytesTracker()
                start = time.perf_counter()
                with tracker:
                    model = load(device)
                load_s = time.perf_counter() - start
                tracker.track(model)  # tensors made outside dispatch (safetensors reads) count too
                peaks = {"peak_bytes": tracker.peak_bytes}
                peak_kind = "live-tensor peak (dispatch-mode tracker)"
                del tracker
            data["load"] = {
                "load_s": load_s,
                "footprint_bytes": int(model.get_memory_footprint()),
                "true_bytes": int(true_bytes(model)),
                **peaks,
                "peak_kind": peak_kind,
                "peak_rss_bytes": _rss_peak_bytes(),
                "rss_before_bytes": rss_before,
            }
            out.save()

            # -- forward ------------------------------------------------------------------
            phase = "forward"
            _announce(out, "forward")
            generator = torch.Generator().manual_seed(0)
            vocab = model.config.vocab_size
            ids = torch.randint(0, vocab, (batch, seq), generator=generator).to(model.device)
            model.eval()

            def forward(phase=None):
                within = phase or (lambda _name: contextlib.nullcontext())
                with within("forward"), torch.no_grad(), autocast(precision, setting.dtype, ids.device.type):
                    model(input_ids=ids, use_cache=False)

            if cuda:
                _reset_gpu_peaks(sampler)
            timing = time_calls(forward, repeats=repeats, warmup=warmup, device=device)
            result = {"median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms, "min_ms": timing.min_ms}
            result["tokens_per_s"] = tokens / (timing.median_ms / 1000)
            if cuda:
                result.update(_gpu_peaks(sampler))
                result["overhead_pct"] = _sampler_overhead(forward, timing.median_ms, repeats, sampler)
            else:
                result.update(_tracked_once(forward, model, ids))
            result["peak_rss_bytes"] = _rss_peak_bytes()
            data["forward"] = result
            out.save()

            # -- generate -----------------------------------------------------------------
            if request.get("generate"):  # before training: LoRA would wrap the model
                phase = "generate"
                _announce(out, "generate")
                data["generate"] = _generate(request, model, ids, sampler)
                out.save()

            # -- train --------------------------------------------------------------------
            if request["train"] != "none":
                phase = "train"
                _announce(out, "train")
                data["train"] = _train(request, setting, model, ids, sampler)
                out.save()

            # -- offload ------------------------------------------------------------------
            if cuda and request.get("max_gpu_memory_bytes"):
                phase = "offload"
                _announce(out, "offload")
                del model
                gc.collect()
                torch.cuda.empty_cache()
                data["offload"] = _offload(request, setting, load, ids, data["forward"]["median_ms"], sampler)
                out.save()
    except Exception as exc:
        if not _is_oom(exc):
            raise
        data["error"] = f"out of memory during {phase}"
        data["failed_phase"] = phase
        traceback.print_exc()
    data["done"] = True
    out.save()


def _generate(request: dict, model, ids, sampler) -> dict:
    """`generate` of exactly request["generate"] new tokens from the forward's prompt (memprof.measure.generate)."""
    from memprof.measure.generate import GenerateRequest, measure_generate

    cuda = request["device"] == "cuda"
    spec = GenerateRequest(
        new_tokens=int(request["generate"]),
        repeats=request["repeats"],
        warmup=request["warmup"],
        device=request["device"],
        cache=request.get("cache", "dynamic"),
    )
    peaks = (lambda: _gpu_peaks(sampler)) if cuda else None
    reset = (lambda: _reset_gpu_peaks(sampler)) if cuda else None
    result = measure_generate(model, ids, spec, peaks=peaks, reset_peaks=reset)
    result["peak_rss_bytes"] = _rss_peak_bytes()
    return result


def _tracked_once(fn, model, ids, optimizer=None, *, categories=False) -> dict:
    """Run `fn` once under the live-bytes tracker (CPU): its exact live-tensor peak, its time, and the
    timeline of its live bytes (by kind with `categories`); `fn` takes the tracker's phase factory."""
    from memprof.measure.timeline import timeline_from_tracker
    from memprof.measure.tracker import LiveBytesTracker

    gc.collect()
    with LiveBytesTracker() as tracker:
        tracker.track(*_model_parts(model, optimizer).values(), ids)
        first_event = tracker.last_event
        # what each storage held before the step: the last step's grads stay grads when zero_grad frees them
        before = tracker.claims({**_model_parts(model, optimizer), "inputs": [ids]})
        # no reference kept: the previous step's grads must be freed when zero_grad drops them
        start = time.perf_counter()
        fn(tracker.phase)
        tracked_ms = (time.perf_counter() - start) * 1000
    result = {"peak_bytes": tracker.peak_bytes, "tracked_ms": tracked_ms}
    parts = {**_model_parts(model, optimizer), "inputs": [ids]}  # grads and optimizer states exist now
    if categories:
        breakdown = tracker.breakdown_at_peak(parts)
        breakdown["activations_temporaries"] = breakdown.pop("other")
        result["breakdown"] = breakdown
    timeline = timeline_from_tracker(
        tracker, parts, other="activations_temporaries", earlier=[before], start_event=first_event
    )
    result["timeline"] = timeline.to_json()
    return result


def _sampler_overhead(fn, median_ms: float, repeats: int, sampler) -> float | None:
    """Percent the NVML sampling thread adds to a call: time it again with sampling paused."""
    if sampler is None or sampler._thread is None:
        return None
    from memprof.measure.timing import time_calls

    sampler._stop.set()
    sampler._thread.join()
    try:
        bare = time_calls(fn, repeats=max(3, repeats // 2), warmup=1, device="cuda")
    finally:
        sampler._stop.clear()
        sampler._thread = type(sampler._thread)(target=sampler._run, name="memprof-nvml", daemon=True)
        sampler._thread.start()
    return 100 * (median_ms - bare.median_ms) / bare.median_ms


def _train(request: dict, setting, model, ids, sampler) -> dict:

    from memprof.measure.timing import time_calls
    from memprof.step import make_optimizer, prepare_model, train_step

    device = request["device"]
    cuda = device == "cuda"
    mode = request["train"]
    gc_on = request.get("grad_checkpointing", False)
    notes = []
    model = prepare_model(
        model,
        task=mode,
        quantized=setting.quantized,
        lora_r=request["lora_r"],
        lora_alpha=request["lora_alpha"],
        target=request.get("target"),
        grad_checkpointing=gc_on,
    )
    if mode == "lora":
        if setting.quantized:
            notes.append("prepare_model_for_kbit_training: unquantized params cast to float32")
        targets = sorted(model.peft_config["default"].target_modules)
        notes.append(f"LoRA r={request['lora_r']} alpha={request['lora_alpha']} on {', '.join(targets)}")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable)

    precision = request.get("precision", "pure")

    def step(phase=None):
        train_step(model, optimizer, ids, precision=precision, compute_dtype=setting.dtype, phase=phase)

    batch, seq, repeats, warmup = request["batch"], request["seq"], request["repeats"], request["warmup"]
    if cuda:
        _reset_gpu_peaks(sampler)
    timing = time_calls(step, repeats=repeats, warmup=max(1, warmup), device=device)
    result = {
        "mode": mode,
        "grad_checkpointing": gc_on,
        "precision": precision,
        "median_ms": timing.median_ms,
        "iqr_ms": timing.iqr_ms,
        "min_ms": timing.min_ms,
        "tokens_per_s": batch * seq / (timing.median_ms / 1000),
        "trainable_params": sum(p.numel() for p in trainable),
    }
    if cuda:
        result.update(_gpu_peaks(sampler))
        result["overhead_pct"] = _sampler_overhead(step, timing.median_ms, repeats, sampler)
        parts = {k: _storage_bytes(v) for k, v in _model_parts(model, optimizer).items()}
        parts["inputs"] = _storage_bytes([ids])
        parts["activations_temporaries"] = result["peak_bytes"] - sum(parts.values())
        result["breakdown"] = parts
        result["breakdown_method"] = "allocator peak minus the persistent tensors (weights, states, grads)"
    else:
        result.update(_tracked_once(step, model, ids, optimizer, categories=True))
        result["breakdown_method"] = "exact: live storages at the tracked peak, classified"
    if cuda and request.get("snapshot"):
        result["snapshot"] = _snapshot(step, request["snapshot"])
    result["flops"] = count_flops(step)
    result["tflops"] = result["flops"] / (timing.median_ms / 1000) / 1e12
    result["peak_rss_bytes"] = _rss_peak_bytes()
    result["notes"] = notes
    return result


def _snapshot(step, path: str) -> str:
    """One more step with the CUDA caching allocator's history recorded, dumped for PyTorch's memory
    viewer (https://pytorch.org/memory_viz opens the file; nothing is uploaded, the page runs locally)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        step()
        torch.cuda.synchronize()
        torch.cuda.memory._dump_snapshot(path)
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    return path


def _placement_bytes(model) -> dict[str, int]:
    """Bytes of the model's tensors by where they live: gpu, cpu, or disk (meta tensors with offload hooks)."""
    from memprof.tensors import held_tensors

    totals = {"gpu_bytes": 0, "cpu_bytes": 0, "disk_bytes": 0}
    seen = set()
    for t in held_tensors(model):
        key = (str(t.device), t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t))
        if key in seen:
            continue
        seen.add(key)
        kind = {"cuda": "gpu_bytes", "cpu": "cpu_bytes"}.get(t.device.type, "disk_bytes")
        totals[kind] += t.numel() * t.element_size() if t.device.type == "meta" else t.untyped_storage().nbytes()
    return totals


def _offload(request: dict, setting, load, ids, forward_ms: float, sampler) -> dict:
    """Load with accelerate's device map under the GPU budget; bytes per device, forward slowdown."""
    import torch

    from memprof.measure.timing import time_calls
    from memprof.settings import bnb_config

    budget = int(request["max_gpu_memory_bytes"])
    qconfig = bnb_config(setting)
    if qconfig is not None:
        qconfig.llm_int8_enable_fp32_cpu_offload = True  # quantized layers stay on GPU; the rest may go to CPU
    with tempfile.TemporaryDirectory(prefix="memprof-offload-") as folder:
        _reset_gpu_peaks(sampler)
        model = load(
            "auto",
            qconfig,
            max_memory={0: budget, "cpu": "1000GiB"},
            offload_folder=folder,
        )
        model.eval()
        placement = _placement_bytes(model)

        def forward():
            with torch.no_grad():
                model(input_ids=ids.to(0), use_cache=False)

        timing = time_calls(forward, repeats=request["repeats"], warmup=request["warmup"], device="cuda")
        result = {
            "budget_bytes": budget,
            **placement,
            "median_ms": timing.median_ms,
            "iqr_ms": timing.iqr_ms,
            "slowdown": timing.median_ms / forward_ms,
            **_gpu_peaks(sampler),
        }
    return result


def run(request: dict, result_path: str, send: Callable[[str], None] | None = None) -> None:
    """Entry point in a fresh process (memprof.measure.fresh): profile one setting, phase by phase."""
    out = _Out(Path(result_path), send)
    try:
        profile_setting(request, out)
    except Exception as exc:  # every failure becomes a result the parent can show in one line
        traceback.print_exc()
        phase = out.data.get("phase", "load")
        message = str(exc).splitlines()[0] if str(exc) else ""
        out.data["error"] = f"{phase}: {type(exc).__name__}: {message}".rstrip(": ")
        out.data["failed_phase"] = phase
        out.data["done"] = True
        out.save()


def main(argv: list[str]) -> int:
    """`python -m memprof.measure.profile_worker REQUEST RESULT`: the same, by hand, for debugging."""
    run(json.loads(Path(argv[0]).read_text()), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
