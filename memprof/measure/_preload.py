"""Imported once by the measurement fork server, so that every fresh measurement process starts
with torch, transformers, bitsandbytes and peft already imported (about 10 s saved per setting).

The server must never initialise CUDA nor even ask the CUDA runtime for its device count: either
makes torch refuse CUDA in every process forked from it ("Cannot re-initialize CUDA in forked
subprocess"). So is_available() asks NVML, and bitsandbytes is imported without CUDA (or not at all:
then each worker imports it, and peft, itself)."""

import contextlib
import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # before anything asks torch.cuda.is_available()

import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
from transformers import AutoModelForCausalLM  # noqa: E402,F401

from memprof.measure.nvml import import_bitsandbytes_without_cuda  # noqa: E402

if import_bitsandbytes_without_cuda():  # peft imports bitsandbytes: only once that is safe
    with contextlib.suppress(Exception):
        import peft  # noqa: F401

import memprof.measure.profile_worker  # noqa: E402,F401
import memprof.measure.worker  # noqa: E402,F401
import memprof.tensors  # noqa: E402,F401
