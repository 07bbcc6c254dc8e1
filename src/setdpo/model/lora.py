"""LoRA through peft: settings, default target modules per model family, wrapping."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

# Attention and MLP projections of the Llama/Qwen2/Mistral and GPT-2 families.
_KNOWN_LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "c_attn",
    "c_proj",
    "c_fc",
)


@dataclass
class LoraSettings:
    """LoRA hyperparameters. ``target_modules=None`` targets every attention and MLP
    projection the model has (q/k/v/o/gate/up/down for Llama, Qwen2, Mistral; c_attn,
    c_proj, c_fc for GPT-2; all linear layers but the output head otherwise)."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    # embedding rows trained beside the adapter (peft's trainable tokens): the item tokens
    trainable_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


def default_target_modules(model: PreTrainedModel) -> list[str] | str:
    """The known projection names present in ``model``, else peft's ``"all-linear"``."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [name for name in _KNOWN_LORA_TARGETS if name in leaves]
    return found or "all-linear"


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around peft wrapping a model: peft (0.21) reads `model.is_gradient_checkpointing`,
    which transformers deprecates for `is_activation_checkpointing`, so every wrap printed a
    FutureWarning that no setdpo call or user setting causes; this one is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
        )
        yield


def add_lora(model: PreTrainedModel, settings: LoraSettings | None = None) -> PeftModel:
    """Wrap ``model`` with a fresh trainable LoRA adapter; base weights are frozen. LoRA's B
    matrices start at zero, so the wrapped model computes exactly what ``model`` did."""
    if isinstance(model, PeftModel):
        raise ValueError("the model already has a peft adapter: merge it first (load(merge_all))")
    settings = settings or LoraSettings()
    targets = settings.target_modules or default_target_modules(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets) if isinstance(targets, tuple) else targets,
        # GPT-2's Conv1D stores weights transposed; peft must know (it warns otherwise)
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
        bias="none",
        task_type="CAUSAL_LM",
        # the input embedding's rows (and a tied output's): new item tokens learn under LoRA
        trainable_token_indices=list(settings.trainable_tokens) or None,
    )
    with peft_wrapping():
        return get_peft_model(model, config)
