"""Ranking metrics: pure functions of the candidates' levels in rank order, and a registry;
generation metrics: functions of the level an answer names, with their denominators.

The protocol (also written into every results file by `protocol_notes`):

- **Ranking.** Candidates are sorted by score, highest first. Ties are broken
  deterministically and *pessimistically*: among equal scores the candidate with the
  larger level (the less preferred one) ranks first, then the lower candidate index. A
  positive tied with a negative therefore always ranks below it, so ties never help.
  That suits model scores, which rarely tie; count-based baselines (popularity) tie often
  and break their ties at random in their scores (`setdpo.evaluation.baselines`), so the
  rule then only orders exactly equal floats, which do not occur.
- **Positives** are the level-1 candidates. Level 0 marks padding and is dropped.
- **HR@K** = 1 if at least one positive is among the top K (with several positives, one
  is enough). **MRR** = 1 / rank of the first positive. **Recall@K** = positives in the
  top K / number of positives.
- **NDCG@K** uses graded relevance ``rel = max_level - level`` (binary levels: positive 1,
  negative 0; levels 1..4: relevance 3, 2, 1, 0), gain ``2**rel - 1`` and discount
  ``1 / log2(rank + 1)``; the ideal DCG sorts the context's own gains. The evaluation
  runner passes each context's own lowest level as ``max_level`` (it gets relevance 0),
  since prepared data numbers levels densely per context.
- **AUC** (the DMPO protocol) = fraction of (positive, non-positive) pairs in which the
  positive ranks higher; under the tie rule a tie counts as a loss.

A metric is a function ``fn(ranked_levels, k, max_level) -> float`` where
``ranked_levels`` is an int array [n] of the real candidates' levels, best-ranked first,
and ``k`` the cut-off (None for none). `register_metric` adds metrics defined anywhere;
a name ``"FAMILY@K"`` looks up ``FAMILY`` (case-insensitive) and passes ``K``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

MetricFn = Callable[[np.ndarray, int | None, int], float]

_METRICS: dict[str, tuple[str, MetricFn]] = {}

DEFAULT_METRICS = ["HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "AUC"]
CATALOG_METRICS = ["NDCG@5", "NDCG@15", "NDCG@20", "Recall@20"]

TIE_RULE = (
    "pessimistic: equal scores rank the larger level (less preferred) first, then the lower "
    "candidate index; a positive tied with a negative ranks below it (count-based baselines "
    "break ties at random in their scores first: see 'scoring')"
)


def register_metric(name: str, fn: MetricFn | None = None):
    """Register ``fn`` under ``name`` (usable as ``name`` or ``name@K``); works as a decorator.

    Registering an existing name replaces it, so a user can redefine a metric on purpose.
    """
    if "@" in name or not name.strip():
        raise ValueError(f"metric family name {name!r} must be non-empty and contain no '@'")

    def add(f: MetricFn) -> MetricFn:
        _METRICS[name.lower()] = (name, f)
        return f

    return add(fn) if fn is not None else add


def registered_metrics() -> list[str]:
    """Names of the registered metric families, as registered."""
    return [display for display, _ in _METRICS.values()]


def parse_metric_name(name: str) -> tuple[MetricFn, int | None]:
    """``"NDCG@10"`` -> (the NDCG function, 10); ``"MRR"`` -> (the MRR function, None)."""
    family, _, cutoff = name.partition("@")
    entry = _METRICS.get(family.strip().lower())
    if entry is None:
        raise ValueError(f"unknown metric {name!r}; registered: {', '.join(registered_metrics())}")
    if not cutoff:
        return entry[1], None
    if not cutoff.isdigit() or int(cutoff) < 1:
        raise ValueError(f"metric {name!r}: the cut-off after '@' must be a positive integer")
    return entry[1], int(cutoff)


def rank_order(scores: Sequence[float], levels: Sequence[int]) -> np.ndarray:
    """Indices of the real (level > 0) candidates, best first, under the pessimistic tie rule.

    Args:
        scores: [n] candidate scores (higher is better); NaN is rejected.
        levels: [n] candidate levels, 0 = padding.
    """
    scores = np.asarray(scores, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.int64)
    if scores.shape != levels.shape or scores.ndim != 1:
        raise ValueError(
            f"scores {scores.shape} and levels {levels.shape} must be equal 1-D shapes"
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; cannot rank")
    real = np.flatnonzero(levels > 0)
    # np.lexsort sorts by the last key first: score descending, then level descending, then index.
    order = np.lexsort((real, -levels[real], -scores[real]))
    return real[order]


def candidate_ranks(scores: Sequence[float], levels: Sequence[int]) -> np.ndarray:
    """1-based rank of each candidate [n] (0 for padding), from `rank_order`."""
    order = rank_order(scores, levels)
    ranks = np.zeros(len(levels), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def positive_ranks(scores: Sequence[float], levels: Sequence[int]) -> list[int]:
    """Sorted 1-based ranks of the positive (level-1) candidates."""
    ranks = candidate_ranks(scores, levels)
    return sorted(int(r) for r in ranks[np.asarray(levels) == 1])


def ranked_levels(scores: Sequence[float], levels: Sequence[int]) -> np.ndarray:
    """Levels of the real candidates in rank order [n_real]: the input of every metric."""
    return np.asarray(levels, dtype=np.int64)[rank_order(scores, levels)]


def compute_metrics(
    scores: Sequence[float], levels: Sequence[int], names: Sequence[str], max_level: int
) -> dict[str, float]:
    """Every metric in ``names`` for one context, e.g. ``{"HR@1": 0.0, "MRR": 0.5}``."""
    ranked = ranked_levels(scores, levels)
    if not (ranked == 1).any():
        raise ValueError("a context needs at least one level-1 (positive) candidate")
    out = {}
    for name in names:
        fn, k = parse_metric_name(name)
        out[name] = float(fn(ranked, k, max_level))
    return out


@register_metric("HR")
def hit_ratio(ranked: np.ndarray, k: int | None, max_level: int) -> float:
    """1 if any positive is in the top k."""
    return float((ranked[:k] == 1).any())


@register_metric("MRR")
def reciprocal_rank(ranked: np.ndarray, k: int | None, max_level: int) -> float:
    """1 / rank of the first positive (0 if it lies beyond k)."""
    first = int(np.flatnonzero(ranked == 1)[0]) + 1
    return 0.0 if k is not None and first > k else 1.0 / first


@register_metric("Recall")
def recall(ranked: np.ndarray, k: int | None, max_level: int) -> float:
    """Positives in the top k / all positives."""
    return float((ranked[:k] == 1).sum() / (ranked == 1).sum())


@register_metric("NDCG")
def ndcg(ranked: np.ndarray, k: int | None, max_level: int) -> float:
    """Graded NDCG: gain 2**(max_level - level) - 1, discount 1/log2(rank + 1)."""
    if ranked.max(initial=0) > max_level:
        raise ValueError(f"level {ranked.max()} exceeds max_level {max_level}")
    gains = np.exp2(max_level - ranked) - 1.0
    discounts = 1.0 / np.log2(np.arange(2, len(ranked) + 2))
    dcg = float(gains[:k] @ discounts[: len(gains[:k])])
    ideal_gains = np.sort(gains)[::-1][:k]
    ideal = float(ideal_gains @ discounts[: len(ideal_gains)])
    return dcg / ideal if ideal > 0 else 0.0


@register_metric("AUC")
def pairwise_auc(ranked: np.ndarray, k: int | None, max_level: int) -> float:
    """Fraction of (positive, non-positive) pairs where the positive ranks higher (k ignored)."""
    positive = ranked == 1
    n_neg = int((~positive).sum())
    if n_neg == 0:
        raise ValueError("AUC needs at least one non-positive candidate in every context")
    # For each positive, the non-positives ranked below it.
    negatives_below = n_neg - np.cumsum(~positive)
    return float(negatives_below[positive].sum() / (positive.sum() * n_neg))


# --- generation ---------------------------------------------------------------------------

# A generation metric: fn(level of the candidate the answer names, None if none) -> float.
GenerationFn = Callable[[int | None], float]


@dataclass(frozen=True)
class GenerationMetric:
    """A per-context value of a generated answer, and the per-context column its summary
    divides by (None: the number of contexts)."""

    fn: GenerationFn
    denominator: str | None = None


GENERATION_METRICS: dict[str, GenerationMetric] = {}


def register_generation_metric(
    name: str, fn: GenerationFn, denominator: str | None = None
) -> GenerationFn:
    """Register a generation metric; its summary is ``sum(values) / sum(denominator column)``
    over contexts (the denominator another registered generation metric)."""
    if denominator is not None and denominator not in GENERATION_METRICS:
        raise ValueError(f"{name}: denominator {denominator!r} is not a generation metric")
    GENERATION_METRICS[name] = GenerationMetric(fn, denominator)
    return fn


register_generation_metric("ValidRatio", lambda level: float(level is not None))
register_generation_metric("GenHR@1", lambda level: float(level == 1))
# hits among valid answers: the same per-context value, divided by the valid answers
register_generation_metric("GenHR@1/valid", lambda level: float(level == 1), "ValidRatio")


def answer_values(matched_level: int | None) -> dict[str, float]:
    """Every generation metric of one answer naming a candidate of ``matched_level``."""
    return {name: metric.fn(matched_level) for name, metric in GENERATION_METRICS.items()}


def denominator_of(name: str) -> str | None:
    """The per-context column a metric's summary divides by (None: a plain mean)."""
    metric = GENERATION_METRICS.get(name)
    return None if metric is None else metric.denominator


def protocol_notes() -> dict[str, str]:
    """The conventions every results file states."""
    return {
        "ranking": "candidates sorted by score, highest first",
        "tie_rule": TIE_RULE,
        "positives": "level-1 candidates; HR@K = 1 if at least one positive is in the top K",
        "ndcg": "graded: relevance = (the context's lowest level) - level, gain 2**rel - 1, "
        "discount 1/log2(rank+1)",
        "mrr": "1 / rank of the first positive",
        "auc": "fraction of (positive, non-positive) pairs ranked correctly; ties count as losses",
        "intervals": "95% percentile bootstrap over contexts",
    }
