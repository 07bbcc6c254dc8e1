"""Interactions read, checked and put in time order out of core (DuckDB).

`sort_interactions` turns the interaction file of any source into one Parquet file
of integer codes sorted by user, then time, then file order, under a memory limit
(`PrepareConfig.memory_limit_mb`; DuckDB spills its sorts to `work`). Nothing here holds
the data in Python. DuckDB rather than Polars' streaming engine (`benchmarks/bench_engines.py`,
the 10M file read and sorted, one thread): Polars was a little faster (9.9 s against 11.8 s)
but has no setting that bounds its memory (1.16 GB peak), while DuckDB keeps to its limit
(1.06 GB peak at 1 GB, 0.58 GB at 500 MB, 17.0 s) and spills the rest to disk.

The rules are those `setdpo.data.records` applies to items files: every value read as text
and stripped; user and item ids non-empty; timestamps and ratings finite numbers; every
item in the items file; an error names the file and the line (row, for Parquet) of the
first offending record. User codes follow the sorted user ids, item codes the items file's
order among the items interacted with.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from setdpo.data.config import PrepareConfig
from setdpo.data.records import file_format, json_objects
from setdpo.errors import InputError

STRIP = " \t\r\n\x0b\x0c"  # what Python's str.strip() removes, ASCII only


@dataclass
class Table:
    """Where an interaction file's fields are, and how to read it."""

    path: Path
    kind: str  # csv | tsv | dat (GroupLens "::", no header) | parquet | jsonl
    user: str
    item: str
    rating: str | None
    time: str
    names: list[str] | None = None  # dat: the column names
    lines: np.ndarray | None = None  # jsonl: the line of each record, once read


@dataclass
class SortedInteractions:
    """One source's interactions as integer codes, in the order that defines positions.

    ``path``: Parquet with ``user`` (int32 code into ``users``), ``item`` (int32 row of
    ``items``), ``rating`` (float64, NaN without ratings), ``time`` (float64), sorted by
    user, time and file order. ``offsets`` [U + 1]: each user's rows.
    """

    name: str
    path: Path
    users: pa.Array
    items: pd.DataFrame
    offsets: np.ndarray
    has_ratings: bool
    filtered: dict[str, Any] = field(default_factory=dict)  # what `Filters` removed

    def __len__(self) -> int:
        return int(self.offsets[-1])


@dataclass(frozen=True)
class Filters:
    """What is removed after reading, before any context is built: interactions rated
    below `min_rating`, then the users and items with fewer than `kcore` interactions,
    again until none is left (the k-core of the user-item graph; 0: none)."""

    min_rating: float | None = None
    kcore: int = 0


def connect(memory_limit_mb: int, work: Path):
    """An in-memory DuckDB database that spills past `memory_limit_mb` to `work`."""
    import duckdb

    return duckdb.connect(
        ":memory:",  # spills to temp_directory past the limit; no file to compress and sync
        config={
            "threads": 1,
            "memory_limit": f"{memory_limit_mb}MB",
            "temp_directory": str(work / "spill"),
            "preserve_insertion_order": True,
        },
    )


def sort_interactions(
    name: str,
    table: Table,
    catalog: pd.DataFrame,
    items_path: Path,
    work: Path,
    memory_limit_mb: int,
    filters: Filters = Filters(),
) -> SortedInteractions:
    """Read `table`, check it against `catalog` (``item_id``, ``title``), apply `filters`
    and write the sorted codes to ``work/interactions.parquet``; DuckDB's memory is
    released when this returns."""
    con = connect(memory_limit_mb, work)
    try:
        return _sort(con, name, table, catalog, items_path, work, filters)
    finally:
        con.close()


def _sort(
    con,
    name: str,
    table: Table,
    catalog: pd.DataFrame,
    items_path: Path,
    work: Path,
    filters: Filters,
) -> SortedInteractions:
    con.register("catalog_frame", catalog.assign(row=np.arange(len(catalog))))
    _load_raw(con, table)
    _check(con, table, items_path)
    filtered = _filter(con, name, table, filters)
    # user codes follow the sorted ids; item codes the items file's order among those used
    con.execute(
        "CREATE TABLE users AS SELECT u, n, row_number() OVER (ORDER BY u) - 1 AS code "
        "FROM (SELECT u, count(*) AS n FROM raw GROUP BY u)"
    )
    con.execute(
        "CREATE TABLE used AS SELECT item_row, row_number() OVER (ORDER BY item_row) - 1 AS code "
        "FROM (SELECT DISTINCT item_row FROM raw)"
    )
    path = work / "interactions.parquet"
    con.execute(
        f"""COPY (
            SELECT CAST(users.code AS INTEGER) AS user, CAST(used.code AS INTEGER) AS item,
                   rn AS rating, tn AS time
            FROM raw JOIN users USING (u) JOIN used USING (item_row)
            ORDER BY user, time, rec
        ) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 1048576)"""
    )
    users = con.sql("SELECT u, n FROM users ORDER BY code").to_arrow_table()
    offsets = np.concatenate([[0], np.cumsum(users["n"].to_numpy())]).astype(np.int64)
    rows = con.execute("SELECT item_row FROM used ORDER BY code").fetchnumpy()
    items = catalog.iloc[rows["item_row"]].reset_index(drop=True)
    con.execute("DROP TABLE raw")
    return SortedInteractions(
        name,
        path,
        users["u"].combine_chunks().cast(pa.string()),
        items,
        offsets,
        table.rating is not None,
        filtered,
    )


def _filter(con, name: str, table: Table, filters: Filters) -> dict[str, Any]:
    """Apply `filters` to ``raw``; returns what each removed (nothing for none)."""

    def sizes() -> dict[str, int]:
        queries = {"interactions": "raw", "users": "(SELECT DISTINCT u FROM raw)",
                   "items": "(SELECT DISTINCT i FROM raw)"}  # fmt: skip
        return {
            k: con.execute(f"SELECT count(*) FROM {q}").fetchone()[0] for k, q in queries.items()
        }

    removed: dict[str, Any] = {}
    if filters.min_rating is not None:
        if table.rating is None:
            raise InputError(
                f"min_rating {filters.min_rating} needs ratings; source {name!r} has none "
                f"({table.path})"
            )
        gone = con.execute("DELETE FROM raw WHERE rn < ?", [filters.min_rating]).fetchone()[0]
        removed["min_rating"] = {"below": filters.min_rating, "interactions": gone}
    if filters.kcore > 1:
        before, rounds, changed = sizes(), 0, True
        while changed:  # users, then items, until a round removes nothing
            rounds += 1
            changed = False
            for key in ("u", "i"):
                gone = con.execute(
                    f"DELETE FROM raw WHERE {key} IN (SELECT {key} FROM raw GROUP BY {key} "
                    "HAVING count(*) < ?)",
                    [filters.kcore],
                ).fetchone()[0]
                changed |= gone > 0
        after = sizes()
        removed["kcore"] = {"k": filters.kcore, "rounds": rounds}
        removed["kcore"] |= {what: before[what] - after[what] for what in before}
    if removed and sizes()["interactions"] == 0:
        raise InputError(f"{table.path}: the filters removed every interaction ({removed})")
    return removed


def user_ranges(
    source: SortedInteractions, rows: int
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Consecutive ranges of users ``lo .. hi - 1`` of at most `rows` interactions each (a
    user with more forms a range alone), with their rows in order: user (code), item,
    rating, time. Reads the row groups that hold the range, nothing else."""
    parquet = pq.ParquetFile(source.path)
    sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    for lo, hi in _ranges(source.offsets, rows):
        a, b = int(source.offsets[lo]), int(source.offsets[hi])
        first = int(np.searchsorted(starts, a, side="right")) - 1
        last = int(np.searchsorted(starts, b, side="left"))
        table = parquet.read_row_groups(range(first, last)).slice(a - starts[first], b - a)
        yield lo, hi, {name: table[name].to_numpy() for name in table.column_names}


def counts_before(source: SortedInteractions, cut: float | None) -> np.ndarray:
    """Interactions per item before time `cut` (all of them for None)."""
    counts = np.zeros(len(source.items), dtype=np.int64)
    limit = np.inf if cut is None else cut
    for batch in pq.ParquetFile(source.path).iter_batches(columns=["item", "time"]):
        item, time = batch["item"].to_numpy(), batch["time"].to_numpy()
        counts += np.bincount(item[time < limit], minlength=len(counts))
    return counts


def _load_raw(con, table: Table) -> None:
    """``raw``: every record as stripped text (``u``, ``i``), untouched text (``r``, ``t``),
    those as numbers where they are (``rn``, ``tn``; else NULL), the item's row in the
    catalog (``item_row``, NULL if absent) and its record number ``rec`` (0-based, file
    order)."""
    fields = {"u": table.user, "i": table.item, "t": table.time}
    if table.rating:
        fields["r"] = table.rating
    if table.kind == "jsonl":
        con.register("jsonl_rows", _jsonl_arrow(table))
        source, rec = "jsonl_rows", "rec"
    elif table.kind == "parquet":
        source = f"read_parquet('{table.path}', file_row_number = true)"
        rec = "file_row_number"
        _require(table, _parquet_columns(con, table.path), list(fields.values()))
    else:
        names = table.names or _header(table)
        _require(table, names, list(fields.values()))
        options = {
            "delim": {"csv": ",", "tsv": "\t", "dat": "::"}[table.kind],
            "quote": '"' if table.kind == "csv" else "",
            "escape": '"' if table.kind == "csv" else "",
            "header": table.names is None,
            "columns": {n: "VARCHAR" for n in names},
            "auto_detect": False,
            "null_padding": True,
        }
        args = ", ".join(f"{k} = {_literal(v)}" for k, v in options.items())
        source = (
            f"(SELECT *, row_number() OVER () - 1 AS rec FROM read_csv('{table.path}', {args}))"
        )
        rec = "rec"
    select = ", ".join(
        _stripped(f"CAST({_quoted(c)} AS VARCHAR)") + f" AS {k}"
        if k in "ui"
        else f"CAST({_quoted(c)} AS VARCHAR) AS {k}"
        for k, c in fields.items()
    )
    # DuckDB's casts skip surrounding whitespace themselves
    rating = "TRY_CAST(s.r AS DOUBLE)" if table.rating else "CAST('nan' AS DOUBLE)"
    try:
        con.execute(
            f"""CREATE TABLE raw AS
            SELECT s.*, TRY_CAST(s.t AS DOUBLE) AS tn, {rating} AS rn,
                   c.row AS item_row
            FROM (SELECT {select}, {rec} AS rec FROM {source}) s
                 LEFT JOIN catalog_frame c ON s.i = c.item_id""",
        )
    except Exception as err:  # duckdb's errors name the line; ours name the file too
        if isinstance(err, InputError):
            raise
        raise InputError(f"{table.path}: malformed table ({_first_line(err)})") from err
    if con.execute("SELECT count(*) FROM raw").fetchone()[0] == 0:
        header = " a header but" if table.kind in ("csv", "tsv") else ""
        raise InputError(f"{table.path}: the file has{header} no rows")


def _check(con, table: Table, items_path: Path) -> None:
    """The first record breaking each rule, in the order the in-memory reader checked."""
    rules = [
        ("u IS NULL OR u = ''", "u", lambda v: f"empty user id ({table.user!r})"),
        ("i IS NULL OR i = ''", "i", lambda v: f"empty item id ({table.item!r})"),
        (
            "tn IS NULL OR NOT isfinite(tn)",
            "t",
            lambda v: f"timestamp {v!r} ({table.time!r}) is not a number",
        ),
    ]
    if table.rating:
        rules.append(
            (
                "rn IS NULL OR NOT isfinite(rn)",
                "r",
                lambda v: f"rating {v!r} ({table.rating!r}) is not a number",
            )
        )
    rules.append(
        (
            "item_row IS NULL",
            "i",
            lambda v: f"item id {v!r} is not in the items file {items_path}",
        )
    )
    firsts = con.execute(
        "SELECT "
        + ", ".join(f"min(rec) FILTER (WHERE {cond})" for cond, _, _ in rules)
        + " FROM raw"
    ).fetchone()
    for (_, column, message), first in zip(rules, firsts, strict=True):
        if first is not None:
            value = con.execute(f"SELECT {column} FROM raw WHERE rec = ?", [first]).fetchone()[0]
            raise InputError(f"{_where(table, int(first))}: {message(value)}")


def _where(table: Table, rec: int) -> str:
    """ "FILE, line N" of record `rec` (0-based): blank lines are not records and the header
    is line 1; records spanning lines fall back to counting records, as `RecordFile` does."""
    if table.kind == "parquet":
        return f"{table.path}, row {rec + 1}"
    if table.lines is not None:
        return f"{table.path}, line {int(table.lines[rec])}"
    first = 1 if table.kind == "dat" else 2
    seen = -1
    with open(table.path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip() or number < first:
                continue
            seen += 1
            if seen == rec:
                return f"{table.path}, line {number}"
    return f"{table.path}, line {rec + first}"


def _header(table: Table) -> list[str]:
    """The column names on the first non-blank line (the file must have one)."""
    with open(table.path, encoding="utf-8-sig", errors="replace", newline="") as f:
        for line in f:
            if line.strip():
                delimiter = "," if table.kind == "csv" else "\t"
                quoting = csv.QUOTE_MINIMAL if table.kind == "csv" else csv.QUOTE_NONE
                names = next(
                    csv.reader([line.rstrip("\r\n")], delimiter=delimiter, quoting=quoting)
                )
                repeated = sorted({name for name in names if names.count(name) > 1})
                if repeated:  # which of the two was meant?
                    raise InputError(f"{table.path}: the header repeats the columns {repeated}")
                return names
    raise InputError(f"{table.path}: the file is empty")


def _require(table: Table, names: list[str], needed: list[str]) -> None:
    for column in needed:
        if column not in names:
            raise InputError(f"{table.path}: no column {column!r} (columns: {names})")


def _parquet_columns(con, path: Path) -> list[str]:
    try:
        return [
            r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
        ]
    except Exception as err:
        raise InputError(f"{path}: not a readable Parquet file ({_first_line(err)})") from err


def _jsonl_arrow(table: Table) -> pa.Table:
    """A JSON lines file (or a JSON list) as text columns, its JSON checked as
    `records.json_objects` does; numbers keep the text Python gives them. Held in memory:
    Parquet or CSV are the formats for large files."""
    wanted = [c for c in (table.user, table.item, table.rating, table.time) if c]
    columns: dict[str, list] = {c: [] for c in wanted}
    lines, seen = [], set()
    for row, line in json_objects(table.path):
        seen.update(row)
        for column in wanted:
            value = row.get(column)
            columns[column].append(None if value is None else str(value))
        lines.append(line)
    _require(table, sorted(seen), wanted)
    table.lines = np.asarray(lines, dtype=np.int64)
    arrays = [pa.array(v, pa.string()) for v in columns.values()]
    return pa.table(arrays + [pa.array(np.arange(len(lines)))], names=[*columns, "rec"])


def _stripped(text: str) -> str:
    """SQL for `text` without surrounding whitespace (`STRIP`); the plain trim (spaces) is
    several times faster than trimming a set, so the set is trimmed only where present."""
    other = " OR ".join(f"contains({text}, chr({ord(c)}))" for c in STRIP if c != " ")
    return f"CASE WHEN {other} THEN trim({text}, {_literal(STRIP)}) ELSE trim({text}) END"


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("'", "''") + "'"


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def file_table(config: PrepareConfig) -> Table:
    """The `Table` of a ``--source file`` interaction file."""
    path = Path(config.interactions)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return Table(
        path,
        file_format(path, config.file_format),
        config.user_col,
        config.item_col,
        config.rating_col,
        config.time_col,
    )


def _ranges(offsets: np.ndarray, rows: int) -> Iterator[tuple[int, int]]:
    users = len(offsets) - 1
    lo = 0
    while lo < users:
        hi = int(np.searchsorted(offsets, offsets[lo] + rows, side="right")) - 1
        hi = min(max(hi, lo + 1), users)
        yield lo, hi
        lo = hi
