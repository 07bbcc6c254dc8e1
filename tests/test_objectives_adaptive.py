"""DynamicPO and RecPO (setdpo.objectives_adaptive): hand-computed values from the authors'
equations, plain-Python brute-force references, identities and gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from setdpo import losses
from setdpo.losses import compute
from setdpo.objectives_adaptive import dynamicpo_selection, recpo_margins, top_cluster

F64 = torch.float64
seeds = st.integers(0, 2**31 - 1)


def softplus(x: float) -> float:
    """-log sigmoid(-x) in plain floats."""
    return math.log1p(math.exp(x))


def _one(name: str, rewards: list[float], levels: list[int], **options: float) -> float:
    pol = torch.tensor([rewards], dtype=F64)
    return compute(name, pol, None, torch.tensor([levels]), 1.0, **options).loss.item()


# --- DynamicPO --------------------------------------------------------------------------------
# Per positive p: boundary negatives B = {n : r_n >= r_p} (none: the top 3-means cluster of the
# negatives), discriminative D = N \ B (B = N: D = B); w = 1 + 0.5 tanh((d1 - d2 - 2) /
# (|d1| + |d2|)) with d1 = r_p - r_b, d2 = r_b - mean_D r; loss -log sigmoid(mean_B w (r_p - r_b)).


def _factor(d1: float, d2: float, margin: float = 2.0, alpha: float = 0.5) -> float:
    spread = abs(d1) + abs(d2)
    if spread == 0:
        return 1 - alpha if margin > 0 else 1.0
    return 1 + alpha * math.tanh((d1 - d2 - margin) / spread)


def test_dynamicpo_hand_computed():
    # r_p = 1; negatives 2, 0.5, -1: B = {2}, D = {0.5, -1} (mean -0.25);
    # d1 = 1 - 2 = -1, d2 = 2 + 0.25 = 2.25; w = 1 + 0.5 tanh(-5.25 / 3.25).
    w = 1 + 0.5 * math.tanh(-5.25 / 3.25)
    assert _one("dynamicpo", [1.0, 2.0, 0.5, -1.0], [1, 2, 2, 2]) == pytest.approx(
        softplus(w * 1.0), rel=1e-12
    )
    # Two boundary negatives 1.5, 1.0 (>= r_p = 1.0), D = {-2}: the mean of w (r_p - r_b).
    w1 = 1 + 0.5 * math.tanh((-0.5 - 3.5 - 2) / 4.0)  # b = 1.5: d1 -0.5, d2 3.5
    w2 = 1 + 0.5 * math.tanh((0.0 - 3.0 - 2) / 3.0)  # b = 1.0: d1 0, d2 3
    expected = softplus(-(w1 * -0.5 + w2 * 0.0) / 2)
    assert _one("dynamicpo", [1.0, 1.5, 1.0, -2.0], [1, 2, 2, 2]) == pytest.approx(expected)
    # No negative reaches r_p = 3: the 3-means clusters of 2, 1.9 | 0, -0.1 | -3 give
    # B = {2, 1.9}, D = {0, -0.1, -3} (mean -31/30).
    mean_d = (0.0 - 0.1 - 3.0) / 3
    terms = [_factor(3 - b, b - mean_d) * (3 - b) for b in (2.0, 1.9)]
    expected = softplus(-sum(terms) / 2)
    rewards = [3.0, 2.0, 1.9, 0.0, -0.1, -3.0]
    assert _one("dynamicpo", rewards, [1, 2, 2, 2, 2, 2]) == pytest.approx(expected, rel=1e-12)
    # Every reward ties (the first step): all negatives are boundary, d1 = d2 = 0, w = 0.5.
    assert _one("dynamicpo", [0.0] * 5, [1, 2, 2, 3, 2]) == pytest.approx(math.log(2))
    # Two positives: each its own boundary set, then the mean. p = 0: B = {0.5}, D = {-1};
    # p = 1 (r = -2): B = {0.5, -1} = N, D = B (mean -0.25).
    first = softplus(-_factor(-0.5, 1.5) * -0.5)
    second = softplus(-(_factor(-2.5, 0.75) * -2.5 + _factor(-1.0, -0.75) * -1.0) / 2)
    got = _one("dynamicpo", [0.0, -2.0, 0.5, -1.0], [1, 1, 2, 3])
    assert got == pytest.approx((first + second) / 2, rel=1e-12)
    # Options: margin 0 and alpha 0.25 (w = 1 + 0.25 tanh(-3.25 / 3.25)).
    w = 1 + 0.25 * math.tanh(-1.0)
    got = _one("dynamicpo", [1.0, 2.0, 0.5, -1.0], [1, 2, 2, 2], dynamicpo_margin=0.0,
               dynamicpo_alpha=0.25)  # fmt: skip
    assert got == pytest.approx(softplus(w), rel=1e-12)
    # alpha 0 keeps beta: plain DMPO over the boundary negatives.
    got = _one("dynamicpo", [1.0, 2.0, 0.5, -1.0], [1, 2, 2, 2], dynamicpo_alpha=0.0)
    assert got == pytest.approx(softplus(1.0), rel=1e-12)


def test_top_cluster_with_few_values():
    # Fewer than three different values: the members at the largest one.
    r = torch.tensor([[0.0, 1.0, 1.0, 0.0, 9.0], [2.0, 2.0, 2.0, 5.0, 5.0]], dtype=F64)
    members = torch.tensor([[True, True, True, True, False], [True, True, True, False, False]])
    assert top_cluster(r, members).tolist() == [
        [False, True, True, False, False],
        [True, True, True, False, False],
    ]
    # Ties stay together: 3, 3 | 1 | 0, 0 (not 3 | 3, 1 | ...).
    r = torch.tensor([[0.0, 3.0, 1.0, 3.0, 0.0]], dtype=F64)
    assert top_cluster(r, torch.ones_like(r, dtype=torch.bool)).tolist() == [
        [False, True, False, True, False]
    ]


def _kmeans3_top(values: list[float]) -> set[int]:
    """The top cluster of the best partition of the values into three non-empty clusters,
    by trying every assignment (3^m); fewer than three values: the largest ones."""
    m = len(values)
    if len(set(values)) < 3:
        return {i for i, v in enumerate(values) if v == max(values)}
    best, top = math.inf, set()
    for labels in itertools.product(range(3), repeat=m):
        groups = [[i for i in range(m) if labels[i] == c] for c in range(3)]
        if any(not g for g in groups):
            continue
        means = [sum(values[i] for i in g) / len(g) for g in groups]
        sse = sum((values[i] - means[c]) ** 2 for c, g in enumerate(groups) for i in g)
        if sse < best - 1e-12:
            best, top = sse, set(groups[max(range(3), key=lambda c: means[c])])
    return top


def _dynamicpo_bruteforce(scores: list[float], rewards: list[float], levels: list[int]) -> float:
    """DynamicPO from the authors' loop, with plain floats and a brute-force 3-means:
    boundary negatives and margins from the policy's scores, the loss from the rewards."""
    negatives = [i for i, g in enumerate(levels) if g > 1]
    losses_p = []
    for p in (i for i, g in enumerate(levels) if g == 1):
        boundary = [n for n in negatives if scores[n] >= scores[p]]
        if not boundary:
            top = _kmeans3_top([scores[n] for n in negatives])
            boundary = [negatives[k] for k in sorted(top)]
        disc = [n for n in negatives if n not in boundary] or boundary
        mean_d = sum(scores[n] for n in disc) / len(disc)
        total = 0.0
        for b in boundary:
            d1, d2 = scores[p] - scores[b], scores[b] - mean_d
            total += _factor(d1, d2) * (rewards[p] - rewards[b])
        losses_p.append(softplus(-total / len(boundary)))
    return sum(losses_p) / len(losses_p)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, n=st.integers(2, 8), pad=st.integers(0, 2), scale=st.floats(0.1, 5.0))
def test_dynamicpo_matches_bruteforce(seed, n, pad, scale):
    # Three contexts of n real candidates (levels 1..3, a positive and a negative in each)
    # in random columns among padding; continuous rewards (no ties inside 3-means).
    gen = torch.Generator().manual_seed(seed)
    pol = torch.full((3, n + pad), math.nan, dtype=F64)
    levels = torch.zeros(3, n + pad, dtype=torch.long)
    for b in range(3):
        lv = torch.randint(1, 4, (n,), generator=gen)
        lv[0], lv[1] = 1, 2
        columns = torch.randperm(n + pad, generator=gen)[:n]
        pol[b, columns] = torch.randn(n, generator=gen, dtype=F64) * scale
        levels[b, columns] = lv
    ref = torch.randn(3, n + pad, generator=gen, dtype=F64) * scale  # rewards differ from s
    out = compute("dynamicpo", pol, ref, levels, 0.5).per_context
    expected = []
    for b in range(3):
        row = [j for j in range(n + pad) if levels[b, j] > 0]
        scores = [pol[b, j].item() for j in row]
        rewards = [0.5 * (pol[b, j].item() - ref[b, j].item()) for j in row]
        expected.append(_dynamicpo_bruteforce(scores, rewards, [levels[b, j].item() for j in row]))
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-10, atol=1e-12)


def test_dynamicpo_factors_carry_no_gradient():
    # d/dr of -log sigmoid(mean_B w (r_p - r_b)) with w held fixed.
    pol = torch.tensor([[1.0, 1.5, 1.0, -2.0]], dtype=F64, requires_grad=True)
    levels = torch.tensor([[1, 2, 2, 2]])
    (grad,) = torch.autograd.grad(compute("dynamicpo", pol, None, levels, 1.0).loss, pol)
    boundary, factor = dynamicpo_selection(pol.detach(), levels)
    w = factor[0, 0]
    z = float((w * (pol[0, 0] - pol[0])).detach()[boundary[0, 0]].mean())
    push = torch.sigmoid(torch.tensor(-z, dtype=F64)) / 2  # two boundary negatives
    expected = torch.stack([-push * (w[1] + w[2]), push * w[1], push * w[2], push * 0])
    torch.testing.assert_close(grad[0], expected)
    assert boundary[0, 0].tolist() == [False, True, True, False]


def test_dynamicpo_selects_by_the_policys_scores_not_by_the_rewards():
    # s = (-1, -0.5, -3, -4), s_ref = (-2, -0.2, -2, -1): rewards r = s - s_ref = (1, -0.3,
    # -1, -3). By s the negative at -0.5 outranks the positive: B = {1}, D = {2, 3} (mean
    # s -3.5); d1 = -1 + 0.5 = -0.5, d2 = -0.5 + 3.5 = 3; the loss -log sigmoid(w (1 + 0.3)).
    # (By r no negative reaches the positive: the 3-means fallback, d1 = 1.3, d2 = 1.7.)
    pol = torch.tensor([[-1.0, -0.5, -3.0, -4.0]], dtype=F64)
    ref = torch.tensor([[-2.0, -0.2, -2.0, -1.0]], dtype=F64)
    out = compute("dynamicpo", pol, ref, torch.tensor([[1, 2, 2, 2]]), 1.0)
    w = 1 + 0.5 * math.tanh((-0.5 - 3.0 - 2.0) / 3.5)
    assert out.loss.item() == pytest.approx(softplus(-w * 1.3), rel=1e-12)
    assert out.metrics["boundary_share"] == pytest.approx(1 / 3)


def test_dynamicpo_boundary_share_metric():
    pol = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    levels = torch.tensor([[1, 2, 2, 2], [1, 2, 2, 0]])
    out = compute("dynamicpo", pol, None, levels, 1.0)
    assert out.metrics["boundary_share"] == pytest.approx((1 / 3 + 1) / 2)


# --- RecPO ------------------------------------------------------------------------------------
# Per positive p: lse({0} U {r_n - r_p + lambda s_p / s_n}), s = G_ctx + 1 - g.


def test_recpo_hand_computed():
    # Binary: s_p = 2, s_n = 1, every margin 2 lambda = 1.
    expected = math.log(1 + math.exp(2.0 - 1.0 + 1) + math.exp(0.5 - 1.0 + 1))
    assert _one("recpo", [1.0, 2.0, 0.5], [1, 2, 2]) == pytest.approx(expected, rel=1e-12)
    # Levels 1, 2, 3 (G = 3): s = 3, 2, 1, margins lambda * 3/2 and lambda * 3 (lambda 0.5).
    expected = math.log(1 + math.exp(0.0 - 1.0 + 0.75) + math.exp(-1.0 - 1.0 + 1.5))
    assert _one("recpo", [1.0, 0.0, -1.0], [1, 2, 3]) == pytest.approx(expected, rel=1e-12)
    # Two positives, lambda 2: margins 4 against the level-2 negative.
    pair = [math.log(1 + math.exp(-3.0 - r + 4)) for r in (0.5, -0.5)]
    got = _one("recpo", [0.5, -0.5, -3.0], [1, 1, 2], recpo_lambda=2.0)
    assert got == pytest.approx(sum(pair) / 2, rel=1e-12)
    # Level values count, not ranks among the present ones: levels 1 and 4 (G = 4) give
    # s = 4 and 1, margin 4 lambda = 2.
    assert _one("recpo", [0.0, 0.0], [1, 4]) == pytest.approx(math.log(1 + math.exp(2.0)))


def test_recpo_margins_ignore_padding():
    levels = torch.tensor([[1, 2, 0, 3]])
    margins = recpo_margins(levels, 1.0)[0]
    assert margins[0, 1].item() == pytest.approx(3 / 2) and margins[0, 3].item() == 3.0


@settings(max_examples=40, deadline=None)
@given(seed=seeds, beta=st.floats(0.05, 5.0), lam=st.floats(0.0, 3.0))
def test_recpo_is_sdpo_with_margins(seed, beta, lam):
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([[1, 2, 3, 0, 1, 2], [2, 2, 1, 1, 1, 2]])
    pol = torch.randn(2, 6, generator=gen, dtype=F64) * 3
    ref = torch.randn(2, 6, generator=gen, dtype=F64) * 3
    sdpo = compute("sdpo", pol, ref, levels, beta).per_context
    plain = compute("recpo", pol, ref, levels, beta, recpo_lambda=0.0).per_context
    torch.testing.assert_close(plain, sdpo, rtol=1e-9, atol=1e-12)  # rounding only
    # The S-DPO formula with a margin, term by term.
    r = (beta * (pol - ref)).tolist()
    expected = []
    for b in range(2):
        g = levels[b].tolist()
        worst = max(g)
        rows = []
        for p in (i for i, x in enumerate(g) if x == 1):
            terms = [
                math.exp(r[b][n] - r[b][p] + lam * worst / (worst + 1 - g[n]))
                for n, x in enumerate(g)
                if x > 1
            ]
            logit = -math.log(sum(terms))  # -log sum_n exp(r_n - r_p + M_pn)
            rows.append(-math.log(1 / (1 + math.exp(-logit))))  # -log sigmoid
        expected.append(sum(rows) / len(rows))
    out = compute("recpo", pol, ref, levels, beta, recpo_lambda=lam).per_context
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-12)
    if lam > 1e-3:  # a margin only raises the loss
        assert (out > sdpo).all()


def test_adaptive_options_are_checked():
    pol, levels = torch.zeros(1, 3, dtype=F64), torch.tensor([[1, 2, 2]])
    with pytest.raises(ValueError, match=r"recpo takes no option simpo_gamma"):
        compute("recpo", pol, None, levels, 1.0, simpo_gamma=0.5)
    with pytest.raises(ValueError, match=r"dynamicpo_alpha must be a finite number"):
        compute("dynamicpo", pol, None, levels, 1.0, dynamicpo_alpha=math.inf)
    assert not losses.OBJECTIVES["dynamicpo"].quickstart
    assert not losses.OBJECTIVES["recpo"].quickstart
