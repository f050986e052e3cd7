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
