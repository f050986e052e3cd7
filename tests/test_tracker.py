"""LiveBytesTracker counts exactly the bytes of live tensor storages: checked against sums by hand."""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")

from memprof.measure.tracker import LiveBytesTracker  # noqa: E402


def nbytes(*tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def test_new_tensors_are_counted_and_freed_exactly():
    with LiveBytesTracker() as t:
        a = torch.ones(1000)  # 4000 bytes
        b = torch.ones(250, dtype=torch.float64)  # 2000 bytes
        assert t.current_bytes == 6000
        del a
        gc.collect()
        assert t.current_bytes == 2000
        del b
    assert t.current_bytes == 0
    assert t.peak_bytes == 6000


def test_views_and_inplace_results_share_one_storage():
    with LiveBytesTracker() as t:
        a = torch.zeros(100, 10)
        v = a[3:].t()  # a view: same storage
        a.add_(1)  # in place: same storage
        r = a.view(-1)
        assert t.current_bytes == 4000
        del a, v
        assert t.current_bytes == 4000  # r still holds the storage
        del r
        assert t.current_bytes == 0


def test_linear_forward_peak_is_input_weight_bias_output():
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    with LiveBytesTracker() as t:
        t.track(linear, x)
        y = linear(x)
    expected = nbytes(x, linear.weight, linear.bias) + 8 * 32 * 4
    assert expected == (8 * 64 + 64 * 32 + 32 + 8 * 32) * 4
    assert t.peak_bytes == expected
    assert nbytes(y) == 8 * 32 * 4


def test_linear_forward_backward_peak_by_hand():
    # y = x W^T + b, loss = y.sum(). Live at the end of backward: x, W, b, y (saved? no: sum's
    # backward only needs the shape), the loss, and the grads of W and b; the grad of y is
    # an expanded scalar (one element). Counted by hand below, then compared.
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 4)
    x = torch.randn(5, 16)
    with LiveBytesTracker() as t:
        t.track(linear, x)
        base = t.current_bytes
        assert base == (5 * 16 + 4 * 16 + 4) * 4
        with t.phase("forward"):
            loss = linear(x).sum()
        with t.phase("backward"):
            loss.backward()
        grads = nbytes(linear.weight.grad, linear.bias.grad)
    assert grads == (4 * 16 + 4) * 4
    # forward: y (5x4 fp32) and the loss scalar, on top of the inputs
    assert t.phase_peak_bytes["forward"] == base + 5 * 4 * 4 + 4
    # after forward y is freed (nothing saves it); live during backward: base + loss + grads + temporaries
    assert t.phase_peak_bytes["backward"] >= base + 4 + grads
    assert t.current_bytes == base + 4 + grads  # loss still referenced, grads kept, temporaries freed
    breakdown = t.breakdown_at_peak({"inputs": [x], "params": [linear.weight, linear.bias]})
    assert sum(breakdown.values()) == t.peak_bytes
    assert breakdown["inputs"] == 5 * 16 * 4
    assert breakdown["params"] == (4 * 16 + 4) * 4


def test_track_counts_each_storage_once_and_tied_weights_once():
    emb = torch.nn.Embedding(10, 8)
    head = torch.nn.Linear(8, 10, bias=False)
    head.weight = emb.weight  # tied
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    with LiveBytesTracker() as t:
        assert t.track(model) == 10 * 8 * 4
        assert t.track(model, emb.weight) == 0


def test_phase_peaks_and_reset_peak():
    with LiveBytesTracker() as t:
        with t.phase("big"):
            a = torch.empty(1000)
            del a
        with t.phase("small"):
            b = torch.empty(10)
        t.reset_peak()
        assert t.peak_bytes == 40
    assert t.phase_peak_bytes == {"big": 4000, "small": 40}
    del b


def test_breakdown_at_peak_sums_to_peak_and_claims_each_storage_once():
    with LiveBytesTracker() as t:
        keep = torch.empty(100)
        temp = torch.empty(50)
        del temp  # freed: at the peak (150 floats) it was live, so "other" holds it
        gc.collect()
    assert t.peak_bytes == 600
    breakdown = t.breakdown_at_peak({"kept": [keep, keep], "again": [keep]})
    assert breakdown == {"kept": 400, "again": 0, "other": 200}


def test_resize_in_place_is_counted():
    with LiveBytesTracker() as t:
        a = torch.empty(10)
        a.resize_(100)
        assert t.current_bytes == 400
        del a
    assert t.peak_bytes == 400


# -- a second, independent measure: PyTorch's own memory profiler ----------------------------------
# torch.profiler with profile_memory=True records every allocation and free of the CPU allocator;
# `_memory_profile().timeline` (what `export_memory_timeline` draws) matches them to tensors. It
# shares no code with the tracker: the allocator's view against the dispatcher's. Its plain
# "[memory]" events are not used: they miss most allocations. Allocations made and freed inside one
# kernel (a workspace, not a tensor any op returns) are the timeline's "intermediates" and are left
# out, since the tracker counts tensors. The profiler only knows a pre-existing tensor when an op in
# the window uses it, so the forward case holds nothing a forward leaves untouched (no grads or
# optimizer states: profile measures its forward before any training step, too).
#
# oneDNN is switched off for the profiled steps: for bf16 matmuls it keeps reorder buffers outside
# any tensor, and their size depends on the CPU (none under AVX2, about 24 KB with AVX512-BF16 and
# 54 KB on AVX512 without BF16 for the qwen2 forward below, up to 12% of that peak). The tracker
# does not see them on any CPU, which `test_tracker_counts_the_same_bytes_with_and_without_onednn`
# proves; the profiler does, so with oneDNN on this check would pass or fail by CPU.
#
# What remains differs by up to ~1.3% on these steps (the profiler infers which tensors pre-exist
# from the ops that use them). Hence a 2% bound, not equality: it catches a tracker that misses
# whole kinds of tensors (the weights, a phase such as backward, or in the full fine-tune the grads
# or the optimizer states: each 10% or more of these peaks).
CROSSCHECK_TOLERANCE = 0.02


def _memory_profile_timeline_peak(fn) -> int:
    """Peak live bytes of `fn` as PyTorch's memory profiler sees it, kernels' intermediates left out."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    memory = prof._memory_profile()
    intermediates = {key for node in memory._data_flow_graph.flow_nodes for key in node.intermediates}
    live = peak = 0
    for _time, action, (key, _version), nbytes in memory.timeline:
        if key in intermediates:
            continue
        if action in (Action.PREEXISTING, Action.CREATE):
            live += nbytes
        elif action == Action.DESTROY:
            live -= nbytes
        peak = max(peak, live)
    return peak


def test_pytorchs_memory_profiler_api_that_the_crosscheck_reads_is_there():
    """A private entry point: pinned, so a torch upgrade that moves it fails here, by name."""
    from torch.profiler._memory_profiler import Action

    assert {"PREEXISTING", "CREATE", "INCREMENT_VERSION", "DESTROY"} <= {a.name for a in Action}
    x = torch.ones(1000)
    peak = _memory_profile_timeline_peak(lambda: (x * 2).sum())
    assert peak >= 4000 + 4000  # x, pre-existing, and x * 2


CROSSCHECK_CASES = {
    "mistral-lora-bf16": ("mistral", "lora", "bfloat16", False, False),
    "gpt2-full-fp32": ("gpt2", "full", "float32", False, False),
    "llama-lora-fp32-gc": ("llama", "lora", "float32", True, False),
    "gemma2-lora-bf16-gc": ("gemma2", "lora", "bfloat16", True, False),
    "qwen2-forward-bf16": ("qwen2", "lora", "bfloat16", False, True),
}


def _crosscheck_step(arch, task, dtype, checkpointing, infer):
    """A tiny model set up as `memprof profile` has it before its tracked step, and that step."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from memprof.step import make_optimizer, model_parts, prepare_model, train_step
    from tests.conftest import tiny_config

    values = tiny_config(arch)
    torch.manual_seed(0)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model = prepare_model(model, task=task, quantized=False, grad_checkpointing=checkpointing)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    if infer:
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)

        return step, lambda: [*model_parts(model).values(), ids]
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    for _ in range(2):  # optimizer states and grads exist, as in profile's tracked step
        train_step(model, optimizer, ids)
    # the parts are read when tracking starts: each step replaces the grads
    return (lambda: train_step(model, optimizer, ids)), lambda: [*model_parts(model, optimizer).values(), ids]


def _tracked_peak(step, held) -> int:
    gc.collect()
    with LiveBytesTracker() as tracker:
        tracker.track(*held())
        step()
    return tracker.peak_bytes


@pytest.mark.parametrize("case", list(CROSSCHECK_CASES))
def test_tracker_peak_agrees_with_pytorchs_memory_profiler(case):
    """The profiler's step, measured twice: by the tracker as `memprof profile` does (model parts
    and inputs registered, then the step) and by torch's allocator-level memory profiler."""
    step, held = _crosscheck_step(*CROSSCHECK_CASES[case])
    with torch.backends.mkldnn.flags(enabled=False):
        gc.collect()
        profiler_peak = _memory_profile_timeline_peak(step)
        tracker_peak = _tracked_peak(step, held)
    assert abs(profiler_peak - tracker_peak) <= CROSSCHECK_TOLERANCE * tracker_peak, (profiler_peak, tracker_peak)


@pytest.mark.parametrize("case", ["mistral-lora-bf16", "qwen2-forward-bf16"])
def test_tracker_counts_the_same_bytes_with_and_without_onednn(case):
    """oneDNN's bf16 kernels (taken or not by CPU) allocate buffers outside tensors; the tracker
    counts tensors, so both branches, forced here on any CPU, give the same peak to the byte."""
    step, held = _crosscheck_step(*CROSSCHECK_CASES[case])
    with torch.backends.mkldnn.flags(enabled=True):
        with_onednn = _tracked_peak(step, held)
    with torch.backends.mkldnn.flags(enabled=False):
        without_onednn = _tracked_peak(step, held)
    assert with_onednn == without_onednn


def test_a_storage_resized_outside_dispatch_is_counted_and_resize_is_restored():
    """FSDP2 frees and re-allocates unsharded parameters with untyped_storage().resize_, which no
    dispatch mode sees: the tracker is told, its breakdown at an earlier moment keeps the bytes of
    then, and torch's own resize_ is back once no tracker is active."""
    original = torch.UntypedStorage.resize_
    x = torch.empty(100)  # 400 bytes
    with LiveBytesTracker() as tracker:
        tracker.track(x)
        before = tracker.last_event
        x.untyped_storage().resize_(0)
        assert tracker.current_bytes == 0 and tracker.peak_bytes == 400
        x.untyped_storage().resize_(800)
        assert tracker.current_bytes == 800 and tracker.peak_bytes == 800
        assert tracker.breakdown_at(before, {"x": [x]}) == {"x": 400, "other": 0}
        assert tracker.breakdown_at_peak({"x": [x]}) == {"x": 800, "other": 0}
        assert tracker.kind_series({"x": [x]})["x"].tolist()[before:] == [400, 0, 800]
        events = list(range(before, tracker.last_event + 1))
        assert tracker.bytes_over_events([x], events) == [400, 0, 800]  # the same count, for these storages
    assert torch.UntypedStorage.resize_ is original and "resize_" not in vars(torch.UntypedStorage)
    x.untyped_storage().resize_(4)  # no tracker active: nothing is told
    assert tracker.current_bytes == 800


def test_fsdp2_rank_peak_agrees_with_pytorchs_memory_profiler(tmp_path):
    """One FSDP2 rank (gloo, world size 1, in this process): its full fine-tune step measured by the
    tracker as `memprof profile --nproc` does and by the allocator-level memory profiler. FSDP2
    frees each layer's unsharded parameters after its forward and backward with storage resizes;
    without seeing them the tracker counted them live to the end (7% more here, past the bound)."""
    import torch.distributed as dist
    from transformers import AutoConfig, AutoModelForCausalLM

    from memprof.measure.distributed import shard_model
    from memprof.step import make_optimizer, model_parts, prepare_model, train_step
    from tests.conftest import tiny_config

    values = tiny_config("llama")
    torch.manual_seed(0)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model = shard_model(prepare_model(model, task="full", quantized=False, grad_checkpointing=False), "fsdp")
        model.train()
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
        for _ in range(2):
            train_step(model, optimizer, ids)
        with torch.backends.mkldnn.flags(enabled=False):
            gc.collect()
            profiler_peak = _memory_profile_timeline_peak(lambda: train_step(model, optimizer, ids))
            tracker_peak = _tracked_peak(
                lambda: train_step(model, optimizer, ids), lambda: [*model_parts(model, optimizer).values(), ids]
            )
    finally:
        dist.destroy_process_group()
    assert abs(profiler_peak - tracker_peak) <= CROSSCHECK_TOLERANCE * tracker_peak, (profiler_peak, tracker_peak)
