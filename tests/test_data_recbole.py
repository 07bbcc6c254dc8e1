"""RecBole atomic files as a source (`setdpo.data.sources`, ``--source recbole``): the ML-100K
folder shipped in the recbole package gives the splits of ``--source ml-100k``; any folder of
``NAME.inter`` / ``NAME.item`` files with typed headers is read by its field names."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_items, load_split, prepare
from setdpo.data.sources import movielens_folder
from setdpo.data.store import open_split, read_table

SPLITS = ("train", "valid", "test")
ML100K = ["--rating-col", "rating", "--title-col", "movie_title", "--year-col", "release_year"]


def _json(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text("utf-8"))


@pytest.mark.parametrize("mode", ["next", "levels"])
def test_the_recbole_ml100k_folder_gives_the_ml100k_splits(tmp_path, capsys, mode):
    folder = movielens_folder("ml-100k")  # recbole/dataset_example/ml-100k: .inter, .item, ...
    assert (
        (folder / "ml-100k.inter")
        .read_text("utf-8")
        .startswith("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    )
    shipped, atomic = tmp_path / "ml-100k", tmp_path / "recbole"
    common = ["data", "prepare", "--mode", mode]
    assert main([*common, "--source", "ml-100k", "--out", str(shipped)]) == 0
    argv = [*common, "--source", "recbole", "--interactions", str(folder), *ML100K]
    assert main([*argv, "--out", str(atomic)]) == 0
    capsys.readouterr()
    for split in SPLITS:  # contexts, users, histories, candidates, levels, times, ratings
        assert read_table(atomic, split).equals(read_table(shipped, split)), split
    assert load_items(atomic) == load_items(shipped)  # ids, "Title (Year)", train counts
    timelines = [pq.read_table(d / "timelines.parquet") for d in (atomic, shipped)]
    assert timelines[0].equals(timelines[1])
    stats = [_json(d, "stats.json") for d in (atomic, shipped)]
    assert stats[0].pop("source") == "recbole" and stats[1].pop("source") == "ml-100k"
    assert {k: v for k, v in stats[0].items() if k != "run"} == {
        k: v for k, v in stats[1].items() if k != "run"
    }
    # rendered: the same examples but the source they name
    first = [open_split(d, "test")[0] for d in (atomic, shipped)]
    first[0].meta["source"] = "ml-100k"
    assert first[0] == first[1] and first[1].history[0].endswith(")")  # "Title (Year)"


def write_atomic(folder: Path, name: str, inter: list[str], item: list[str]) -> Path:
    """``NAME.inter`` and ``NAME.item``: tab-separated lines, typed headers first."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text("".join(f"{line}\n" for line in inter), "utf-8")
    (folder / f"{name}.item").write_text("".join(f"{line}\n" for line in item), "utf-8")
    return folder


def amazon_like(folder: Path) -> Path:
    """The headers of RecBole's Amazon conversions (RecSysDatasets' ``AmazonToys``: ``.inter``
    user_id, item_id, rating, timestamp; ``.item`` item_id, title, price, sales_type,
    sales_rank, brand, categories): 3 users, 8 reviews each, of 10 items."""
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"A{u}\tB0{(3 * u + j) % 10}\t{1 + j % 5}\t{1500000000 + 100 * u + j}"
              for u in range(3) for j in range(8)]  # fmt: skip
    item = ["item_id:token\ttitle:token\tprice:float\tsales_type:token\tsales_rank:float"
            "\tbrand:token\tcategories:token_seq"]  # fmt: skip
    title = 'Book number {}: a "quoted" title'
    item += [f"B0{i}\t{title.format(i)}\t{i}.99\tBooks\t{100 * i}\tAcme\tBooks Fiction"
             for i in range(10)]  # fmt: skip
    return write_atomic(folder, "Amazon_Books", inter, item)


def test_any_folder_with_recbole_field_names_needs_only_the_folder(tmp_path, capsys):
    folder = amazon_like(tmp_path / "Amazon_Books")
    out = tmp_path / "out"
    argv = ["data", "prepare", "--source", "recbole", "--interactions", str(folder)]
    assert main([*argv, "--candidates", "4", "--domain", "book", "--out", str(out)]) == 0
    assert "audit: 7 checks, 0 findings" in capsys.readouterr().out
    assert sum(len(load_split(out, s)) for s in SPLITS) == 3 * (8 - 3)  # min history 3
    titles = {item["item_id"]: item["title"] for item in load_items(out)}
    assert titles["B03"] == 'Book number 3: a "quoted" title'  # the text as it stands
    config = PrepareConfig(source="recbole", interactions=str(folder / "Amazon_Books.inter"),
                           rating_col="rating", mode="rated", k=2, candidates=4,
                           out=str(tmp_path / "rated"))  # fmt: skip
    assert prepare(config).is_dir()  # the .inter file named instead of its folder


def test_other_field_names_are_named_by_the_options(tmp_path, capsys):
    """A LastFM-like folder: artists, play weights as ratings, names as titles."""
    inter = ["user_id:token\tartist_id:token\tweight:float\ttimestamp:float"]
    inter += [f"{u}\t{(2 * u + j) % 9 + 1}\t{10 * j}\t{1000 * u + j}" for u in range(2)
              for j in range(7)]  # fmt: skip
    item = ["artist_id:token\tname:token_seq\turl:token_seq"]
    item += [f"{i}\tArtist {i}\thttp://www.last.fm/music/{i}" for i in range(1, 10)]
    folder = write_atomic(tmp_path / "lastfm", "lastfm", inter, item)
    out = tmp_path / "out"
    argv = ["data", "prepare", "--source", "recbole", "--interactions", str(folder),
            "--candidates", "4", "--domain", "music", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'lastfm.inter'}: no field 'item_id' (fields: ['user_id:token', " in err
    assert "name the one to read with --item-col" in err
    names = ["--item-col", "artist_id", "--item-id-col", "artist_id", "--title-col", "name"]
    assert main([*argv, *names, "--rating-col", "weight:float"]) == 0  # a typed name works too
    assert [item["title"] for item in load_items(out)] == [f"Artist {i}" for i in range(1, 10)]


TYPED = "user_id:token\titem_id:token\ttimestamp:float\n"
BAD = {
    "no .inter": ({"Amazon_Books.inter": None}, "no RecBole interaction files (NAME.inter)"),
    "two .inter": ({"Other.inter": "inter"}, "2 (['Amazon_Books.inter', 'Other.inter']) RecBole"),
    "no .item": (
        {"Amazon_Books.item": None},
        "Amazon_Books.item: no such file; the titles come from RecBole's item file",
    ),
    "untyped header": (
        {"Amazon_Books.inter": "user_id\titem_id:token\ttimestamp:float\nA\tB00\t2\n"},
        "Amazon_Books.inter, line 1: column 'user_id' is not 'name:type' with a RecBole type",
    ),
    "unknown type": (
        {"Amazon_Books.item": "item_id:token\ttitle:text\nB00\tx\n"},
        "Amazon_Books.item, line 1: column 'title:text' is not 'name:type'",
    ),
    "bad timestamp": (
        {"Amazon_Books.inter": TYPED + "A\tB00\t1\nA\tB01\tnoon\n"},
        "Amazon_Books.inter, line 3: timestamp 'noon' ('timestamp:float') is not a number",
    ),
    "unknown item": (
        {"Amazon_Books.inter": TYPED + "A\tB77\t1\n"},
        "Amazon_Books.inter, line 2: item id 'B77' is not in the items file",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_folders_name_the_file_line_and_field(tmp_path, capsys, case):
    folder = amazon_like(tmp_path / "Amazon_Books")
    files, message = BAD[case]
    for name, text in files.items():
        if text is None:
            (folder / name).unlink()
        else:
            (folder / name).write_text(text if text != "inter" else "", "utf-8")
    out = tmp_path / "out"
    argv = ["data", "prepare", "--source", "recbole", "--interactions", str(folder)]
    assert main([*argv, "--candidates", "2", "--min-history", "0", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_recbole_file_given_as_a_plain_file_points_to_the_source(tmp_path, capsys):
    folder = amazon_like(tmp_path / "Amazon_Books")
    inter, item = (str(folder / f"Amazon_Books.{ext}") for ext in ("inter", "item"))
    argv = ["data", "prepare", "--source", "file", "--interactions", inter, "--items", item,
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    assert "a RecBole atomic file (typed header); read its folder with --source recbole" in (
        capsys.readouterr().err
    )
    assert main(["data", "prepare", "--source", "recbole", "--out", str(tmp_path / "o")]) == 2
    assert "source 'recbole' needs --interactions" in capsys.readouterr().err
