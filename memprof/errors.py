"""Errors a user can cause. The CLI turns each into one line and exit code 2."""

from __future__ import annotations


def short_message(exc: BaseException, limit: int = 200) -> str:
    """First line of an exception's message (its cause's, if wrapped), cut to `limit` characters: a
    library's error inside one memprof line."""
    exc = exc.__cause__ or exc
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MemprofError(Exception):
    """A user-facing error: the message says what was wrong and what would work."""

    exit_code = 2


class OptionError(MemprofError):
    """Command-line options that contradict each other or do not apply (e.g. --device without --measure)."""


class UnknownModelError(MemprofError):
    """MODEL is neither a path, a catalog name, nor a model in the local HF cache."""


class ConfigError(MemprofError):
    """A config.json that cannot be read, parsed, or turned into a model."""


class SettingError(MemprofError):
    """An unknown load setting, or one this machine cannot run."""


class DeviceError(MemprofError):
    """A device that is not available here (e.g. --device cuda without a GPU)."""


class MeasureError(MemprofError):
    """A measurement subprocess failed for a reason the user can act on."""


class ProfileOptionError(MemprofError):
    """A `memprof profile` option out of range or a combination it cannot run (e.g. --train full at nf4)."""


class ResultFileError(MemprofError):
    """A saved result file that cannot be read as a memprof result."""


class LoraConfigError(MemprofError):
    """A LoRA option peft would reject or memprof cannot count: rank, alpha, dropout, bias, sweep."""


class UnknownTargetError(LoraConfigError):
    """A --target or --modules-to-save name that matches no module of the model."""


class UnsupportedTargetError(LoraConfigError):
    """A target module peft cannot wrap with LoRA (or with DoRA), or no default targets for the architecture."""


class GpuFileError(MemprofError):
    """A --gpu-file that cannot be read or is not of the shape of catalog/gpus.json."""


class PlanOptionError(MemprofError):
    """A `memprof plan` option out of range or a combination it cannot plan (unknown task or GPU, full on nf4)."""


class ValidateOptionError(MemprofError):
    """A `memprof validate` option it cannot run: an unknown task, a sequence length below 1, an unknown device."""


class SimulationError(MemprofError):
    """The model's own code failed on fake tensors (a config transformers cannot run at that shape)."""
