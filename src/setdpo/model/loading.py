"""`load`: a model and its tokenizer from any name setdpo accepts (see `setdpo.model`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from setdpo.errors import InputError
from setdpo.items import extend_model
from setdpo.model.embedded import EMBEDDED_DEFAULT, embedded_model_folder
from setdpo.model.lab import LabSettings, build_lab_model, lab_settings
from setdpo.model.lora import peft_wrapping
from setdpo.model.runs import is_run_dir, read_run_model
from setdpo.model.tiny import TINY, build_tiny

_WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` means CUDA when available, else the CPU; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA device that supports it, else float32 (CPU included)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16}
    names |= {"bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise InputError(f"unknown dtype {dtype!r}: expected auto or one of {sorted(names)}")
    return names[dtype]


def load(
    name_or_path: str | os.PathLike = EMBEDDED_DEFAULT,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    adapter: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    merge_all: bool = False,
    tiny_texts: Sequence[str] | None = None,
    lab_data: str | os.PathLike | None = None,
    item_titles: Sequence[str] | None = None,
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer; `setdpo.model` lists the names accepted.

    ``item_titles``: the catalog of a data directory that writes items as tokens
    (`setdpo.items`): a base model gets one new token per title (`items.extend_model`); a run
    trained with them has them already.

    Adapters (a run directory's list, then ``adapter``) are applied in order: each but the
    last is merged into the weights; the last stays a peft adapter unless ``merge_all``.
    The tokenizer gets a padding token when it lacks one (EOS, else UNK) and
    ``model.config.pad_token_id`` matches it. The model is returned in eval mode.
    ``"lab"`` (or ``"lab:layers=2,..."``, `setdpo.model.lab.lab_settings`) is built from the
    prepared data directory ``lab_data``.
    """
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    name = os.fspath(name_or_path)
    adapters: list[Path] = []
    run_tokenizer: Path | None = None
    if is_run_dir(name):
        spec = read_run_model(name)
        if spec.trust_remote_code and not trust_remote_code:
            raise InputError(
                f"run {name} was trained with trust_remote_code=True: pass "
                "trust_remote_code=True to load it"
            )
        name, adapters = spec.base_model, list(spec.adapters)
        if (Path(name_or_path) / "tokenizer_config.json").is_file():
            run_tokenizer = Path(name_or_path)
    try:
        lab = lab_settings(name)
    except ValueError as error:
        raise InputError(str(error)) from error
    if lab is not None:
        model, tokenizer = _build_lab(lab_data, lab)
    else:
        model, tokenizer = _load_base(name, target_dtype, trust_remote_code, tiny_texts)
    if run_tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(run_tokenizer)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            # a LoRA run's item tokens: their rows come with its adapters
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    elif item_titles is not None:
        extend_model(model, tokenizer, item_titles)
    if adapter is not None:
        adapters.append(Path(adapter))
    model = _apply_adapters(model.to(target_dtype), adapters, merge_all)
    _set_padding(model, tokenizer)
    return model.to(target_device).eval(), tokenizer


def _load_base(
    name: str, dtype: torch.dtype, trust_remote_code: bool, tiny_texts: Sequence[str] | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if name == TINY:
        return build_tiny(tiny_texts)
    if name.startswith("embedded:"):
        name = str(embedded_model_folder(name)[0])
    return _load_pretrained(name, dtype, trust_remote_code)


def _build_lab(
    data_dir: str | os.PathLike | None, settings: LabSettings
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if data_dir is None:
        raise InputError(
            "the lab model is built from a prepared data directory: pass lab_data=DIR "
            "(`setdpo train sft --model lab` passes its --data); a trained lab model is "
            "loaded from its run directory"
        )
    return build_lab_model(data_dir, settings)


def _load_pretrained(
    name: str, dtype: torch.dtype, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A local folder or hub id through the Auto classes. transformers prefers safetensors
    weights when a repository has both formats (``use_safetensors=None``)."""
    local = Path(name).expanduser()
    if local.is_dir():
        _check_model_folder(local)
        name = str(local)
    elif name.startswith((".", "/", "~")):
        raise InputError(f"model folder {name} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        if local.is_dir():
            raise InputError(f"cannot load the model folder {name}: {error}") from error
        raise InputError(
            f"cannot load model {name!r}: it is not a local folder, and neither the Hugging "
            "Face hub (no network, or HF_HUB_OFFLINE is set) nor a local cache of it was "
            f"found (or the id does not exist). Detail: {str(error).splitlines()[0]}"
        ) from error
    return model, tokenizer


def _check_model_folder(folder: Path) -> None:
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise InputError(
            f"{folder} is a LoRA adapter, not a model: load its base with adapter={folder}"
        )
    if not (folder / "config.json").is_file():
        raise InputError(f"model folder {folder} has no config.json: it is not a model folder")
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        found = sorted(p.name for p in folder.iterdir())[:12]
        raise InputError(
            f"model folder {folder} has no weights: expected model.safetensors, "
            f"model-*-of-*.safetensors or pytorch_model.bin; found {found}"
        )


def _apply_adapters(
    model: PreTrainedModel, adapters: Sequence[Path], merge_all: bool
) -> PreTrainedModel | PeftModel:
    for index, path in enumerate(adapters):
        if not (path / "adapter_config.json").is_file():
            raise InputError(f"adapter folder {path} has no adapter_config.json")
        with peft_wrapping():
            model = PeftModel.from_pretrained(model, path)
        if merge_all or index < len(adapters) - 1:
            model = model.merge_and_unload()
    return model


def _set_padding(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise InputError("the tokenizer has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
