"""Writing a prepared directory atomically, and reading it back.

Layout (docs/architecture.md): ``{train,valid,test}.jsonl``, ``hf/`` (a
`datasets.DatasetDict`), ``items.json``, ``stats.json``, ``config.json`` and, from
`prepare`, ``timelines.jsonl``. Everything is
written into a temporary directory next to the target, then renamed into place, so a
failed or interrupted run leaves no output directory behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError

SPLITS = ("train", "valid", "test")
_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys, UTF-8 text): identical input gives identical bytes."""
    return _ENCODER.encode(value)


def check_target(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output directory unless `overwrite`; the parent must exist."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: the parent of the output directory does not exist")
    return out


@contextmanager
def atomic_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `out` only if the block succeeds."""
    out = check_target(out, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "dir")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, value: Any) -> None:
    """Indented JSON with sorted keys (stable bytes for the same value)."""
    path.write_text(json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n", "utf-8")


def write_jsonl(path: Path, lines: Iterable[str], total: int | None = None) -> int:
    """Write JSON lines (each without its newline); returns the number of lines."""
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for line in tqdm(lines, total=total, desc=path.name, unit="ex", mininterval=2.0):
            handle.write(line)
            handle.write("\n")
            count += 1
    return count


def save_hf_split(folder: Path, split: str, table: pa.Table, fingerprint: str) -> None:
    """One split of the `datasets.DatasetDict` under `folder/hf` (see `finish_hf`).

    An explicit fingerprint spares `datasets` from hashing every byte of the table.
    """
    import datasets

    dataset = datasets.Dataset(table, fingerprint=f"{fingerprint}-{split}")
    dataset.save_to_disk(str(folder / "hf" / split))


def finish_hf(folder: Path) -> None:
    """Write `hf/dataset_dict.json`, as `DatasetDict.save_to_disk` does after its splits
    (saving split by split lets `prepare` free each table once written)."""
    (folder / "hf" / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}), "utf-8")


def save_hf(folder: Path, tables: dict[str, pa.Table], fingerprint: str) -> None:
    """All splits as a `datasets.DatasetDict` under `folder/hf`."""
    for split in SPLITS:
        save_hf_split(folder, split, tables[split], fingerprint)
    finish_hf(folder)


def write_examples(
    out: str | Path,
    splits: dict[str, list[PreferenceExample]],
    items: list[dict[str, Any]],
    stats: dict[str, Any],
    config: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a prepared directory from examples in memory (imports; small sets)."""
    with atomic_directory(out, overwrite) as tmp:
        tables = {}
        for split in SPLITS:
            rows = [example.to_dict() for example in splits.get(split, [])]
            write_jsonl(tmp / f"{split}.jsonl", (dumps(row) for row in rows), total=len(rows))
            tables[split] = pa.Table.from_pylist(rows) if rows else pa.table({})
        write_json(tmp / "items.json", items)
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "config.json", config)
        save_hf(tmp, tables, hashlib.sha256(dumps(config).encode()).hexdigest()[:16])
    return Path(out)


def _prepared_file(folder: str | Path, name: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise InputError(f"{path}: missing; is {folder} a directory made by `setdpo data prepare`?")
    return path


def load_split(folder: str | Path, split: str) -> list[PreferenceExample]:
    """The examples of one split (`train`, `valid` or `test`) of a prepared directory."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    path = _prepared_file(folder, f"{split}.jsonl")
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                examples.append(PreferenceExample.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as err:
                raise InputError(f"{path}, line {number}: {err}") from err
    return examples


def load_items(folder: str | Path) -> list[dict[str, Any]]:
    """The catalog: ``[{"item_id", "title", "train_count"}]``."""
    return json.loads(_prepared_file(folder, "items.json").read_text("utf-8"))


def load_timelines(folder: str | Path) -> list[dict[str, Any]] | None:
    """`timelines.jsonl`: each user's ``{"user", "items", "times"}``, all their interactions
    in time order (None: the directory has none, e.g. an imported example set)."""
    path = Path(folder) / "timelines.jsonl"
    if not path.is_file():
        return None
    timelines = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            row = json.loads(line)
            if not isinstance(row, dict) or len(row.get("items", ())) != len(row.get("times", ())):
                raise InputError(
                    f"{path}, line {number}: expected user, items and times alike long"
                )
            timelines.append(row)
    return timelines


def load_json(folder: str | Path, name: str) -> dict[str, Any]:
    """`stats.json` or `config.json` of a prepared directory."""
    return json.loads(_prepared_file(folder, name).read_text("utf-8"))
