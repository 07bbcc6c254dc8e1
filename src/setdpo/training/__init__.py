"""SFT and preference training on transformers' Trainer (see docs/architecture.md).

`train_sft` and `train_pref` load on first use, so that reading a configuration does not
import the model and scoring stack.
"""

from __future__ import annotations

from typing import Any

from setdpo.training.config import PrefConfig, SFTConfig, load_config

__all__ = ["PrefConfig", "SFTConfig", "load_config", "train_pref", "train_sft"]


def __getattr__(name: str) -> Any:
    if name == "train_sft":
        from setdpo.training.sft import train_sft

        return train_sft
    if name == "train_pref":
        from setdpo.training.preference import train_pref

        return train_pref
    raise AttributeError(f"module 'setdpo.training' has no attribute {name!r}")
