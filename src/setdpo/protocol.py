"""Configuration files: a flat YAML mapping of one stage's fields, or a protocol file.

A protocol file (``configs/*_protocol.yaml``) describes a whole experiment, one section per
command: ``prepare`` (`setdpo data prepare`), ``import`` (`setdpo data import`), ``sft`` and
``pref`` (`setdpo train`), ``evaluate``, ``recommend`` and ``quickstart``; each command reads
its own section (`load_config`), and the command line's `--field value` options override it
(`setdpo.commands.options`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from setdpo.errors import InputError

Config = TypeVar("Config")

PROTOCOL_SECTIONS = (
    "description",
    "prepare",
    "import",
    "sft",
    "pref",
    "evaluate",
    "recommend",
    "quickstart",
    "serve",
)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read the configuration: {err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a configuration is a mapping of field: value")
    return raw


def is_protocol(raw: dict[str, Any]) -> bool:
    return any(key in raw for key in PROTOCOL_SECTIONS[1:])


def read_stage(path: str | Path, section: str) -> dict[str, Any]:
    """One stage's fields: the whole file, or its ``section`` if it is a protocol file."""
    raw = read_config_file(path)
    if not is_protocol(raw):
        return raw
    stray = sorted(set(raw) - set(PROTOCOL_SECTIONS))
    if stray:
        raise InputError(f"{path}: protocol sections are {list(PROTOCOL_SECTIONS)}; got {stray}")
    values = raw.get(section) or {}
    if not isinstance(values, dict):
        raise InputError(f"{path}: section {section!r} must be a mapping of field: value")
    return dict(values)


def load_config(
    cls: type[Config],
    section: str,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """A configuration dataclass `cls` from a file (optional; its `section` if it is a protocol
    file) with `overrides` taking precedence, validated by `cls.__post_init__`.

    Unknown keys raise `InputError` naming the file and the keys.
    """
    values = read_stage(config_file, section) if config_file else {}
    values.update(overrides or {})
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{config_file or 'overrides'}: unknown {cls.__name__} fields {unknown}")
    return cls(**values)
