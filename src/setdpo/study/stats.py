"""Statistics of a seeded study: intervals that cover seeds and contexts, paired differences,
Holm's correction and the minimal detectable difference.

A study runs every cell (a setting and a model) under several seeds; each seed has its own
prepared data (its own test contexts and candidates), its own SFT run and its own preference
runs. A cell's value is the mean over seeds of the mean over that seed's contexts.

**Interval: a two-level bootstrap** (seeds, then contexts within each drawn seed). It is the
choice because both sources of variation are in it with the data at hand: an interval over
the seed means alone (a t-interval with S - 1 degrees of freedom) is exact under normality
but, with the 3 seeds a CPU study affords, has 2 degrees of freedom and a t quantile of 4.30,
too wide to tell anything apart; the contexts carry the information the seed means throw
away. What it does, for S seeds with context variance ``w`` of a seed's mean and a
between-seed variance ``tau^2`` of the true means: its variance is
``(1/S) [((2S-1)/S) w + ((S-1)/S) tau^2]`` against the true ``(1/S) (w + tau^2)``: it
counts the context noise a little more than once (wider) and the seed variation at
``(S-1)/S`` (narrower). `bootstrap_variance` states it; the tests check the resampling
against it.

**Paired differences** are taken per context within each seed (the same contexts,
candidates, SFT start and seed for both models), then bootstrapped the same way. Their
p-value is two-sided from the normal approximation with the bootstrap standard error
(smooth, where a bootstrap tail count would be coarse at Holm's small thresholds), and
**Holm's** step-down correction controls the family-wise error over all comparisons of a
study. The **minimal detectable difference** at 80% power and two-sided level 0.05 is
``(z_0.975 + z_0.8) * SE = 2.80 SE``: the true difference this design finds four times
in five, so that "not told apart" comes with a size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from setdpo.evaluation.bootstrap import Interval

# Bootstrap index matrices are built in blocks of at most this many entries.
_BLOCK_ENTRIES = 4_000_000
NORMAL = NormalDist()


def _as_seed_arrays(per_seed: Sequence[Sequence[float]]) -> list[np.ndarray]:
    arrays = [np.asarray(v, dtype=np.float64) for v in per_seed]
    if not arrays or any(a.ndim != 1 or len(a) == 0 for a in arrays):
        raise ValueError("need at least one seed, each with a non-empty 1-D array of contexts")
    return arrays


def seed_means(per_seed: Sequence[Sequence[float]]) -> np.ndarray:
    """[S] the mean over contexts of each seed."""
    return np.array([a.mean() for a in _as_seed_arrays(per_seed)])


def two_level_resamples(
    per_seed: Sequence[Sequence[float]], n_resamples: int = 2000, seed: int = 0
) -> np.ndarray:
    """[R] the statistic (mean over seeds of the mean over contexts) under R resamples that
    draw S seeds with replacement, then for each drawn seed its contexts with replacement."""
    arrays = _as_seed_arrays(per_seed)
    n_seeds = len(arrays)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))  # [R, S] seed per slot
    # Every (resample, slot) gets its own context resample of the seed it drew.
    slot_means = np.empty((n_resamples, n_seeds))
    for s, values in enumerate(arrays):
        rows, slots = np.nonzero(drawn == s)
        n = len(values)
        block = max(1, _BLOCK_ENTRIES // n)
        means = np.empty(len(rows))
        for start in range(0, len(rows), block):
            count = min(block, len(rows) - start)
            means[start : start + count] = values[rng.integers(0, n, size=(count, n))].mean(1)
        slot_means[rows, slots] = means
    return slot_means.mean(1)


def bootstrap_variance(per_seed: Sequence[Sequence[float]]) -> float:
    """The exact variance of `two_level_resamples`' statistic given the data (its limit as
    R grows): ``(1/S) [mean_s var_s / n_s + mean_s (m_s - mean m)^2]``, with ``var_s`` the
    contexts' variance (ddof 0) and ``m_s`` the mean of seed s."""
    arrays = _as_seed_arrays(per_seed)
    means = np.array([a.mean() for a in arrays])
    within = np.mean([a.var() / len(a) for a in arrays])
    between = np.mean((means - means.mean()) ** 2)
    return float((within + between) / len(arrays))


@dataclass(frozen=True)
class CellSummary:
    """A cell's value over seeds and contexts, its interval and the per-seed means."""

    interval: Interval
    se: float
    seed_values: list[float]
    n_contexts: list[int]

    def to_dict(self) -> dict:
        return {
            "interval": self.interval.to_dict(),
            "se": self.se,
            "seed_values": self.seed_values,
            "n_contexts": self.n_contexts,
        }


def summarize_cell(
    per_seed: Sequence[Sequence[float]],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CellSummary:
    """Mean over seeds of the per-seed context means, with its two-level bootstrap interval."""
    means = seed_means(per_seed)
    resampled = two_level_resamples(per_seed, n_resamples, seed)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha])
    return CellSummary(
        interval=Interval(float(means.mean()), float(low), float(high)),
        se=float(resampled.std(ddof=1)),
        seed_values=[float(m) for m in means],
        n_contexts=[len(v) for v in per_seed],
    )


def minimal_detectable_difference(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The true difference a two-sided test at level ``alpha`` with standard error ``se``
    detects with probability ``power``: ``(z_{1-alpha/2} + z_{power}) * se``."""
    return (NORMAL.inv_cdf(1.0 - alpha / 2.0) + NORMAL.inv_cdf(power)) * se


def normal_p_value(estimate: float, se: float) -> float:
    """Two-sided p-value of ``estimate`` against 0 with standard error ``se``."""
    if se <= 0:
        return 0.0 if estimate != 0 else 1.0
    return math.erfc(abs(estimate) / se / math.sqrt(2.0))  # = 2 (1 - Phi(z)), no underflow to 0


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: sorted ascending,
    the i-th (0-based) is multiplied by m - i, made non-decreasing, capped at 1."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class PairedSummary:
    """Model A - model B on the same contexts of each seed."""

    interval: Interval
    se: float
    p_value: float
    mdd: float
    seed_values: list[float]  # per-seed mean difference
    p_holm: float | None = None

    def significant(self, alpha: float = 0.05) -> bool:
        p = self.p_value if self.p_holm is None else self.p_holm
        return p < alpha

    def to_dict(self) -> dict:
        return {
            "interval": self.interval.to_dict(),
            "se": self.se,
            "p_value": self.p_value,
            "p_holm": self.p_holm,
            "mdd": self.mdd,
            "seed_values": self.seed_values,
        }


def paired_difference(
    per_seed_a: Sequence[Sequence[float]],
    per_seed_b: Sequence[Sequence[float]],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedSummary:
    """A - B: per-context differences within each seed (arrays in the same context order),
    summarised as a cell (`summarize_cell`), with p-value and minimal detectable difference."""
    a, b = _as_seed_arrays(per_seed_a), _as_seed_arrays(per_seed_b)
    if [len(x) for x in a] != [len(x) for x in b]:
        raise ValueError("paired runs need the same seeds and contexts")
    cell = summarize_cell([x - y for x, y in zip(a, b, strict=True)], n_resamples, confidence, seed)
    return PairedSummary(
        interval=cell.interval,
        se=cell.se,
        p_value=normal_p_value(cell.interval.value, cell.se),
        mdd=minimal_detectable_difference(cell.se),
        seed_values=cell.seed_values,
    )
