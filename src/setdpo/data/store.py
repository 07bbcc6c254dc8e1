"""The prepared format on disk: compact split tables of item rows, rendered when read.

Each split is a `datasets.Dataset` saved under ``hf/<split>`` (so
``datasets.load_from_disk(dir / "hf")`` is a `DatasetDict`), memory-mapped when read. Its
rows name items by their row in ``items.json``, never by title:

- ``context_id``, ``user`` (strings); ``target_time`` (float64, null when unknown);
- ``history_items`` (list<int32>, oldest first) and ``candidate_items`` (list<int32>);
- ``levels`` (list<int8>), one per candidate;
- ``candidate_ratings`` (list<float64>, null = a sampled negative): rated/levels modes only;
- ``prompt`` (string): only sets whose prompts are their own (TRL and jsonl imports);
- ``meta`` (string, JSON): only imported sets, whose meta fields are their own.

A prepared set's prompt is rendered from the template that ``config.json`` names when an
example is read (a template change needs no re-preparation), and its meta (candidate ids,
mode, source, template, domain, ratings) is rebuilt from ``items.json`` and ``config.json``.
`open_split` reads one example at a time; nothing is read before it is asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from setdpo.data.prompts import render
from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError
from setdpo.items import ItemRepresentation

SPLITS = ("train", "valid", "test")
META_KEYS = ("domain", "mode", "source", "template")  # from config.json, for prepared sets
ITEM_LIST = pa.list_(pa.int32())
READ_ROWS = 4096  # rows converted to Python at once when iterating
DATA_FILE = "data-00000-of-00001.arrow"


def split_schema(ratings: bool = False, prompts: bool = False, meta: bool = False) -> pa.Schema:
    """The columns of a split table (module docstring); optional ones by flag."""
    fields = [
        ("context_id", pa.string()),
        ("user", pa.string()),
        ("history_items", ITEM_LIST),
        ("candidate_items", ITEM_LIST),
        ("levels", pa.list_(pa.int8())),
        ("target_time", pa.float64()),
    ]
    fields += [("candidate_ratings", pa.list_(pa.float64()))] if ratings else []
    fields += [("prompt", pa.string())] if prompts else []
    fields += [("meta", pa.string())] if meta else []
    return pa.schema(fields)


# Rows per Arrow record batch of a split file. Opening a split walks every batch header of
# the stream, and the kernel's readahead pages in what lies around each: with datasets'
# default 1,000-row batches that is the whole file.
WRITER_BATCH_ROWS = 65_536


class SplitWriter:
    """One split under ``folder/hf/<split>``, written table by table in the layout of
    `datasets.Dataset.save_to_disk` (one data file; none for an empty split, as there), so
    that a split larger than memory never has to be held whole. An explicit fingerprint
    spares `datasets` from hashing every byte."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, fingerprint: str) -> None:
        from datasets import DatasetInfo, Features
        from datasets.arrow_writer import ArrowWriter

        self.path = folder / "hf" / split
        self.path.mkdir(parents=True)
        self.info = DatasetInfo(features=Features.from_arrow_schema(schema))
        self.fingerprint = f"{fingerprint}-{split}"
        self.rows = 0
        self.writer = ArrowWriter(
            features=self.info.features,
            path=str(self.path / DATA_FILE),
            writer_batch_size=WRITER_BATCH_ROWS,
        )

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self.writer.finalize()
        self.writer.close()
        if not self.rows:
            (self.path / DATA_FILE).unlink()
        state = {
            "_data_files": [{"filename": DATA_FILE}] if self.rows else [],
            "_fingerprint": self.fingerprint,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (self.path / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), "utf-8")
        info = dataclasses.asdict(self.info)
        info = {key: info[key] for key in sorted(info)}
        (self.path / "dataset_info.json").write_text(json.dumps(info, indent=2), "utf-8")


def save_split(folder: Path, split: str, table: pa.Table, fingerprint: str) -> None:
    """A whole table as one split (`SplitWriter`)."""
    writer = SplitWriter(folder, split, table.schema, fingerprint)
    for batch in table.to_batches(max_chunksize=READ_ROWS * 16):
        writer.write(batch)
    writer.close()


def finish_hf(folder: Path) -> None:
    """``hf/dataset_dict.json``, as `DatasetDict.save_to_disk` writes after its splits
    (saving split by split lets `prepare` free each table once written)."""
    (folder / "hf" / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}), "utf-8")


def split_path(folder: str | Path, split: str) -> Path:
    """``hf/<split>`` of a prepared directory; an error naming the directory if missing."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
    path = Path(folder) / "hf" / split
    if not (path / "state.json").is_file():
        raise InputError(f"{path}: missing; is {folder} a directory made by `setdpo data prepare`?")
    return path


def read_table(folder: str | Path, split: str) -> pa.Table:
    """The split's table, memory-mapped. Opening it visits every record batch header: cheap
    with `WRITER_BATCH_ROWS`-row batches, but a split written in 1,000-row batches (before
    that constant) is paged in whole (6.0 GiB of RSS, file pages, for the 100M file's
    53M-row train split)."""
    import datasets

    path = split_path(folder, split)
    if not json.loads((path / "state.json").read_text("utf-8"))["_data_files"]:
        # `datasets` saves no data file for an empty split, and cannot load it back
        info = datasets.DatasetInfo.from_directory(str(path))
        return info.features.arrow_schema.empty_table()
    return datasets.load_from_disk(str(path)).data.table


def split_columns(folder: str | Path, split: str) -> list[str]:
    """The split's column names, from its saved features, without opening the table (which
    pages in a split of 1,000-row batches whole: 5.5 GiB for a 53M-row train split)."""
    import datasets

    return list(datasets.DatasetInfo.from_directory(str(split_path(folder, split))).features)


def table_blocks(
    folder: str | Path, split: str, rows: int, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """The split's rows in order, `rows` at a time (the last block shorter), read from its
    files one record batch after another rather than memory-mapped: a reader of a whole
    split larger than memory holds one block."""
    path = split_path(folder, split)
    state = json.loads((path / "state.json").read_text("utf-8"))
    pending: list[pa.RecordBatch] = []
    held = 0
    for data_file in state["_data_files"]:
        with pa.OSFile(str(path / data_file["filename"])) as source:
            for batch in pa.ipc.open_stream(source):
                pending.append(batch.select(columns) if columns else batch)
                held += batch.num_rows
                if held >= rows:
                    table = pa.Table.from_batches(pending)
                    for lo in range(0, table.num_rows - rows + 1, rows):
                        yield table.slice(lo, rows)
                    rest = table.slice(table.num_rows - table.num_rows % rows)
                    pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def title_columns(folder: str | Path, split: str) -> pa.Table:
    """``history``, ``candidates`` (titles) and ``levels`` of every row of a split, built
    column-wise (for readers of whole splits, such as SASRec's training sequences)."""
    table = read_table(folder, split)
    titles = pa.array([item["title"] for item in _json(folder, "items.json")], pa.string())

    def titled(name: str) -> pa.Array:
        column = table.column(name).combine_chunks()
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), titles.take(pc.list_flatten(column)))

    return pa.table(
        {
            "history": titled("history_items"),
            "candidates": titled("candidate_items"),
            "levels": table.column("levels"),
        }
    )


def items_as(config: dict[str, Any]) -> str:
    """The item representation a directory's ``config.json`` names (older ones: titles)."""
    return str(config.get("items_as") or "titles")


def item_representation(folder: str | Path) -> ItemRepresentation:
    """How the prepared directory ``folder`` writes its items (`setdpo.items`)."""
    return ItemRepresentation(items_as(_json(folder, "config.json")))


def token_catalog(folder: str | Path) -> list[str] | None:
    """The catalog's titles when ``folder`` writes items as tokens (a model then needs one
    token per title: `setdpo.items.extend_model`), else None."""
    if not item_representation(folder).uses_tokens:
        return None
    return [str(item["title"]) for item in _json(folder, "items.json")]


def _json(folder: str | Path, name: str) -> Any:
    path = Path(folder) / name
    if not path.is_file():
        raise InputError(f"{path}: missing; is {folder} a directory made by `setdpo data prepare`?")
    return json.loads(path.read_text("utf-8"))


@dataclass(frozen=True)
class Renderer:
    """Turns a stored row into a `PreferenceExample`: titles from items.json, the prompt
    from the template (unless the row has its own), meta from config.json."""

    titles: list[str]
    ids: list[str]
    template: str | None
    domain: str | None
    meta: dict[str, Any]
    items: ItemRepresentation = ItemRepresentation()

    @classmethod
    def of(cls, folder: str | Path, representation: str | None = None) -> Renderer:
        """The directory's renderer; `representation` writes items another way than its
        ``items_as`` (an export to a layout of titles)."""
        items, config = _json(folder, "items.json"), _json(folder, "config.json")
        return cls(
            titles=[str(item["title"]) for item in items],
            ids=[str(item["item_id"]) for item in items],
            template=config.get("template"),
            domain=config.get("domain"),
            meta={key: config.get(key) for key in META_KEYS},
            items=ItemRepresentation(representation or items_as(config)),
        )

    @property
    def _items_meta(self) -> dict[str, str]:
        """``items_as`` in an example's meta, where items are not titles (tokenization reads
        it: a lone item token ends its candidate)."""
        return {"items_as": self.items.kind} if self.items.uses_tokens else {}

    def example(self, row: dict[str, Any]) -> PreferenceExample:
        """The example of one stored row (a dict of the columns); items written as the
        directory's ``items_as`` says (`setdpo.items`)."""
        history = self.items.write_all(row["history_items"], self.titles)
        candidates = self.items.write_all(row["candidate_items"], self.titles)
        prompt = row.get("prompt")
        if prompt is None:
            prompt = render(self.template, self.domain, history, candidates)
        if row.get("meta") is not None:
            meta = json.loads(row["meta"]) | self._items_meta
        else:
            meta = {
                "candidate_ids": [self.ids[i] for i in row["candidate_items"]],
                **self.meta,
                **self._items_meta,
            }
            if "candidate_ratings" in row:
                meta["candidate_ratings"] = row["candidate_ratings"]
        return PreferenceExample(
            context_id=row["context_id"],
            user=row["user"],
            history=history,
            prompt=prompt,
            candidates=candidates,
            levels=row["levels"],
            target_time=row["target_time"],
            meta=meta,
        )


class Levels(Sequence[list[int]]):
    """Every example's candidate levels as two numpy arrays (no Python list per example):
    ``offsets`` [n + 1] and ``values`` [sum of candidates] (int8)."""

    def __init__(self, offsets: np.ndarray, values: np.ndarray) -> None:
        self.offsets, self.values = offsets, values

    @classmethod
    def of_lists(cls, levels: Sequence[Sequence[int]]) -> Levels:
        lengths = np.fromiter((len(x) for x in levels), np.int64, count=len(levels))
        values = np.fromiter((g for x in levels for g in x), np.int64, count=int(lengths.sum()))
        return cls(np.concatenate([[0], np.cumsum(lengths)]), values)

    @classmethod
    def of_column(cls, column: pa.ChunkedArray) -> Levels:
        lengths = pc.list_value_length(column).to_numpy()
        values = pc.list_flatten(column).to_numpy()
        return cls(np.concatenate([[0], np.cumsum(lengths)]), values)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]
        return self.values[self.offsets[index] : self.offsets[index + 1]].tolist()

    def take(self, rows: np.ndarray) -> Levels:
        """The levels of the examples at `rows`, in that order."""
        lengths = np.diff(self.offsets)[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        starts = np.repeat(self.offsets[rows] - offsets[:-1], lengths)
        return Levels(offsets, self.values[starts + np.arange(offsets[-1])])

    def positions(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(example, candidate index) of every candidate at `level`, in example order."""
        at = np.flatnonzero(self.values == level)
        example = np.searchsorted(self.offsets, at, side="right") - 1
        return example, at - self.offsets[example]


def directory_fingerprint(folder: str | Path, split: str) -> str:
    """What changes when a prepared directory is written again: the name, size,
    modification time and inode of ``config.json``, ``items.json`` and the files of the
    split (``state.json`` and the data files it lists; not caches `datasets` may add
    beside them). `prepare` writes a new directory and renames it into place."""
    folder, where = Path(folder), split_path(folder, split)
    state = json.loads((where / "state.json").read_text("utf-8"))
    paths = [folder / "config.json", folder / "items.json", where / "state.json"]
    paths += [where / entry["filename"] for entry in state["_data_files"]]
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        name = path.relative_to(folder).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}\0".encode())
    return digest.hexdigest()


def _reopen(
    folder: str,
    split: str,
    rows: np.ndarray | None,
    fingerprint: str | None,
    representation: str | None = None,
) -> SplitReader:
    """A pickled reader opened again (a DataLoader worker's copy); refused (on first read)
    if the directory was written again since the original opened it."""
    reader = SplitReader(folder, split, rows, representation)
    if fingerprint is not None and reader.fingerprint != fingerprint:
        reader.stale = (
            f"{reader.where}: the data directory changed since this run opened it (prepared "
            f"again?); a DataLoader worker would read other examples than the run holds the "
            f"levels of. Restart the run, or prepare into a new directory while one trains."
        )
    return reader


class SplitReader(Sequence[PreferenceExample]):
    """The examples of one split, read and rendered one at a time (`open_split`).

    ``reader[i]`` reads row i of the memory-mapped table; ``reader.take(rows)`` is a view
    of some rows; ``reader.levels`` gives every example's levels without rendering any. A
    pickled reader (a DataLoader worker's copy under spawn or forkserver) carries its
    directory, rows and the directory's `directory_fingerprint` at opening, not the table;
    reopened where the directory has changed since, it raises `InputError` when read.
    """

    stale: str | None = None  # why this reopened reader refuses to read

    def __init__(
        self,
        folder: str | Path,
        split: str,
        rows: np.ndarray | None = None,
        representation: str | None = None,
    ) -> None:
        self.folder, self.split, self.rows = str(folder), split, rows
        self.representation = representation
        self.fingerprint = directory_fingerprint(folder, split)
        self.table = read_table(folder, split)
        self.renderer = Renderer.of(folder, representation)
        self.where = str(split_path(folder, split))
        if "candidate_items" not in self.table.column_names:
            raise InputError(
                f"{self.where}: a split of the earlier jsonl format (prompts stored as text); "
                f"prepare it again, or convert it with `setdpo data import --format jsonl "
                f"--train {Path(folder) / 'train.jsonl'} ...`"
            )
        self._batches = self.table.to_batches()
        self._starts = np.cumsum([0] + [b.num_rows for b in self._batches])
        self._levels: Levels | None = None

    def __len__(self) -> int:
        return self.table.num_rows if self.rows is None else len(self.rows)

    def _row(self, index: int) -> int:
        return index if self.rows is None else int(self.rows[index])

    def _check(self) -> None:
        if self.stale is not None:
            raise InputError(self.stale)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self.take(np.arange(len(self))[index]))
        index = range(len(self))[index]  # negative indices, and IndexError past the end
        self._check()
        row = self._row(index)
        k = int(np.searchsorted(self._starts, row, side="right")) - 1
        (values,) = self._batches[k].slice(row - int(self._starts[k]), 1).to_pylist()
        return self._example(values, row)

    def __iter__(self) -> Iterator[PreferenceExample]:
        self._check()
        rows = np.arange(len(self)) if self.rows is None else self.rows
        for lo in range(0, len(rows), READ_ROWS):
            part = rows[lo : lo + READ_ROWS]
            table = (
                self.table.slice(int(part[0]), len(part))
                if self.rows is None
                else (self.table.take(pa.array(part)))
            )
            for row, values in zip(part, table.to_pylist(), strict=True):
                yield self._example(values, int(row))

    def _example(self, values: dict[str, Any], row: int) -> PreferenceExample:
        try:
            return self.renderer.example(values)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise InputError(f"{self.where}, row {row}: {err}") from err

    def take(self, indices: Sequence[int] | np.ndarray) -> SplitReader:
        """A view of the examples at `indices` (positions in this reader), in that order."""
        rows = np.asarray(indices, dtype=np.int64)
        view = object.__new__(SplitReader)  # shares the table and the renderer
        view.__dict__.update(self.__dict__)
        view.rows, view._levels = rows if self.rows is None else self.rows[rows], None
        return view

    def __reduce__(self) -> tuple[Any, ...]:
        return _reopen, (self.folder, self.split, self.rows, self.fingerprint, self.representation)

    @property
    def levels(self) -> Levels:
        """Every example's levels (read from the levels column only, once)."""
        self._check()
        if self._levels is None:
            levels = Levels.of_column(self.table.column("levels"))
            self._levels = levels if self.rows is None else levels.take(self.rows)
        return self._levels


def open_split(folder: str | Path, split: str, items_as: str | None = None) -> SplitReader:
    """The examples of `split` of a prepared directory, read lazily (see `SplitReader`);
    `items_as` writes their items another way than the directory's (`setdpo.items`)."""
    return SplitReader(folder, split, representation=items_as)
