"""`setdpo export RUN --out DIR`: a run as a self-contained Hugging Face model folder.

The folder loads with ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` alone (no setdpo import): every adapter merged into
float32 safetensors weights (peft's ``merge_and_unload``; full fine-tuning and lab runs are
their saved model), the run's tokenizer (the lab's own BPE included), ``config.json``,
``generation_config.json``, a model card ``README.md``, the training catalog ``items.json``
and ``setdpo.json`` (`setdpo.serving.info`: the prompt template and domain training used).

``adapter_only=True`` writes one LoRA adapter over the run's base model instead, for vLLM's
``--enable-lora``: a run's adapters (SFT, then preference) are summed into one adapter of
rank r1 + r2 by concatenation, ``A = [A1; A2]``, ``B = [s1 B1, s2 B2]`` with scaling 1, which
is exact because each adapter adds ``s_i B_i A_i`` to the same base weight.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from setdpo.data.io import atomic_directory, check_target
from setdpo.errors import InputError
from setdpo.model import embedded_hub_id, is_run_dir, load, read_run_model, resolve_dtype
from setdpo.paths import portable_name, portable_values
from setdpo.serving.card import Weights, model_card
from setdpo.serving.info import EXPORT_FILE, run_config, run_info

CATALOG_FILE = "items.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def export_run(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    adapter_only: bool = False,
    overwrite: bool = False,
    results: Sequence[str | os.PathLike] = (),
    dtype: str = "float32",
) -> Path:
    """Export the run directory ``run`` to ``out`` (written atomically; an existing ``out``
    is refused unless ``overwrite``); returns ``out``. ``results``: `setdpo evaluate` files of
    this run whose metrics go into the model card (found by themselves when the run lies in
    a quickstart layout, ``<tier>/runs/<name>`` beside ``<tier>/eval/<name>.json``).
    ``dtype``: of the merged weights (float32 keeps the run's log-probs within 1e-4;
    bfloat16 halves the size)."""
    if not is_run_dir(run):
        raise InputError(f"{run}: not a run directory (no setdpo_model.json)")
    info = run_info(run)  # refuses a run whose data is gone before anything is created
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    check_target(out, overwrite)
    evaluations = [_read_results(p) for p in results] or _found_results(Path(run))
    with atomic_directory(out, overwrite) as tmp:
        if adapter_only:
            base = _write_adapter(Path(run), tmp)
        else:
            _write_merged(Path(run), tmp, dtype)
            base = info.portable().base_model
        catalog = None
        if info.catalog is not None:
            shutil.copyfile(info.catalog, tmp / CATALOG_FILE)
            catalog = CATALOG_FILE
        record = info.to_export(catalog) | {"adapter_only": adapter_only}
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        weights = Weights(adapter_only, _adapters(Path(run)), base, info.base_model)
        training = portable_values(run_config(Path(run).resolve()))
        card = model_card(info.portable(), training, evaluations, weights)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(out)


def _adapters(run: Path) -> list[tuple[str, int, float]]:
    """``(name, r, lora_alpha)`` of the run's adapters, in the order they apply."""
    configs = [(a, json.loads((a / "adapter_config.json").read_text()))
               for a in read_run_model(run).adapters]  # fmt: skip
    return [(a.name, c["r"], c["lora_alpha"]) for a, c in configs]


def _write_merged(run: Path, folder: Path, dtype: str) -> None:
    # merged in float32 whatever the stored weights, then cast
    model, tokenizer = load(run, device="cpu", dtype=torch.float32, merge_all=True)
    model = model.to(resolve_dtype(dtype, torch.device("cpu")))
    model.save_pretrained(folder)  # safetensors, config.json, generation_config.json
    if not (folder / "generation_config.json").is_file():
        from transformers import GenerationConfig

        GenerationConfig.from_model_config(model.config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_adapter(run: Path, folder: Path) -> str:
    """One LoRA adapter equal to the run's adapters applied in order (module docstring);
    returns the base model it names (`_portable_base`)."""
    spec = read_run_model(run)
    if not spec.adapters:
        raise InputError(
            f"{run}: --adapter-only needs a LoRA run; this run has no adapter (full fine-tuning "
            "or a lab model saves its whole model): export it without --adapter-only"
        )
    configs = [json.loads((a / "adapter_config.json").read_text()) for a in spec.adapters]
    weights = [load_file(a / ADAPTER_WEIGHTS) for a in spec.adapters]
    config, merged = _concatenate(configs, weights, spec.adapters)
    folder.mkdir(parents=True, exist_ok=True)
    config["base_model_name_or_path"] = _portable_base(run, spec.base_model, folder)
    save_file(merged, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    from transformers import AutoTokenizer

    tokenizer = run if (run / "tokenizer_config.json").is_file() else spec.base_model
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return config["base_model_name_or_path"]


def _portable_base(run: Path, base: str, folder: Path) -> str:
    """What an adapter-only export names as its base, meaningful on another machine: the hub
    id an embedded model was quantized from; a base saved inside the run (tiny, lab) copied
    into the export as ``base/``; a local folder by its name (the card says so); else the
    hub id the run was trained on."""
    hub_id = embedded_hub_id(base)
    if hub_id is not None:
        return hub_id
    if Path(base).is_relative_to(run.resolve()):
        shutil.copytree(base, folder / "base")
        return "base"
    return portable_name(base, parts=1)


def _concatenate(
    configs: list[dict[str, Any]], weights: list[dict[str, torch.Tensor]], folders: Sequence[Path]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    for config, folder in zip(configs, folders, strict=True):
        unsupported = [k for k in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern")
                       if config.get(k)]  # fmt: skip
        if unsupported:
            raise InputError(f"{folder}: --adapter-only cannot combine adapters with {unsupported}")
    modules = [set(w) for w in weights]
    if any(m != modules[0] for m in modules):
        raise InputError(
            f"--adapter-only: the adapters {[str(f) for f in folders]} adapt different modules"
        )
    scales = [c["lora_alpha"] / c["r"] for c in configs]
    merged: dict[str, torch.Tensor] = {}
    for key in weights[0]:
        parts = [w[key].float() for w in weights]
        if ".lora_A." in key:  # [r, in]
            merged[key] = torch.cat(parts, dim=0).contiguous()
        elif ".lora_B." in key:  # [out, r]
            merged[key] = torch.cat([p * s for p, s in zip(parts, scales, strict=True)], 1)
        else:
            raise InputError(f"--adapter-only: unexpected adapter tensor {key}")
    rank = sum(c["r"] for c in configs)
    config = dict(configs[-1]) | {"r": rank, "lora_alpha": rank, "lora_dropout": 0.0}
    return config, merged


def _read_results(path: str | os.PathLike) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read the results file {path}: {error}") from error
    if not isinstance(record, dict) or "metrics" not in record or "protocol" not in record:
        raise InputError(f"{path}: not a `setdpo evaluate` results file (no protocol, metrics)")
    file = portable_name(os.path.abspath(path), parts=3)  # shown in the card
    return {"file": file, "protocol": record["protocol"], "metrics": record["metrics"]}


def _found_results(run: Path, levels: int = 3, most: int = 500) -> list[dict[str, Any]]:
    """Test results of this very run directory (their ``protocol.model``) in the ``eval/``
    folders of its ``levels`` nearest ancestors: a quickstart's ``<tier>/eval/<name>.json``
    beside ``<tier>/runs/<name>``, a study's ``eval/<model>/<tag>.json`` beside
    ``runs/pref/<tag>``. At most ``most`` files are read."""
    run = run.resolve()
    files = [p for a in run.parents[:levels] if (a / "eval").is_dir()
             for p in sorted((a / "eval").rglob("*.json"))][:most]  # fmt: skip
    found = []
    for path in files:
        try:
            record = _read_results(path)
        except InputError:
            continue  # not a results file
        model, split = str(record["protocol"].get("model", "")), record["protocol"].get("split")
        if model and split == "test" and _same_run(model, run):
            found.append(record)
    return found


def _same_run(model: str, run: Path) -> bool:
    """Whether a results file's ``protocol.model`` names ``run``: the same folder, or the same
    last two components (``pref/loss=mult,seed=0``): the results of a study or a quickstart
    that was moved or copied name the run where it was evaluated (the files searched lie in
    the run's own ancestors' ``eval/`` folders)."""
    return Path(model).resolve() == run or Path(model).parts[-2:] == run.parts[-2:]
