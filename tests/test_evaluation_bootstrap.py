"""Bootstrap intervals and paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from setdpo.evaluation.bootstrap import bootstrap_interval, paired_difference


def hits(n: int, rate: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < rate).astype(float)


def test_interval_covers_point_and_shrinks_with_more_contexts():
    small = bootstrap_interval(hits(50, 0.2, 0), seed=1)
    large = bootstrap_interval(hits(2000, 0.2, 0), seed=1)
    for iv in (small, large):
        assert iv.low <= iv.value <= iv.high
    assert (large.high - large.low) < 0.5 * (small.high - small.low)
    # Binomial standard error at n=2000, p=0.2 is 0.0089: the 95% width is about 0.035.
    assert 0.02 < large.high - large.low < 0.05


def test_interval_is_seeded():
    values = hits(100, 0.3, 2)
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)


def test_ratio_statistic():
    # hits / valid: 2 hits over 3 valid answers.
    iv = bootstrap_interval([1, 0, 1, 0], denominators=[1, 1, 1, 0])
    assert iv.value == pytest.approx(2 / 3)
    assert 0.0 <= iv.low <= iv.value <= iv.high <= 1.0


def test_paired_difference_uses_the_same_resamples():
    a = np.random.default_rng(3).normal(size=200)
    # A constant shift per context: the paired interval has zero width; unpaired would not.
    diff = paired_difference(a + 0.1, a)
    assert diff.value == pytest.approx(0.1)
    assert diff.low == pytest.approx(0.1) and diff.high == pytest.approx(0.1)
    assert diff.excludes_zero()
    same = paired_difference(a, a)
    assert same.value == 0.0 and not same.excludes_zero()


def test_paired_difference_detects_a_real_gap_and_not_noise():
    base = hits(400, 0.05, 4)
    better = np.maximum(base, hits(400, 0.2, 5))
    assert paired_difference(better, base).excludes_zero()
    noise = paired_difference(hits(400, 0.2, 6), hits(400, 0.2, 7))
    assert noise.low < 0 < noise.high


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="same contexts"):
        paired_difference([1.0, 0.0], [1.0])
