"""Ranking metrics against hand-computed values, and the metric registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from setdpo.evaluation.metrics import (
    DEFAULT_METRICS,
    candidate_ranks,
    compute_metrics,
    parse_metric_name,
    ranked_levels,
    register_metric,
)

ALL = ["HR@1", "HR@2", "HR@5", "MRR", "NDCG@5", "AUC", "Recall@2", "Recall@4"]


def test_single_positive_at_rank_three():
    # Sorted scores: 0.9 (neg), 0.7 (neg), 0.5 (pos), 0.1 (neg): the positive is 3rd.
    m = compute_metrics([0.5, 0.9, 0.1, 0.7], [1, 2, 2, 2], ALL, max_level=2)
    assert candidate_ranks([0.5, 0.9, 0.1, 0.7], [1, 2, 2, 2]).tolist() == [3, 1, 4, 2]
    assert m["HR@1"] == 0.0 and m["HR@2"] == 0.0 and m["HR@5"] == 1.0
    assert m["MRR"] == pytest.approx(1 / 3)
    # Binary NDCG: DCG = 1/log2(3+1) = 0.5, ideal DCG = 1.
    assert m["NDCG@5"] == pytest.approx(0.5)
    # The positive beats 1 of 3 negatives.
    assert m["AUC"] == pytest.approx(1 / 3)


def test_positive_first_gives_perfect_scores():
    m = compute_metrics([3.0, 1.0, 2.0], [1, 2, 2], DEFAULT_METRICS, max_level=2)
    assert all(m[name] == 1.0 for name in DEFAULT_METRICS)


def test_ties_never_favour_the_positive():
    # Everything tied: the positive goes below both negatives.
    m = compute_metrics([1.0, 1.0, 1.0], [1, 2, 2], ALL, max_level=2)
    assert m["HR@1"] == 0.0 and m["MRR"] == pytest.approx(1 / 3) and m["AUC"] == 0.0
    # A tie between negatives keeps index order; the tie with the positive is pessimistic.
    assert candidate_ranks([1.0, 1.0, 1.0], [2, 2, 1]).tolist() == [1, 2, 3]
    assert candidate_ranks([2.0, 1.0, 1.0], [2, 1, 2]).tolist() == [1, 3, 2]
    # A strictly higher positive still wins.
    assert candidate_ranks([1.0, 1.5, 1.0], [2, 1, 2]).tolist() == [2, 1, 3]


def test_ties_between_levels_rank_the_less_preferred_first():
    # Levels 1, 2, 3 all tied: 3 first, then 2, then 1.
    assert ranked_levels([0.0, 0.0, 0.0], [1, 2, 3]).tolist() == [3, 2, 1]


def test_several_positives():
    # Ranked levels: [2, 1, 2, 1, 2] -> positives at ranks 2 and 4.
    scores, levels = [0.9, 0.8, 0.7, 0.6, 0.5], [2, 1, 2, 1, 2]
    m = compute_metrics(scores, levels, ALL, max_level=2)
    assert m["HR@1"] == 0.0 and m["HR@2"] == 1.0  # one positive in the top K is enough
    assert m["MRR"] == pytest.approx(0.5)  # the first positive is 2nd
    assert m["Recall@2"] == pytest.approx(0.5) and m["Recall@4"] == 1.0
    # DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068; ideal = 1 + 1/log2(3) = 1.63093.
    assert m["NDCG@5"] == pytest.approx(1.0616063 / 1.6309298, rel=1e-6)
    # First positive beats 2 of 3 negatives, the second 1 of 3: 3 / 6.
    assert m["AUC"] == pytest.approx(0.5)


def test_graded_ndcg_by_hand():
    # Levels 1..3 with max_level 3: relevance 2, 1, 0 -> gains 3, 1, 0.
    # Ranked levels [2, 1, 3]: DCG = 1/log2(2) + 3/log2(3) = 1 + 1.892789 = 2.892789.
    # Ideal order [1, 2, 3]: 3/log2(2) + 1/log2(3) = 3.630930.
    m = compute_metrics([0.9, 0.5, 0.1], [2, 1, 3], ["NDCG@3", "NDCG@1", "HR@1"], max_level=3)
    assert m["NDCG@3"] == pytest.approx(2.892789 / 3.630930, rel=1e-6)
    assert m["NDCG@1"] == pytest.approx(1 / 3)  # gain 1 at rank 1 against the ideal 3
    assert m["HR@1"] == 0.0  # level 2 is not a positive


def test_binary_and_graded_agree_on_binary_levels():
    scores = np.random.default_rng(0).normal(size=8)
    levels = [1, 2, 2, 1, 2, 2, 2, 2]
    graded = compute_metrics(scores, levels, ["NDCG@5"], max_level=2)["NDCG@5"]
    pos = np.sort(candidate_ranks(scores, levels)[[0, 3]])
    dcg = sum(1 / math.log2(r + 1) for r in pos if r <= 5)
    assert graded == pytest.approx(dcg / (1 + 1 / math.log2(3)))


def test_positive_beyond_cutoff_scores_zero():
    m = compute_metrics([0.0, 5.0, 4.0], [1, 2, 2], ["NDCG@2", "HR@2", "MRR@2", "MRR"], 2)
    assert m["NDCG@2"] == 0.0 and m["HR@2"] == 0.0 and m["MRR@2"] == 0.0
    assert m["MRR"] == pytest.approx(1 / 3)


def test_padding_candidates_are_dropped():
    # The padding candidate has the highest score but level 0: it must not take rank 1.
    m = compute_metrics([9.0, 0.2, 0.1], [0, 1, 2], ["HR@1", "MRR"], max_level=2)
    assert m["HR@1"] == 1.0
    assert candidate_ranks([9.0, 0.2, 0.1], [0, 1, 2]).tolist() == [0, 1, 2]


def test_user_defined_metric_and_name_parsing():
    @register_metric("PrecisionTest")
    def precision(ranked, k, max_level):
        return float((ranked[:k] == 1).mean())

    m = compute_metrics([0.9, 0.8, 0.1], [1, 2, 1], ["precisiontest@2"], max_level=2)
    assert m["precisiontest@2"] == pytest.approx(0.5)
    assert parse_metric_name("ndcg@10")[1] == 10
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric_name("Bogus@3")
    with pytest.raises(ValueError, match="positive integer"):
        parse_metric_name("HR@0")


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([float("nan"), 1.0], [1, 2], ["HR@1"], 2)
    with pytest.raises(ValueError, match="positive"):
        compute_metrics([1.0, 2.0], [2, 2], ["HR@1"], 2)
    with pytest.raises(ValueError, match="non-positive"):
        compute_metrics([1.0, 2.0], [1, 1], ["AUC"], 2)


def test_generation_metrics_are_registered_with_their_denominator(monkeypatch) -> None:
    from setdpo.evaluation import metrics
    from setdpo.evaluation.results import ContextResult, summarize

    assert metrics.answer_values(None) == {"ValidRatio": 0.0, "GenHR@1": 0.0, "GenHR@1/valid": 0.0}
    assert metrics.answer_values(1) == {"ValidRatio": 1.0, "GenHR@1": 1.0, "GenHR@1/valid": 1.0}
    monkeypatch.setattr(metrics, "GENERATION_METRICS", dict(metrics.GENERATION_METRICS))
    metrics.register_generation_metric(
        "GenMiss/valid", lambda level: float(level == 2), "ValidRatio"
    )
    # three answers: a hit, a named negative, none valid -> 1 miss over 2 valid answers
    contexts = [
        ContextResult(str(i), metrics.answer_values(lv)) for i, lv in enumerate((1, 2, None))
    ]
    summary = summarize(contexts, ["GenHR@1", "GenHR@1/valid", "GenMiss/valid"], n_resamples=10)
    assert summary["GenHR@1"].value == pytest.approx(1 / 3)
    assert summary["GenHR@1/valid"].value == pytest.approx(1 / 2)
    assert summary["GenMiss/valid"].value == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="denominator 'Valid' is not a generation metric"):
        metrics.register_generation_metric("X", lambda level: 0.0, "Valid")
