"""StepSimulator: one fake model at one depth whose step (memprof.step's, the profiler's) runs at any
(batch, seq) under FakeTensorMode and is recorded as a Simulation: training, inference, and prefill
plus a decode step with the KV cache."""

from __future__ import annotations

import contextlib
import warnings

from memprof.settings import get_setting
from memprof.simulate.config import layer_period, with_layers
from memprof.simulate.fake_model import _bitsandbytes_paths, _eager_mask_paths, build_step_model, make_optimizer
from memprof.simulate.recorder import _moment_tracker, _PhaseRecorder, _Regions, _step_parts
from memprof.simulate.spec import Simulation, StepSpec
from memprof.step import autocast as step_autocast
from memprof.step import train_step


def _cache_tensors(cache) -> list:
    if cache is None:
        return []
    out = []
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "untyped_storage"):
                out.append(t)
    return out


class StepSimulator:
    """One fake model of `layers` layers, reused for steps at several (batch, seq)."""

    def __init__(
        self, config: dict, spec: StepSpec, *, layers: int, trust_remote_code: bool = False, real_model=None
    ) -> None:
        """`real_model`: run the same step on this prepared real model instead (for equality tests)."""
        import torch
        from torch._subclasses.fake_tensor import FakeTensorMode
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        self.config = with_layers(config, layers)
        self.spec = spec
        self.layers = layers
        self.period = layer_period(self.config)
        self.vocab = int(self.config.get("vocab_size", 2))
        if real_model is not None:
            self.mode = contextlib.nullcontext()
            self.model = real_model
        else:
            self.mode = FakeTensorMode()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. peft's deprecated is_gradient_checkpointing lookup
                self.model = build_step_model(self.config, spec, self.mode, trust_remote_code=trust_remote_code)
        self.optimizer = None
        self._warmed_up = False
        if spec.task == "infer":
            self.model.eval()
        else:
            self.model.train()
            with self.mode:
                trainable = [p for p in self.model.parameters() if p.requires_grad]
                self.optimizer = make_optimizer(trainable, spec, self.mode)
        self._torch = torch

    def _ids(self, batch: int, seq: int):
        with self.mode:
            return self._torch.randint(0, self.vocab, (batch, seq))

    def run(self, batch: int, seq: int) -> Simulation:
        """Simulate the step at (batch, seq), counting its FLOPs as it runs.

        Training: the first run on this simulator warms up with one step (AdamW creates its states
        in it); later runs start from the state the previous one left (params, grads, AdamW states:
        the same tensors whatever the shape), so each point costs one step.
        """
        torch = self._torch
        ids = self._ids(batch, seq)
        model, optimizer = self.model, self.optimizer
        with self.mode, _eager_mask_paths(), _bitsandbytes_paths(self.spec), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers/peft deprecations are not the user's business
            if self.spec.task != "infer":
                compute = get_setting(self.spec.setting).dtype
                if not self._warmed_up:
                    train_step(model, optimizer, ids, precision=self.spec.precision, compute_dtype=compute)
                    self._warmed_up = True
                parts = _step_parts(model, optimizer)  # every region's breakdown asks for them
                with _moment_tracker() as tracker:
                    rec = _PhaseRecorder(tracker, lambda: {**parts(), "inputs": [ids]})
                    tracker.track(*parts().values(), ids)
                    held = {**parts(), "inputs": [ids]}
                    with rec.phase("zero_grad", held):  # the last moment the previous step's grads are live
                        optimizer.zero_grad(set_to_none=True)
                    held.clear()  # the grads are freed here, before the forward phase
                    with _Regions(model, rec, layers=self.layers, period=self.period) as regions:
                        with (
                            rec.phase(regions.first("forward")),
                            step_autocast(self.spec.precision, compute, ids.device.type),
                        ):
                            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                        with rec.phase(regions.first("backward")):
                            loss.backward()
                    with rec.phase("optimizer"):
                        optimizer.step()
                    del loss  # held through the update, as in step.train_step (a training loop logs it)
                flops = tracker.flops
            elif self.spec.new_tokens == 0:
                # the profiler's forward: no_grad, no cache, logits for every position
                parts = _step_parts(model)
                with _moment_tracker() as tracker:
                    rec = _PhaseRecorder(tracker, lambda: {**parts(), "inputs": [ids]})
                    tracker.track(*parts().values(), ids)
                    with (
                        _Regions(model, rec, layers=self.layers, period=self.period) as regions,
                        rec.phase(regions.first("forward")),
                        torch.no_grad(),
                    ):
                        model(input_ids=ids, use_cache=False)
                flops = tracker.flops
            else:
                rec, flops = self._generate(batch, seq, ids)
        return Simulation(self.layers, batch, seq, tuple(rec.phases), int(flops), rec.moments)

    def _generate(self, batch: int, seq: int, ids):
        """Prefill `seq` tokens into a KV cache, grow the cache by new_tokens - 1, decode one token.

        The cache grows through its own `update()` (so sliding-window layers keep what they keep);
        the last decode step, the largest, runs for real. Logits for the last position only, as
        `generate()` asks for them.
        """
        from transformers import DynamicCache

        torch = self._torch
        model = self.model
        state: dict = {}

        def kv_bytes() -> int:
            storages = {
                t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in _cache_tensors(state.get("cache"))
            }
            return sum(storages.values())

        parts = _step_parts(model)
        with _moment_tracker() as tracker:
            rec = _PhaseRecorder(
                tracker,
                lambda: {**parts(), "inputs": [ids], "kv_cache": _cache_tensors(state.get("cache"))},
                kv_bytes=kv_bytes,
            )
            tracker.track(*parts().values(), ids)
            with torch.no_grad(), _Regions(model, rec, layers=self.layers, period=self.period) as regions:
                # the cache the model would create itself, made first so that its tensors are classified
                # as KV cache in every region of the prefill
                state["cache"] = DynamicCache(config=model.config)
                with rec.phase(regions.first("prefill")):
                    model(input_ids=ids, past_key_values=state["cache"], use_cache=True, logits_to_keep=1)
                prefill_flops = tracker.flops
                grow = self.spec.new_tokens - 1
                cache = state["cache"]
                if grow > 0:
                    for i, layer in enumerate(cache.layers):
                        k, v = layer.keys, layer.values
                        shape = (k.shape[0], k.shape[1], grow, k.shape[3])
                        cache.update(
                            torch.empty(shape, dtype=k.dtype), torch.empty(shape[:3] + (v.shape[3],), dtype=v.dtype), i
                        )
                step_ids = ids[:, -1:]
                with rec.phase(regions.first("decode")):
                    model(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)

        # FLOPs of the whole generation: prefill + new_tokens decode steps, each costed at the last
        # (longest-cache) step: an upper bound within one step's attention FLOPs per token.
        return rec, prefill_flops + self.spec.new_tokens * (tracker.flops - prefill_flops)
