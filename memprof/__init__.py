"""memprof: memory and performance profiling for Hugging Face causal language models.

The public Python API; the CLI is a thin layer over these functions.
"""

from __future__ import annotations

import logging as _logging

from memprof.analyses.footprint import footprint
from memprof.analyses.lora_params import lora_params, lora_sweep
from memprof.analyses.plan import plan
from memprof.analyses.serve import plan_serving
from memprof.analyses.validate import validate
from memprof.errors import MemprofError
from memprof.inventory import Inventory, inventory_for
from memprof.models import ResolvedModel, resolve_model
from memprof.predict import SettingPrediction, predict_setting
from memprof.results.footprint import FootprintReport, SettingFootprint
from memprof.results.lora import LoraReport, LoraSweep
from memprof.results.plan import PlanReport
from memprof.results.serve import ServePlan
from memprof.results.validate import ValidationReport, ValidationRow
from memprof.settings import SETTINGS, Setting, parse_settings
from memprof.version import __version__

# On AVX512-BF16 CPUs, importing bitsandbytes 0.50 logs a warning that the optional package
# `kernels` (a faster CPU 4-bit kernel from the hub) is missing. memprof never runs that kernel (it
# keeps 4-bit weights in the GPU layout, memprof.settings.keep_gpu_weight_layout): library noise
# about it is not for users. Only that message is dropped; the logger's other warnings still show.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "kernels-community" not in record.getMessage()
)

__all__ = [
    "__version__",
    "SETTINGS",
    "FootprintReport",
    "Inventory",
    "LoraReport",
    "LoraSweep",
    "MemprofError",
    "PlanReport",
    "ResolvedModel",
    "ServePlan",
    "Setting",
    "SettingFootprint",
    "SettingPrediction",
    "ValidationReport",
    "ValidationRow",
    "footprint",
    "inventory_for",
    "lora_params",
    "lora_sweep",
    "parse_settings",
    "plan",
    "plan_serving",
    "predict_setting",
    "resolve_model",
    "validate",
]
