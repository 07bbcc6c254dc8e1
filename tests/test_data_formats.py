"""LLaRA / S-DPO JSON import, TRL export and import, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from setdpo.cli import main
from setdpo.data import load_items, load_split
from setdpo.data.formats import trl_rows
from setdpo.data.schema import PreferenceExample

RECORDS = [
    {
        "historyList": "Toy Story (1995)::GoldenEye (1995)::Four Rooms (1995)",
        "itemList": ["Heat (1995)", "Casino (1995)", "Babe (1995)"],
        "trueSelection": "Casino (1995)",
    },
    {
        "historyList": ["Heat (1995)", "Babe (1995)", "Casino (1995)"],
        "itemList": "Jumanji (1995)::Sabrina (1995)",
        "trueSelection": "Jumanji (1995)",
        "input": "ignored extra key",
    },
]


def write_json(path, value):
    path.write_text(json.dumps(value), "utf-8")
    return path


def test_llara_import_matches_the_records(tmp_path):
    train = write_json(tmp_path / "train.json", RECORDS)
    out = tmp_path / "out"
    args = ["data", "import", "--format", "llara", "--train", str(train), "--test", str(train)]
    assert main([*args, "--domain", "movie", "--out", str(out)]) == 0
    examples = load_split(out, "train")
    assert [ex.candidates for ex in examples] == [
        ["Heat (1995)", "Casino (1995)", "Babe (1995)"],
        ["Jumanji (1995)", "Sabrina (1995)"],
    ]
    assert [ex.positives for ex in examples] == [["Casino (1995)"], ["Jumanji (1995)"]]
    assert examples[0].history == ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)"]
    assert examples[0].levels == [2, 1, 2]
    assert (
        "from the following 3 movie titles: Heat (1995), Casino (1995), Babe (1995)."
        in examples[0].prompt
    )
    assert load_split(out, "valid") == []  # no file given: an empty split
    counts = {i["title"]: i["train_count"] for i in load_items(out)}
    assert counts["Casino (1995)"] == 1 and counts["Heat (1995)"] == 0


LASTFM = [
    {
        "historyList": "Kylie Minogue::Madonna::Coldplay",
        "itemList": ["Muse", "Keane", "Queen"],
        "trueSelection": "Queen",
    }
]


def llara_import(train: Path, out: Path, *extra: str) -> int:
    return main(["data", "import", "--format", "llara", "--train", str(train), "--out", str(out), *extra])  # fmt: skip


def test_llara_domain_comes_from_the_file_names(tmp_path):
    folder = tmp_path / "lastfm-sft-cans20"  # S-DPO's LastFM layout
    folder.mkdir()
    train = write_json(folder / "lastfm-train.json", LASTFM)
    assert llara_import(train, tmp_path / "lastfm") == 0
    (ex,) = load_split(tmp_path / "lastfm", "train")
    assert ex.prompt.startswith("This user has listened to Kylie Minogue, Madonna, Coldplay")
    assert "movie" not in ex.prompt and ex.meta["domain"] == "music"
    assert json.loads((tmp_path / "lastfm" / "config.json").read_text())["domain"] == "music"
    books = write_json(tmp_path / "goodreads_valid.json", LASTFM)
    assert llara_import(books, tmp_path / "b") == 0
    assert load_split(tmp_path / "b", "train")[0].meta["domain"] == "book"
    # --domain always wins over the names
    assert llara_import(train, tmp_path / "g", "--domain", "generic") == 0
    assert "has interacted with" in load_split(tmp_path / "g", "train")[0].prompt


@pytest.mark.parametrize(
    ("names", "said"),
    [(["train.json"], "do not say"), (["lastfm-train.json", "ml-test.json"], "say several")],
)
def test_llara_domain_unknown_or_ambiguous_needs_the_option(tmp_path, capsys, names, said):
    paths = [write_json(tmp_path / name, LASTFM) for name in names]
    extra = ["--test", str(paths[1])] if len(paths) > 1 else []
    assert llara_import(paths[0], tmp_path / "o", *extra) == 2
    err = capsys.readouterr().err
    assert said in err and "pass --domain, one of ['movie', 'music', 'book', 'generic']" in err
    assert not (tmp_path / "o").exists()


def test_prepare_points_example_files_to_import(tmp_path, capsys):
    path = write_json(tmp_path / "lastfm-train.json", LASTFM)
    assert main(["data", "prepare", "--source", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"source '{path}' is not one of" in err
    assert "`setdpo data import --format llara|trl --train FILE`" in err


def test_trl_export_then_import_gives_the_same_examples(tmp_path, ml100k_next_dir):
    exported = tmp_path / "test.trl.jsonl"
    assert (
        main(["data", "export", str(ml100k_next_dir), "--split", "test", "--out", str(exported)])
        == 0
    )
    rows = [json.loads(line) for line in exported.read_text("utf-8").splitlines()]
    assert len(rows) == 50 and all(len(r["chosen"]) == 1 and len(r["rejected"]) == 19 for r in rows)
    out = tmp_path / "back"
    assert (
        main(["data", "import", "--format", "trl", "--train", str(exported), "--out", str(out)])
        == 0
    )
    assert load_split(out, "train") == load_split(ml100k_next_dir, "test")


def test_trl_plain_rows_and_pairs():
    # plain TRL rows: strings, no setdpo fields
    example = PreferenceExample("c", "u", ["h"], "p", ["a", "b", "c"], [2, 1, 3])
    pairs = trl_rows(example, pairs=True)
    # levels 1 < 2 < 3: pairs (b,a), (b,c), (a,c)
    assert [(r["chosen"], r["rejected"]) for r in pairs] == [("b", "a"), ("b", "c"), ("a", "c")]
    (row,) = trl_rows(example)
    assert row["chosen"] == ["b"] and row["rejected"] == ["a", "c"] and row["levels"] == [1, 2, 3]


def test_trl_import_of_plain_strings(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"prompt": "Pick one:", "chosen": "a", "rejected": ["b", "c"]}) + "\n", "utf-8"
    )
    assert (
        main(
            [
                "data",
                "import",
                "--format",
                "trl",
                "--train",
                str(path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    (ex,) = load_split(tmp_path / "o", "train")
    assert ex.candidates == ["a", "b", "c"] and ex.levels == [1, 2, 2] and ex.prompt == "Pick one:"


BAD = {
    "not a list": ({"historyList": "a"}, "expected a JSON list of records, got a dict"),
    "record not an object": ([RECORDS[0], 3], "record 1: expected an object, got int"),
    "selection not in list": (
        [RECORDS[0] | {"trueSelection": "Jaws (1975)"}],
        "record 0: trueSelection 'Jaws (1975)' is not in its itemList",
    ),
    "missing key": (
        [{"historyList": "a::b", "itemList": ["x"]}],
        "record 0: missing 'trueSelection'",
    ),
    "duplicate candidates": (
        [RECORDS[0] | {"itemList": ["Casino (1995)", "Casino (1995)"]}],
        "record 0: example '0': duplicate candidate titles",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_llara_files(tmp_path, capsys, case):
    value, message = BAD[case]
    path = write_json(tmp_path / "ml-bad.json", value)  # "ml": MovieLens, the movie domain
    out = tmp_path / "out"
    assert (
        main(["data", "import", "--format", "llara", "--train", str(path), "--out", str(out)]) == 2
    )
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-bad.json"]


def test_invalid_json_names_the_line(tmp_path, capsys):
    path = tmp_path / "movies-bad.json"
    path.write_text('[\n{"historyList": "a",\n oops}\n]', "utf-8")
    assert (
        main(
            [
                "data",
                "import",
                "--format",
                "llara",
                "--train",
                str(path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert f"{path}, line 3: invalid JSON" in capsys.readouterr().err


def test_bad_trl_rows(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good | {"levels": [1]}) + "\n", "utf-8")
    assert (
        main(
            [
                "data",
                "import",
                "--format",
                "trl",
                "--train",
                str(path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "rows.jsonl, line 2: 'levels' must list one level per title" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"candidate_order": [0, 0]}, "'candidate_order' is not a permutation"),
        ({"history": "abc"}, "'history' must be a list of titles"),
        ({"target_time": "noon"}, "target_time 'noon' is not a number"),
        ({"chosen": 3}, "'chosen' must be a string, a list of messages, or a list of those"),
    ],
)
def test_malformed_trl_fields(tmp_path, capsys, change, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"} | change) + "\n", "utf-8"
    )
    assert (
        main(
            [
                "data",
                "import",
                "--format",
                "trl",
                "--train",
                str(path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert f"{path}, line 1: " in (err := capsys.readouterr().err) and message in err
    assert not (tmp_path / "o").exists()
