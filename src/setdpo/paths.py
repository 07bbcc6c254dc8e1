"""Paths stored in files are relative to the file that stores them (as docker-compose and Cargo
read theirs), so a run, a configuration or a study works from any working directory and after
being moved or copied together with what it names.

A configuration file's fields that hold paths are named in `PATH_FIELDS`: ``data``,
``output_dir``, ``out`` (folders), ``interactions``, ``items``, ``catalog`` (files) are always
paths; ``model``, ``init`` and ``negatives_from`` are paths only when they name something that
exists (else a hub id, ``embedded:...``, ``tiny``, ``lab``). `stored` writes such a value relative to a folder,
`resolved` reads it back. A relative value that names nothing beside the file but exists from
the working directory is taken from there: files written before paths were relative (a
``resolved_config.yaml`` holding ``data: runs/quickstart/data/seed=0``) keep working from
the folder they were made in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# field name -> True: always a path; False: a path only when it names an existing file or folder
PATH_FIELDS = {"data": True, "output_dir": True, "out": True, "interactions": True,
               "items": True, "catalog": True, "init": False, "model": False,
               "negatives_from": False}  # fmt: skip


def _absolute(path: str | os.PathLike) -> str:
    """An absolute, normalised path; symlinks kept (a round trip gives the same string)."""
    return os.path.normpath(os.path.abspath(path))


def stored(value: str, folder: str | os.PathLike, always: bool = True) -> str:
    """``value`` (relative to the working directory, or absolute) as written in a file inside
    ``folder``: relative to ``folder``. A name that is not a path (``always=False`` and nothing
    exists there) is returned as given."""
    if not always and not os.path.exists(value):
        return value
    return os.path.relpath(_absolute(value), _absolute(folder))


def resolved(value: str, folder: str | os.PathLike, always: bool = True) -> str:
    """``value`` read from a file inside ``folder``, as an absolute path (a name that is not a
    path, ``always=False``, is returned as given)."""
    if os.path.isabs(value):
        return os.path.normpath(value)
    beside = _absolute(Path(folder, value))
    if os.path.exists(beside):
        return beside
    if os.path.exists(value):  # written relative to the working directory (older files)
        return _absolute(value)
    return beside if always else value


def store_fields(values: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """``values`` with every `PATH_FIELDS` string made relative to ``folder``."""
    return _map(values, folder, stored)


def resolve_fields(values: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """``values`` read from a file in ``folder``: every `PATH_FIELDS` string made absolute."""
    return _map(values, folder, resolved)


def _map(values: dict[str, Any], folder: str | os.PathLike, how: Any) -> dict[str, Any]:
    out = dict(values)
    for name, always in PATH_FIELDS.items():
        if isinstance(out.get(name), str) and out[name]:
            out[name] = how(out[name], folder, always)
    return out


def portable_name(value: Any, parts: int = 2) -> Any:
    """An absolute path as its last ``parts`` components (``runs/sft``), for what is read on
    other machines (an export's files, `/v1/model`): where it came from, without this
    machine's folders. Anything else is returned as given."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    return Path(*Path(value).parts[-parts:]).as_posix() if Path(value).parts[1:] else value


def portable_values(values: Any) -> Any:
    """``values`` (mappings and lists nested) with every absolute path a `portable_name`."""
    if isinstance(values, dict):
        return {k: portable_values(v) for k, v in values.items()}
    if isinstance(values, list):
        return [portable_values(v) for v in values]
    return portable_name(values)
