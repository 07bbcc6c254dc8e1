"""Objectives whose per-pair strength adapts: DynamicPO and RecPO (docs/objectives.md).

Both come from the LLM-recommendation literature and act on the binary view of a context
(level 1 = positives P, levels > 1 = negatives N), one positive at a time, averaged over the
positives as ``dmpo`` and ``sdpo`` are. They are registered in ``setdpo.losses.OBJECTIVES``
(``dynamicpo``, ``recpo``) and, like every objective there, are pure functions
``(rewards [B, n], levels [B, n], **options) -> [B]`` of the implicit rewards
``r = beta (s_theta - s_ref)`` that ``losses.compute`` forms. Kept apart from ``losses.py``
(the registry and the classic objectives) because each carries its own selection or margin
machinery and the reading of its paper that goes with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from setdpo.plackett_luce import masked_logsumexp

DYNAMICPO_MARGIN = 2.0  # the authors' fixed margin m in the dual-margin beta (their code)
DYNAMICPO_ALPHA = 0.5  # the authors' bound on the beta change: beta (1 +- 0.5) (their code)
RECPO_LAMBDA = 0.5  # RecPO's margin weight lambda (the authors' recpo.sh: --margin_lambda 0.5)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim of the entries where ``mask``; 0 for an empty row."""
    return torch.where(mask, x, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)


@torch.no_grad()
def top_cluster(rewards: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """[B, n] bool: the members in the highest of the 3-means clusters of their rewards.

    In one dimension an optimal k-means partition is contiguous in sorted order, so the
    best split of the members' rewards, sorted best first, into three non-empty runs (the
    smallest within-cluster sum of squares, cuts only between different values) is found
    exactly by trying every pair of cuts; the first run is the top cluster. With fewer than
    three different values each value is its own cluster and the top one is the members at
    the largest reward. Independent of the column order; float64 inside.
    """
    v = torch.where(members, rewards.double(), -torch.inf)
    v, _ = v.sort(-1, descending=True)  # members first, best first; -inf after them
    m = members.sum(-1)  # [B]
    n = v.shape[-1]
    x = torch.where(torch.isfinite(v), v, 0.0)
    zero = x.new_zeros(x.shape[0], 1)
    s1 = torch.cat([zero, x.cumsum(-1)], -1)  # [B, n + 1]: sums of the first c values
    s2 = torch.cat([zero, (x * x).cumsum(-1)], -1)
    cut = torch.arange(n + 1, device=v.device)

    def sse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Within sum of squares of the sorted run [a, b), broadcast over the batch."""
        size = (b - a).clamp(min=1).double()
        t1 = s1.gather(-1, b.flatten(1)).view(b.shape) - s1.gather(-1, a.flatten(1)).view(a.shape)
        t2 = s2.gather(-1, b.flatten(1)).view(b.shape) - s2.gather(-1, a.flatten(1)).view(a.shape)
        return t2 - t1 * t1 / size

    shape = (x.shape[0], n + 1, n + 1)
    a = cut.view(1, -1, 1).expand(shape)  # [B, a, b]: the top run is [0, a)
    b = cut.view(1, 1, -1).expand(shape)  # the middle [a, b), the bottom [b, m)
    end = m.view(-1, 1, 1).expand(shape)
    total = sse(torch.zeros_like(a), a) + sse(a, b) + sse(b, end)
    # A cut c (1 <= c < m) separates two different values: v[c - 1] > v[c].
    padded = torch.cat([v, v.new_full((v.shape[0], 1), -torch.inf)], -1)
    drop = torch.cat([padded.new_zeros(v.shape[0], 1, dtype=torch.bool), v > padded[:, 1:]], -1)
    ok = drop & (cut[None, :] >= 1) & (cut[None, :] < m[:, None])  # [B, n + 1]
    valid = ok[:, :, None] & ok[:, None, :] & (a < b)
    best = torch.where(valid, total, torch.inf).flatten(1).argmin(-1)  # [B]
    top_size = torch.div(best, n + 1, rounding_mode="floor")  # a of the best pair
    three = valid.flatten(1).any(-1)
    top_size = torch.where(three, top_size, (v == v[:, :1]).sum(-1))  # < 3 values: the max
    threshold = v.gather(-1, (top_size - 1).clamp(min=0)[:, None])  # [B, 1]
    return members & (rewards.double() >= threshold)


@torch.no_grad()
def dynamicpo_selection(
    policy_logps: torch.Tensor,
    levels: torch.Tensor,
    dynamicpo_margin: float = DYNAMICPO_MARGIN,
    dynamicpo_alpha: float = DYNAMICPO_ALPHA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DynamicPO's boundary negatives and their beta factors for every positive, no gradient,
    from the policy's own scores ``s = policy_logps`` (as the authors' code: the negatives the
    policy now ranks at or above the positive, whatever the reference says).

    Returns ``(boundary [B, n, n] bool, factor [B, n, n])``: row i is positive i (other
    rows are empty), column j a negative. ``boundary[b, i, j]``: j is a boundary negative of
    i, one the policy scores at least as high as i (``s_j >= s_i``); when i has none, the
    negatives of the top 3-means cluster of the context's negative scores (``top_cluster``).
    The other negatives are i's discriminative ones D_i (all of them boundary: D_i = the
    boundary set). ``factor = 1 + alpha tanh((d1 - d2 - m) / (|d1| + |d2|))`` with the dual
    margins ``d1 = s_i - s_j`` (positive to boundary) and ``d2 = s_j - mean_{D_i} s``
    (boundary to discriminative), in log-prob units as the code's ``m = 2``; a zero
    denominator is read as its limit (``tanh(-inf) = -1`` when ``m > 0``; 0 when ``m = 0``).
    """
    s = policy_logps.detach().double()
    pos, neg = levels == 1, levels > 1
    above = pos[:, :, None] & neg[:, None, :] & (s[:, None, :] >= s[:, :, None])  # [B, i, j]
    fallback = top_cluster(s, neg)  # [B, n]
    has_above = above.any(-1, keepdim=True)
    boundary = torch.where(has_above, above, pos[:, :, None] & fallback[:, None, :])
    rest = pos[:, :, None] & neg[:, None, :] & ~boundary
    disc = torch.where(rest.any(-1, keepdim=True), rest, boundary)
    mean_disc = _masked_mean(s[:, None, :].expand_as(disc), disc)  # [B, i]
    d1 = s[:, :, None] - s[:, None, :]  # [B, i, j]
    d2 = s[:, None, :] - mean_disc[:, :, None]
    spread = (d1.abs() + d2.abs()).clamp(min=torch.finfo(s.dtype).tiny)
    factor = 1.0 + dynamicpo_alpha * torch.tanh((d1 - d2 - dynamicpo_margin) / spread)
    return boundary, torch.where(boundary, factor, 0.0).to(policy_logps.dtype)


def dynamicpo(
    rewards: torch.Tensor,
    levels: torch.Tensor,
    dynamicpo_margin: float = DYNAMICPO_MARGIN,
    dynamicpo_alpha: float = DYNAMICPO_ALPHA,
    *,
    policy_logps: torch.Tensor,
) -> torch.Tensor:
    """DynamicPO on DMPO (Hu et al. 2026, arXiv 2605.00327; the authors' code,
    github.com/xingyuHuxingyu/DynamicPO, ``trainer/dynamicpo_trainer.py``, filter mode
    ``DMPO_hard_negative_dynamic_beta_fixed_margin``, the only DynamicPO mode it releases).

    Mean over positives p of ``-log sigmoid( mean_{b in B_p} w_pb (r_p - r_b) )``:
    DMPO's comparison of the positive with the mean negative, restricted to p's boundary
    negatives B_p (Dynamic Boundary Negative Selection) and with a per-pair beta
    ``beta w_pb`` (Dual-Margin Dynamic beta Adjustment); ``B_p`` and ``w_pb`` come from
    ``dynamicpo_selection`` (from the policy's scores ``policy_logps``, which the registry
    entry's ``policy_scores`` has `losses.compute` pass) and carry no gradient (the code turns
    the betas into Python floats). In the code the loss term is ``beta_b * logratio_p / K - beta_b * logratio_b / K``
    summed over the K boundary negatives: with ``r = beta logratio`` that is
    ``w_pb (r_p - r_b) / K``, as here.

    Not from the paper: the paper's equations could not be read here (only its abstract);
    this follows the released code, with these readings:

    - as in the code, the selection and the dual margins read the policy's log-probs
      ``s_theta`` (``m`` in log-prob units) and the loss the rewards ``r``.
    - the code's fallback is sklearn ``KMeans(3, random_state=42)`` on the negatives' values;
      here the exact optimum of the same 1-D 3-means problem (``top_cluster``).
    - several positives: each is compared with its own boundary set, then averaged (the
      code has one chosen item); levels > 1 are all negatives.
    - the S-DPO base the paper also reports is not released as code and is not implemented.
    """
    boundary, factor = dynamicpo_selection(policy_logps, levels, dynamicpo_margin, dynamicpo_alpha)
    gaps = rewards[:, :, None] - rewards[:, None, :]  # [B, i, j]: r_i - r_j
    weighted = torch.where(boundary, factor * gaps, 0.0).sum(-1)
    logit = weighted / boundary.sum(-1).clamp(min=1)  # [B, i]
    return _masked_mean(-F.logsigmoid(logit), levels == 1)


@torch.no_grad()
def dynamicpo_metrics(
    rewards: torch.Tensor, levels: torch.Tensor, *, policy_logps: torch.Tensor
) -> dict[str, float]:
    """``boundary_share``: mean over contexts of the mean over positives p of |B_p| / |N|,
    the share of negatives DynamicPO selects (by the policy's scores)."""
    boundary, _ = dynamicpo_selection(policy_logps, levels)
    share = boundary.sum(-1).double() / (levels > 1).sum(-1, keepdim=True).clamp(min=1)
    return {"boundary_share": float(_masked_mean(share, levels == 1).mean())}


def recpo_margins(
    levels: torch.Tensor, recpo_lambda: float = RECPO_LAMBDA, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """[B, n, n] RecPO's margin ``lambda s_i / s_j`` for positive i and candidate j.

    The strength ``s = G_ctx + 1 - g`` stands in for RecPO's score: the candidate's level
    counted from the context's worst level ``G_ctx`` (which gets 1); positives have
    ``s = G_ctx``. Binary data: every margin is ``2 lambda``.
    """
    strength = (levels.amax(-1, keepdim=True) + 1 - levels).clamp(min=1).to(dtype)
    return recpo_lambda * strength[:, :, None] / strength[:, None, :]


def recpo(
    rewards: torch.Tensor, levels: torch.Tensor, recpo_lambda: float = RECPO_LAMBDA
) -> torch.Tensor:
    """RecPO's adaptive-margin S-DPO (Ouyang et al. 2025, arXiv 2506.02261; the authors'
    code, github.com/HoytWen/RecPO, ``trainer/rec_dpo_trainer.py``, ``redpo_loss`` with
    ``ratio=True``, the setting of every run in its ``recpo.sh``).

    Mean over positives p of ``-log sigmoid(-log sum_{n in N} exp(r_n - r_p + M_pn))``
    = ``lse({0} U {r_n - r_p + M_pn})`` with ``M_pn = lambda s_p / s_n`` (``recpo_margins``):
    S-DPO where a negative must trail the positive by a margin that grows with how much
    stronger the positive's preference is. ``recpo_lambda = 0`` is ``sdpo``.

    What of RecPO is here: its loss and its ratio margin. What is not: RecPO's score is
    ``rating / (1 + step)^0.5`` (rating strength decayed by the item's position in the
    future window; sampled negatives rating 3 at step 10). setdpo's batch has no rating or
    time per candidate, only levels, so the strength is the level above the worst (levels
    come from ratings in the rated/levels data modes, renumbered per context) and the
    recency decay is left out. The paper's equations could not be read here (only its
    abstract); this follows the released code.
    """
    pos, neg = levels == 1, levels > 1
    margins = recpo_margins(levels, recpo_lambda, rewards.dtype)  # [B, i, j]
    shifted = rewards[:, None, :] - rewards[:, :, None] + margins  # r_j - r_i + M_ij
    lse_neg = masked_logsumexp(shifted, neg[:, None, :].expand_as(shifted))  # [B, i]
    return _masked_mean(F.softplus(lse_neg), pos)
