"""Percentile bootstrap over contexts: intervals for one run and paired differences of two.

A statistic is a ratio of sums over contexts, ``sum(values) / sum(denominators)``; with
no denominators it is the mean. That covers plain means (HR@1, NDCG@5) and ratios such
as generation HR@1 over valid answers only (hits / valid). Resampling draws contexts
with replacement; a paired difference reuses the same draws for both runs, which is
what makes it paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# Resampled index matrices are built in blocks of at most this many entries.
_BLOCK_ENTRIES = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval."""

    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _as_arrays(
    values: Sequence[float], denominators: Sequence[float] | None
) -> tuple[np.ndarray, np.ndarray]:
    num = np.asarray(values, dtype=np.float64)
    den = np.ones_like(num) if denominators is None else np.asarray(denominators, np.float64)
    if num.ndim != 1 or num.shape != den.shape or len(num) == 0:
        raise ValueError(f"need equal non-empty 1-D arrays, got {num.shape} and {den.shape}")
    return num, den


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """sum(num) / sum(den) along the last axis; 0 where the denominator sums to 0."""
    total = den.sum(-1)
    return np.divide(num.sum(-1), total, out=np.zeros_like(total), where=total != 0)


def _resampled_statistics(
    columns: list[tuple[np.ndarray, np.ndarray]], n_resamples: int, seed: int
) -> list[np.ndarray]:
    """For each (values, denominators) column: the statistic under the same resamples [R]."""
    n = len(columns[0][0])
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ENTRIES // n)
    stats: list[list[np.ndarray]] = [[] for _ in columns]
    for start in range(0, n_resamples, block):
        idx = rng.integers(0, n, size=(min(block, n_resamples - start), n))  # [r, n]
        for out, (num, den) in zip(stats, columns, strict=True):
            out.append(_ratio(num[idx], den[idx]))
    return [np.concatenate(s) for s in stats]


def _interval(point: float, resampled: np.ndarray, confidence: float) -> Interval:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha])
    return Interval(float(point), float(low), float(high))


def bootstrap_interval(
    values: Sequence[float],
    denominators: Sequence[float] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Point estimate ``sum(values)/sum(denominators)`` and its percentile bootstrap interval.

    Args:
        values: [N] per-context values.
        denominators: [N] per-context denominators; None means the mean of ``values``.
    """
    num, den = _as_arrays(values, denominators)
    (resampled,) = _resampled_statistics([(num, den)], n_resamples, seed)
    return _interval(float(_ratio(num, den)), resampled, confidence)


def paired_difference(
    values: Sequence[float],
    baseline_values: Sequence[float],
    denominators: Sequence[float] | None = None,
    baseline_denominators: Sequence[float] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Difference ``statistic(values) - statistic(baseline_values)`` over the same contexts.

    Both arrays are [N] in the same context order; each resample draws one set of
    contexts for both, so the interval reflects the per-context pairing.
    """
    a = _as_arrays(values, denominators)
    b = _as_arrays(baseline_values, baseline_denominators)
    if len(a[0]) != len(b[0]):
        raise ValueError(f"paired runs need the same contexts: {len(a[0])} vs {len(b[0])}")
    stat_a, stat_b = _resampled_statistics([a, b], n_resamples, seed)
    point = float(_ratio(*a) - _ratio(*b))
    return _interval(point, stat_a - stat_b, confidence)
