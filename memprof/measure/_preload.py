"""Imported once by the measurement fork server, so that every fresh measurement process starts
with torch, transformers, bitsandbytes and peft already imported (about 10 s saved per setting)."""

import contextlib

import torch  # noqa: F401
import transformers  # noqa: F401
from transformers import AutoModelForCausalLM  # noqa: F401

with contextlib.suppress(Exception):  # a broken bitsandbytes is reported by the worker that needs it
    import bitsandbytes  # noqa: F401
with contextlib.suppress(Exception):
    import peft  # noqa: F401

import memprof.measure.profile_worker  # noqa: E402,F401
import memprof.measure.tensors  # noqa: E402,F401
import memprof.measure.worker  # noqa: E402,F401
