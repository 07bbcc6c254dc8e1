"""Split protocols (`setdpo.data.protocols`): leave-last-out (leave-one-out) on ML-100K
against a brute-force reference computed from the shipped `.inter` file with pandas (never
through setdpo), the audit's statement of what each protocol guarantees, and the refused
combinations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import setdpo.data.sequences as sequences
from setdpo.cli import main
from setdpo.data import PrepareConfig, load_items, prepare
from setdpo.data.audit import AuditError, audit, describe_protocol
from setdpo.data.io import load_json
from setdpo.data.protocols import SPLIT_PROTOCOLS, split_protocol
from setdpo.data.sequences import Split
from setdpo.data.store import read_table
from setdpo.errors import InputError

SPLITS = ("train", "valid", "test")
INTER = "dataset_example/ml-100k/ml-100k.inter"
WIDTHS = {"next": 1, "next-k": 3}  # mode -> target window (k = 3)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """ML-100K as shipped, sorted per user by time (equal times keep file order)."""
    path = Path(importlib.util.find_spec("recbole").submodule_search_locations[0]) / INTER
    frame = pd.read_csv(path, sep="\t", dtype=str, quoting=3)
    frame.columns = ["user", "item", "rating", "time"]
    frame["time"] = frame["time"].astype(float)
    frame["line"] = np.arange(len(frame))
    return frame.sort_values(["user", "time", "line"], kind="stable").reset_index(drop=True)


def reference(raw: pd.DataFrame, width: int, min_history: int = 3, window: int = 10) -> dict:
    """Leave-one-out by hand. Per user with n interactions (positions 0..n-1): test targets
    the last `width`, valid the `width` before them, train every window of `width` that ends
    before the valid window starts; each with at least `min_history` items before it and its
    history the last `window` of them. {split: {context id: (user, targets, history, time,
    last target's time)}}, and per item the interactions before each user's valid target."""
    out: dict[str, dict] = {split: {} for split in SPLITS}
    counts: dict[str, int] = {}
    for user, group in raw.groupby("user", sort=False):
        items, times = group["item"].tolist(), group["time"].tolist()
        n = len(items)
        valid = n - 2 * width
        starts = {"test": [n - width], "valid": [valid], "train": range(valid - width + 1)}
        for split, positions in starts.items():
            for s in positions:
                if s >= min_history:
                    history = items[max(0, s - window) : s]
                    target = (user, items[s : s + width], history, times[s], times[s + width - 1])
                    out[split][f"{user}:{s}"] = target
        for item in items[:valid]:
            counts[item] = counts.get(item, 0) + 1
    return {"splits": out, "train_count": counts}


@pytest.fixture(scope="module")
def loo_dirs(tmp_path_factory) -> dict[str, Path]:
    """ML-100K, every context, `--split leave-one-out` (the alias) in `next` and `next-k`."""
    root = tmp_path_factory.mktemp("loo")
    return {
        mode: prepare(PrepareConfig(split="leave-one-out", mode=mode, k=3, out=str(root / mode)))
        for mode in WIDTHS
    }


def prepared(folder: Path) -> dict:
    """The split tables as {split: {context id: (user, positives, history, time)}} in item ids,
    and whether each split is in first-target time order."""
    ids = [item["item_id"] for item in load_items(folder)]
    out, ordered = {}, {}
    for split in SPLITS:
        table = read_table(folder, split).to_pydict()
        rows = zip(
            table["context_id"],
            table["user"],
            table["candidate_items"],
            table["levels"],
            table["history_items"],
            table["target_time"],
            strict=True,
        )
        out[split] = {
            context: (
                user,
                sorted(ids[i] for i, level in zip(cands, levels, strict=True) if level == 1),
                [ids[i] for i in history],
                time,
            )
            for context, user, cands, levels, history, time in rows
        }
        ordered[split] = table["target_time"] == sorted(table["target_time"])
    return {"splits": out, "ordered": ordered}


@pytest.mark.parametrize("mode", list(WIDTHS))
def test_leave_one_out_equals_the_brute_force_reference(loo_dirs, raw, mode):
    """Same users, same contexts, same targets, same histories and times per split; the
    training counts are the interactions before each user's valid target."""
    width = WIDTHS[mode]
    expected = reference(raw, width)
    found = prepared(loo_dirs[mode])
    for split in SPLITS:
        want = {
            context: (user, sorted(targets), history, time)
            for context, (user, targets, history, time, _) in expected["splits"][split].items()
        }
        assert found["splits"][split] == want, split
        assert found["ordered"][split], split  # first-target time order, as chrono
    users = raw["user"].nunique()
    assert {u for u, *_ in found["splits"]["test"].values()} == set(raw["user"])
    assert len(found["splits"]["valid"]) == len(found["splits"]["test"]) == users == 943
    counts = {it["item_id"]: it["train_count"] for it in load_items(loo_dirs[mode])}
    assert {i: c for i, c in counts.items() if c} == expected["train_count"]
    # the windows between train and valid, and valid and test: k - 1 per user, counted
    dropped = load_json(loo_dirs[mode], "stats.json")["dropped_contexts"]
    assert dropped["window_crosses_valid_cut"] == dropped["window_crosses_test_cut"]
    assert dropped["window_crosses_test_cut"] == (width - 1) * users


def test_the_audit_states_what_leave_one_out_guarantees_and_measures_the_rest(
    loo_dirs, raw, capsys
):
    """Every guarantee holds (no finding); `global_time_cut` is reported, not a finding:
    the training contexts whose last target is at or after the earliest valid or test
    target of any user, as many as the reference has."""
    folder = loo_dirs["next"]
    expected = reference(raw, 1)["splits"]
    earliest = min(t[3] for split in ("valid", "test") for t in expected[split].values())
    late = sum(t[4] >= earliest for t in expected["train"].values())
    stats = load_json(folder, "stats.json")
    assert stats["audit"] == dict.fromkeys(stats["audit"], 0) and len(stats["audit"]) == 6
    assert stats["audit_measured"] == {"global_time_cut": late} and late == 94446  # docs
    checks = {c.name: c for c in audit(folder)}
    assert checks["global_time_cut"].measured and checks["global_time_cut"].checked == 95285
    assert not checks["history_not_before_target"].measured
    capsys.readouterr()
    assert main(["data", "audit", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("split leave-last-out: per user: the last context is test")
    assert "not guaranteed: a global time cut" in printed and "Ji et al. 2023" in printed
    assert f"global_time_cut                95285  {late:>5}  measured" in printed
    assert printed.rstrip().endswith("no findings")
    assert load_json(folder, "config.json")["split"] == "leave-last-out"  # the alias resolved


def test_leave_one_out_ties_and_the_global_timeline(raw):
    """What docs/data.md says of ML-100K under leave-one-out: ratings within one second
    are ordered by file line, so 1,194 training targets (of 422 users) share the second of
    their user's valid target; and on average 41.3% of the training targets lie at or
    after a test target's time (Ji et al. 2023's leak; 0 under chrono)."""
    expected = reference(raw, 1)["splits"]
    valid_time = {user: time for user, _, _, time, _ in expected["valid"].values()}
    tied = [user for user, _, _, time, _ in expected["train"].values() if time == valid_time[user]]
    assert (len(tied), len(set(tied))) == (1194, 422)
    train = np.sort([t[4] for t in expected["train"].values()])
    test = np.array([t[3] for t in expected["test"].values()])
    later = len(train) - np.searchsorted(train, test, side="left")
    assert round(float((later / len(train)).mean()), 3) == 0.413
    assert (later > 0).all()  # every test target has later training targets


def test_chrono_guarantees_a_global_time_cut(tmp_path, capsys):
    folder = prepare(PrepareConfig(mode="next-k", k=3, out=str(tmp_path / "c"), max_examples=300))
    stats = load_json(folder, "stats.json")
    assert stats["audit"]["global_time_cut"] == 0 and stats["audit_measured"] == {}
    assert main(["data", "audit", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "split chrono: one time cut for all users" in printed
    assert "guaranteed (checked): a global time cut" in printed
    assert describe_protocol(folder)[0] == printed.splitlines()[0]


def test_a_leave_one_out_split_that_leaks_is_refused(tmp_path, monkeypatch):
    """Each user's test context moved into train: its window lies past the user's valid
    target. Prepare stops and writes nothing."""
    real = sequences.leave_last_out_split

    def test_in_train(seq, ctx) -> Split:
        split = real(seq, ctx)
        index = split.index | {
            "train": np.concatenate([split.index["train"], split.index["test"]]),
            "test": split.index["test"][:0],
        }
        return Split(index, split.dropped, None, split.training)

    monkeypatch.setattr(sequences, "leave_last_out_split", test_in_train)
    out = tmp_path / "leaky"
    with pytest.raises(AuditError, match=r"window_crosses_split +\d+ +943\b"):
        prepare(PrepareConfig(split="leave-one-out", out=str(out)))
    assert not out.exists()


def test_bad_combinations_are_refused_with_a_clear_error(tmp_path, capsys):
    with pytest.raises(InputError, match=r"split_ratios \[0.7, 0.2, 0.1\] are the shares of "
                       r"split 'chrono'; split 'leave-last-out' is decided per user"):  # fmt: skip
        PrepareConfig(split="leave-one-out", split_ratios=(0.7, 0.2, 0.1))
    with pytest.raises(InputError, match=r"split 'random' is not one of \['chrono', "
                       r"'leave-last-out'\] \(or an alias: leave-one-out, leave-last-one-out\)"):  # fmt: skip
        PrepareConfig(split="random")
    out = tmp_path / "x"
    argv = ["data", "prepare", "--split", "leave-one-out", "--split-ratios", "8", "1", "1"]
    assert main([*argv, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("setdpo: error: split_ratios [8.0, 1.0, 1.0]") and not out.exists()
    assert len(error.strip().splitlines()) == 1
    # every alias names one protocol; the shares stay chrono's default where they are unused
    for name, protocol in SPLIT_PROTOCOLS.items():
        for alias in protocol.aliases:
            assert split_protocol(alias) is protocol and PrepareConfig(split=alias).split == name
    config = json.loads(json.dumps(PrepareConfig(split="leave-one-out").__dict__))
    assert PrepareConfig(**config).split == "leave-last-out"  # config.json rebuilds it
