"""The evaluation runner, results files, baselines and `setdpo evaluate` / `setdpo compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from setdpo.cli import main
from setdpo.data import load_items, load_split
from setdpo.errors import InputError
from setdpo.evaluation.compare import compare
from setdpo.evaluation.evaluate import EvalConfig, evaluate
from setdpo.evaluation.metrics import compute_metrics
from setdpo.evaluation.results import load_results, write_json_atomic


@pytest.fixture(scope="module")
def popularity_results(ml100k_next_dir):
    return evaluate(EvalConfig(model="popularity", data=str(ml100k_next_dir), progress=False))


def test_popularity_scores_are_train_counts_and_ties_are_pessimistic(
    ml100k_next_dir, popularity_results
):
    counts = {it["item_id"]: it["train_count"] for it in load_items(ml100k_next_dir)}
    examples = load_split(ml100k_next_dir, "test")
    assert len(popularity_results["contexts"]) == len(examples) == 50
    n_ties = 0
    for ex, ctx in zip(examples, popularity_results["contexts"], strict=True):
        assert ctx["scores"] == [counts[i] for i in ex.meta["candidate_ids"]]
        # One positive: its rank is 1 + the negatives scoring at least as much (ties lose).
        pos = ctx["levels"].index(1)
        beaten_by = sum(
            s >= ctx["scores"][pos]
            for s, g in zip(ctx["scores"], ctx["levels"], strict=True)
            if g == 2
        )
        assert ctx["positive_ranks"] == [1 + beaten_by]
        n_ties += sum(s == ctx["scores"][pos] for s in ctx["scores"]) - 1
    assert n_ties > 0  # the tie rule was exercised on real counts


def test_summary_matches_per_context_values_and_recomputes(popularity_results):
    contexts = popularity_results["contexts"]
    hr1 = popularity_results["metrics"]["HR@1"]
    assert hr1["value"] == pytest.approx(np.mean([c["positive_ranks"][0] == 1 for c in contexts]))
    assert hr1["low"] <= hr1["value"] <= hr1["high"]
    mrr = popularity_results["metrics"]["MRR"]["value"]
    assert mrr == pytest.approx(np.mean([1 / c["positive_ranks"][0] for c in contexts]))
    # Anyone can recompute every value from the stored scores and levels.
    for ctx in contexts[:10]:
        again = compute_metrics(ctx["scores"], ctx["levels"], list(ctx["values"]), max_level=2)
        assert again == ctx["values"]
    protocol = popularity_results["protocol"]
    assert protocol["n_contexts"] == 50 and protocol["candidates_per_context"]["max"] == 20
    assert "pessimistic" in protocol["tie_rule"] and "hits/valid" in protocol["hr_at_1"]


def test_random_baseline_is_seeded_and_subset_stable(ml100k_next_dir):
    full = evaluate(EvalConfig(model="random", data=str(ml100k_next_dir), progress=False))
    again = evaluate(EvalConfig(model="random", data=str(ml100k_next_dir), progress=False))
    subset = evaluate(
        EvalConfig(model="random", data=str(ml100k_next_dir), limit=7, progress=False)
    )
    assert full["metrics"] == again["metrics"]
    by_id = {c["context_id"]: c["scores"] for c in full["contexts"]}
    assert len(subset["contexts"]) == 7
    assert all(by_id[c["context_id"]] == c["scores"] for c in subset["contexts"])
    # 19 negatives: the expected pairwise AUC of random scores is 0.5.
    assert abs(full["metrics"]["AUC"]["value"] - 0.5) < 0.12


def test_baselines_cannot_generate(ml100k_next_dir):
    with pytest.raises(InputError, match="cannot generate"):
        EvalConfig(model="popularity", data=str(ml100k_next_dir), constrained=True)
    with pytest.raises(InputError, match="unknown metric"):
        EvalConfig(model="random", data=str(ml100k_next_dir), metrics=["HR@1", "Foo@2"])


def test_cli_evaluate_and_compare(ml100k_next_dir, tmp_path, capsys):
    files = {}
    for model in ("random", "popularity"):
        files[model] = tmp_path / f"{model}.json"
        code = main(["evaluate", "--model", model, "--data", str(ml100k_next_dir),
                     "--out", str(files[model]), "--no-progress", "--resamples", "200"])  # fmt: skip
        assert code == 0
    data = json.loads(files["popularity"].read_text())
    assert set(data["metrics"]["NDCG@5"]) == {"value", "low", "high"}
    assert {"context_id", "scores", "levels", "positive_ranks"} <= set(data["contexts"][0])
    capsys.readouterr()
    assert main(["compare", str(files["random"]), str(files["popularity"])]) == 0
    table = capsys.readouterr().out
    assert "| popularity - random" in table
    hr5_row = next(line for line in table.splitlines() if line.startswith("| HR@5 "))
    assert hr5_row.rstrip(" |").endswith("*")  # popularity beats random clearly on HR@5
    # With --baseline the named file is the reference: the difference changes sign.
    assert main(["compare", str(files["random"]), str(files["popularity"]),
                 "--baseline", str(files["popularity"])]) == 0  # fmt: skip
    table = capsys.readouterr().out
    hr5_row = next(line for line in table.splitlines() if line.startswith("| HR@5 "))
    assert "| random - popularity" in table and "| -0." in hr5_row


def test_compare_refuses_different_contexts(ml100k_next_dir, popularity_results, tmp_path, capsys):
    full = tmp_path / "full.json"
    write_json_atomic(popularity_results, full)
    part = tmp_path / "part.json"
    small = evaluate(
        EvalConfig(model="random", data=str(ml100k_next_dir), limit=10, progress=False)
    )
    write_json_atomic(small, part)
    with pytest.raises(InputError, match="different contexts"):
        compare([full, part])
    assert main(["compare", str(full), str(part)]) == 2
    assert "different contexts" in capsys.readouterr().err


def test_paired_difference_of_a_run_with_itself_is_zero(popularity_results, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json_atomic(popularity_results, a)
    write_json_atomic(popularity_results, b)
    table = compare([a, b], n_resamples=100)
    hr1_row = next(line for line in table.splitlines() if line.startswith("| HR@1 "))
    assert "+0.000 [+0.000, +0.000]" in hr1_row and not hr1_row.rstrip(" |").endswith("*")


def test_load_results_names_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"metrics": {}}')
    with pytest.raises(InputError, match="no 'protocol' key"):
        load_results(bad)
    with pytest.raises(InputError, match="no such results file"):
        load_results(tmp_path / "missing.json")


def test_graded_relevance_is_relative_to_each_contexts_lowest_level():
    """levels-mode data numbers levels densely per context: a {1, 2} context is binary
    even when another context of the split has levels 1..4."""
    from setdpo.data import PreferenceExample
    from setdpo.evaluation.evaluate import rank_contexts

    def example(cid: str, levels: list[int]) -> PreferenceExample:
        titles = [f"{cid} title {i}" for i in range(len(levels))]
        return PreferenceExample(cid, "u", ["h"], "prompt", titles, levels)

    binary = example("a", [1] + [2] * 19)
    graded = example("b", [1, 2, 3] + [4] * 17)
    scores = [np.arange(20, 0, -1.0), np.arange(20, 0, -1.0)]
    scores[0][0] = 4.5  # the positive ranks 16th of 20
    a, b = rank_contexts([binary, graded], scores, ["NDCG@20"])
    assert a["values"]["NDCG@20"] == pytest.approx(1 / np.log2(17))
    # Ranked in level order: the ideal ranking, whatever the other context holds.
    assert b["values"]["NDCG@20"] == pytest.approx(1.0)
