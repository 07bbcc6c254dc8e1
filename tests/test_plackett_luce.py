"""Exact set-wise Plackett-Luce: quadrature against enumeration and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from setdpo.plackett_luce import setwise_log_prob, setwise_log_prob_bruteforce

F64 = torch.float64


def _rewards(seed: int, n: int, scale: float, shift: float, k: int) -> torch.Tensor:
    """[1, n] rewards: N(0, scale^2), the first k shifted by ``shift * scale``."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(1, n, generator=gen, dtype=F64) * scale
    r[0, :k] += shift * scale
    return r


def _assert_prob_close(quad: torch.Tensor, brute: torch.Tensor, rel: float = 1e-8) -> None:
    """|P_quad / P_brute - 1| <= rel, on log-probabilities."""
    ratio_err = torch.expm1(quad - brute).abs().max().item()
    assert ratio_err <= rel, (ratio_err, quad, brute)


@settings(max_examples=100, deadline=None)
@given(
    k=st.integers(1, 6),
    n_neg=st.integers(1, 15),
    scale=st.floats(0.01, 30.0),
    shift=st.floats(-3.0, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_quadrature_matches_enumeration_binary(k, n_neg, scale, shift, seed):
    r = _rewards(seed, k + n_neg, scale, shift, k)
    levels = torch.tensor([[1] * k + [2] * n_neg])
    _assert_prob_close(setwise_log_prob(r, levels), setwise_log_prob_bruteforce(r, levels))


@pytest.mark.parametrize("shift", [-3.0, 0.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quadrature_at_the_largest_sizes(shift, seed):
    # The corner of the acceptance range: 6 positives, 15 negatives, scale 30.
    r = _rewards(seed, 21, 30.0, shift, 6)
    levels = torch.tensor([[1] * 6 + [2] * 15])
    _assert_prob_close(setwise_log_prob(r, levels), setwise_log_prob_bruteforce(r, levels))


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    scale=st.floats(0.01, 30.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_quadrature_matches_enumeration_three_levels(sizes, scale, seed):
    levels = torch.tensor([[g + 1 for g, size in enumerate(sizes) for _ in range(size)]])
    # Shuffle the columns: the level order must not depend on the column order.
    perm = torch.randperm(levels.shape[1], generator=torch.Generator().manual_seed(seed))
    levels = levels[:, perm]
    r = _rewards(seed, levels.shape[1], scale, 0.0, 0)
    _assert_prob_close(setwise_log_prob(r, levels), setwise_log_prob_bruteforce(r, levels))


def test_hand_computed_values():
    # Three equal weights, the two positives first in either order: 2! * 1/3 * 1/2 = 1/3.
    r = torch.zeros(1, 3, dtype=F64)
    lv = torch.tensor([[1, 1, 2]])
    torch.testing.assert_close(setwise_log_prob(r, lv), torch.tensor([math.log(1 / 3)], dtype=F64))
    # k = 1: a / (1 + a) with a = e^{r_p} / sum_N e^{r_n} = e / (1 + 1) for r = (1, 0, 0).
    r = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    lv = torch.tensor([[1, 2, 2]])
    a = math.e / 2
    expected = torch.tensor([math.log(a / (1 + a))], dtype=F64)
    torch.testing.assert_close(setwise_log_prob(r, lv), expected, rtol=1e-12, atol=0)
    # Levels 1 > 2 > 3 with weights (1, 1, 1): 1/3 for the first, then 1/2: log(1/6).
    lv = torch.tensor([[1, 2, 3]])
    expected = torch.tensor([math.log(1 / 6)], dtype=F64)
    torch.testing.assert_close(setwise_log_prob(torch.zeros(1, 3, dtype=F64), lv), expected)
    torch.testing.assert_close(
        setwise_log_prob_bruteforce(torch.zeros(1, 3, dtype=F64), lv), expected
    )


def test_single_level_and_padding():
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(3, 6, generator=gen, dtype=F64)
    lv = torch.tensor([[1, 1, 2, 2, 3, 0], [1, 1, 1, 0, 0, 0], [2, 1, 3, 3, 0, 0]])
    out = setwise_log_prob(r, lv)
    assert out[1].item() == 0.0  # one level only: probability 1
    padded_r = torch.cat([r, torch.randn(3, 4, generator=gen, dtype=F64) * 50], 1)
    padded_lv = torch.cat([lv, torch.zeros(3, 4, dtype=lv.dtype)], 1)
    torch.testing.assert_close(setwise_log_prob(padded_r, padded_lv), out, rtol=0, atol=0)
    torch.testing.assert_close(setwise_log_prob_bruteforce(padded_r, padded_lv), out)


def test_gradient_matches_enumeration_and_gradcheck():
    gen = torch.Generator().manual_seed(5)
    r = (torch.randn(2, 7, generator=gen, dtype=F64) * 3).requires_grad_()
    lv = torch.tensor([[1, 1, 1, 2, 2, 2, 2], [1, 2, 2, 3, 3, 0, 0]])
    (grad_quad,) = torch.autograd.grad(setwise_log_prob(r, lv).sum(), r)
    (grad_brute,) = torch.autograd.grad(setwise_log_prob_bruteforce(r, lv).sum(), r)
    torch.testing.assert_close(grad_quad, grad_brute, rtol=1e-8, atol=1e-10)
    assert torch.autograd.gradcheck(lambda x: setwise_log_prob(x, lv), (r,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_rewards_finite(dtype, scale):
    gen = torch.Generator().manual_seed(7)
    r = (torch.randn(4, 10, generator=gen, dtype=dtype) * scale).requires_grad_()
    lv = torch.tensor([[1] * 3 + [2] * 7, [1] * 9 + [2], [1, 2] * 5, [1] * 5 + [2] * 3 + [0] * 2])
    out = setwise_log_prob(r, lv)
    (grad,) = torch.autograd.grad(out.sum(), r)
    assert torch.isfinite(out).all() and (out <= 0).all()
    assert torch.isfinite(grad).all()


def test_bruteforce_refuses_large_levels():
    r = torch.zeros(2, 12, dtype=F64)
    lv = torch.tensor([[1] * 3 + [2] * 9, [1] * 9 + [2] * 3])
    with pytest.raises(ValueError, match=r"context 1, level 1: .*refuses 9 items"):
        setwise_log_prob_bruteforce(r, lv)
    # Level 2 has 9 items but no later level: nothing to enumerate there.
    assert setwise_log_prob_bruteforce(r[:1], lv[:1]).isfinite().all()
    with pytest.raises(
        ValueError,
        match=r"context 0, level 1: .*refuses 3 items in one level \(more than 2: 6 orderings\)",
    ):
        setwise_log_prob_bruteforce(r, lv, max_items=2)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, n\]; got \(2, 3\) and \(2, 4\)"):
        setwise_log_prob(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="float tensor"):
        setwise_log_prob(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="grid_size must be at least 2"):
        setwise_log_prob(torch.zeros(1, 2), torch.tensor([[1, 2]]), grid_size=1)
