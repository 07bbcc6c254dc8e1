"""Configuration files: a flat YAML mapping of one stage's fields, or a protocol file.

A protocol file (``configs/*_protocol.yaml``) describes a whole experiment, one section per
stage: ``prepare`` (`setdpo data prepare`), ``sft`` and ``pref`` (`setdpo train`) and
``evaluate``; each command reads its own section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from setdpo.errors import InputError

PROTOCOL_SECTIONS = ("description", "prepare", "sft", "pref", "evaluate")


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
