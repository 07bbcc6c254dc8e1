"""Exact set-wise Plackett-Luce likelihood of an ordered partition, in polynomial time.

Candidates carry preference levels (1 = most preferred, larger = less preferred, 0 =
padding). Under Plackett-Luce with weights ``w_i = exp(r_i)`` the probability that the
levels come out in order (every item of level g before every item of a later level, any
order inside a level) is a product over the levels present, because after the items of
levels < g are placed the rest of the ranking is again Plackett-Luce over what is left::

    log P = sum_g log P_PL(level g before all levels > g  |  items of levels >= g)

One stage with k "positives" P (level g) and negatives N (levels > g) has the exact
one-dimensional form (PL is the order of independent exponential arrival times with
rates w_i; every positive must arrive before the first negative, which arrives at rate
B = sum_N w)::

    P_PL(P before N) = int_0^inf exp(-v) prod_{i in P} (1 - exp(-a_i v)) dv,
    a_i = w_i / B = exp(r_i - lse_N r).

``setwise_log_prob`` evaluates it with ``v = e^s`` and the trapezoid rule in log space
(docs/objectives.md, "Exact set-wise Plackett-Luce in polynomial time");
``setwise_log_prob_bruteforce`` sums over the k! orderings of the positives, the reference
for tests and benchmarks.
"""

from __future__ import annotations

import itertools
import math

import torch

DEFAULT_GRID_SIZE = 192
# Quadrature range in s = log v. Left end: -min(max(max_i log a_i, 0) + 14, 30). Every
# factor 1 - exp(-a e^s) increases with s, so the mass left of s0 <= 0 is at most
# e^s0 prod_i (1 - e^-a_i), while the mass on [0, 1] is at least 0.3 times that
# product: the truncation error is below e^s0 / 0.3 relative whatever the a_i, 3e-13 at
# the cap of 30; +14 is the margin docs/objectives.md states, ample when every a_i <= 1 (the integrand
# then grows like e^{(k+1) s}). Right end: log(k + 1) + 4.5, where
# exp(-e^s) < exp(-90 (k + 1)).
_LEFT_MARGIN = 14.0
_LEFT_CAP = 30.0
_RIGHT_MARGIN = 4.5


def _check_shapes(rewards: torch.Tensor, levels: torch.Tensor) -> None:
    if rewards.dim() != 2 or rewards.shape != levels.shape:
        raise ValueError(
            f"rewards and levels must both be [B, n]; got {tuple(rewards.shape)} "
            f"and {tuple(levels.shape)}"
        )
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a float tensor; got {rewards.dtype}")


def _log1mexp_of_log(y: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(-exp(y)))`` elementwise, finite with finite gradients for any finite y.

    ``log(-expm1(-x))`` with x = e^y is accurate in absolute terms, which is what a sum of
    log-factors needs. y is clamped to [-80, 40] so x neither underflows (float32's
    smallest normal is e^-87) nor makes the gradient overflow: above 40 the factor is 1
    to every float precision, and below -80 it is exactly y (log(1 - e^-x) = log x - x/2
    + ..., and x < 2e-35 vanishes against log x), restored by the linear term.
    """
    y_in = y.clamp(min=-80.0, max=40.0)
    return torch.log(-torch.expm1(-torch.exp(y_in))) + torch.where(y < -80.0, y + 80.0, 0.0)


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """lse over the last dim of the entries where ``mask`` ([B, n] -> [B]).

    Masked entries become the dtype's lowest finite value, never -inf, so no NaN
    gradient can arise; a row with no entry gives that huge negative finite number,
    which callers exclude with ``torch.where`` or rule out by validation.
    """
    return torch.logsumexp(torch.where(mask, x, torch.finfo(x.dtype).min), -1)


def _stage_log_prob_quadrature(
    log_a: torch.Tensor, pos: torch.Tensor, grid_size: int
) -> torch.Tensor:
    """log P_PL(positives before negatives) for each row, by quadrature.

    Args:
        log_a: [B, m] log(w_i / B) (only the entries where ``pos`` are used).
        pos: [B, m] bool, the positives of this stage; every row has at least one.
        grid_size: number of quadrature nodes.

    Returns:
        [B] log-probabilities.
    """
    k = pos.sum(-1).to(log_a.dtype)  # [B]
    with torch.no_grad():  # the nodes are a discretisation choice, not a function of r
        max_log_a = torch.where(pos, log_a, -math.inf).amax(-1)  # [B]
        lo = -(max_log_a.clamp(min=0.0) + _LEFT_MARGIN).clamp(max=_LEFT_CAP)
        hi = torch.log1p(k) + _RIGHT_MARGIN
        t = torch.linspace(0.0, 1.0, grid_size, dtype=log_a.dtype, device=log_a.device)
        s = lo[:, None] + (hi - lo)[:, None] * t  # [B, J]
        step = (hi - lo) / (grid_size - 1)  # [B]
        # Trapezoid weights: half at both ends.
        log_w = torch.zeros_like(t)
        log_w[0] = log_w[-1] = -math.log(2.0)
    factors = _log1mexp_of_log(log_a[:, :, None] + s[:, None, :])  # [B, m, J]
    factors = torch.where(pos[:, :, None], factors, 0.0).sum(1)  # [B, J]
    integrand = s - torch.exp(s) + factors + log_w  # log of e^{-v} v prod(...) in s
    return torch.logsumexp(integrand, -1) + torch.log(step)


def present_levels(levels: torch.Tensor) -> list[int]:
    """The distinct non-padding levels of a batch, ascending (a handful of values)."""
    return sorted(int(g) for g in torch.unique(levels) if int(g) > 0)


def setwise_log_prob(
    rewards: torch.Tensor, levels: torch.Tensor, grid_size: int = DEFAULT_GRID_SIZE
) -> torch.Tensor:
    """Exact Plackett-Luce log-probability of the ordered partition given by ``levels``.

    ``sum_g log P_PL(level g before all levels > g)`` per context, each factor by the
    log-space quadrature of the module docstring: O(k_g x grid_size) per level g and
    context, differentiable in ``rewards``. A level with no later level contributes 0
    (probability 1), so a context holding a single level gets 0.

    Args:
        rewards: [B, n] float rewards r_i (PL weights e^{r_i}); padded entries ignored.
        levels: [B, n] int levels, 1 = most preferred, 0 = padding.
        grid_size: quadrature nodes per stage; 192 matches enumeration to ~1e-12
            relative in float64 (benchmarks/RESULTS.md).

    Returns:
        [B] log-probabilities (<= 0 up to rounding).
    """
    _check_shapes(rewards, levels)
    if grid_size < 2:
        raise ValueError(f"grid_size must be at least 2; got {grid_size}")
    total = rewards.new_zeros(rewards.shape[0])
    for g in present_levels(levels):
        pos, neg = levels == g, levels > g
        active = pos.any(-1) & neg.any(-1)  # [B] rows where this stage has both sides
        if not bool(active.any()):
            continue
        log_a = rewards - masked_logsumexp(rewards, neg)[:, None]
        # Inactive rows get a harmless dummy (log_a = 0, one positive) and are dropped.
        first = torch.arange(pos.shape[1], device=pos.device) == 0
        safe_pos = torch.where(active[:, None], pos, first)
        safe_log_a = torch.where(active[:, None], log_a, 0.0)
        # Only this stage's items enter the integrand: gather them to the front, [B, k_max].
        k_max = int(safe_pos.sum(-1).max())
        front = torch.argsort((~safe_pos).to(torch.int8), dim=-1, stable=True)[:, :k_max]
        stage = _stage_log_prob_quadrature(
            safe_log_a.gather(1, front), safe_pos.gather(1, front), grid_size
        )
        total = total + torch.where(active, stage, 0.0)
    return total


def _stage_log_prob_enumerated(
    r_pos: torch.Tensor, lse_neg: torch.Tensor, max_items: int
) -> torch.Tensor:
    """log sum over orderings pi of the positives of prod_t w_{pi_t} / (remaining mass).

    Args:
        r_pos: [k] rewards of the positives.
        lse_neg: scalar, lse of the negatives' rewards.
        max_items: refuse k above this (k! orderings).

    Returns:
        scalar log-probability that the positives take the top k places.
    """
    k = r_pos.shape[0]
    if k > max_items:
        raise ValueError(
            f"brute-force enumeration refuses {k} items in one level (more than "
            f"{max_items}: {math.factorial(k)} orderings)"
        )
    perms = torch.tensor(list(itertools.permutations(range(k))), device=r_pos.device)
    ordered = r_pos[perms]  # [k!, k]
    # Mass still unplaced before step t: positives ordered[t:] plus every negative.
    suffix = torch.logcumsumexp(ordered.flip(-1), -1).flip(-1)  # [k!, k]
    remaining = torch.logaddexp(suffix, lse_neg)
    return torch.logsumexp((ordered - remaining).sum(-1), 0)


def setwise_log_prob_bruteforce(
    rewards: torch.Tensor, levels: torch.Tensor, max_items: int = 8
) -> torch.Tensor:
    """Reference for ``setwise_log_prob`` by enumerating orderings (tests, benchmarks).

    For each level g with later levels it sums, over the k_g! orderings of that level's
    items, the probability that they fill the next k_g places in that order (enumerating
    the positives' orderings is exact: the negatives' order after them is marginalised).

    Args:
        rewards: [B, n] float rewards; padded entries ignored.
        levels: [B, n] int levels, 1 = most preferred, 0 = padding.
        max_items: largest level size accepted (default 8: 40,320 orderings).

    Returns:
        [B] log-probabilities.

    Raises:
        ValueError: a level of some context holds more than ``max_items`` items.
    """
    _check_shapes(rewards, levels)
    out = []
    for b in range(rewards.shape[0]):
        row = rewards.new_zeros(())
        for g in present_levels(levels[b : b + 1]):
            pos, neg = levels[b] == g, levels[b] > g
            if not bool(neg.any()):
                continue
            try:
                stage = _stage_log_prob_enumerated(
                    rewards[b][pos], torch.logsumexp(rewards[b][neg], 0), max_items
                )
            except ValueError as err:
                raise ValueError(f"context {b}, level {g}: {err}") from None
            row = row + stage
        out.append(row)
    return torch.stack(out)
