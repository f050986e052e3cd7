"""The result of `memprof footprint`: bytes of a model's weights at each load setting."""

from __future__ import annotations

from dataclasses import dataclass

from memprof.measure.load import MeasuredLoad

FOOTPRINT_KIND = "memprof.footprint"


@dataclass(frozen=True)
class SettingFootprint:
    setting: str
    description: str
    dtype: str  # dtype of the tensors that stay unquantized
    params: int
    footprint_bytes: int
    true_bytes: int
    quant_state_bytes: int
    quantized_params: int
    unquantized_bytes: int
    unquantized_share: float  # of true_bytes
    ratio_to_fp32: float  # true_bytes / true_bytes at fp32
    fits_gpus: tuple[str, ...]  # cards whose memory less the CUDA context holds true_bytes: weights alone
    measured: MeasuredLoad | None = None
    mismatches: tuple[str, ...] = ()  # predicted fields that differ from the measurement
    # Of the fitting cards of the smallest memory size (tier_gb): the cheapest per hour, then the others
    # cheapest first. None when no card holds the weights.
    smallest_gpu: str | None = None
    smallest_gpu_alternatives: tuple[str, ...] = ()
    # When no card holds the weights: how many of the largest card checked hold them (weights alone,
    # split evenly; nothing else counted). 0 otherwise.
    largest_gpu: str | None = None
    largest_gpu_count: int = 0


@dataclass(frozen=True)
class FootprintReport:
    model: str
    source: str
    architecture: str
    params: int
    published_params: int | None
    settings: tuple[SettingFootprint, ...]
    gpu_tiers: tuple[tuple[str, int], ...]  # (name, memory_bytes) of the cards checked for fit
    inventory_transformers_version: str
    device: str | None = None  # set when measured
    weights: str | None = None  # where measured weights came from
    notes: tuple[str, ...] = ()
    kind: str = FOOTPRINT_KIND  # tells saved JSON files of different commands apart

    @classmethod
    def from_json(cls, data: dict) -> FootprintReport:
        """Rebuild a report from its JSON (the output of `--json`), for re-rendering."""
        rows = []
        for row in data["settings"]:
            measured = row.get("measured")
            values = {
                **row,
                "fits_gpus": tuple(row["fits_gpus"]),
                "mismatches": tuple(row["mismatches"]),
                "smallest_gpu_alternatives": tuple(row.get("smallest_gpu_alternatives", ())),
                "measured": MeasuredLoad(**measured) if measured is not None else None,
            }
            if values.get("smallest_gpu") is None and values["fits_gpus"]:
                # a file from before smallest_gpu: its pick was the first card that fits
                values["smallest_gpu"] = values["fits_gpus"][0]
            rows.append(SettingFootprint(**values))
        return cls(
            **{
                **data,
                "settings": tuple(rows),
                "gpu_tiers": tuple(tuple(t) for t in data["gpu_tiers"]),
                "notes": tuple(data["notes"]),
            }
        )
