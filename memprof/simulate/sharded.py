"""The sharded training step on fake tensors: what one rank of FSDP2 holds, simulated.

The model is built on the meta device and prepared as the profiler prepares it (LoRA, checkpointing),
then sharded exactly as `memprof profile --nproc` shards it (memprof.measure.distributed.shard_model:
FSDP2 `fully_shard` per decoder layer and on the root) over a process group of torch's "fake"
backend with the planned world size, and materialised with `to_empty` inside a FakeTensorMode: each
parameter becomes the fake local shard rank 0 holds (FSDP2 pads uneven shards, so rank 0 is the
largest). The step (memprof.step.train_step) then runs for real on fake tensors: FSDP2's own
all-gather and reduce-scatter buffers, its prefetching and resharding are what they are on a GPU,
and the live-tensor tracker counts them exactly. The fake process group's collectives move no data.

DDP is not simulated here: each rank holds the single-process step plus DDP's gradient buckets, a
copy of the trainable parameters' grads (plan adds it; the 2-rank test measures it).
"""

from __future__ import annotations

import contextlib
import warnings

from memprof.simulate.cache import _cache_key, _read_entry, _write_entry
from memprof.simulate.config import layer_count, with_layers
from memprof.simulate.fake_model import _eager_mask_paths, prepare_step_model
from memprof.simulate.spec import CATEGORIES, PhasePeak, Simulation, StepSpec

SHARDED_MODES = ("fsdp", "zero2", "zero3")


@contextlib.contextmanager
def fake_process_group(world_size: int):
    """A process group of torch's fake backend (rank 0 of `world_size`) for the block; an existing
    default group is left alone only if it is one of these of the same size."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # private: pinned by a test

    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def simulate_sharded(
    config: dict,
    spec: StepSpec,
    *,
    batch: int,
    seq: int,
    world_size: int,
    shard: str,
    trust_remote_code: bool = False,
) -> Simulation:
    """Rank 0's live bytes per phase of the sharded step at (batch, seq), at the model's full depth.

    Not extrapolated from two reduced depths as the single-GPU simulation is: a phase's peak here is
    the largest of moments that grow with depth at different rates (the layers gathered at once, the
    LM head's, autocast's cached bf16 copies of each layer), and which one is largest settles only
    after a few layers. Llama-3.1-70B on 32 ranks: the backward peak grows by a whole unsharded layer
    from 2 to 3 layers and not after, so depths 2 and 3 put 246 GiB too much on each GPU at 80. At
    full depth the fake step takes seconds per 20 layers; the result is cached."""
    if shard not in SHARDED_MODES:
        raise ValueError(f"shard must be one of {SHARDED_MODES}")
    from memprof.simulate.model_fit import model_code_errors

    layers = layer_count(config)
    with model_code_errors(spec, f"rank 0 of {world_size} ({shard}), batch {batch} × seq {seq:,}"):
        return _simulate_depth(config, spec, layers, batch, seq, world_size, shard, trust_remote_code)


def _simulate_depth(config, spec, layers, batch, seq, world_size, shard, trust_remote_code) -> Simulation:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers.utils import logging as hf_logging

    from memprof.inventory import build_meta_model
    from memprof.measure.distributed import shard_model
    from memprof.measure.tracker import LiveBytesTracker
    from memprof.settings import get_setting
    from memprof.step import make_optimizer, model_parts, train_step, weights_dtype

    hf_logging.set_verbosity_error()
    setting = get_setting(spec.setting)
    if setting.quantized:
        raise ValueError("the sharded simulation runs float settings only")
    compute = setting.dtype
    with warnings.catch_warnings(), fake_process_group(world_size):
        warnings.simplefilter("ignore")
        model = build_meta_model(
            with_layers(config, layers),
            dtype=weights_dtype(compute, spec.precision),
            trust_remote_code=trust_remote_code,
        )
        model = prepare_step_model(model, spec)
        model = shard_model(model, shard)
        # fully_shard must see the meta model; materialising inside the mode makes every local shard fake
        # the mask path a real eager run takes (fake position ids would make transformers build a
        # packed-sequence mask the real run does not), as in the single-GPU simulation
        with FakeTensorMode(allow_non_fake_inputs=True), _eager_mask_paths():
            model.to_empty(device="cpu")
            model.train()
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = make_optimizer(trainable, spec.optimizer, foreach=True if spec.device == "cuda" else None)
            ids = torch.randint(0, int(config.get("vocab_size", 2)), (batch, seq))
            train_step(model, optimizer, ids, precision=spec.precision, compute_dtype=compute)  # states exist now
            phases = _tracked_step(model, optimizer, ids, spec, compute, LiveBytesTracker, model_parts)
    return Simulation(layers=layers, batch=batch, seq=seq, phases=phases, flops=0)


def _tracked_step(model, optimizer, ids, spec, compute, tracker_cls, model_parts) -> tuple[PhasePeak, ...]:
    """The step of memprof.step.train_step, split in phases; each phase's peak and what held it."""
    from memprof.step import autocast

    peaks = []
    with tracker_cls() as tracker:
        tracker.track(*model_parts(model, optimizer).values(), ids)
        optimizer.zero_grad(set_to_none=True)
        state: dict = {}

        def forward():
            with autocast(spec.precision, compute, ids.device.type):
                state["loss"] = model(input_ids=ids, labels=ids, use_cache=False).loss

        steps = (("forward", forward), ("backward", lambda: state["loss"].backward()), ("optimizer", optimizer.step))
        for name, run in steps:
            tracker.reset_peak()
            run()
            peaks.append((name, tracker.peak_bytes, tracker.peak_event))
    # classified after the whole step, as the profiler classifies its peak: by the tensors each kind
    # holds at the end of the step (FSDP2 has resharded by then)
    parts = {**model_parts(model, optimizer), "inputs": [ids]}
    phases = []
    for name, peak_bytes, event in peaks:
        breakdown = tracker.breakdown_at(event, parts)
        breakdown["activations_temporaries"] = breakdown.pop("other")
        breakdown["kv_cache"] = 0
        phases.append(PhasePeak(name, peak_bytes, {c: breakdown.get(c, 0) for c in CATEGORIES}))
    return tuple(phases)


def simulate_sharded_cached(
    config: dict,
    spec: StepSpec,
    *,
    batch: int,
    seq: int,
    world_size: int,
    shard: str,
    trust_remote_code: bool = False,
    use_cache: bool = True,
) -> tuple[Simulation, bool]:
    """simulate_sharded, cached on disk beside the single-GPU fits (simulate's cache: the same key of
    config, spec and library versions); also whether the cache answered."""
    # "frees": FSDP2's resize_(0) of unsharded parameters counted (measure.tracker); entries made
    # before counted every layer's unsharded parameters as live to the end of the step
    extra = {"batch": batch, "seq": seq, "world_size": world_size, "shard": shard, "frees": "storage-resize"}
    extra["depth"] = "full"  # entries made before were extrapolated from two reduced depths
    name, key = _cache_key(config, spec, "sharded", extra)
    entry = _read_entry(name) if use_cache else None
    if entry is not None and "simulation" in entry:
        return Simulation.from_json(entry["simulation"]), True
    sim = simulate_sharded(
        config, spec, batch=batch, seq=seq, world_size=world_size, shard=shard, trust_remote_code=trust_remote_code
    )
    if use_cache:
        _write_entry(name, {"key": key, "simulation": sim.to_json()})
    return sim, False
