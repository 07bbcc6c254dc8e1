"""What a served model needs besides its weights: the prompt training used, its catalog, and
where it came from. Read from a run directory (its `resolved_config.yaml` and the prepared
data directory it names) or from an export (`setdpo.json`, written by `setdpo export`).

`setdpo.json` (docs/architecture.md, "Exports")::

    {"setdpo_export": 1, "template": "listing" | "open", "domain": "movie" | ...,
     "catalog": "items.json" | null, "max_prompt_length": int | null, "chat_template": bool,
     "average": bool, "base_model": str, "objective": "sft" | "<loss>", "data": str | null,
     "mode": str | null, "source": str | null, "run": str, "items_as": "titles" | "tokens" |
     "hybrid"}
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from setdpo.errors import InputError
from setdpo.model import is_run_dir, read_run_model
from setdpo.paths import portable_values, resolve_fields

EXPORT_FILE = "setdpo.json"
EXPORT_VERSION = 1
RESOLVED_CONFIG = "resolved_config.yaml"  # training.config.RESOLVED_CONFIG (not imported: heavy)


@dataclass(frozen=True)
class ModelInfo:
    """The prompt, scoring settings and provenance of a run or export (one `setdpo.json`)."""

    template: str
    domain: str
    catalog: str | None  # absolute path of the catalog's items.json, None = no catalog
    max_prompt_length: int | None
    chat_template: bool
    average: bool
    base_model: str
    objective: str
    data: str | None
    mode: str | None
    source: str | None
    run: str
    items_as: str = "titles"  # how prompts write items (setdpo.items); older exports: titles

    def to_export(self, catalog_name: str | None) -> dict[str, Any]:
        """The `setdpo.json` record of an export whose catalog is ``catalog_name`` in it
        (no local path: `portable`)."""
        return {"setdpo_export": EXPORT_VERSION, **asdict(self.portable()), "catalog": catalog_name}

    def portable(self) -> ModelInfo:
        """This record as shown on other machines: every absolute path its last components
        (`setdpo.paths.portable_name`)."""
        return ModelInfo(**portable_values(asdict(self)))


def is_export(path: str | os.PathLike) -> bool:
    return (Path(path) / EXPORT_FILE).is_file()


def read_info(path: str | os.PathLike) -> ModelInfo:
    """The `ModelInfo` of a run directory or an export folder."""
    path = Path(path)
    if is_export(path):
        return _read_export(path)
    if is_run_dir(path):
        return run_info(path)
    raise InputError(
        f"{path}: neither a run directory (setdpo_model.json) nor an export (setdpo.json)"
    )


def _read_export(folder: Path) -> ModelInfo:
    where = folder / EXPORT_FILE
    try:
        record = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {where}: {error}") from error
    if record.get("setdpo_export") != EXPORT_VERSION:
        raise InputError(f"{where}: setdpo_export must be {EXPORT_VERSION}")
    record.pop("setdpo_export")
    record.pop("adapter_only", None)  # how the weights were written: `load_served` reads it
    catalog = record.get("catalog")
    record["catalog"] = str(folder.resolve() / catalog) if catalog else None
    try:
        return ModelInfo(**record)
    except TypeError as error:
        raise InputError(f"{where}: {error}") from error


def run_config(run: Path) -> dict[str, Any]:
    """The run's `resolved_config.yaml` as a mapping ({} when absent), its paths absolute
    (stored relative to the run: `setdpo.paths`)."""
    path = run / RESOLVED_CONFIG
    if not path.is_file():
        return {}
    try:
        return resolve_fields(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, run)
    except yaml.YAMLError as error:
        raise InputError(f"cannot read {path}: {error}") from error


def run_info(run: str | os.PathLike) -> ModelInfo:
    """A run's `ModelInfo`: the template and domain of the data it was trained on (its
    `config.json`), that directory's `items.json` as the catalog, the prompt settings of its
    `resolved_config.yaml`."""
    run = Path(run).resolve()
    spec = read_run_model(run)
    config = run_config(run)
    data = config.get("data")
    if not data or not Path(data, "config.json").is_file():
        where = f"its data directory {data} has no config.json" if data else (
            f"it has no {RESOLVED_CONFIG} naming its data directory")  # fmt: skip
        raise InputError(
            f"run {run}: {where}, so the prompt template it was trained with is unknown "
            "(serving and exporting render that template)"
        )
    prepared = json.loads(Path(data, "config.json").read_text(encoding="utf-8"))
    catalog = Path(data, "items.json")
    base = spec.base_model
    if Path(base).is_relative_to(run):  # tiny / lab / full fine-tuning: the weights are in the run
        base = _base_name(config) or "base (inside the run)"
    return ModelInfo(
        template=prepared.get("template") or "listing",
        domain=prepared.get("domain") or "movie",
        catalog=str(catalog) if catalog.is_file() else None,
        max_prompt_length=config.get("max_prompt_length"),
        chat_template=bool(config.get("chat_template", False)),
        average=False,
        base_model=base,
        objective=config.get("loss", "sft") if "init" in config else "sft",
        data=str(data),
        mode=prepared.get("mode"),
        source=prepared.get("source"),
        run=str(run),
        items_as=prepared.get("items_as") or "titles",
    )


def _base_name(config: dict[str, Any]) -> str | None:
    """The base model a run's configuration started from: its `model`, or the base of the run
    it started from (a preference run's `init`; a self-play SFT run's `model`), recursively."""
    start = config.get("model") or config.get("init")
    if start and is_run_dir(start):
        return _base_name(run_config(Path(start)))
    return config.get("model")


def load_served(path: str | os.PathLike, device: str = "auto") -> tuple[Any, Any]:
    """The model and tokenizer of a run or an export (an ``--adapter-only`` export is
    applied to the base model its adapter names)."""
    from setdpo.model import load

    folder = Path(path)
    adapter = folder / "adapter_config.json"
    if is_export(folder) and adapter.is_file() and not (folder / "config.json").is_file():
        model, _ = load(adapter_base(folder), device=device, adapter=folder, merge_all=True)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer
    return load(folder, device=device)


def adapter_base(folder: Path) -> str:
    """The base model of an ``--adapter-only`` export: its ``base/`` folder (a tiny or lab
    run's), setdpo's embedded model when it was trained on that (the adapter names the hub id
    the embedded weights were quantized from), else ``base_model_name_or_path``."""
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = config["base_model_name_or_path"]
    if (folder / base).is_dir():
        return str(folder / base)
    trained_on = _read_export(folder).base_model
    return trained_on if trained_on.startswith("embedded:") else base
