"""The LLaRA / S-DPO JSON layout (`setdpo.data.llara`): S-DPO's LastFM files read and written
byte for byte, a prepared ML-100K directory exported and imported back, and what the layout
cannot hold."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_split, prepare
from setdpo.data.formats import export
from setdpo.data.llara import Record, write
from setdpo.errors import InputError

# S-DPO's data/lastfm-sft-cans20/lastfm-test.json as its data/prepare_sft_data.py writes it
# (`json.dump(records, f, indent=4)`: non-ASCII escaped, no final newline): a "::"-joined
# historyList, itemList a list, trueSelection one of them; 20 candidates there, 4 here, and
# artists of our own.
SDPO_LASTFM = """[
    {
        "historyList": "Kylie Minogue::Avril Lavigne::Ke$ha",
        "itemList": [
            "James Blunt",
            "J\\u00fapiter Ma\\u00e7\\u00e3",
            "Glee Cast",
            "Tyler, The Creator"
        ],
        "trueSelection": "Glee Cast"
    },
    {
        "historyList": "Kylie Minogue::Avril Lavigne::Ke$ha::Glee Cast",
        "itemList": [
            "Ko\\u042fn",
            "Superchic[k]",
            "\\u5317\\u51fa\\u83dc\\u5948",
            "All Time Low"
        ],
        "trueSelection": "All Time Low"
    },
    {
        "historyList": "And One::Daft Punk::t.A.T.u.",
        "itemList": [
            "New Order",
            "Dungeon Elite [**]",
            "Shakin' Stevens",
            "Caf\\u00e9 Del Mar"
        ],
        "trueSelection": "New Order"
    }
]"""


def test_the_fixture_is_what_json_dump_writes():
    records = json.loads(SDPO_LASTFM)
    assert json.dumps(records, indent=4) == SDPO_LASTFM
    assert all(list(r) == ["historyList", "itemList", "trueSelection"] for r in records)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_records_are_written_as_json_dump_writes_the_list(count):
    records = [Record(["a", "Ké"], ["x", "y\\z", '"q"'], "x", user="u1", context_id="u1:4")] * count
    handle = io.StringIO()
    assert write(records, handle) == count
    assert handle.getvalue() == json.dumps([r.to_json(i) for i, r in enumerate(records)], indent=4)


def test_an_sdpo_lastfm_file_is_read_and_written_field_for_field(tmp_path, capsys):
    folder = tmp_path / "lastfm-sft-cans20"
    folder.mkdir()
    source = folder / "lastfm-test.json"
    source.write_text(SDPO_LASTFM, "utf-8")
    out = tmp_path / "imported"
    args = ["data", "import", "--format", "llara", "--train", str(source), "--test", str(source)]
    assert main([*args, "--out", str(out)]) == 0  # the domain from the name: music
    (first, *_) = load_split(out, "test")
    assert first.history == ["Kylie Minogue", "Avril Lavigne", "Ke$ha"]
    assert first.candidates[1] == "Júpiter Maçã" and first.positives == ["Glee Cast"]
    assert "has listened to Kylie Minogue, Avril Lavigne, Ke$ha" in first.prompt
    for split in ("train", "test"):
        back = tmp_path / f"lastfm-{split}.json"
        assert main(["data", "export", str(out), "--split", split, "--format", "llara",
                     "--out", str(back)]) == 0  # fmt: skip
        assert back.read_bytes() == source.read_bytes()
    assert "wrote 3 rows" in capsys.readouterr().out


def _context(example):
    """What a LLaRA record keeps of an example; the import renders the prompt again."""
    return dataclasses.replace(example, target_time=None, meta={})


def test_ml100k_export_then_import_gives_the_same_contexts(ml100k_next_dir, tmp_path):
    files = {}
    for split in ("train", "valid", "test"):
        files[split] = tmp_path / f"ml-{split}.json"
        rows = export(ml100k_next_dir, split, files[split], "llara")
        assert rows == len(load_split(ml100k_next_dir, split))
    record = json.loads(files["test"].read_text("utf-8"))[0]
    assert list(record) == ["historyList", "itemList", "trueSelection", "user", "context_id"]
    assert isinstance(record["historyList"], str) and len(record["itemList"]) == 20
    out = tmp_path / "back"
    args = [f"--{split}={path}" for split, path in files.items()]
    assert main(["data", "import", "--format", "llara", *args, "--out", str(out)]) == 0
    for split in ("train", "valid", "test"):
        prepared, imported = load_split(ml100k_next_dir, split), load_split(out, split)
        # ids, users, histories, candidates in order, positives, levels and the prompts
        assert [_context(ex) for ex in imported] == [_context(ex) for ex in prepared]
    again = tmp_path / "again.json"
    export(out, "test", again, "llara")  # exporting the import gives the same file
    assert again.read_bytes() == files["test"].read_bytes()


ITEMS = pd.DataFrame(
    {"item_id": [str(i) for i in range(1, 13)], "title": [f"Song {i}" for i in range(1, 13)]}
)


def small_source(tmp_path: Path, titles: dict[str, str] | None = None) -> dict[str, str]:
    """Two users, eight timed plays each, of 12 songs (`--source file` options)."""
    rows = [
        {"user_id": f"u{u}", "item_id": str((5 * u + j) % 12 + 1), "rating": 1 + j % 5,
         "timestamp": 100 * u + j}
        for u in range(2) for j in range(8)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "plays.csv", index=False)
    names = [
        (titles or {}).get(i, t) for i, t in zip(ITEMS["item_id"], ITEMS["title"], strict=True)
    ]
    ITEMS.assign(title=names).to_csv(tmp_path / "songs.csv", index=False)
    return {"source": "file", "interactions": str(tmp_path / "plays.csv"),
            "items": str(tmp_path / "songs.csv"), "rating_col": "rating", "candidates": 5,
            "domain": "music"}  # fmt: skip


def test_item_tokens_are_exported_as_titles(tmp_path):
    config = PrepareConfig(**small_source(tmp_path), items_as="tokens", out=str(tmp_path / "t"))
    out = prepare(config)
    assert load_split(out, "train")[0].candidates[0].startswith("<item_")
    export(out, "train", tmp_path / "t.json", "llara")
    records = json.loads((tmp_path / "t.json").read_text("utf-8"))
    titles = set(ITEMS["title"])
    assert all(set(r["itemList"]) <= titles for r in records)
    assert all(set(r["historyList"].split("::")) <= titles for r in records)


@pytest.mark.parametrize(
    ("change", "titles", "message"),
    [
        ({"mode": "next-k", "k": 2}, None,
         "has levels [1, 2] with 2 at level 1; the LLaRA layout holds one trueSelection"),
        ({"mode": "levels", "k": 2}, None, "the LLaRA layout holds one trueSelection"),
        ({}, {"2": "Side A::Side B"}, "history title 'Side A::Side B' cannot be written"),
    ],
)  # fmt: skip
def test_what_the_layout_cannot_hold_is_refused(tmp_path, capsys, change, titles, message):
    config = PrepareConfig(**small_source(tmp_path, titles), **change, out=str(tmp_path / "d"))
    out = prepare(config)
    target = tmp_path / "old.json"
    target.write_text("[]", "utf-8")
    args = ["data", "export", str(out), "--split", "train", "--format", "llara"]
    assert main([*args, "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'hf' / 'train'}: context " in err and message in err
    assert target.read_text("utf-8") == "[]"  # untouched, and no temporary left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "old.json", "plays.csv", "songs.csv"]


def test_pairs_belong_to_trl(ml100k_next_dir, tmp_path):
    with pytest.raises(InputError, match="pairs .* is a trl export; not llara"):
        export(ml100k_next_dir, "test", tmp_path / "x.json", "llara", pairs=True)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"context_id": ["a"]}, "record 0: context_id ['a'] must be a string or an integer"),
        ({"historyList": ["a", 3]}, "record 0: 'historyList' must be a '::'-joined string"),
        ({"itemList": "x:: "}, "record 0: 'itemList' has an empty title"),
        ({"trueSelection": "z"}, "record 0: trueSelection 'z' is not in its itemList"),
    ],
)
def test_bad_records_name_the_file_record_and_field(tmp_path, capsys, record, message):
    good = {"historyList": "a::b", "itemList": ["x", "y"], "trueSelection": "x"}
    path = tmp_path / "lastfm-train.json"
    path.write_text(json.dumps([good | record]), "utf-8")
    assert main(["data", "import", "--format", "llara", "--train", str(path),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert f"{path}, {message}" in capsys.readouterr().err
