"""The training step under torch.distributed: every rank measured.

`run_ranks(request, nproc=N, shard=...)` starts N ranks with torch's own launcher
(`python -m torch.distributed.run --standalone`, elastic), gloo on the CPU and nccl on CUDA. Each
rank loads the model, prepares it for the step as a single process does (memprof.step), shards it
(`shard_model`: FSDP2 `fully_shard` per decoder layer and on the root, or DDP), and runs the same
`train_step`: timed (median and IQR after warm-up), then once under the live-tensor tracker on the
CPU (exact bytes of the rank's local shards, DTensors counted by their local tensors) or with the
allocator's peak on CUDA. Each rank writes its result atomically after every phase, so a rank that
runs out of memory, crashes or hangs in a collective still leaves what it measured, and the parent
turns a missing or unfinished rank into a row with its reason. The launcher runs in its own process
group: a timeout or Ctrl-C stops every rank, and no process is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What each mode keeps per rank. fsdp = zero3: FSDP2 reshards each layer after forward (its weights,
# grads and optimizer states sharded; one layer gathered at a time, the next prefetched); zero2: FSDP2
# without resharding after forward (gathered weights stay until backward); ddp: every rank holds
# everything, plus DDP's gradient buckets.
SHARD_MODES = ("ddp", "fsdp", "zero2", "zero3")
TRACKED_STEPS = 7  # CPU: the peak is the lowest of these (see rank_main); 3 left 1 run in 2 over


def decoder_layers(model) -> list:
    """The model's decoder blocks: the modules transformers keeps whole (`_no_split_modules`), found
    through any wrapper (peft), in order."""
    names = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"no decoder layers found in {type(model).__name__} (no _no_split_modules)")
    return layers


def shard_model(model, shard: str, *, device_ids=None):
    """Apply the shard mode to a prepared model; returns the module to run (DDP wraps it)."""
    if shard == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=device_ids)
    if shard not in SHARD_MODES:
        raise ValueError(f"unknown shard mode {shard!r}")
    from torch.distributed.fsdp import fully_shard

    reshard = shard in ("fsdp", "zero3")
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    return model


# ---------------------------------------------------------------------------------------------
# parent side


def run_ranks(request: dict, *, nproc: int, shard: str, timeout_s: float | None = None) -> list[dict]:
    """Run the step in `nproc` ranks; one dict per rank, with "error" (and "failed_phase") where a
    rank did not finish. KeyboardInterrupt stops every rank and propagates."""
    if shard not in SHARD_MODES:
        raise ValueError(f"unknown shard mode {shard!r}")
    with tempfile.TemporaryDirectory(prefix="memprof-ranks-") as folder:
        out = Path(folder)
        (out / "request.json").write_text(json.dumps({**request, "shard": shard}))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "--max-restarts=0",
            "-m",
            "memprof.measure.distributed",
            str(out),
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(request.get("threads") or 1), PYTHONUNBUFFERED="1")
        log = (out / "launcher.log").open("w")
        # a session of its own: on a timeout or Ctrl-C the whole tree (launcher and ranks) is stopped
        launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timed_out = False
        try:
            launcher.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(launcher)
        except KeyboardInterrupt:
            _stop(launcher)
            raise
        finally:
            log.close()
        return [_rank_result(out, rank, launcher.returncode, timed_out, timeout_s) for rank in range(nproc)]


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _rank_result(out: Path, rank: int, returncode: int | None, timed_out: bool, timeout_s) -> dict:
    path = out / f"rank-{rank}.json"
    data = json.loads(path.read_text()) if path.exists() else {"rank": rank}
    if data.get("done") and not data.get("error"):
        return data
    phase = data.get("phase", "start-up")
    if not data.get("error"):
        if timed_out:
            data["error"] = f"timed out after {timeout_s:g} s during {phase}"
        else:
            tail = _log_tail(out / "launcher.log", rank)
            data["error"] = f"rank {rank} did not finish (launcher exit {returncode}) during {phase}" + (
                f": {tail}" if tail else ""
            )
    data.setdefault("failed_phase", phase)
    return data


def _log_tail(path: Path, rank: int) -> str:
    """The last error line a rank printed (torchrun prefixes nothing with --standalone; take the last
    line that names an exception)."""
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        errors = [line for line in lines if "Error" in line or "error:" in line]
        return errors[-1][:200] if errors else ""
    return ""


# ---------------------------------------------------------------------------------------------
# rank side


class _CollectiveClock:
    """Wall time spent in the collectives FSDP2 and DDP issue: the call and the wait on its Work.
    On CUDA collectives overlap compute, so this is time the rank spent in them, not a share of the
    step; it is reported as such."""

    WRAPPED = ("all_gather_single", "reduce_scatter_single", "all_reduce", "all_gather_into_tensor")

    def __init__(self) -> None:
        self.ms = 0.0
        self.calls = 0
        self._saved: dict = {}

    def __enter__(self):
        import torch.distributed as dist

        for name in self.WRAPPED:
            if hasattr(dist, name):
                self._saved[name] = getattr(dist, name)
                setattr(dist, name, self._wrap(self._saved[name]))
        return self

    def __exit__(self, *exc) -> None:
        import torch.distributed as dist

        for name, fn in self._saved.items():
            setattr(dist, name, fn)

    def _wrap(self, fn):
        clock = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            work = fn(*args, **kwargs)
            clock.ms += (time.perf_counter() - start) * 1000
            clock.calls += 1
            return _TimedWork(work, clock) if work is not None else None

        return timed

    def ddp_hook(self):
        """A DDP comm hook: the default all-reduce, its launch-to-completion time added."""
        import torch.distributed as dist

        clock = self

        def hook(state, bucket):
            start = time.perf_counter()
            world = dist.get_world_size()
            fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()

            def done(f):
                clock.ms += (time.perf_counter() - start) * 1000
                clock.calls += 1
                return f.value()[0]

            return fut.then(done)

        return hook


class _TimedWork:
    def __init__(self, work, clock: _CollectiveClock) -> None:
        self._work, self._clock = work, clock

    def wait(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._work.wait(*args, **kwargs)
        finally:
            self._clock.ms += (time.perf_counter() - start) * 1000

    def __getattr__(self, name):
        return getattr(self._work, name)


def _local(t):
    """A DTensor's memory is its local shard."""
    return getattr(t, "_local_tensor", t)


def _save(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def rank_main(out: Path) -> None:
    import dataclasses
    import gc

    import torch
    import torch.distributed as dist
    from transformers.utils import logging as hf_logging

    from memprof.measure.timing import time_calls
    from memprof.measure.tracker import LiveBytesTracker
    from memprof.measure.worker import load_pretrained
    from memprof.settings import Setting
    from memprof.step import make_optimizer, model_parts, prepare_model, train_step, weights_dtype

    hf_logging.set_verbosity_error()
    request = json.loads((out / "request.json").read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    path = out / f"rank-{rank}.json"
    data: dict = {"rank": rank, "world_size": world, "shard": request["shard"], "phase": "start-up"}
    _save(path, data)
    cuda = request["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    setting = Setting(**request["setting"])
    precision = request.get("precision", "pure")
    held = dataclasses.replace(setting, dtype=weights_dtype(setting.dtype, precision))
    device = f"cuda:{local_rank}" if cuda else "cpu"
    try:
        data["phase"] = "load"
        _save(path, data)
        start = time.perf_counter()
        model = load_pretrained(
            request["weights_dir"], held, device_map=device, trust_remote_code=request.get("trust_remote_code", False)
        )
        model = prepare_model(
            model,
            task=request["train"],
            quantized=setting.quantized,
            lora_r=request["lora_r"],
            lora_alpha=request["lora_alpha"],
            target=request.get("target"),
            grad_checkpointing=request.get("grad_checkpointing", False),
        )
        clock = _CollectiveClock()
        # DDP on the CPU: one tracker follows the rank from the wrapping on. DDP allocates its gradient
        # buckets when it is built and again when it rebuilds them after the first step, in C++ and
        # out of Python's reach; seen here, they count in every later peak as the allocator would.
        # (FSDP2's buffers are made inside the step: a fresh tracker for the measured step sees them.)
        tracker = LiveBytesTracker() if request["shard"] == "ddp" and not cuda else None
        with tracker if tracker is not None else contextlib.nullcontext():
            if tracker is not None:
                tracker.track(model)
            run = shard_model(model, request["shard"], device_ids=[local_rank] if cuda else None)
        if request["shard"] == "ddp":
            run.register_comm_hook(None, clock.ddp_hook())
        data["load"] = {"load_s": time.perf_counter() - start}
        _save(path, data)

        data["phase"] = "train"
        _save(path, data)
        run.train()
        trainable = [p for p in run.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable)
        generator = torch.Generator().manual_seed(rank)  # each rank its own data, as a sampler gives
        ids = torch.randint(0, model.config.vocab_size, (request["batch"], request["seq"]), generator=generator)
        ids = ids.to(device)

        def step():
            train_step(run, optimizer, ids, precision=precision, compute_dtype=setting.dtype)

        if tracker is not None:
            with tracker:  # the first steps, where DDP rebuilds its buckets and AdamW makes its states
                step()
                step()
        repeats, warmup = request["repeats"], max(1, request["warmup"])
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            step()
        with clock:  # the collectives of the timed steps only
            timing = time_calls(step, repeats=repeats, warmup=0, device="cuda" if cuda else "cpu")
        steps = repeats
        result = {
            "mode": request["train"],
            "grad_checkpointing": request.get("grad_checkpointing", False),
            "precision": precision,
            "trainable_params": sum(p.numel() for p in trainable),  # a DTensor's numel is the whole parameter's
            "breakdown_method": "exact: live storages at the tracked peak, classified (a DTensor by its local shard)",
            "notes": [],
            "median_ms": timing.median_ms,
            "iqr_ms": timing.iqr_ms,
            "min_ms": timing.min_ms,
            "tokens_per_s": world * request["batch"] * request["seq"] / (timing.median_ms / 1000),
            "collective_ms": clock.ms / steps,
            "collective_calls": clock.calls // steps,
            "trainable_params_local": sum(_local(p).numel() for p in trainable),
        }
        if cuda:
            result["peak_bytes"] = int(torch.cuda.max_memory_allocated())
            result["reserved_peak_bytes"] = int(torch.cuda.max_memory_reserved())
        else:
            # The lowest of TRACKED_STEPS tracked steps: gloo's threads can keep a finished collective's
            # buffer alive a moment longer when the machine is loaded, which only ever adds to a peak.
            lowest = None
            for _ in range(TRACKED_STEPS):
                gc.collect()
                current = tracker or LiveBytesTracker()
                tracker = None  # DDP's tracker (from the wrapping on) is the first; later ones are fresh
                with current:  # a DTensor counts as its local shard
                    current.track(*model_parts(run, optimizer).values(), ids)
                    current.reset_peak()
                    step()
                if lowest is None or current.peak_bytes < lowest[0]:
                    parts = model_parts(run, optimizer)
                    breakdown = current.breakdown_at_peak({**parts, "inputs": [ids]})
                    breakdown["activations_temporaries"] = breakdown.pop("other")
                    lowest = (current.peak_bytes, breakdown)
                if request["shard"] == "ddp":
                    break  # a fresh tracker would not see DDP's buckets
            result["peak_bytes"], result["breakdown"] = lowest
        from memprof.measure.flops import count_flops

        # after the measured step: a step under the FLOP counter leaves state behind that moved the peak
        result["flops"] = count_flops(step)  # this rank's step (its own batch, the whole model's math)
        result["tflops"] = result["flops"] / (timing.median_ms / 1000) / 1e12
        data["train"] = result
    except Exception as exc:  # a rank's failure is its row: the message, and the phase it was in
        oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        data["error"] = f"out of memory during {data['phase']}" if oom else f"{type(exc).__name__}: {first}"
        data["failed_phase"] = data["phase"]
    data["done"] = True
    _save(path, data)
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))
