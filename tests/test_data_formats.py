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


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    return path


def run_import(fmt: str, train: Path, out: Path, *extra: str) -> int:
    return main(["data", "import", "--format", fmt, "--train", str(train), "--out", str(out), *extra])  # fmt: skip


def test_trl_rows_sharing_a_prompt_and_a_chosen_answer_are_one_context(tmp_path, capsys):
    rows = [{"prompt": "Liked Dune. Next?", "chosen": "Emma", "rejected": r} for r in "ABC"]
    assert run_import("trl", write_lines(tmp_path / "rows.jsonl", rows), tmp_path / "o") == 0
    (ex,) = load_split(tmp_path / "o", "train")
    assert (ex.prompt, ex.candidates, ex.levels) == (
        "Liked Dune. Next?",
        ["Emma", "A", "B", "C"],
        [1, 2, 2, 2],
    )
    assert (ex.positives, ex.negatives) == (["Emma"], ["A", "B", "C"])
    out = capsys.readouterr().out
    assert (
        "train: read 3 rows -> 1 contexts, 4 candidates (1 positive, 3 negative); 0 conflicts\n"
        in out
    )
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())["splits"]
    assert stats["train"]["read"] == {
        "rows": 3, "contexts": 1, "candidates": 4, "positive": 1, "negative": 3,
        "conflicts": 0, "dropped_rows": 0,
    }  # fmt: skip
    assert "read" not in stats["valid"]  # no file given


def test_trl_rankings_chains_and_setwise_rows_keep_their_order(tmp_path):
    rows = [
        {"prompt": "P", "chosen": "a", "rejected": "b"},  # line 1
        {"prompt": "Q", "chosen": ["x", "y"], "rejected": ["z", "w"]},  # a ranking: x > y > z, w
        {"prompt": "S", "chosen": ["s"], "rejected": ["t"], "levels": [1, 3], "user": "u7"},
        {"prompt": "P", "chosen": "b", "rejected": ["c"]},  # a > b > c
        {"prompt": "P", "chosen": "a", "rejected": "b"},  # a duplicate: counted once
    ]
    assert run_import("trl", write_lines(tmp_path / "rows.jsonl", rows), tmp_path / "o") == 0
    p, q, s = load_split(tmp_path / "o", "train")
    assert (p.context_id, p.candidates, p.levels) == ("0", ["a", "b", "c"], [1, 2, 3])
    assert (q.context_id, q.candidates, q.levels) == ("1", ["x", "y", "z", "w"], [1, 2, 3, 3])
    assert (s.context_id, s.user, s.candidates, s.levels) == ("2", "u7", ["s", "t"], [1, 3])
    assert p.meta == {"candidate_ids": ["a", "b", "c"], "source": "trl"}


CONFLICTING = [
    {"prompt": "Liked Dune, Emma and Kim. Which book is next for this reader?", "chosen": "a", "rejected": "b"},
    {"prompt": "Q", "chosen": "x", "rejected": "y"},
    {"prompt": "Liked Dune, Emma and Kim. Which book is next for this reader?", "chosen": "a", "rejected": "c"},
    {"prompt": "Liked Dune, Emma and Kim. Which book is next for this reader?", "chosen": "b", "rejected": "a"},
]  # fmt: skip


def test_trl_conflicts_name_their_lines_and_drop_leaves_them_out(tmp_path, capsys):
    path = write_lines(tmp_path / "rows.jsonl", CONFLICTING)
    assert run_import("trl", path, tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert (
        f"{path}: 1 prompts whose rows contradict each other (an answer both above and below "
        "another): prompt 'Liked Dune, Emma and Kim. Which book ...': lines 1, 4 put 'a', 'b' "
        "in a cycle; pass --on-conflict drop to leave these prompts out"
    ) in err
    assert not (tmp_path / "o").exists()
    assert run_import("trl", path, tmp_path / "o", "--on-conflict", "drop") == 0
    assert "train: read 4 rows -> 1 contexts, 2 candidates (1 positive, 1 negative); 1 conflicts (dropped: 1 prompts, 3 rows)" in capsys.readouterr().out  # fmt: skip
    (ex,) = load_split(tmp_path / "o", "train")
    assert (ex.prompt, ex.candidates, ex.levels) == ("Q", ["x", "y"], [1, 2])
    assert run_import("trl", path, tmp_path / "p", "--on-conflict", "skip") == 2
    assert "on_conflict 'skip' is not one of ['error', 'drop']" in capsys.readouterr().err


def test_trl_conversational_rows_merge_by_their_prompt_messages(tmp_path):
    def said(role, text):
        return [{"role": role, "content": text}]

    system, user = said("system", "You recommend books."), said("user", "Liked Dune. Next?")
    rows = [
        {"prompt": system + user, "chosen": said("assistant", "Emma"), "rejected": said("assistant", "Kim")},
        {"chosen": system + user + said("assistant", "Emma"), "rejected": system + user + said("assistant", "Ivanhoe")},
        {"prompt": user, "chosen": said("assistant", "Emma"), "rejected": said("assistant", "Kim")},
    ]  # fmt: skip
    assert run_import("trl", write_lines(tmp_path / "rows.jsonl", rows), tmp_path / "o") == 0
    both, alone = load_split(tmp_path / "o", "train")
    assert both.prompt == "system: You recommend books.\nuser: Liked Dune. Next?"
    assert (both.candidates, both.levels) == (["Emma", "Kim", "Ivanhoe"], [1, 2, 2])
    assert (alone.prompt, alone.candidates) == ("Liked Dune. Next?", ["Emma", "Kim"])


LLAMAFACTORY_LIST = """[
  {
    "instruction": "Liked Dune. Next book?",
    "input": "",
    "chosen": "Emma",
    "rejected": "Kim"
  },
  {"instruction": "Liked Dune. Next book?", "chosen": "Emma", "rejected": "Ivanhoe"},
  {
    "instruction": "Liked Kim.",
    "input": "Next book?",
    "chosen": "Dune",
    "rejected": "Emma"
  },
  {"instruction": "Liked Dune. Next book?", "chosen": "Kim", "rejected": "Emma"}
]
"""


def test_llamafactory_chosen_rejected_list_and_output_lines(tmp_path, capsys):
    path = tmp_path / "prefs.json"
    path.write_text(LLAMAFACTORY_LIST, "utf-8")
    assert run_import("llamafactory", path, tmp_path / "o") == 2
    assert "prompt 'Liked Dune. Next book?': lines 2, 15 put 'Emma', 'Kim' in a cycle" in capsys.readouterr().err  # fmt: skip
    assert run_import("llamafactory", path, tmp_path / "o", "--on-conflict", "drop") == 0
    (ex,) = load_split(tmp_path / "o", "train")
    assert (ex.prompt, ex.candidates, ex.levels) == (
        "Liked Kim.\nNext book?",
        ["Dune", "Emma"],
        [1, 2],
    )
    assert ex.meta["source"] == "llamafactory"
    # JSON lines with `output: [chosen, rejected]`, system and history
    records = [
        {"instruction": "Next book?", "output": ["Emma", "Kim"], "system": "Be brief.", "history": [["Hi", "Hello"]]},
        {"instruction": "Next book?", "output": ["Emma", "Dune"], "system": "Be brief.", "history": [["Hi", "Hello"]]},
        {"instruction": "Next book?", "input": "I liked Kim.", "output": ["Dune", "Emma"]},
    ]  # fmt: skip
    assert (
        run_import("llamafactory", write_lines(tmp_path / "p.jsonl", records), tmp_path / "p") == 0
    )
    assert "train: read 3 rows -> 2 contexts, 5 candidates (2 positive, 3 negative); 0 conflicts" in capsys.readouterr().out  # fmt: skip
    first, second = load_split(tmp_path / "p", "train")
    assert first.prompt == "system: Be brief.\nuser: Hi\nassistant: Hello\nuser: Next book?"
    assert (first.candidates, first.levels) == (["Emma", "Kim", "Dune"], [1, 2, 2])
    assert (second.prompt, second.candidates) == ("Next book?\nI liked Kim.", ["Dune", "Emma"])


def test_trl_pairs_export_merges_back_into_the_same_contexts(tmp_path, ml100k_next_dir):
    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "export", str(ml100k_next_dir), "--split", "test", "--pairs", "--out", str(pairs)]) == 0  # fmt: skip
    assert run_import("trl", pairs, tmp_path / "back") == 0
    back = load_split(tmp_path / "back", "train")
    original = load_split(ml100k_next_dir, "test")
    assert [ex.context_id for ex in back] == [ex.context_id for ex in original]
    for got, want in zip(back, original, strict=True):
        assert got.prompt == want.prompt
        assert dict(zip(got.candidates, got.levels, strict=True)) == dict(
            zip(want.candidates, want.levels, strict=True)
        )


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        (
            "trl",
            '{"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}',
            "line 1: 'prompt' message 0 must be an object with string 'role' and 'content'",
        ),  # fmt: skip
        (
            "trl",
            '{"chosen": "The sky is blue.", "rejected": "The sky is green."}',
            "line 1: missing 'prompt' (rows without one must hold whole conversations)",
        ),  # fmt: skip
        ("trl", '{"prompt": "p", "chosen": [], "rejected": "b"}', "line 1: 'chosen' is empty"),
        (
            "trl",
            '{"prompt": "p", "chosen": " ", "rejected": "b"}',
            "line 1: 'chosen' has an empty text",
        ),  # fmt: skip
        (
            "trl",
            '[\n{"prompt": "p", "chosen": "a", "rejected": "b"},\n 3\n]',
            "line 3: expected a JSON object, got int",
        ),  # fmt: skip
        (
            "trl",
            '[\n{"prompt": "p", "chosen": "a", "rejected": "b"}\n]\nmore',
            "line 4: text after the list's closing ']'",
        ),  # fmt: skip
        (
            "trl",
            '[{"prompt": "p", "chosen": "a", "rejected": "b"},\n]',
            "line 2: invalid JSON (Expecting value)",
        ),  # fmt: skip
        (
            "llamafactory",
            '{"instruction": "i", "chosen": "a", "rejected": "b", "output": ["a", "b"]}',
            "line 1: give either 'chosen' and 'rejected', or 'output'",
        ),  # fmt: skip
        (
            "llamafactory",
            '{"instruction": "i", "output": ["a"]}',
            "line 1: 'output' must list at least two answers, best first",
        ),  # fmt: skip
        (
            "llamafactory",
            '\n{"input": "x", "chosen": "a", "rejected": "b"}',
            "line 2: missing 'instruction'",
        ),  # fmt: skip
        (
            "llamafactory",
            '{"instruction": "i", "history": [["q"]], "output": ["a", "b"]}',
            "line 1: 'history' must be a list of [query, response] pairs",
        ),  # fmt: skip
    ],
)
def test_malformed_pairwise_rows_name_file_and_line(tmp_path, capsys, fmt, text, message):
    path = tmp_path / "rows.json"
    path.write_text(text, "utf-8")
    assert run_import(fmt, path, tmp_path / "o") == 2
    assert f"{path}, {message}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
