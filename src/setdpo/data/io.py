"""Writing a prepared directory atomically, and reading it back.

Layout (docs/architecture.md): ``hf/`` (the splits, a `datasets.DatasetDict` of compact
tables: `setdpo.data.store`), ``items.json``, ``stats.json``, ``config.json`` and, from
`prepare`, ``timelines.parquet``. Everything is
written into a temporary directory next to the target, then renamed into place, so a
failed or interrupted run leaves no output directory behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from setdpo import faults
from setdpo.atomic import fsync, temporary_folder
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import SPLITS, finish_hf, open_split, save_split, split_schema
from setdpo.errors import InputError

TIMELINES = "timelines.parquet"
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
    """Yield a fresh temporary directory that replaces `out` only if the block succeeds.

    Its files and folders are `fsync`ed before the rename and the parent after it, so the
    renamed directory is complete after a power loss too (`setdpo.atomic`)."""
    out = check_target(out, overwrite)
    tmp = temporary_folder(out)
    try:
        yield tmp
        _fsync_tree(tmp)
        faults.reached("directory.replace")
        if out.exists():
            old = temporary_folder(out, ".old")
            os.replace(out, old / "dir")
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
        fsync(out.parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then every folder's entries (deepest first)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync(Path(folder) / name)
        fsync(folder, directory=True)


def write_json(path: Path, value: Any) -> None:
    """Indented JSON with sorted keys (stable bytes for the same value)."""
    path.write_text(json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n", "utf-8")


def write_examples(
    out: str | Path,
    splits: dict[str, Sequence[PreferenceExample]],
    items: list[dict[str, Any]],
    stats: dict[str, Any],
    config: dict[str, Any],
    overwrite: bool = False,
    prompts: bool = True,
) -> Path:
    """Write a prepared directory from examples in memory (imports; small sets).

    Every title of the examples must be one of `items` (their rows are what the split
    tables store); the examples' meta is stored as is. `prompts=False`: the prompts are the
    template's of `config` (``template``, ``domain``) and are rendered when read.
    """
    rows = {str(item["title"]): row for row, item in enumerate(items)}
    with atomic_directory(out, overwrite) as tmp:
        fingerprint = hashlib.sha256(dumps(config).encode()).hexdigest()[:16]
        for split in SPLITS:
            table = examples_table(splits.get(split, []), rows, prompts)
            save_split(tmp, split, table, fingerprint)
        finish_hf(tmp)
        write_json(tmp / "items.json", items)
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "config.json", config)
    return Path(out)


def examples_table(
    examples: Sequence[PreferenceExample], rows: dict[str, int], prompts: bool
) -> pa.Table:
    """Examples as a split table (`store`), titles as rows of the items (`rows`)."""

    def items(example: PreferenceExample, titles: list[str]) -> list[int]:
        missing = [t for t in titles if t not in rows]
        if missing:
            raise InputError(f"example {example.context_id!r}: title {missing[0]!r} is not an item")
        return [rows[t] for t in titles]

    columns = {
        "context_id": [ex.context_id for ex in examples],
        "user": [ex.user for ex in examples],
        "history_items": [items(ex, ex.history) for ex in examples],
        "candidate_items": [items(ex, ex.candidates) for ex in examples],
        "levels": [ex.levels for ex in examples],
        "target_time": [ex.target_time for ex in examples],
        "meta": [dumps(ex.meta) for ex in examples],
    }
    if prompts:
        columns["prompt"] = [ex.prompt for ex in examples]
    schema = split_schema(prompts=prompts, meta=True)
    return pa.table({name: columns[name] for name in schema.names}, schema=schema)


def _prepared_file(folder: str | Path, name: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise InputError(f"{path}: missing; is {folder} a directory made by `setdpo data prepare`?")
    return path


def load_split(folder: str | Path, split: str) -> list[PreferenceExample]:
    """The examples of one split (`train`, `valid` or `test`) of a prepared directory,
    rendered (`open_split` reads them one at a time instead)."""
    return list(open_split(folder, split))


def load_items(folder: str | Path) -> list[dict[str, Any]]:
    """The catalog: ``[{"item_id", "title", "train_count"}]``."""
    return json.loads(_prepared_file(folder, "items.json").read_text("utf-8"))


def has_timelines(folder: str | Path) -> bool:
    """Whether the directory has its users' timelines (`prepare` writes them; imports not)."""
    return (Path(folder) / TIMELINES).is_file()


TIMELINE_SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("items", pa.large_list(pa.int32())),
        ("times", pa.large_list(pa.float64())),
    ]
)


def write_timelines(path: Path, parts: Iterable[tuple[pa.Array, np.ndarray, Any, Any]]) -> None:
    """`TIMELINES` from consecutive ranges of users: each part gives the users [U], offsets
    [U + 1] and their positions' item rows and times (time order), ``offsets[u] ..
    offsets[u + 1] - 1`` for user ``u``."""
    with pq.ParquetWriter(path, TIMELINE_SCHEMA) as writer:
        for users, offsets, items, times in parts:
            offsets = pa.array(offsets, pa.int64())
            table = pa.table(
                {
                    "user": users,
                    "items": pa.LargeListArray.from_arrays(offsets, pa.array(items, pa.int32())),
                    "times": pa.LargeListArray.from_arrays(offsets, pa.array(times, pa.float64())),
                },
                schema=TIMELINE_SCHEMA,
            )
            writer.write_table(table)


def read_timelines(folder: str | Path) -> pa.Table | None:
    """`TIMELINES` as a table (user, items: rows of items.json, times); None if absent."""
    if not has_timelines(folder):
        return None
    path = Path(folder) / TIMELINES
    table = pq.read_table(path)
    if (
        table.column_names != ["user", "items", "times"]
        or not pc.all(
            pc.equal(pc.list_value_length(table["items"]), pc.list_value_length(table["times"]))
        ).as_py()
    ):
        raise InputError(
            f"{path}: expected columns user, items and times, items and times alike long"
        )
    return table


def load_json(folder: str | Path, name: str) -> dict[str, Any]:
    """`stats.json` or `config.json` of a prepared directory."""
    return json.loads(_prepared_file(folder, name).read_text("utf-8"))
