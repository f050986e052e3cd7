"""`footprint`: bytes of a model's weights at each load setting, predicted and optionally measured."""

from __future__ import annotations

import math
from collections.abc import Callable

from memprof import catalog
from memprof.errors import OptionError
from memprof.inventory import Inventory, installed_transformers_version, inventory_for
from memprof.measure.load import MeasuredLoad
from memprof.models import ResolvedModel, resolve_model
from memprof.options import switch, text
from memprof.predict import SettingPrediction, predict_setting
from memprof.results.footprint import FootprintReport, SettingFootprint
from memprof.settings import SETTINGS, Setting, parse_settings
from memprof.units import human_bytes


def gpu_tiers() -> tuple[catalog.Gpu, ...]:
    """The cards footprint checks: every catalog card, by the memory size users shop by (`tier_gb`),
    smallest first; table order within a size."""
    return tuple(sorted(catalog.gpus(), key=lambda g: g.tier_gb))


def _gpu_pick(true_bytes: int, cards: tuple[catalog.Gpu, ...]) -> dict:
    """smallest_gpu and its alternatives, or the count of the largest card: SettingFootprint's GPU fields."""
    fitting = [g for g in cards if g.usable_bytes >= true_bytes]
    if not fitting:
        largest = max(cards, key=lambda g: g.usable_bytes)
        return {"largest_gpu": largest.name, "largest_gpu_count": math.ceil(true_bytes / largest.usable_bytes)}
    tier = min(g.tier_gb for g in fitting)
    same_size = sorted((g for g in fitting if g.tier_gb == tier), key=lambda g: g.usd_per_hour)  # ties: table order
    return {"smallest_gpu": same_size[0].name, "smallest_gpu_alternatives": tuple(g.name for g in same_size[1:])}


def _setting_footprint(
    prediction: SettingPrediction, setting: Setting, fp32_true_bytes: int, tiers: tuple[catalog.Gpu, ...]
) -> SettingFootprint:
    return SettingFootprint(
        setting=setting.name,
        description=setting.description,
        dtype=setting.dtype,
        params=prediction.params,
        footprint_bytes=prediction.footprint_bytes,
        true_bytes=prediction.true_bytes,
        quant_state_bytes=prediction.quant_state_bytes,
        quantized_params=prediction.quantized_params,
        unquantized_bytes=prediction.unquantized_bytes,
        unquantized_share=prediction.unquantized_bytes / prediction.true_bytes if prediction.true_bytes else 0.0,
        ratio_to_fp32=prediction.true_bytes / fp32_true_bytes if fp32_true_bytes else 0.0,
        fits_gpus=tuple(g.name for g in tiers if g.usable_bytes >= prediction.true_bytes),
        **_gpu_pick(prediction.true_bytes, tiers),
    )


def _with_measurement(row: SettingFootprint, measured: MeasuredLoad) -> SettingFootprint:
    mismatches = ()
    if measured.error is None:
        mismatches = tuple(
            name for name in ("footprint_bytes", "true_bytes") if getattr(measured, name) != getattr(row, name)
        )
    return SettingFootprint(**{**row.__dict__, "measured": measured, "mismatches": mismatches})


def _accelerate_comparison(inventory: Inventory) -> str:
    """What accelerate's `estimate-memory` method gives for this model, beside memprof's exact answer.

    Its method (accelerate/commands/estimate.py): build AutoModel, i.e. without the LM head, count fp32
    parameter bytes, and divide by 4 for int8 and by 8 for int4; no quant state, no buffers.
    """
    base_fp32 = 4 * sum(t.numel for t in inventory.params if not t.name.startswith("lm_head."))
    exact = {s.name: predict_setting(inventory, s) for s in (SETTINGS["fp32"], SETTINGS["nf4"])}
    return (
        f"accelerate estimate-memory's method (model without LM head; int8 = fp32/4, int4 = fp32/8) gives "
        f"{human_bytes(base_fp32)} fp32 and {human_bytes(base_fp32 // 8)} int4 here; the real load holds "
        f"{human_bytes(exact['fp32'].true_bytes)} fp32 and {human_bytes(exact['nf4'].true_bytes)} nf4."
    )


def _notes(inventory: Inventory, model: ResolvedModel, settings: tuple[Setting, ...]) -> tuple[str, ...]:
    notes = []
    quantized = [s for s in settings if s.quantized]
    if quantized:
        dtypes = sorted({s.dtype for s in quantized})
        notes.append(
            "true = get_memory_footprint() + bitsandbytes quant state it does not count: int8 keeps a float32 "
            "scale per output row (SCB); 4-bit keeps a float32 absmax per 64 values plus a 16-entry code table "
            "per layer; double quantization stores absmax as uint8 plus a small float32 state per layer."
        )
        notes.append(
            f"Quantized settings keep embeddings, norms, the LM head and biases unquantized in {'/'.join(dtypes)} "
            "(--dtype changes that)."
        )
    notes.append(_accelerate_comparison(inventory))
    cards = gpu_tiers()
    context = {g.context_bytes for g in cards}
    context_text = human_bytes(context.pop()) if len(context) == 1 else "a per-card amount"
    sizes = "/".join(str(t) for t in dict.fromkeys(g.tier_gb for g in cards))
    notes.append(
        f"Smallest GPU: of the cards ({', '.join(g.name for g in cards)}) whose memory, less the CUDA context "
        f"({context_text}, an estimate until measured), holds the weights alone (no activations, KV cache or "
        f"optimizer: see `memprof plan`), those of the smallest size ({sizes} GB), the cheapest per hour first, "
        "the others of that size in brackets (indicative prices: `memprof gpus`). 'none (≥N× card)': no card "
        "holds the weights; N of the largest would, weights alone split evenly."
    )
    installed = installed_transformers_version()
    if inventory.transformers_version != installed:
        notes.append(
            f"Inventory built with transformers {inventory.transformers_version}; installed is {installed}: "
            "use --measure to confirm."
        )
    return tuple(notes)


def footprint(
    model: str | None = None,
    *,
    settings: str | tuple[Setting, ...] | None = None,
    dtype: str | None = None,
    measure: bool = False,
    device: str | None = None,
    allow_download: bool = False,
    trust_remote_code: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> FootprintReport:
    """Bytes of MODEL's weights at each setting (default fp32, bf16, int8, nf4, nf4-dq).

    With `measure=True` each setting is also loaded for real in a fresh subprocess on `device` and
    the measured `get_memory_footprint()` and true bytes are compared with the prediction.
    `device` (default cpu) applies only with `measure=True`: the prediction loads nothing.
    """
    measure = switch(measure, "measure")
    allow_download = switch(allow_download, "allow_download")
    trust_remote_code = switch(trust_remote_code, "trust_remote_code")
    device = text(device, "device", unset=True)
    if device is not None and not measure:
        raise OptionError(
            f"--device {device} only applies with --measure (the prediction loads nothing): "
            f"add --measure to load the model on {device}, or drop --device"
        )
    device = device or "cpu"
    resolved = resolve_model(model, allow_download=allow_download)
    given = isinstance(settings, tuple) and settings and all(isinstance(s, Setting) for s in settings)
    chosen = settings if given else parse_settings(settings, dtype=dtype)
    inventory = inventory_for(resolved, trust_remote_code=trust_remote_code)
    fp32_true = predict_setting(inventory, SETTINGS["fp32"]).true_bytes
    tiers = gpu_tiers()
    rows = [_setting_footprint(predict_setting(inventory, s), s, fp32_true, tiers) for s in chosen]

    weights = None
    if measure:
        from memprof.measure.load import measure_loads

        predicted = {row.setting: row.true_bytes for row in rows}
        predicted["bf16"] = predict_setting(inventory, SETTINGS["bf16"]).true_bytes  # random weights are made in bf16
        measured, weights = measure_loads(
            resolved,
            chosen,
            device=device,
            trust_remote_code=trust_remote_code,
            predicted_true_bytes=predicted,
            on_progress=on_progress,
        )
        rows = [_with_measurement(row, measured[row.setting]) for row in rows]

    entry = catalog.find_catalog_model(resolved.name) if resolved.source == "catalog" else None
    return FootprintReport(
        model=resolved.name,
        source=resolved.source,
        architecture=inventory.architecture,
        params=inventory.param_count,
        published_params=entry.published_params if entry else None,
        settings=tuple(rows),
        gpu_tiers=tuple((g.name, g.memory_bytes) for g in tiers),
        inventory_transformers_version=inventory.transformers_version,
        device=device if measure else None,
        weights=weights,
        notes=_notes(inventory, resolved, chosen),
    )
