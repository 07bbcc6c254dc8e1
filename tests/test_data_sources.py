"""Interaction files given by the user: CSV, TSV, Parquet, JSONL, and every bad-input case.

A small valid data set is written by each test: 30 items, 3 users with 12 timed ratings.
Each user gives 12 - 3 = 9 contexts (minimum history 3), 27 in all; 8:1:1 of 27 rounds
to 22 / 2 / 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_items, load_split, prepare
from setdpo.data.io import dumps

ITEMS = pd.DataFrame(
    {"item_id": [str(i) for i in range(1, 31)], "title": [f"Movie {i}" for i in range(1, 31)]}
)


def interactions() -> pd.DataFrame:
    rows = []
    for u in range(3):
        for j in range(12):  # user u rates items 10u+1 .. and wraps; times increase
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": str((7 * u + j) % 30 + 1),
                    "rating": 1 + (j % 5),
                    "timestamp": 1000 * u + j,
                }
            )
    return pd.DataFrame(rows)


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")), "utf-8")
    return path


def cli_prepare(tmp_path: Path, inter: Path, items: Path, *extra: str) -> list[str]:
    return ["data", "prepare", "--source", "file", "--interactions", str(inter), "--items", str(items),
            "--rating-col", "rating", "--candidates", "5", "--out", str(tmp_path / "out"), *extra]  # fmt: skip


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet", "jsonl"])
def test_interaction_files_in_every_format(tmp_path, ext):
    inter = write(interactions(), tmp_path / f"inter.{ext}")
    items = write(ITEMS, tmp_path / f"items.{ext}")
    config = PrepareConfig(source="file", interactions=str(inter), items=str(items), rating_col="rating",
                           candidates=5, mode="rated", k=2, out=str(tmp_path / "out"))  # fmt: skip
    out = prepare(config)
    sizes = [len(load_split(out, s)) for s in ("train", "valid", "test")]
    # rated mode keeps windows with a rating >= 4: fewer than the 27 next-mode contexts
    assert 0 < sum(sizes) <= 27
    catalog = load_items(out)
    assert [c["title"] for c in catalog][:2] == ["Movie 1", "Movie 2"]


def test_next_mode_counts_by_hand(tmp_path):
    inter = write(interactions(), tmp_path / "inter.csv")
    items = write(ITEMS, tmp_path / "items.csv")
    assert main(cli_prepare(tmp_path, inter, items)) == 0
    sizes = [len(load_split(tmp_path / "out", s)) for s in ("train", "valid", "test")]
    assert sizes == [22, 2, 3]
    for ex in load_split(tmp_path / "out", "train"):
        assert len(ex.candidates) == 5 and ex.levels.count(1) == 1


def test_shared_titles_are_disambiguated(tmp_path):
    items = ITEMS.copy()
    items.loc[1, "title"] = "Movie 1"  # ids 1 and 2 share a title
    inter = write(interactions(), tmp_path / "inter.csv")
    assert main(cli_prepare(tmp_path, inter, write(items, tmp_path / "items.csv"))) == 0
    titles = {c["item_id"]: c["title"] for c in load_items(tmp_path / "out")}
    assert titles["1"] == "Movie 1 [id 1]" and titles["2"] == "Movie 1 [id 2]"


BAD_CASES = {
    # name: (edit of the interaction CSV text, edit of the items CSV text, extra args, message)
    "misnamed column": (lambda t: t.replace("user_id", "usr", 1), None, [], "no column 'user_id'"),
    "user-given column absent": (None, None, ["--time-col", "ts"], "no column 'ts'"),
    "rating not a number": (
        lambda t: t.replace("\nu0,2,2,1", "\nu0,2,two,1"),
        None,
        [],
        "line 3: rating 'two'",
    ),
    "timestamp not a number": (
        lambda t: t.replace("\nu0,3,3,2", "\nu0,3,3,soon"),
        None,
        [],
        "line 4: timestamp 'soon'",
    ),
    "unknown item": (
        lambda t: t.replace("\nu0,1,1,0", "\nu0,99,1,0"),
        None,
        [],
        "line 2: item id '99' is not in the items file",
    ),
    "empty title": (None, lambda t: t.replace("\n3,Movie 3", "\n3,"), [], "line 4: empty title"),
    "one id two titles": (None, lambda t: t + "3,Another 3\n", [], "item id '3' has two titles"),
    "empty file": (lambda t: "", None, [], "the file is empty"),
    "header only": (lambda t: t.splitlines()[0] + "\n", None, [], "has a header but no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exits_2_names_the_line_and_leaves_nothing(tmp_path, capsys, case):
    edit_inter, edit_items, extra, message = BAD_CASES[case]
    inter = write(interactions(), tmp_path / "inter.csv")
    items = write(ITEMS, tmp_path / "items.csv")
    for path, edit in ((inter, edit_inter), (items, edit_items)):
        if edit:
            path.write_text(edit(path.read_text("utf-8")), "utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(cli_prepare(tmp_path, inter, items, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1  # one line: no traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temp dir


def test_invalid_utf8_names_the_line(tmp_path, capsys):
    inter = write(interactions(), tmp_path / "inter.csv")
    items = tmp_path / "items.csv"
    items.write_bytes(b"item_id,title\n1,Movie 1\n2,Caf\xe9\n")  # latin-1, not UTF-8
    assert main(cli_prepare(tmp_path, inter, items)) == 2
    err = capsys.readouterr().err
    assert f"{items}, line 3: invalid UTF-8" in err
    assert not (tmp_path / "out").exists()


def test_bad_jsonl_record_names_its_line(tmp_path, capsys):
    inter = tmp_path / "inter.jsonl"
    inter.write_text('{"user_id": "u", "item_id": "1", "timestamp": 1}\n[1, 2]\n', "utf-8")
    items = write(ITEMS, tmp_path / "items.jsonl")
    args = cli_prepare(tmp_path, inter, items)
    args.remove("--rating-col")
    args.remove("rating")
    assert main(args) == 2
    assert "inter.jsonl, line 2: expected a JSON object" in capsys.readouterr().err


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
    inter = write(interactions(), tmp_path / "inter.csv")
    items = write(ITEMS, tmp_path / "items.csv")
    (tmp_path / "out").mkdir()
    assert main(cli_prepare(tmp_path, inter, items)) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(cli_prepare(tmp_path, inter, items, "--overwrite")) == 0
    assert (tmp_path / "out" / "hf" / "train" / "state.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dirs removed


def test_titles_with_quotes_backslashes_and_unicode_stay_canonical_json(tmp_path):
    items = ITEMS.copy()
    items.loc[0, "title"] = 'Say "Hi" \\ Über {x} (2000)'
    inter = write(interactions(), tmp_path / "inter.jsonl")
    assert main(cli_prepare(tmp_path, inter, write(items, tmp_path / "items.jsonl"))) == 0
    seen = False
    for split in ("train", "valid", "test"):
        path = tmp_path / f"{split}.jsonl"
        assert main(["data", "export", str(tmp_path / "out"), "--split", split,
                     "--out", str(path), "--format", "jsonl"]) == 0  # fmt: skip
        for line in path.read_text("utf-8").splitlines():
            row = json.loads(line)
            assert dumps(row) == line
            seen |= 'Say "Hi" \\ Über {x} (2000)' in row["prompt"]
    assert seen  # the title made it into some prompt verbatim


def kcore_interactions() -> pd.DataFrame:
    """Six users, each with 4 of items 1-6 (every item 4 times), and what a 3-core removes:
    u6 has 2 interactions (items 1 and 7), u0 one more with item 8."""
    rows = [(f"u{u}", (u + j) % 6 + 1) for u in range(6) for j in range(4)]
    rows += [("u6", 1), ("u6", 7), ("u0", 8)]
    return pd.DataFrame(
        {"user_id": [u for u, _ in rows], "item_id": [str(i) for _, i in rows],
         "rating": [1 + n % 5 for n in range(len(rows))], "timestamp": range(len(rows))}
    )  # fmt: skip


def test_kcore_and_min_rating_counts_by_hand(tmp_path):
    inter = write(kcore_interactions(), tmp_path / "inter.csv")
    items = write(ITEMS, tmp_path / "items.csv")
    argv = cli_prepare(tmp_path, inter, items, "--kcore", "3", "--min-history", "1")
    assert main(argv) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    # round 1: u6 (2 < 3) goes with items 1 and 7; item 7 is gone, item 8 has 1 (u0): it
    # goes. Round 2 removes nothing: every user and item 1-6 keep 4.
    assert stats["filtered"] == {
        "kcore": {"k": 3, "rounds": 2, "interactions": 3, "users": 1, "items": 2}
    }
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 6, 24)
    # ratings 1 + n % 5, n = 0..26: below 3 where n % 5 is 0 or 1, 12 rows (0, 1, 5, ... 26)
    argv = cli_prepare(tmp_path, inter, items, "--min-rating", "3", "--min-history", "1",
                       "--overwrite")  # fmt: skip
    assert main(argv) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["filtered"] == {"min_rating": {"below": 3.0, "interactions": 12}}
    assert stats["interactions"] == 27 - 12


def test_filters_that_leave_nothing_or_lack_ratings_exit_2(tmp_path, capsys):
    inter = write(kcore_interactions(), tmp_path / "inter.csv")
    items = write(ITEMS, tmp_path / "items.csv")
    assert main(cli_prepare(tmp_path, inter, items, "--kcore", "50")) == 2
    assert "the filters removed every interaction" in capsys.readouterr().err
    args = cli_prepare(tmp_path, inter, items, "--min-rating", "4")
    args.remove("--rating-col")
    args.remove("rating")
    assert main(args) == 2
    assert "min_rating 4.0 needs ratings" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_filter_writes_no_filtered_key(tmp_path):
    inter = write(interactions(), tmp_path / "inter.csv")
    assert main(cli_prepare(tmp_path, inter, write(ITEMS, tmp_path / "items.csv"))) == 0
    assert "filtered" not in json.loads((tmp_path / "out" / "stats.json").read_text())
