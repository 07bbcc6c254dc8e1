"""The study's statistics against independent computations: the two-level bootstrap's
variance against its closed form, Holm against its definition and a hand-worked example,
the minimal detectable difference against the normal quantiles and a power simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from setdpo.study.stats import (
    bootstrap_variance,
    holm,
    minimal_detectable_difference,
    normal_p_value,
    paired_difference,
    summarize_cell,
    two_level_resamples,
)


def seeds_of(rng: np.random.Generator, means: list[float], sizes: list[int], sd: float):
    return [rng.normal(m, sd, size=n) for m, n in zip(means, sizes, strict=True)]


def test_point_estimate_is_the_mean_of_seed_means() -> None:
    per_seed = [[1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0]]
    cell = summarize_cell(per_seed, n_resamples=200)
    # by hand: (0.5 + 0.75 + 0) / 3
    assert cell.interval.value == pytest.approx(1.25 / 3, abs=1e-12)
    assert cell.seed_values == [0.5, 0.75, 0.0]
    assert cell.n_contexts == [2, 4, 1]
    assert cell.interval.low <= cell.interval.value <= cell.interval.high


@pytest.mark.parametrize("means", [[0.4, 0.4, 0.4], [0.30, 0.45, 0.38]])
def test_two_level_bootstrap_variance_matches_its_closed_form(means: list[float]) -> None:
    """The resampling's variance equals (1/S)[mean_s var_s/n_s + mean_s (m_s - m)^2],
    derived by hand from the two-stage draw (law of total variance), within sampling error
    of 20,000 resamples (the variance estimate's relative sd is about 1%)."""
    rng = np.random.default_rng(3)
    per_seed = seeds_of(rng, means, [150, 220, 90], sd=0.3)
    resampled = two_level_resamples(per_seed, n_resamples=20_000, seed=5)
    s = len(per_seed)
    m = np.array([x.mean() for x in per_seed])
    by_hand = (np.mean([x.var() / len(x) for x in per_seed]) + np.mean((m - m.mean()) ** 2)) / s
    assert bootstrap_variance(per_seed) == pytest.approx(by_hand, rel=1e-12)
    assert resampled.var() == pytest.approx(by_hand, rel=0.05)
    assert resampled.mean() == pytest.approx(m.mean(), abs=3 * math.sqrt(by_hand / 20_000))


def test_one_seed_is_the_ordinary_context_bootstrap() -> None:
    values = np.random.default_rng(0).random(400)
    resampled = two_level_resamples([values], n_resamples=20_000, seed=1)
    assert resampled.var() == pytest.approx(values.var() / len(values), rel=0.05)


def test_paired_difference_pairs_contexts_within_seeds() -> None:
    rng = np.random.default_rng(1)
    base = [rng.random(300) for _ in range(3)]
    shifted = [b + 0.01 + rng.normal(0, 0.01, size=300) for b in base]
    diff = paired_difference(shifted, base, n_resamples=2000)
    assert diff.interval.value == pytest.approx(
        np.mean([(a - b).mean() for a, b in zip(shifted, base, strict=True)])
    )
    # the per-context noise (0.01) and not the spread of the values (0.29) sets the width
    assert diff.interval.high - diff.interval.low < 0.005
    assert diff.p_value < 1e-6
    assert diff.mdd == pytest.approx(2.8016 * diff.se, rel=1e-4)
    with pytest.raises(ValueError, match="same seeds and contexts"):
        paired_difference(shifted, [b[:-1] for b in base])


def test_mdd_and_p_value_use_the_normal_quantiles() -> None:
    # z_0.975 = 1.959964, z_0.8 = 0.841621 (tables)
    assert minimal_detectable_difference(1.0) == pytest.approx(2.801585, abs=1e-6)
    assert minimal_detectable_difference(0.01, alpha=0.01, power=0.9) == pytest.approx(
        0.01 * (2.575829 + 1.281552), abs=1e-8
    )
    assert normal_p_value(1.959964, 1.0) == pytest.approx(0.05, abs=1e-6)
    assert normal_p_value(0.0, 0.0) == 1.0
    assert 0 < normal_p_value(13.0, 1.0) == pytest.approx(1.2e-38, rel=0.05)  # not 0


def test_holm_on_a_hand_worked_example() -> None:
    # sorted: .005*4 = .02, .01*3 = .03, .03*2 = .06, .04*1 = .04 -> max so far .06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5]
    assert holm([0.04, 0.2]) == pytest.approx([0.08, 0.2])
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # .8 * 2 capped at 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_equals_its_definition(p: list[float]) -> None:
    """Holm (1979): p_adj(i) = max over j with p_j <= p_i of min(1, (m - rank_j) p_j),
    written here as that maximum over the sorted list (ties: any order gives the same)."""
    m = len(p)
    ordered = sorted(p)
    adjusted = holm(p)
    for i, value in enumerate(p):
        # ranks of the values <= p_i, taking the last position of p_i among its ties
        last = max(r for r, q in enumerate(ordered) if q <= value)
        expected = max(min(1.0, (m - r) * ordered[r]) for r in range(last + 1))
        assert adjusted[i] == pytest.approx(expected, abs=1e-12)
        assert adjusted[i] >= value - 1e-15


def test_a_difference_of_the_mdd_is_found_at_least_four_times_in_five() -> None:
    """Simulated studies (3 seeds x 200 contexts, no seed effect) with a true difference
    equal to the MDD the design reports: the Holm-free test at 0.05 rejects in >= 75% of 300
    studies (the two-level bootstrap counts context noise more than once here, so the
    expected power is about 0.86, not below 0.8)."""
    rng = np.random.default_rng(11)
    seeds, contexts, sd = 3, 200, 0.2
    # the MDD the design reports: 2.80 x the bootstrap SE, whose square is the closed form
    # with var_s = sd^2 and no seed spread: (1/S) ((2S-1)/S) sd^2/n in expectation
    mdd = minimal_detectable_difference(
        math.sqrt((2 * seeds - 1) / seeds * sd**2 / contexts / seeds)
    )
    rejected = 0
    for _ in range(300):
        per_seed = [rng.normal(mdd, sd, size=contexts) for _ in range(seeds)]
        result = paired_difference(
            per_seed, [np.zeros(contexts)] * seeds, n_resamples=300, seed=int(rng.integers(1 << 30))
        )
        rejected += result.p_value < 0.05
    assert rejected / 300 >= 0.75
