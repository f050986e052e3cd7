"""The training step memprof measures (profile) and simulates (plan): one definition for both.

LoRA defaults follow `memprof lora-params`: r=8, alpha=2*r, dropout 0, and target names resolved
and validated by memprof.lora.options (names, `attention`, `mlp`, `all-linear`, or peft's default).
Everything here imports torch/peft lazily, inside the functions.
"""

from __future__ import annotations

import contextlib

DEFAULT_LORA_R = 8
GRAD_CHECKPOINTING_KWARGS = {"use_reentrant": False}
# How a full fine-tune holds its numbers. pure: everything at the setting's dtype (bf16 weights,
# grads and AdamW states, ~8 bytes per parameter). mixed: fp32 master weights (so fp32 grads and
# AdamW states, ~16 bytes per parameter) with the forward under torch.autocast at the setting's
# 16-bit dtype, what Trainer(bf16=True) and accelerate's mixed_precision="bf16" run.
PRECISIONS = ("pure", "mixed")


def default_alpha(r: int, alpha: float | None) -> float:
    return 2 * r if alpha is None else alpha


def default_grad_checkpointing(task: str, *, quantized: bool = False) -> bool:
    """Whether the step checkpoints by default: on for QLoRA (LoRA on a bitsandbytes-quantized
    model), as the QLoRA recipe does through peft's `prepare_model_for_kbit_training`, whose
    `use_gradient_checkpointing` defaults to True; off for inference, LoRA and full fine-tunes,
    whose recipes (Trainer, accelerate) leave it off unless asked."""
    return task == "qlora" or (task == "lora" and quantized)


def resolve_grad_checkpointing(grad_checkpointing: bool | None, task: str, *, quantized: bool = False) -> bool:
    """`grad_checkpointing` as given, or the task's default (`default_grad_checkpointing`) for None;
    inference never checkpoints."""
    if task == "infer":
        return False
    if grad_checkpointing is None:
        return default_grad_checkpointing(task, quantized=quantized)
    return bool(grad_checkpointing)


def default_precision(task: str) -> str:
    """mixed for full fine-tunes (how most are run: fp32 master weights, bf16 autocast), pure otherwise
    (inference and LoRA run at the setting's dtype; a full fine-tune can still ask for pure)."""
    return "mixed" if task == "full" else "pure"


def check_precision(precision: str | None, task: str, setting) -> str:
    """`precision` (None: the task's default) if the step can run it, else OptionError in words."""
    from memprof.errors import OptionError

    chosen = default_precision(task) if precision is None else precision
    if chosen not in PRECISIONS:
        raise OptionError(f"unknown --precision {chosen!r}; use one of {', '.join(PRECISIONS)}")
    if chosen == "mixed" and precision is not None and task != "full":
        raise OptionError(f"--precision mixed is for full fine-tunes (--task full / --train full), not {task}")
    if chosen == "mixed" and (setting.quantized or setting.dtype not in ("bfloat16", "float16")):
        if precision is None:  # the default for full, where the setting has no 16-bit compute: pure
            return "pure"
        raise OptionError(
            f"--precision mixed computes in a 16-bit dtype over fp32 weights: use --setting bf16 or fp16, "
            f"not {setting.name}"
        )
    return chosen


def weights_dtype(setting_dtype: str, precision: str) -> str:
    """The dtype the weights are loaded in: fp32 masters for mixed precision, else the setting's."""
    return "float32" if precision == "mixed" else setting_dtype


def autocast(precision: str, compute_dtype: str, device_type: str):
    """The forward's context: torch.autocast to `compute_dtype` for mixed precision, else nothing."""
    if precision != "mixed":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device_type, dtype=getattr(torch, compute_dtype))


def apply_lora(model, *, r: int, alpha: float, target_modules):
    """Wrap `model` with peft LoRA. `target_modules`: list of names, "all-linear", or None (peft's default)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=target_modules,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def enable_grad_checkpointing(model, *, input_grads: bool) -> None:
    """Non-reentrant checkpointing; `input_grads` makes embeddings' outputs require grad so frozen
    bases (LoRA) still backpropagate through checkpointed blocks."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GRAD_CHECKPOINTING_KWARGS)
    if input_grads:
        model.enable_input_require_grads()


def make_full_trainable(model, *, grad_checkpointing: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    if grad_checkpointing:
        enable_grad_checkpointing(model, input_grads=False)


def prepare_model(
    model,
    *,
    task: str,
    quantized: bool,
    lora_r: int = DEFAULT_LORA_R,
    lora_alpha: float | None = None,
    target=None,
    grad_checkpointing: bool = False,
):
    """Prepare a loaded model for the step: `task` infer (every parameter frozen), lora, or full.

    LoRA on a bitsandbytes-quantized model follows the QLoRA recipe, peft's
    `prepare_model_for_kbit_training`: freeze, cast every unquantized fp16/bf16 parameter to
    float32, checkpointing if asked. Returns the model to run (peft wraps it for LoRA).
    """
    if task == "infer":
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    if task == "full":
        make_full_trainable(model, grad_checkpointing=grad_checkpointing)
        return model
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=grad_checkpointing,
            gradient_checkpointing_kwargs=GRAD_CHECKPOINTING_KWARGS,
        )
    elif grad_checkpointing:
        enable_grad_checkpointing(model, input_grads=True)
    return apply_lora(model, r=lora_r, alpha=default_alpha(lora_r, lora_alpha), target_modules=target)


def make_optimizer(params, name: str = "adamw", *, foreach: bool | None = None):
    """torch AdamW (what profile runs), or bitsandbytes' 8-bit / paged 8-bit AdamW."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-5, foreach=foreach)
    import bitsandbytes as bnb

    cls = bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.PagedAdamW8bit
    return cls(params, lr=1e-5)


TRAIN_PHASES = ("zero_grad", "forward", "backward", "optimizer")


def train_step(model, optimizer, ids, *, precision: str = "pure", compute_dtype: str = "bfloat16", phase=None) -> None:
    """zero_grad first, so after a step the grads stay live for the breakdown. Mixed precision: the
    forward (and loss) under autocast, backward outside it, as Trainer / accelerate do. `phase(name)`,
    a context manager factory (a tracker's `phase`), brackets each of TRAIN_PHASES."""
    within = phase or (lambda _name: contextlib.nullcontext())
    with within("zero_grad"):
        optimizer.zero_grad(set_to_none=True)
    with within("forward"), autocast(precision, compute_dtype, ids.device.type):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    with within("backward"):
        loss.backward()
    with within("optimizer"):
        optimizer.step()


def model_parts(model, optimizer=None) -> dict[str, list]:
    """The model's tensors by kind: frozen weights, quant state, trainable params, grads, optimizer states."""
    return step_parts(model, optimizer)()


def step_parts(model, optimizer=None):
    """`model_parts` as a function of no arguments, for asking it many times within one step: the walk
    of every tensor the model holds (weights, quant state, trainable params: the same tensors all
    step) is done once, here; grads and optimizer states, which the step makes and frees, are read
    at each call."""
    from memprof.tensors import held_tensors

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    trainable_ids = {id(p) for p in trainable}
    weight_ids = {id(p) for p in params} | {id(b) for b in model.buffers()}
    frozen = [p for p in params if id(p) not in trainable_ids] + list(model.buffers())
    quant_state = [t for t in held_tensors(model) if id(t) not in weight_ids]

    def now() -> dict[str, list]:
        grads = [p.grad for p in trainable if p.grad is not None]
        states = []
        if optimizer is not None:
            for state in optimizer.state.values():
                states += [v for v in state.values() if hasattr(v, "untyped_storage")]  # step counters too
        return {
            "weights": frozen,
            "quant_state": quant_state,
            "trainable_params": trainable,
            "grads": grads,
            "optimizer_states": states,
        }

    return now
