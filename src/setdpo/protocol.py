"""Configuration files: a flat YAML mapping of one stage's fields, or a protocol file.

A protocol file (``configs/*_protocol.yaml``) describes a whole experiment, one section per
command: ``prepare`` (`setdpo data prepare`), ``import`` (`setdpo data import`), ``sft`` and
``pref`` (`setdpo train`), ``selfplay`` (`setdpo train selfplay`, which also reads ``sft`` and
``pref`` for its stages), ``evaluate``, ``recommend`` and ``quickstart``; each command reads
its own section (`load_config`), and the command line's `--field value` options override it
(`setdpo.commands.options`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from setdpo.errors import InputError
from setdpo.paths import resolve_fields

Config = TypeVar("Config")

PROTOCOL_SECTIONS = (
    "description",
    "prepare",
    "import",
    "sft",
    "pref",
    "selfplay",
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

    Unknown keys raise `InputError` naming the file and the keys. A relative path in the file
    is relative to the file's folder (`setdpo.paths`); in ``overrides``, to the working
    directory.
    """
    values = read_stage(config_file, section) if config_file else {}
    if config_file:
        values = resolve_fields(values, Path(config_file).parent)
    values.update(overrides or {})
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{config_file or 'overrides'}: unknown {cls.__name__} fields {unknown}")
    check_types(cls, values, lambda name: "option" if name in (overrides or {}) else config_file)
    try:
        return cls(**values)
    except InputError:
        raise
    except (TypeError, ValueError, OSError) as err:  # the checks of a base class (transformers')
        given = sorted(values)
        raise InputError(f"{config_file or 'options'}: {cls.__name__} of {given}: {err}") from err


def check_types(cls: type, values: dict[str, Any], where: Callable[[str], object]) -> None:
    """Raise `InputError` naming `where(field)` and the field for the first value whose type
    the field's type hint refuses (`_fits`)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _fits(hints.get(name, Any), value):
            raise InputError(
                f"{where(name)}: {cls.__name__} field {name!r} must be {_spell(hints[name])}, "
                f"got {value!r}"
                + (" (YAML reads 1e-4 as text: write 1.0e-4)" if _numeric(value) else "")
            )


def _fits(hint: Any, value: Any) -> bool:
    """Whether `value` (from YAML, JSON or the command line) has the type `hint` names;
    hints other than plain types, unions, literals and containers of them accept anything
    (the class's `__post_init__` checks those)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple):
        kinds = [a for a in args if a is not Ellipsis] or [Any]
        return isinstance(value, list | tuple) and all(
            any(_fits(kind, item) for kind in kinds) for item in value
        )
    if hint is dict or origin is dict:
        key, item = args or (Any, Any)
        return isinstance(value, dict) and all(
            _fits(key, k) and _fits(item, v) for k, v in value.items()
        )
    return True


def _spell(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _numeric(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)
