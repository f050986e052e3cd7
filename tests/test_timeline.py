"""The timeline: the tracker's exact live bytes by kind at every event, a bounded sample of it that
keeps the peak, and its pictures (an SVG stacked area, terminal sparklines), checked on a real step."""

from __future__ import annotations

import gc
import io
import json
import random
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

torch = pytest.importorskip("torch")

from rich.console import Console  # noqa: E402

from memprof.measure.timeline import (  # noqa: E402
    Timeline,
    downsample,
    timeline_from_series,
    timeline_from_tracker,
)
from memprof.measure.tracker import LiveBytesTracker  # noqa: E402
from memprof.report.timeline import (  # noqa: E402
    compare_svg,
    timeline_page,
    timeline_sparklines,
    timeline_svg,
)
from memprof.units import human_bytes  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"
STEP_PHASES = ("zero_grad", "forward", "backward", "optimizer")


# -- the tracker's series, by hand ------------------------------------------------------------------
def test_kind_series_is_the_live_bytes_by_kind_after_every_event():
    with LiveBytesTracker() as t:
        keep = torch.empty(100)  # event 1: +400 (kept)
        temp = torch.empty(50)  # event 2: +200 (freed below: "other")
        del temp  # event 3: -200
        gc.collect()
        more = torch.empty(10, dtype=torch.float64)  # event 4: +80
    series = t.kind_series({"kept": [keep], "more": [more]})
    assert t.last_event == 4
    assert list(series["kept"]) == [0, 400, 400, 400, 400]
    assert list(series["other"]) == [0, 0, 200, 0, 0]
    assert list(series["more"]) == [0, 0, 0, 0, 80]
    totals = [sum(v) for v in zip(*series.values(), strict=True)]
    assert max(totals) == t.peak_bytes == 600
    assert totals.index(max(totals)) == t.peak_event


def test_kind_series_counts_a_resize_at_its_own_event():
    with LiveBytesTracker() as t:
        a = torch.empty(10)
        a.resize_(100)
        b = torch.empty(5)
    series = t.kind_series({"a": [a], "b": [b]})
    assert list(series["a"]) == [0, 40, 400, 400]  # born with 40 bytes, grown to 400 at event 2
    assert list(series["b"]) == [0, 0, 0, 20]
    assert max(x + y for x, y in zip(series["a"], series["b"], strict=True)) == t.peak_bytes == 420


def test_kind_series_first_category_claims_and_other_name_must_be_free():
    with LiveBytesTracker() as t:
        x = torch.empty(25)
    assert list(t.kind_series({"first": [x], "second": [x]})["second"]) == [0, 0]
    with pytest.raises(ValueError, match="both a category"):
        t.kind_series({"other": [x]})


def test_phase_events_record_each_block_in_order_of_its_end():
    with LiveBytesTracker() as t:
        with t.phase("outer"):
            a = torch.empty(3)
            with t.phase("inner"):
                b = torch.empty(4)
        with t.phase("inner"):
            c = torch.empty(5)
    assert t.phase_events == [("inner", 1, 2), ("outer", 0, 2), ("inner", 2, 3)]
    del a, b, c


# -- the downsampler: properties over random series -------------------------------------------------
def _random_series(rng: random.Random, n: int) -> list[int]:
    """A random walk of live bytes with occasional spikes, as a step's allocations and frees make."""
    values, current = [], rng.randrange(0, 1000)
    for _ in range(n):
        current = max(0, current + rng.randrange(-50, 51))
        values.append(current + (rng.randrange(0, 5000) if rng.random() < 0.01 else 0))
    return values


def test_downsample_keeps_the_peak_ends_and_phase_peaks_within_the_budget():
    rng = random.Random(14)
    for _ in range(300):
        n = rng.randrange(1, 4000)
        totals = _random_series(rng, n)
        max_points = rng.randrange(3, 250)
        start = rng.randrange(0, n)
        end = rng.randrange(start, n)
        cuts = sorted(rng.sample(range(n), min(n, rng.randrange(0, 6))))
        phases = list(zip(cuts, cuts[1:], strict=False))
        kept = downsample(totals, max_points=max_points, start=start, end=end, phases=phases)
        assert kept == sorted(set(kept)), "ordered, no repeats"
        assert len(kept) <= max_points
        assert kept[0] == start and kept[-1] == end
        window = totals[start : end + 1]
        assert max(totals[i] for i in kept) == max(window)
        assert start + window.index(max(window)) in kept, "the first index of the maximum"
        if len(phases) + 3 <= max_points:  # the budget holds every phase's peak
            for a, b in phases:
                a, b = max(a, start), min(b, end)
                if a <= b:
                    assert max(totals[i] for i in kept if a <= i <= b) == max(totals[a : b + 1])
        if end - start + 1 <= max_points:
            assert kept == list(range(start, end + 1))


def test_downsample_keeps_every_spike_wider_apart_than_two_slices():
    totals = [100] * 100_000
    spikes = {5_000: 900, 23_000: 700, 51_234: 800, 77_000: 300, 99_000: 600}
    for i, v in spikes.items():
        totals[i] = v
    kept = downsample(totals, max_points=60)
    assert set(spikes) <= set(kept)
    assert len(kept) <= 60


def test_downsample_needs_room_for_the_first_last_and_peak():
    with pytest.raises(ValueError, match="at least 3"):
        downsample([1, 2, 3, 4], max_points=2)


def test_timeline_from_series_peak_is_the_window_maximum_and_json_round_trips():
    rng = random.Random(7)
    a, b = _random_series(rng, 5000), _random_series(rng, 5000)
    series = {"a": a, "b": b, "never": [0] * 5000}
    timeline = timeline_from_series(
        series, phases=[("one", 0, 2000), ("two", 2000, 4999)], max_points=40, start_event=10
    )
    totals = [x + y for x, y in zip(a, b, strict=True)]
    assert timeline.peak_bytes == max(totals[10:]) == max(p.bytes for p in timeline.points)
    assert timeline.peak_event == totals.index(max(totals[10:]), 10)
    assert timeline.kinds == ("a", "b")  # a kind with no bytes anywhere is left out
    assert timeline.phases[0].start_event == 10  # clipped to the window
    assert len(timeline.points) <= 40
    assert Timeline.from_json(json.loads(json.dumps(timeline.to_json()))) == timeline


# -- a real training step ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_step():
    """Two AdamW steps of a tiny Llama on the CPU (the second is measured: the first step's grads are
    freed in its zero_grad, the optimizer states exist), the phases as `train_step` runs them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from memprof.step import make_optimizer, model_parts, train_step

    config = tiny_config("llama")
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(0, 256, (2, 32))
    for _ in range(2):
        gc.collect()
        with LiveBytesTracker() as tracker:
            tracker.track(*model_parts(model, optimizer).values(), ids)
            first_step_event = tracker.last_event
            before = tracker.claims({**model_parts(model, optimizer), "inputs": [ids]})  # last step's grads
            train_step(model, optimizer, ids, precision="pure", phase=tracker.phase)
    categories = {**model_parts(model, optimizer), "inputs": [ids]}
    return tracker, categories, first_step_event, before


def _kinds_at(series: dict, event: int) -> dict[str, int]:
    return {k: v[event] for k, v in series.items()}


def test_real_step_kind_series_equals_breakdown_at_every_sampled_event(real_step):
    tracker, categories, *_ = real_step
    series = tracker.kind_series(categories)
    events = sorted({*range(0, tracker.last_event + 1, 23), tracker.peak_event, tracker.last_event})
    events += [e for _, a, b in tracker.phase_events for e in (a, b)]
    for event in events:
        assert _kinds_at(series, event) == tracker.breakdown_at(event, categories), event


def test_real_step_earlier_claims_keep_the_last_steps_grads_grads_when_zero_grad_frees_them(real_step):
    tracker, categories, first_step_event, before = real_step
    now = tracker.kind_series(categories)
    named = tracker.kind_series(categories, earlier=[before])
    _, start, end = next(p for p in tracker.phase_events if p[0] == "zero_grad")
    assert now["other"][start] > 0 and named["other"][start] == 0  # without the snapshot: "other"
    assert named["grads"][start] > 0 and named["grads"][end] == 0  # zero_grad frees them, as grads
    assert all(named["other"][e] == 0 for e in range(first_step_event, end + 1))
    for event in range(tracker.last_event + 1):  # only the split differs, never the total
        assert sum(v[event] for v in now.values()) == sum(v[event] for v in named.values())
    after_zero_grad = range(end, tracker.last_event + 1)
    assert all(now[k][e] == named[k][e] for k in now for e in after_zero_grad)


def test_real_step_timeline_is_exact_at_its_points_and_peak(real_step):
    tracker, categories, *_ = real_step
    timeline = timeline_from_tracker(tracker, categories, other="activations_temporaries")
    assert 10 <= len(timeline.points) <= 200
    for point in timeline.points:
        assert sum(point.kinds.values()) == point.bytes
    assert max(p.bytes for p in timeline.points) == timeline.peak_bytes == tracker.peak_bytes
    assert timeline.peak_event == tracker.peak_event
    at_peak = next(p for p in timeline.points if p.event == timeline.peak_event)
    breakdown = tracker.breakdown_at_peak(categories)
    breakdown["activations_temporaries"] = breakdown.pop("other")
    assert at_peak.kinds == {k: v for k, v in breakdown.items() if k in timeline.kinds}
    assert all(v == 0 for k, v in breakdown.items() if k not in timeline.kinds)
    assert {"trainable_params", "grads", "optimizer_states", "activations_temporaries"} <= set(timeline.kinds)


def test_real_step_phases_cover_the_step_in_order(real_step):
    tracker, categories, first_step_event, _ = real_step
    timeline = timeline_from_tracker(tracker, categories)
    assert tuple(p.name for p in timeline.phases) == STEP_PHASES
    assert timeline.phases[0].start_event == first_step_event
    for before, after in zip(timeline.phases, timeline.phases[1:], strict=False):
        assert before.end_event == after.start_event
        assert before.start_event < before.end_event
    assert timeline.phases[-1].end_event <= tracker.last_event


def test_real_step_timeline_of_each_phase_peaks_at_its_phase_peak(real_step):
    tracker, categories, *_ = real_step
    for name, start, end in tracker.phase_events:
        phase = timeline_from_tracker(tracker, categories, start_event=start, end_event=end, max_points=20)
        assert phase.peak_bytes == tracker.phase_peak_bytes[name]
        assert max(p.bytes for p in phase.points) == phase.peak_bytes
        assert len(phase.points) <= 20
        assert [(p.name, p.start_event, p.end_event) for p in phase.phases] == [(name, start, end)]


def test_real_step_downsampled_hard_keeps_the_peak(real_step):
    tracker, categories, first_step_event, _ = real_step
    for max_points in (3, 7, 12, 50):
        timeline = timeline_from_tracker(tracker, categories, max_points=max_points, start_event=first_step_event)
        events = [p.event for p in timeline.points]
        assert len(events) <= max_points
        assert events == sorted(events)
        assert tracker.peak_event in events
        assert max(p.bytes for p in timeline.points) == tracker.peak_bytes


# -- the pictures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def step_timeline(real_step) -> Timeline:
    tracker, categories, first_step_event, before = real_step
    return timeline_from_tracker(
        tracker, categories, other="activations_temporaries", earlier=[before], start_event=first_step_event
    )


def _texts(root) -> list[str]:
    return ["".join(e.itertext()) for e in root.iter(f"{SVG}text")]


def test_svg_parses_with_one_area_per_kind_phase_labels_peak_and_gpu_line(step_timeline):
    svg = timeline_svg(step_timeline, gpu_name="Test GPU", gpu_bytes=3 * 2**20)
    root = ET.fromstring(svg)
    areas = [e for e in root.iter(f"{SVG}path") if e.get("class") == "kind"]
    non_empty = [k for k in step_timeline.kinds if any(p.kinds[k] for p in step_timeline.points)]
    assert sorted(e.get("data-kind") for e in areas) == sorted(non_empty)
    texts = _texts(root)
    for name in STEP_PHASES:
        assert name in texts
    assert f"peak {human_bytes(step_timeline.peak_bytes)}" in texts
    assert f"Test GPU: {human_bytes(3 * 2**20)}" in texts
    assert "<script" not in svg and "href" not in svg  # offline: nothing to run, nothing to fetch


def test_svg_stacks_persistent_state_below_activations(step_timeline):
    root = ET.fromstring(timeline_svg(step_timeline))
    order = [e.get("data-kind") for e in root.iter(f"{SVG}path") if e.get("class") == "kind"]
    assert order.index("trainable_params") < order.index("optimizer_states") < order.index("activations_temporaries")


def test_svg_of_many_phases_keeps_labels_to_two_rows_and_every_band():
    series = {"weights": [1000] * 3000, "activations": [(i % 100) * 10 for i in range(3000)]}
    layers = [(f"layer {i}", 100 * i, 100 * (i + 1)) for i in range(30)]
    root = ET.fromstring(timeline_svg(timeline_from_series(series, phases=layers)))
    labels = [e for e in root.iter(f"{SVG}text") if e.get("class") == "phase-label"]
    assert len({e.get("y") for e in labels}) == 2 and 2 <= len(labels) < 30
    assert len([e for e in root.iter(f"{SVG}rect") if e.get("class") == "phase"]) == 30


def test_timeline_modules_import_without_torch():
    code = "import sys, memprof.measure.timeline, memprof.report.timeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_compare_svg_draws_one_line_per_run_with_its_peak(step_timeline, real_step):
    tracker, categories, *_ = real_step
    other = timeline_from_tracker(tracker, categories, max_points=30)
    root = ET.fromstring(compare_svg([("bf16", step_timeline), ("fp32", other)]))
    runs = [e.get("data-run") for e in root.iter(f"{SVG}polyline") if e.get("class") == "run"]
    assert runs == ["bf16", "fp32"]
    assert f"bf16: {human_bytes(step_timeline.peak_bytes)}" in _texts(root)


def test_sparklines_draw_one_line_per_phase_with_its_peak(step_timeline):
    buf = io.StringIO()
    Console(file=buf, width=100, color_system=None).print(timeline_sparklines(step_timeline, width=30))
    lines = buf.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == list(STEP_PHASES)
    for line, phase in zip(lines, step_timeline.phases, strict=True):
        peak = max(p.bytes for p in step_timeline.points if phase.start_event <= p.event <= phase.end_event)
        assert f"peak {human_bytes(peak)}" in line
        assert len(line.split()[1]) == 30 and set(line.split()[1]) <= set("▁▂▃▄▅▆▇█")
    assert sum("← the peak" in line for line in lines) == 1


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.areas: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "path" and attrs.get("class") == "kind":
            self.areas.append(attrs["data-kind"])


def test_chart_loads_in_headless_chromium(step_timeline, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    page = tmp_path / "timeline.html"
    page.write_text(timeline_page(timeline_svg(step_timeline, gpu_name="Test GPU", gpu_bytes=3 * 2**20)))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--hide-scrollbars"]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    elements = _Elements()
    elements.feed(dom)  # the page as the browser built it
    assert elements.tags.count("svg") == 1
    assert sorted(elements.areas) == sorted(step_timeline.kinds)
    assert f"peak {human_bytes(step_timeline.peak_bytes)}" in dom
    png = tmp_path / "timeline.png"
    subprocess.run(
        [chromium, *flags, "--window-size=940,400", f"--screenshot={png}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
