"""`setdpo data audit`: each problem a prepared directory can have is found and counted;
`prepare` refuses to write data that fails it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import setdpo.data.builders as builders
from setdpo.cli import main
from setdpo.data import PrepareConfig, load_items, load_split, prepare
from setdpo.data.audit import AuditError, audit
from setdpo.data.io import TIMELINES, load_json, write_examples
from setdpo.data.sequences import Split

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory) -> Path:
    """ML-100K next-k (k=3), 300 examples a split: prepared (and so audited) by setdpo."""
    out = tmp_path_factory.mktemp("audit") / "clean"
    return prepare(PrepareConfig(mode="next-k", k=3, out=str(out), max_examples=300))


def found(folder: Path) -> dict[str, int | None]:
    return {c.name: None if c.checked is None else c.found for c in audit(folder)}


def test_clean_directory_passes_and_prints_the_table(clean_dir, capsys):
    assert main(["data", "audit", str(clean_dir)]) == 0
    printed = capsys.readouterr().out
    assert "window_crosses_split" in printed and printed.rstrip().endswith("no findings")
    assert found(clean_dir) == dict.fromkeys(found(clean_dir), 0)
    assert load_json(clean_dir, "stats.json")["audit"] == found(clean_dir)


def corrupted(clean: Path, out: Path) -> Path:
    """A copy of `clean` with one of each problem, each in a different example."""
    splits = {s: load_split(clean, s) for s in SPLITS}
    train, test = splits["train"], splits["test"]
    ids = {it["title"]: it["item_id"] for it in load_items(clean)}
    leaked = test[0]  # a test example copied into train: its window is past the valid cut,
    train.append(leaked)  # and its positives become training positives of the same user
    ex = train[0]  # a negative replaced by a history item
    at = ex.levels.index(2)
    ex.candidates[at] = ex.history[0]
    ex.meta["candidate_ids"][at] = ids[ex.history[0]]
    ex = train[1]  # two candidates with one item id
    first, second = [i for i, g in enumerate(ex.levels) if g == 2][:2]
    ex.meta["candidate_ids"][second] = ex.meta["candidate_ids"][first]
    ex = train[2]  # a positive swapped with a sampled negative: not in the user's window
    pos, neg = ex.levels.index(1), ex.levels.index(2)
    ex.levels[pos], ex.levels[neg] = 2, 1
    ex = train[3]  # the history newest first: the same items, not in the timeline's order
    ex.history.reverse()
    write_examples(
        out,
        splits,
        load_items(clean),
        load_json(clean, "stats.json"),
        load_json(clean, "config.json"),
    )
    shutil.copy(clean / TIMELINES, out / TIMELINES)
    return out


def test_each_problem_is_found_once(clean_dir, tmp_path, capsys):
    bad = corrupted(clean_dir, tmp_path / "bad")
    assert found(bad) == {
        "window_crosses_split": 1,  # the copied test example, now in train
        "eval_positive_in_train": 1,  # the original test example
        "candidate_in_history": 1,
        "duplicate_candidates": 1,
        "positive_outside_timeline": 1,
        "history_not_before_target": 1,
        "global_time_cut": 1,  # the copied test example again: a training target that late
    }
    capsys.readouterr()
    assert main(["data", "audit", str(bad)]) == 1
    table = capsys.readouterr().out
    leaked = load_split(clean_dir, "test")[0].context_id
    assert f"train {leaked}" in table
    assert "7 finding(s)" in table


def test_prepare_refuses_data_that_fails_the_audit(tmp_path, monkeypatch):
    """Training made of the windows the split drops (first target before the valid cut,
    a later one at or after it: what the old rule kept): prepare stops, writes nothing."""
    real = builders.chrono_split

    def straddling_train(first, last, config) -> Split:
        split = real(first, last, config)
        cut = split.cuts["valid"]
        train = np.flatnonzero((first < cut) & (last >= cut))
        return Split({**split.index, "train": train}, split.dropped, split.cuts, split.training)

    monkeypatch.setattr(builders, "chrono_split", straddling_train)
    out = tmp_path / "leaky"
    config = PrepareConfig(
        mode="next-k", k=3, out=str(out), max_examples_per_split={"valid": 50, "test": 50}
    )
    with pytest.raises(AuditError, match=r"window_crosses_split +307 +207\b"):
        prepare(config)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_leave_last_out_windows_are_audited(tmp_path):
    config = PrepareConfig(mode="next-k", k=3, split="leave-last-out", out=str(tmp_path / "loo"),
                           max_examples_per_split={"train": 300})  # fmt: skip
    stats = load_json(prepare(config), "stats.json")
    assert set(stats["audit"].values()) == {0} and stats["split_cuts"] is None
    sizes = {s: stats["splits"][s]["examples"] for s in SPLITS}
    assert sizes == {"train": 300, "valid": 943, "test": 943}
    # Per user: test = the last window, valid = the latest one ending before it; the
    # 2 x (k - 1) windows overlapping them are dropped, as counted.
    dropped = stats["dropped_contexts"]
    assert dropped["window_crosses_valid_cut"] == dropped["window_crosses_test_cut"] == 2 * 943


def test_imported_sets_get_the_checks_they_can(tmp_path, capsys):
    records = [{"historyList": "A::B::C", "itemList": ["D", "E", "A"], "trueSelection": "D"}]
    path = tmp_path / "ml-train.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "imported"
    assert (
        main(["data", "import", "--format", "llara", "--train", str(path), "--out", str(out)]) == 0
    )
    checks = found(out)
    assert checks["window_crosses_split"] is None and checks["positive_outside_timeline"] is None
    assert checks["candidate_in_history"] == 1  # "A" is in the history and a candidate
    capsys.readouterr()
    assert main(["data", "audit", str(out)]) == 1
    assert "not checked: no timelines.parquet" in capsys.readouterr().out
