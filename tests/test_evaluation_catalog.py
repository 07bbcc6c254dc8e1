"""Catalog ranking: the catalog example, and which items it leaves out (every item the user
consumed before the target, checked against the raw ML-100K file)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_items, load_split, prepare
from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError
from setdpo.evaluation.catalog import EXCLUDED_CONSUMED, ConsumedItems, catalog_example

CATALOG = [{"item_id": str(i), "title": f"Movie {i} (199{i % 10})"} for i in range(1, 9)]


def open_example(**changes) -> PreferenceExample:
    fields = dict(
        context_id="u1:5",
        user="u1",
        history=["Movie 1 (1991)", "Movie 2 (1992)"],
        prompt="The user watched Movie 1 (1991), Movie 2 (1992). Next:",
        candidates=["Movie 5 (1995)", "Movie 3 (1993)", "Movie 7 (1997)"],
        levels=[1, 2, 2],
        meta={"template": "open", "domain": "movie", "candidate_ids": ["5", "3", "7"]},
    )
    return PreferenceExample(**(fields | changes))


def test_catalog_example_excludes_history_and_grades_the_rest():
    big = catalog_example(open_example(), CATALOG, max_level=2)
    # Items 1 and 2 are the history; the other 6 remain in catalog order.
    assert big.candidates == [f"Movie {i} (199{i})" for i in (3, 4, 5, 6, 7, 8)]
    assert big.meta["candidate_ids"] == ["3", "4", "5", "6", "7", "8"]
    # Only the held-out positive is relevant; sampled negatives are plain catalog items.
    assert big.levels == [2, 2, 1, 2, 2, 2]
    assert big.prompt == open_example().prompt


def test_graded_levels_survive_and_unobserved_items_get_the_worst_level():
    ex = open_example(levels=[1, 2, 4], meta={"template": "open"})
    big = catalog_example(ex, CATALOG, max_level=4)
    assert dict(zip(big.candidates, big.levels, strict=True)) == {
        "Movie 3 (1993)": 2,
        "Movie 4 (1994)": 4,
        "Movie 5 (1995)": 1,
        "Movie 6 (1996)": 4,
        "Movie 7 (1997)": 4,
        "Movie 8 (1998)": 4,
    }


def test_listing_prompts_and_unknown_positives_are_refused():
    with pytest.raises(InputError, match="'open' template"):
        catalog_example(open_example(meta={"template": "listing"}), CATALOG, 2)
    stranger = open_example(candidates=["Unknown (2001)", "Movie 3 (1993)", "Movie 7 (1997)"])
    with pytest.raises(InputError, match="not in the catalog"):
        catalog_example(stranger, CATALOG, 2)


def test_consumed_items_are_excluded_but_graded_candidates_stay():
    # The user consumed items 3 and 5 before the target, outside the prompt's history;
    # 5 is also the positive (consumed again): it stays, 3 (a sampled negative) goes.
    big = catalog_example(open_example(), CATALOG, max_level=2, consumed=["1", "3", "5", "8"])
    assert big.candidates == [
        "Movie 4 (1994)",
        "Movie 5 (1995)",
        "Movie 6 (1996)",
        "Movie 7 (1997)",
    ]
    assert big.levels == [2, 1, 2, 2]


def timeline_files(folder: Path) -> tuple[Path, Path]:
    """Items 1..30 ("Movie i"). u1 consumes items 1..15 at positions 0..14, then item 4
    again at position 15; u2 consumes items 16..30 (so that they are in the catalog)."""
    rows = [("u1", str(i + 1), i) for i in range(15)] + [("u1", "4", 15)]
    rows += [("u2", str(16 + i), 100 + i) for i in range(15)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [str(i) for i in range(1, 31)],
                          "title": [f"Movie {i}" for i in range(1, 31)]})  # fmt: skip
    inter.to_csv(folder / "inter.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    return folder / "inter.csv", folder / "items.csv"


@pytest.fixture(scope="module")
def timeline_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("catalog")
    inter, items = timeline_files(folder)
    config = PrepareConfig(source="file", interactions=str(inter), items=str(items),
                           split="leave-last-out", template="open", candidates=5,
                           out=str(folder / "prepared"))  # fmt: skip
    return prepare(config)


def test_earlier_items_outside_the_prompt_are_excluded_and_a_reconsumed_positive_ranked(
    timeline_dir,
):
    (ex,) = [e for e in load_split(timeline_dir, "test") if e.user == "u1"]
    assert ex.context_id == "u1:15" and ex.positives == ["Movie 4"]
    assert ex.history == [f"Movie {i}" for i in range(6, 16)]  # positions 5..14
    consumed = ConsumedItems.of(timeline_dir).before(ex)
    assert consumed == [str(i) for i in range(1, 16)]
    big = catalog_example(ex, load_items(timeline_dir), 2, consumed)
    # Items 1, 2, 3, 5 (before the prompt's window) are gone with the history; item 4,
    # consumed before and again as the target, is ranked as the positive.
    assert set(big.candidates) == {"Movie 4"} | {f"Movie {i}" for i in range(16, 31)}
    assert big.levels[big.candidates.index("Movie 4")] == 1 and big.levels.count(1) == 1


def test_evaluate_catalog_states_what_it_excluded(timeline_dir, tmp_path):
    out = tmp_path / "random.json"
    args = ["evaluate", "--model", "random", "--data", str(timeline_dir), "--catalog",
            "--no-progress", "--resamples", "10", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    results = json.loads(out.read_text())
    assert results["protocol"]["catalog"]["excluded"] == EXCLUDED_CONSUMED
    sizes = {c["context_id"]: c["catalog"]["n_items"] for c in results["contexts"]}
    # u1: 30 items - 15 consumed before + item 4 again; u2 (target at position 14): 30 - 14
    assert sizes == {"u1:15": 16, "u2:14": 16}


@pytest.fixture(scope="module")
def ml100k_open(tmp_path_factory) -> Path:
    config = PrepareConfig(template="open", out=str(tmp_path_factory.mktemp("open") / "ml"),
                           max_examples_per_split={"train": 20, "valid": 5, "test": 20})  # fmt: skip
    return prepare(config)


def test_ml100k_catalog_excludes_exactly_the_raw_past(ml100k_open):
    """Against the raw file (read here): the excluded items are the user's interactions
    before the target in time order (equal times in file order), not only the history."""
    path = Path(importlib.util.find_spec("recbole").submodule_search_locations[0])
    raw = pd.read_csv(path / "dataset_example/ml-100k/ml-100k.inter", sep="\t", dtype=str)
    raw.columns = ["user", "item", "rating", "time"]
    raw = raw.assign(time=raw.time.astype(float), line=range(len(raw)))
    raw = raw.sort_values(["user", "time", "line"])
    items = load_items(ml100k_open)
    title = {it["item_id"]: it["title"] for it in items}
    consumed = ConsumedItems.of(ml100k_open)
    beyond_history = []
    for ex in load_split(ml100k_open, "test"):
        past = raw[raw.user == ex.user].item.tolist()[: int(ex.context_id.split(":")[1])]
        big = catalog_example(ex, items, 2, consumed.before(ex))
        assert {it["title"] for it in items} - set(big.candidates) == {title[i] for i in past}
        assert set(ex.positives) <= set(big.candidates)
        beyond_history.append(len(past) - len(ex.history))
    assert sum(beyond_history) > 0  # the old rule (history only) left these ranked


def test_consumed_items_read_row_group_by_row_group(tmp_path, monkeypatch):
    """ML-100K's timelines in 7 row groups (ranges of 15,000 interactions), read lazily with
    at most 4 kept: every test and valid context's consumed items equal the positions before
    its target in the whole file read at once."""
    import pyarrow.parquet as pq

    import setdpo.data.builders as builders

    monkeypatch.setattr(builders, "CHUNK_INTERACTIONS", 15_000)
    out = prepare(PrepareConfig(out=str(tmp_path / "p"), max_examples_per_split={"train": 10}))
    assert pq.ParquetFile(out / "timelines.parquet").num_row_groups == 7
    ids = [item["item_id"] for item in load_items(out)]
    whole = pq.read_table(out / "timelines.parquet").to_pylist()
    expected = {row["user"]: [ids[i] for i in row["items"]] for row in whole}
    consumed = ConsumedItems.of(out)
    for split in ("valid", "test"):
        for ex in load_split(out, split):
            at = int(ex.context_id.rpartition(":")[2])
            assert consumed.before(ex) == expected[ex.user][:at]
            assert len(consumed.groups) <= ConsumedItems.CACHED_GROUPS
    stranger = load_split(out, "test")[0]
    stranger = PreferenceExample(
        **(stranger.to_dict() | {"user": "nobody", "context_id": "nobody:3"})
    )
    with pytest.raises(InputError, match="has no timeline"):
        consumed.before(stranger)


def test_catalog_ranking_reads_each_row_group_once(tmp_path, monkeypatch):
    """Test contexts come in time order, their users spread over the timelines' row groups:
    catalog ranking takes them group by group, so with one group kept each is read once, and
    writes the results in the contexts' order, equal to those with every group kept."""
    import pyarrow.parquet as pq

    import setdpo.data.builders as builders

    monkeypatch.setattr(builders, "CHUNK_INTERACTIONS", 15_000)
    config = PrepareConfig(template="open", out=str(tmp_path / "p"),
                           max_examples_per_split={"train": 10, "valid": 5, "test": 300})  # fmt: skip
    out = prepare(config)
    assert pq.ParquetFile(out / "timelines.parquet").num_row_groups == 7
    reads: list[int] = []
    read_row_group = pq.ParquetFile.read_row_group

    def counted(self, group, *args, **kwargs):
        if kwargs.get("columns") == ["items", "times"]:
            reads.append(group)
        return read_row_group(self, group, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    contexts = {}
    for kept in (1, 100):
        monkeypatch.setattr(ConsumedItems, "CACHED_GROUPS", kept)
        reads.clear()
        path = tmp_path / f"kept-{kept}.json"
        args = ["evaluate", "--model", "popularity", "--data", str(out), "--catalog",
                "--no-progress", "--resamples", "10", "--out", str(path)]  # fmt: skip
        assert main(args) == 0
        assert len(reads) == len(set(reads)) <= 7, reads
        contexts[kept] = json.loads(path.read_text())["contexts"]
    assert len(contexts[1]) == 300
    in_file_order = [ex.context_id for ex in load_split(out, "test")]
    assert [c["context_id"] for c in contexts[1]] == in_file_order
    assert contexts[1] == contexts[100]
