"""The reference of preference training (docs/training.md, "Preference stage"): the model
the stage starts from, never silently the base model."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from setdpo.model.loading import load
from setdpo.model.lora import LoraSettings, add_lora


def prepare_preference_model(
    init_run_dir: str | os.PathLike,
    lora: LoraSettings | None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    tiny_texts: Sequence[str] | None = None,
) -> tuple[PeftModel | PreTrainedModel, PreTrainedTokenizerBase]:
    """The policy of a preference stage; with LoRA, its reference in the same network.

    Loads ``init_run_dir`` (the SFT run, or any name ``load`` accepts), merges all its
    adapters into the base weights and adds a fresh LoRA adapter. The reference
    (pi_ref = pi_SFT, docs/training.md) is then the same network with that adapter off::

        policy, tokenizer = prepare_preference_model(sft_dir, LoraSettings())
        with policy.disable_adapter():
            reference_logps = ...  # the SFT model's log-probs, not the base model's

    The fresh adapter's B matrices are zero, so at the first step policy == reference.
    ``lora=None`` (full fine-tuning) returns the merged model itself with every weight
    trainable; its reference is a separate frozen copy (`load_reference`).
    Save the trained run with ``save_run_model(policy, tokenizer, run_dir, init_run=sft_dir)``.
    """
    model, tokenizer = load(
        init_run_dir,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        merge_all=True,
        tiny_texts=tiny_texts,
    )
    if lora is None:
        return model.requires_grad_(True), tokenizer
    return add_lora(model, lora), tokenizer


def load_reference(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    tiny_texts: Sequence[str] | None = None,
) -> PreTrainedModel:
    """A separate frozen copy of a model (every adapter merged), the reference for full
    fine-tuning where the policy's own weights change: eval mode, no gradients."""
    model, _ = load(
        name_or_path,
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        merge_all=True,
        tiny_texts=tiny_texts,
    )
    return model.requires_grad_(False)
