"""The evaluation runner, results files, baselines and `setdpo evaluate` / `setdpo compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from setdpo.cli import main
from setdpo.data import load_items, load_split
from setdpo.errors import InputError
from setdpo.evaluation.baselines import PopularityScorer, RandomScorer
from setdpo.evaluation.compare import compare
from setdpo.evaluation.evaluate import EvalConfig, evaluate
from setdpo.evaluation.metrics import compute_metrics, positive_ranks
from setdpo.evaluation.results import load_results


@pytest.fixture(scope="module")
def popularity_results(ml100k_next_dir):
    return evaluate(EvalConfig(model="popularity", data=str(ml100k_next_dir), progress=False))


def test_popularity_scores_are_train_counts_with_a_random_tie_break(
    ml100k_next_dir, popularity_results
):
    counts = {it["item_id"]: it["train_count"] for it in load_items(ml100k_next_dir)}
    examples = load_split(ml100k_next_dir, "test")
    assert len(popularity_results.to_dict()["contexts"]) == len(examples) == 50
    n_ties = 0
    for ex, ctx in zip(examples, popularity_results.to_dict()["contexts"], strict=True):
        own = [counts[i] for i in ex.meta["candidate_ids"]]
        assert np.floor(ctx["scores"]).tolist() == own  # count + a fraction in [0, 1)
        # One positive: more-counted negatives rank above it, equally counted ones may or not.
        pos = ctx["levels"].index(1)
        negatives = [c for c, g in zip(own, ctx["levels"], strict=True) if g == 2]
        above = sum(c > own[pos] for c in negatives)
        tied = sum(c == own[pos] for c in negatives)
        assert 1 + above <= ctx["positive_ranks"][0] <= 1 + above + tied
        n_ties += tied
    assert n_ties > 0  # the tie-break was exercised on real counts
    assert "tie-break" in popularity_results.to_dict()["protocol"]["scoring"]


def test_popularity_breaks_ties_uniformly_at_random(ml100k_next_dir):
    """Over seeds, popularity's HR@1 is its expectation under random tie-breaking: a
    positive tied with t negatives at the top count is first with probability 1/(1+t).
    The pessimistic rule alone (the old behaviour) gives every such context 0."""
    examples = load_split(ml100k_next_dir, "test")
    # Every count equal: the positive's rank is uniform on 1..20, not always 20.
    flat = [dict(it, train_count=7) for it in load_items(ml100k_next_dir)]
    ranks = [positive_ranks(s, ex.levels)[0] for ex, s in
             zip(examples, PopularityScorer(flat).score(examples), strict=True)]  # fmt: skip
    assert 1 < len(set(ranks)) and np.mean(ranks) == pytest.approx(10.5, abs=2.5)
    # Counts in tens, as a smaller training split gives: ties at the top become common.
    items = [dict(it, train_count=it["train_count"] // 10) for it in load_items(ml100k_next_dir)]
    by_id = {it["item_id"]: it["train_count"] for it in items}
    expected, pessimistic = [], []
    for ex in examples:
        c = np.array([by_id[i] for i in ex.meta["candidate_ids"]])
        pos = ex.levels.index(1)
        neg = np.delete(c, pos)
        first = not (neg > c[pos]).any()
        expected.append(first / (1 + (neg == c[pos]).sum()))
        pessimistic.append(float(first and not (neg == c[pos]).any()))
    assert np.mean(expected) > np.mean(pessimistic) + 0.01  # ties at the top occur here
    hits = [
        positive_ranks(s, ex.levels)[0] == 1
        for seed in range(200)
        for ex, s in zip(examples, PopularityScorer(items, seed).score(examples), strict=True)
    ]
    # 10,000 Bernoulli draws: standard error <= 0.005.
    assert np.mean(hits) == pytest.approx(np.mean(expected), abs=0.02)


def test_popularity_tie_break_is_seeded_and_subset_stable(ml100k_next_dir):
    items = load_items(ml100k_next_dir)
    examples = load_split(ml100k_next_dir, "test")
    a, b = PopularityScorer(items, 0).score(examples), PopularityScorer(items, 0).score(examples)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert all((x == y).all() for x, y in zip(a[5:9], PopularityScorer(items, 0).score(examples[5:9]), strict=True))  # fmt: skip
    other = PopularityScorer(items, 1).score(examples)
    assert all((np.floor(x) == np.floor(y)).all() for x, y in zip(a, other, strict=True))
    assert any((x != y).any() for x, y in zip(a, other, strict=True))
    # Not the random baseline's draws for the same seed and context.
    rand = RandomScorer(0).score(examples)
    assert not any(np.allclose(x % 1, r) for x, r in zip(a, rand, strict=True))
    with pytest.raises(InputError, match="train_count 2.5"):
        PopularityScorer([{"item_id": "1", "title": "A", "train_count": 2.5}])


def test_summary_matches_per_context_values_and_recomputes(popularity_results):
    contexts = popularity_results.to_dict()["contexts"]
    hr1 = popularity_results.to_dict()["metrics"]["HR@1"]
    assert hr1["value"] == pytest.approx(np.mean([c["positive_ranks"][0] == 1 for c in contexts]))
    assert hr1["low"] <= hr1["value"] <= hr1["high"]
    mrr = popularity_results.to_dict()["metrics"]["MRR"]["value"]
    assert mrr == pytest.approx(np.mean([1 / c["positive_ranks"][0] for c in contexts]))
    # Anyone can recompute every value from the stored scores and levels.
    for ctx in contexts[:10]:
        again = compute_metrics(ctx["scores"], ctx["levels"], list(ctx["values"]), max_level=2)
        assert again == ctx["values"]
    protocol = popularity_results.to_dict()["protocol"]
    assert protocol["n_contexts"] == 50 and protocol["candidates_per_context"]["max"] == 20
    assert "pessimistic" in protocol["tie_rule"] and "hits/valid" in protocol["hr_at_1"]
    assert "at random" in protocol["tie_rule"]


def test_random_baseline_is_seeded_and_subset_stable(ml100k_next_dir):
    config = EvalConfig(model="random", data=str(ml100k_next_dir), progress=False)
    full, again = evaluate(config).to_dict(), evaluate(config).to_dict()
    subset = evaluate(
        EvalConfig(model="random", data=str(ml100k_next_dir), limit=7, progress=False)
    ).to_dict()
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
    popularity_results.write(full)
    part = tmp_path / "part.json"
    small = evaluate(
        EvalConfig(model="random", data=str(ml100k_next_dir), limit=10, progress=False)
    )
    small.write(part)
    with pytest.raises(InputError, match="different contexts"):
        compare([full, part])
    assert main(["compare", str(full), str(part)]) == 2
    assert "different contexts" in capsys.readouterr().err


def test_paired_difference_of_a_run_with_itself_is_zero(popularity_results, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    popularity_results.write(a)
    popularity_results.write(b)
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
    a, b = (c.to_dict() for c in rank_contexts([binary, graded], scores, ["NDCG@20"]))
    assert a["values"]["NDCG@20"] == pytest.approx(1 / np.log2(17))
    # Ranked in level order: the ideal ranking, whatever the other context holds.
    assert b["values"]["NDCG@20"] == pytest.approx(1.0)


def test_results_are_typed_and_round_trip_through_the_file(popularity_results, tmp_path):
    from setdpo.evaluation.bootstrap import Interval
    from setdpo.evaluation.results import ContextResult

    path = popularity_results.write(tmp_path / "r.json")
    again = load_results(path)
    assert isinstance(again.metrics["HR@1"], Interval)
    assert isinstance(again.contexts[0], ContextResult)
    assert again.metrics == popularity_results.metrics
    assert again.contexts == popularity_results.contexts
    assert again.to_dict() == json.loads(path.read_text())
