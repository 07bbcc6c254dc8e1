"""Turning a model's dropout off for preference training (as TRL's `disable_dropout=True`).

The policy is scored in train mode and the reference in eval mode: with dropout the two differ
at the first step (GPT-2's 0.1 gave rewards up to 0.21), and the objective chases noise.
"""

from __future__ import annotations

import torch

# Attributes that hold an attention-dropout probability as a float, not as a Dropout module
# (Llama, Qwen2, Mistral: `attention_dropout`; others: `dropout` or `attn_dropout`).
_FLOAT_ATTRIBUTES = ("attention_dropout", "dropout", "attn_dropout", "dropout_p")


def disable_dropout(model: torch.nn.Module, keep: tuple[str, ...] = ("lora_dropout",)) -> int:
    """Set every dropout probability in `model` to 0, in place; returns how many were nonzero.

    `torch.nn.Dropout` modules get `p = 0`; float attributes that attention code passes as
    its dropout probability are set to 0.0. Modules whose name contains one of `keep` (peft's
    `lora_dropout`, which `lora_dropout` sets on purpose) are left alone. The model's config
    is not changed, so a saved model keeps its own dropout for other uses.
    """
    changed = 0
    for name, module in model.named_modules():
        if any(part in name for part in keep):
            continue
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            changed += module.p > 0
            module.p = 0.0
            continue
        for attribute in _FLOAT_ATTRIBUTES:
            value = getattr(module, attribute, None)
            if isinstance(value, float) and value > 0:
                setattr(module, attribute, 0.0)
                changed += 1
    return changed
