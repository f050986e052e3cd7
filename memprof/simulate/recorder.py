"""What the step is recorded with: the live-bytes tracker sampled after every op and counting its
FLOPs, and the phases split into regions (`_Regions`) whose peaks, breakdowns and moments become a Simulation's
phases (`_PhaseRecorder`)."""

from __future__ import annotations

import contextlib

from memprof.simulate.spec import CATEGORIES, PhasePeak


def _step_parts(model, optimizer=None):
    from memprof.step import step_parts

    return step_parts(model, optimizer)


def _moment_tracker():
    """A LiveBytesTracker that calls `on_op()` after every op it counts (the recorder's sampler) and
    adds up the op's FLOPs in `flops`, with the table profile counts with (measure.flops: torch's
    formulas, bitsandbytes' matmuls, CPU attention).

    One dispatch mode for both: one Python dispatch per op instead of two.
    Unlike torch's FlopCounterMode it does not track modules: that registers grad hooks which hold
    grads until a module's backward is done, changing the live bytes counted in the same step.
    """
    from memprof.measure.flops import flop_registry
    from memprof.measure.tracker import LiveBytesTracker

    registry = flop_registry()

    class MomentTracker(LiveBytesTracker):
        on_op = None
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = super().__torch_dispatch__(func, types, args, kwargs)
            formula = registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += int(formula(*args, **kwargs, out_val=out))
            if self.on_op is not None:
                self.on_op()
            return out

    return MomentTracker()


class _PhaseRecorder:
    """Per-region peaks with the breakdown at each peak, and every moment's live bytes, on one tracker.

    A phase is one region unless `_Regions` splits it: each kept region's peak and its breakdown
    become one PhasePeak, and its moments (live bytes at its start and after each op; the peak is
    their maximum) go to Simulation.moments with the grads and KV-cache bytes where they change.
    A moment's grads are the storages the region's breakdown calls grads, counted from the op that
    made each: the same classification as the breakdown, at every moment (a grad made by the peak
    op itself is a grad there too, before autograd accumulates it).
    """

    def __init__(self, tracker, categories, *, kv_bytes=None) -> None:
        self.tracker = tracker
        self.categories = categories  # () -> dict[str, tensors]; called at the end of each region
        self.kv_bytes = kv_bytes  # () -> KV-cache bytes now (generation), or None
        self.phases: list[PhasePeak] = []
        self.moments: dict[str, dict[str, list[int]]] = {}
        self.region: str | None = None  # the region being recorded; None outside a phase
        self.keep = True
        self._samples: list[tuple[int, int, int]] = []  # (live bytes, tracker event, KV-cache bytes)
        tracker.on_op = self._sample

    def _sample(self) -> None:
        if self.region is not None:
            kv = self.kv_bytes() if self.kv_bytes is not None else 0
            self._samples.append((int(self.tracker.current_bytes), self.tracker.last_event, kv))

    def _start(self, name: str, keep: bool) -> None:
        self.tracker.reset_peak()
        self.region, self.keep = name, keep
        self._samples = []
        self._sample()

    @contextlib.contextmanager
    def phase(self, name: str, held: dict | None = None):
        """`held`: categories taken before the phase (tensors it frees, e.g. zero_grad's grads), kept
        alive until the breakdown is taken so they are classified; released before the next phase."""
        self._start(name, True)
        yield
        self._close(held)
        self.region = None

    def split(self, name: str, *, keep: bool = True) -> None:
        """End the current region now (its peak and breakdown) and go on recording as region `name`;
        a region started with keep=False is not recorded."""
        if self.region is None or self.region == name:
            return
        self._close(None)
        self._start(name, keep)

    def _close(self, held: dict | None) -> None:
        if not self.keep:
            return
        categories = held if held is not None else self.categories()
        breakdown = self.tracker.breakdown_at_peak(categories)
        breakdown["activations_temporaries"] = breakdown.pop("other")
        full = {c: int(breakdown.get(c, 0)) for c in CATEGORIES}
        self.phases.append(PhasePeak(self.region, int(self.tracker.peak_bytes), full))
        total, events, kv = (list(series) for series in zip(*self._samples, strict=True))
        grads = self.tracker.bytes_over_events(categories.get("grads", ()), events)
        # a series that does not change within the region is kept as its one value
        self.moments[self.region] = {
            name: values if len(set(values)) > 1 else values[:1]
            for name, values in (("total", total), ("grads", grads), ("kv_cache", kv))
        }


def _decoder_layers(model, count: int):
    """The ModuleList of the model's `count` decoder layers (all of one class), or None."""
    import torch

    for module in model.modules():
        same_class = isinstance(module, torch.nn.ModuleList) and len({type(m) for m in module}) == 1
        if same_class and count and len(module) == count:
            return module
    return None


class _Regions:
    """Split forward and backward into regions whose peak stays at one moment across (batch, seq).

    A phase's peak is the largest of its moments' live bytes. Each moment's bytes is a polynomial in
    FIT_BASIS, but which moment is the largest can change with (batch, seq), and a maximum of
    polynomials is not one: e.g. a full fine-tune's backward peaks at the logits' grads (~b*s*vocab)
    for long inputs and at the embedding's backward (every grad live) for short ones. So the peak is
    recorded per region and each region is fitted on its own:

    - forward: layers (embeddings and decoder layers; saved activations only grow, so the top layer
      holds the peak) | forward: lm head (logits and loss)
    - backward: loss (down to the logits' grad) | backward: lm head | backward: top layers (the last
      `period` layers, the first ones backward runs through: most activations still live) |
      backward: bottom layers (the first `period` layers: most grads live) | backward: embeddings
      (when their output needs a grad).

    The layers between top and bottom are not recorded: with identical layers (or groups of
    `period` layers) a moment's bytes are affine in the layer's index (activations freed and grads
    made at a constant rate per layer), so their peak is at most the top's or the bottom's.
    """

    def __init__(self, model, rec: _PhaseRecorder, *, layers: int = 0, period: int = 1) -> None:
        self.rec = rec
        self.head = model.get_output_embeddings()
        self.embed = model.get_input_embeddings()
        stack = _decoder_layers(model, layers) if layers >= 2 * period else None
        # (layer, region its input's grad hook starts): backward reaches a layer's input once it is done with it
        self.boundaries = []
        if stack is not None:
            after_top = "backward: bottom layers" if layers == 2 * period else "backward: middle layers"
            self.boundaries.append((stack[layers - period], after_top))
            if layers > 2 * period:
                self.boundaries.append((stack[period], "backward: bottom layers"))
        self.after_head = "backward: top layers" if stack is not None else "backward: layers"
        self.handles: list = []

    def __enter__(self) -> _Regions:
        if self.head is not None:
            self.handles.append(self.head.register_forward_pre_hook(self._head_pre))
            self.handles.append(self.head.register_forward_hook(self._head_post))
        if self.embed is not None:
            self.handles.append(self.embed.register_forward_hook(self._embed_post))
        for layer, region in self.boundaries:
            self.handles.append(layer.register_forward_pre_hook(self._layer_pre(region), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def first(self, phase: str) -> str:
        """The name of the phase's first region."""
        if self.head is None:
            return phase
        return "backward: loss" if phase == "backward" else f"{phase}: layers"

    def _in_forward_layers(self) -> bool:
        return self.rec.region in ("forward: layers", "prefill: layers", "decode: layers")

    def _on_grad(self, tensor, region: str, *, keep: bool = True) -> None:
        if getattr(tensor, "requires_grad", False):
            tensor.register_hook(lambda grad: self.rec.split(region, keep=keep))

    def _head_pre(self, module, args) -> None:
        if not self._in_forward_layers():
            return
        self.rec.split(f"{self.rec.region.split(':')[0]}: lm head")
        self._on_grad(args[0] if args else None, self.after_head)

    def _head_post(self, module, args, out) -> None:
        if self.rec.region == "forward: lm head":
            self._on_grad(out, "backward: lm head")

    def _embed_post(self, module, args, out) -> None:
        if self.rec.region == "forward: layers":
            self._on_grad(out, "backward: embeddings")

    def _layer_pre(self, region: str):
        def hook(module, args, kwargs) -> None:
            if self.rec.region == "forward: layers":  # not the recomputation of gradient checkpointing
                x = args[0] if args else kwargs.get("hidden_states")
                self._on_grad(x, region, keep=region != "backward: middle layers")

        return hook
