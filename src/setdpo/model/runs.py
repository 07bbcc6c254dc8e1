"""Run directories: ``setdpo_model.json`` names a base model and the adapters to apply on it
(docs/architecture.md). Training writes one with `save_run_model`; `load(run_dir)` reads it."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from setdpo.atomic import atomic_write_json
from setdpo.errors import InputError
from setdpo.model.lab import lab_settings
from setdpo.model.tiny import TINY

RUN_MODEL_FILE = "setdpo_model.json"


@dataclass(frozen=True)
class RunModel:
    """The model of a run directory, read from its ``setdpo_model.json``, paths made absolute.

    ``base_model`` is a name ``load`` accepts (``embedded:...``, a hub id) or the absolute
    path of a model folder; ``adapters`` are absolute adapter folders in application order.
    """

    base_model: str
    adapters: tuple[Path, ...]
    trust_remote_code: bool


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding ``setdpo_model.json``."""
    return (Path(path) / RUN_MODEL_FILE).is_file()


def read_run_model(run_dir: str | os.PathLike) -> RunModel:
    """Read and check ``run_dir/setdpo_model.json``; relative paths resolve inside ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    path = run_dir / RUN_MODEL_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from error
    base, adapters = record.get("base_model"), record.get("adapters", [])
    if not isinstance(base, str) or not base:
        raise InputError(f"{path}: base_model must be a non-empty string, got {base!r}")
    if not isinstance(adapters, list) or not all(isinstance(a, str) for a in adapters):
        raise InputError(f"{path}: adapters must be a list of folder paths, got {adapters!r}")
    if (run_dir / base).is_dir():  # a relative folder such as "base" lives inside the run
        base = str(run_dir / base)
    resolved = tuple(run_dir / adapter for adapter in adapters)
    for adapter in resolved:
        if not (adapter / "adapter_config.json").is_file():
            raise InputError(f"{path}: adapter folder {adapter} has no adapter_config.json")
    return RunModel(base, resolved, bool(record.get("trust_remote_code", False)))


def save_run_model(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    run_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
    init_run: str | os.PathLike | None = None,
    adapter_dir: str | None = None,
    trust_remote_code: bool = False,
    best: dict[str, Any] | None = None,
    adapter_stem: str | None = None,
) -> Path:
    """Save a trained model into ``run_dir`` so that ``load(run_dir)`` rebuilds it; returns
    the ``setdpo_model.json`` written (atomically, after everything else).

    Say where the stage started, with exactly one of:

    - ``base_model``: a name ``load`` accepts, the model LoRA was added to (SFT). Hub ids and
      ``embedded:...`` are recorded as given; for ``"tiny"`` and ``"lab"`` the model's own base
      weights are saved as ``run_dir/base``; a local folder is recorded as an absolute path.
    - ``init_run``: the run (or model name) `prepare_preference_model` started from. Its
      adapters were merged beneath the model's fresh one; they are copied into
      ``run_dir/adapters/`` and listed first, and its saved ``base`` is copied too, so the
      run directory does not depend on the init run's.

    A peft model's active adapter goes to ``adapter_dir``, default ``adapter_stem``
    (``adapters/sft`` after ``base_model``, ``adapters/pref`` after ``init_run``) or, when an
    adopted adapter has that name, ``<stem>-2``, ``<stem>-3``... (an SFT run started from a
    preference run: ``adapters/sft``, ``adapters/pref``, ``adapters/sft-2``). A model without adapter (full
    fine-tuning) is saved whole as ``run_dir/base``, with no adapters. ``best`` (the
    checkpoint an early-stopped run restored: ``step``, ``metric``, ``value``) is recorded as
    given.
    """
    if (base_model is None) == (init_run is None):
        raise ValueError("save_run_model needs exactly one of base_model and init_run")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    base, merged, trust_remote_code = _starting_point(base_model, init_run, trust_remote_code)
    if isinstance(model, PeftModel):
        base = _record_base(run_dir, model, tokenizer, base, bool(merged))
        adapters: list[str] = []
        for folder in merged:
            adapters.append(_adopt_adapter(run_dir, folder, adapters))
        stem = adapter_stem or ("adapters/sft" if init_run is None else "adapters/pref")
        adapters.append(adapter_dir or _free_name(stem, adapters))
        model.save_pretrained(run_dir / adapters[-1])
    else:
        model.save_pretrained(run_dir / "base")
        tokenizer.save_pretrained(run_dir / "base")
        base, adapters = "base", []
    tokenizer.save_pretrained(run_dir)
    record: dict[str, Any] = {
        "base_model": base,
        "adapters": adapters,
        "trust_remote_code": trust_remote_code,
    }
    if best is not None:
        record["best"] = best
    return atomic_write_json(run_dir / RUN_MODEL_FILE, record)


def _starting_point(
    base_model: str | None, init_run: str | os.PathLike | None, trust_remote_code: bool
) -> tuple[str, tuple[Path, ...], bool]:
    """``(base, merged adapter folders, trust_remote_code)`` of the stage's starting model."""
    if init_run is not None and is_run_dir(init_run):
        spec = read_run_model(init_run)
        return spec.base_model, spec.adapters, trust_remote_code or spec.trust_remote_code
    return os.fspath(base_model if base_model is not None else init_run), (), trust_remote_code


def _record_base(
    run_dir: Path, model: PeftModel, tokenizer: PreTrainedTokenizerBase, base: str, merged: bool
) -> str:
    """The ``base_model`` entry for a peft model, saving or copying weights where needed."""
    if base == TINY or lab_settings(base) is not None:
        if merged:  # merged adapters changed the weights: the base cannot be recovered
            raise ValueError(f"a {base} base with merged adapters must come from its init run")
        _save_unwrapped_base(model, run_dir / "base")
        tokenizer.save_pretrained(run_dir / "base")
        return "base"
    local = Path(base)
    if not local.is_dir():
        return base
    local = local.resolve()
    if local == run_dir / "base":
        return "base"
    if is_run_dir(local.parent):  # another run's saved base: take a copy
        shutil.copytree(local, run_dir / "base", dirs_exist_ok=True)
        return "base"
    return str(local)


def _save_unwrapped_base(model: PeftModel, folder: Path) -> None:
    """Save the frozen base weights under a peft model: peft renames each wrapped layer's
    weight to ``*.base_layer.*`` (an embedding with trainable tokens: ``*.token_adapter.*``)
    and adds ``lora_*`` and ``trainable_tokens_*`` tensors, which are dropped here."""
    wrapped = model.get_base_model()
    state = {
        key.replace(".base_layer.", ".").replace(".token_adapter.", "."): value
        for key, value in wrapped.state_dict().items()
        if "lora_" not in key and "trainable_tokens_" not in key
    }
    with torch.device("meta"):  # no random init: every weight comes from `state`
        base = AutoModelForCausalLM.from_config(wrapped.config)
    base.load_state_dict(state, strict=True, assign=True)
    base.save_pretrained(folder)


def _adopt_adapter(run_dir: Path, folder: Path, taken: list[str]) -> str:
    """The adapter's path relative to the run, copying it in when it lies outside."""
    if folder.resolve().is_relative_to(run_dir):
        return folder.resolve().relative_to(run_dir).as_posix()
    name = _free_name(f"adapters/{folder.name}", taken)
    shutil.copytree(folder, run_dir / name, dirs_exist_ok=True)
    return name


def _free_name(stem: str, taken: list[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when an earlier adapter already uses it."""
    name, index = stem, 1
    while name in taken:
        index += 1
        name = f"{stem}-{index}"
    return name
