"""Set-wise preference objectives in reward space (docs/objectives.md).

Every objective is a small pure function ``(rewards [B, n], levels [B, n]) -> [B]``
giving the per-context loss; ``OBJECTIVES`` maps names to entries (`ObjectiveEntry`:
the function and what the rest of the code asks about it) and ``compute`` is the one
entry point: it validates the batch, forms the implicit rewards
``r = beta * (s_theta - s_ref)``, dispatches, averages over contexts and computes the
metrics. ``levels`` holds 1 for the most preferred candidates, larger values for less
preferred ones and 0 for padding, which never changes a result.

Binary objectives (``dmpo``, ``sdpo``, ``mult``) treat level 1 as positive (P, k items)
and every level > 1 as negative (N). ``dpo``, ``mult2`` and ``pl`` use every level.

A context with positives but no negatives: ``pl`` and ``mult2`` give 0 (the only
ordered partition has probability 1), ``mult`` gives ``sum_{p in P} (lse_P r - r_p)``
(the multinomial surrogate over the positives alone, >= log k!), and ``dpo``, ``dmpo``,
``sdpo`` raise ``ValueError``: they have no negative to compare against.

The objectives assume a batch that ``compute`` has validated (every context has a
positive, and a negative where the objective needs one); called directly on other
input they may return NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from setdpo.plackett_luce import masked_logsumexp, present_levels, setwise_log_prob

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LossOutput:
    """Result of ``compute``.

    Attributes:
        loss: scalar, mean of ``per_context`` (carries the graph).
        per_context: [B] loss of each context (carries the graph).
        rewards: [B, n] implicit rewards, detached; 0 at padding.
        metrics: floats, see ``compute``.
    """

    loss: torch.Tensor
    per_context: torch.Tensor
    rewards: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim of the entries where ``mask``; 0 for an empty row."""
    count = mask.sum(-1).clamp(min=1)
    return torch.where(mask, x, 0.0).sum(-1) / count


def dpo(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7) over all pairs of different levels.

    Mean over pairs (i, j) with 0 < g_i < g_j of ``-log sigmoid(r_i - r_j)``: with one
    positive and one negative the standard DPO loss; over several levels LiPO's
    pairwise Bradley-Terry form (Liu et al. 2024, arXiv 2402.01878).
    """
    valid = levels > 0
    pairs = (levels[:, :, None] < levels[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    diff = rewards[:, :, None] - rewards[:, None, :]  # [B, n, n]: r_i - r_j
    losses = -F.logsigmoid(diff)
    return torch.where(pairs, losses, 0.0).sum((1, 2)) / pairs.sum((1, 2))


def dmpo(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """DMPO (Bai et al. 2024, arXiv 2405.16127): mean over p of -log sigmoid(r_p - mean_N r)."""
    pos, neg = levels == 1, levels > 1
    mean_neg = _masked_mean(rewards, neg)  # [B]
    return _masked_mean(-F.logsigmoid(rewards - mean_neg[:, None]), pos)


def sdpo(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """S-DPO (Chen et al. 2024, arXiv 2406.09215, eq. 9): mean over p of lse({r_p} U r_N) - r_p.

    Equals ``-log sigmoid(-log sum_n exp(r_n - r_p))``, computed with lse.
    """
    pos, neg = levels == 1, levels > 1
    lse_neg = masked_logsumexp(rewards, neg)  # [B]
    return _masked_mean(torch.logaddexp(rewards, lse_neg[:, None]) - rewards, pos)


def mult(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mult-DPO (arXiv 2606.10078): sum over p of (lse over all candidates - r_p).

    The multinomial surrogate: a softmax over every candidate, once per positive. k = 1
    gives ``sdpo``; with no negatives it is ``sum_p (lse_P r - r_p)``.
    """
    pos = levels == 1
    lse_all = masked_logsumexp(rewards, levels > 0)  # [B]
    return torch.where(pos, lse_all[:, None] - rewards, 0.0).sum(-1)


def mult2(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Multi-level Mult-DPO (arXiv 2606.10078).

    ``sum_{g < G} sum_{p: g(p) = g} (lse_{c: g(c) >= g} r_c - r_p)`` with G the context's
    largest level: each level against itself and every later level. Two levels give
    ``mult``; a context with a single level gives 0.
    """
    total = rewards.new_zeros(rewards.shape[0])
    last = levels.amax(-1, keepdim=True)  # [B, 1]: G per context
    for g in present_levels(levels):
        members = (levels == g) & (levels < last)  # this level, unless it is the last
        lse_rest = masked_logsumexp(rewards, levels >= g)
        total = total + torch.where(members, lse_rest[:, None] - rewards, 0.0).sum(-1)
    return total


def pl(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Exact set-wise Plackett-Luce: ``-sum_g log P_PL(level g before levels > g)``.

    See ``setdpo.plackett_luce``; with k = 1 it equals ``sdpo``.
    """
    return -setwise_log_prob(rewards, levels)


def _check_tensor(label: str, x: torch.Tensor, shape: torch.Size | None) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{label} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{label} must be 2-D [B, n]; got shape {tuple(x.shape)}")
    if shape is not None and x.shape != shape:
        raise ValueError(
            f"{label} has shape {tuple(x.shape)} but policy_logps has shape {tuple(shape)}"
        )


def _check_finite(label: str, x: torch.Tensor, valid: torch.Tensor) -> None:
    bad = ~torch.isfinite(x) & valid
    if bool(bad.any()):
        b, i = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{label} is {float(x[b, i])} at context {b}, candidate {i}")


def _check_levels(levels: torch.Tensor, name: str) -> None:
    """Every context has a positive; level-wise checks named by context index."""
    negative = (levels < 0).any(-1).nonzero()
    if negative.numel():
        b = int(negative[0])
        raise ValueError(f"context {b}: levels must be >= 0; got {levels[b].tolist()}")
    no_pos = ~(levels == 1).any(-1)
    if bool(no_pos.any()):
        b = int(no_pos.nonzero()[0])
        raise ValueError(
            f"context {b} has no positive (level 1) candidate; levels {levels[b].tolist()}"
        )
    no_neg = ~(levels > 1).any(-1)
    if OBJECTIVES[name].needs_negatives and bool(no_neg.any()):
        b = int(no_neg.nonzero()[0])
        accepting = ", ".join(n for n, entry in OBJECTIVES.items() if not entry.needs_negatives)
        raise ValueError(
            f"context {b} has positives but no negative (level > 1) candidate; {name} "
            f"needs one ({accepting} accept it); levels {levels[b].tolist()}"
        )


def _validate(
    name: str,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    levels: torch.Tensor,
    beta: float,
) -> None:
    try:
        beta_ok = math.isfinite(float(beta)) and float(beta) > 0
    except (TypeError, ValueError):
        beta_ok = False
    if not beta_ok:
        raise ValueError(f"beta must be a finite number > 0; got {beta!r}")
    _check_tensor("policy_logps", policy_logps, None)
    if not policy_logps.is_floating_point():
        raise ValueError(f"policy_logps must be a float tensor; got dtype {policy_logps.dtype}")
    if ref_logps is not None:
        _check_tensor("ref_logps", ref_logps, policy_logps.shape)
        if ref_logps.dtype != policy_logps.dtype:
            raise ValueError(
                f"ref_logps has dtype {ref_logps.dtype} but policy_logps has {policy_logps.dtype}"
            )
    _check_tensor("levels", levels, policy_logps.shape)
    if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        raise ValueError(f"levels must be an integer tensor; got dtype {levels.dtype}")
    if policy_logps.shape[0] == 0 or policy_logps.shape[1] == 0:
        raise ValueError(f"empty batch: policy_logps has shape {tuple(policy_logps.shape)}")
    _check_levels(levels, name)
    _check_finite("policy_logps", policy_logps, levels > 0)
    if ref_logps is not None:
        _check_finite("ref_logps", ref_logps, levels > 0)


def compute(
    name: str,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    levels: torch.Tensor,
    beta: float,
) -> LossOutput:
    """Validate a batch, compute the implicit rewards and the objective ``name``.

    Args:
        name: an ``OBJECTIVES`` key or alias, any case.
        policy_logps: [B, n] float candidate log-probs under the policy.
        ref_logps: [B, n] same dtype under the reference, or None (reference-free:
            rewards are ``beta * policy_logps``).
        levels: [B, n] integer, 1 = most preferred, larger = less, 0 = padding.
        beta: > 0, the reward scale.

    Returns:
        ``LossOutput``; ``metrics`` are means over contexts (see ``reward_metrics``),
        plus the entry's ``extra_metrics`` (``bound_gap``, ``bound_gap_max`` and
        ``a_over_b`` for mult / mult2).

    Raises:
        ValueError: unknown name, beta <= 0, wrong shape or dtype, levels not matching,
            NaN or inf in a non-padding entry, a context with no positive, or (objectives
            with ``needs_negatives``: dpo, dmpo, sdpo) a context with no negative. The
            message names the context.
    """
    key = canonical_name(name)
    entry = OBJECTIVES[key]
    _validate(key, policy_logps, ref_logps, levels, beta)
    valid = levels > 0
    margin = policy_logps if ref_logps is None else policy_logps - ref_logps
    # Padding may hold anything (even NaN): replace it before any arithmetic.
    rewards = torch.where(valid, float(beta) * margin, 0.0)
    per_context = entry.function(rewards, levels)
    metrics = reward_metrics(rewards.detach(), levels)
    if entry.extra_metrics is not None:
        metrics.update(entry.extra_metrics(rewards.detach(), levels))
    return LossOutput(per_context.mean(), per_context, rewards.detach(), metrics)


def _nanmean(x: torch.Tensor) -> float:
    """Mean of the non-NaN entries (NaN marks a context left out); NaN if none is left."""
    return float(x.nanmean())


@torch.no_grad()
def reward_metrics(rewards: torch.Tensor, levels: torch.Tensor) -> dict[str, float]:
    """Reward statistics, each a mean over contexts (float64 internally).

    - ``reward_positive`` / ``reward_negative``: mean reward of level 1 / of levels > 1
      (contexts without negatives are left out of the latter; NaN if none has any).
    - ``reward_margin``: mean over contexts with negatives of (mean positive - mean
      negative reward).
    - ``reward_accuracy``: share of contexts whose rewards respect the ordered partition:
      every item above every item of every later level (binary: every positive above
      every negative). A context with a single level counts as correct.
    """
    r, valid = rewards.double(), levels > 0
    pos, neg = levels == 1, levels > 1
    has_neg = neg.any(-1)
    mean_pos, mean_neg = _masked_mean(r, pos), _masked_mean(r, neg)
    ordered = torch.ones_like(has_neg)
    for g in present_levels(levels):
        lowest = torch.where(levels == g, r, math.inf).amin(-1)
        highest_later = torch.where(valid & (levels > g), r, -math.inf).amax(-1)
        ordered &= lowest > highest_later
    return {
        "reward_positive": float(mean_pos.mean()),
        "reward_negative": _nanmean(torch.where(has_neg, mean_neg, math.nan)),
        "reward_margin": _nanmean(torch.where(has_neg, mean_pos - mean_neg, math.nan)),
        "reward_accuracy": float(ordered.double().mean()),
    }


@torch.no_grad()
def bound_metrics(
    rewards: torch.Tensor, levels: torch.Tensor, multi_level: bool
) -> dict[str, float]:
    """How far Mult-DPO sits above the exact PL loss (docs/objectives.md, "The bound between Mult-DPO and PL").

    Per stage g with k_g items, A_g = sum of their e^r and B_g = sum of e^r over later
    levels, ``(L_mult,g - log k_g!) - L_pl,g`` lies in ``[0, (k_g - 1) log(1 + A_g/B_g)]``.
    Binary ``mult`` has one stage, level 1 against every later level (compared with
    ``pl`` on the same binary view); ``mult2`` (``multi_level``) sums over every level
    that has a later one.

    - ``bound_gap``: mean over contexts of the summed gap (``mult`` on a context without
      negatives: ``L_mult - log k!``, as L_pl = 0 there).
    - ``bound_gap_max``: mean over contexts of the summed upper bound (inf for ``mult``
      on a context without negatives and k > 1).
    - ``a_over_b``: mean over contexts with negatives of A/B, level 1 against every later
      level (inf once it overflows float64).
    """
    r = rewards.double()
    if not multi_level:
        levels = torch.where(levels > 1, 2, levels)  # mult's binary view
    gap = (mult2 if multi_level else mult)(r, levels) - pl(r, levels)
    upper = torch.zeros_like(gap)
    for g in present_levels(levels):
        here, later = levels == g, levels > g
        k = here.sum(-1).double()
        # mult counts level 1 even with no later level; mult2 skips such a level.
        counted = here.any(-1) & (later.any(-1) | (g == 1 and not multi_level))
        # Huge when no later level exists: the bound is then infinite (k > 1).
        log_ratio = masked_logsumexp(r, here) - masked_logsumexp(r, later)
        bound = torch.where(k > 1, (k - 1) * F.softplus(log_ratio), 0.0)
        gap = gap - torch.where(counted, torch.lgamma(k + 1), 0.0)
        upper = upper + torch.where(counted, bound, 0.0)
    has_neg = (levels > 1).any(-1)
    log_ab = masked_logsumexp(r, levels == 1) - masked_logsumexp(r, levels > 1)
    return {
        "bound_gap": float(gap.mean()),
        "bound_gap_max": float(upper.mean()),
        "a_over_b": _nanmean(torch.where(has_neg, log_ab.exp(), math.nan)),
    }


# --- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectiveEntry:
    """What the rest of the code knows about an objective.

    function: the per-context loss ``(rewards [B, n], levels [B, n]) -> [B]``.
    aliases: other accepted names (lower case).
    needs_negatives: a context without a negative is an error (``compute`` refuses it).
    multi_level: uses levels beyond positive / negative (run by default only on data
        with levels: `setdpo.quickstart`).
    extra_metrics: ``(rewards, levels) -> {name: float}`` logged beside `reward_metrics`.
    """

    function: Objective
    aliases: tuple[str, ...] = ()
    needs_negatives: bool = False
    multi_level: bool = False
    extra_metrics: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None


# Adding an objective: write its function above and add its entry here (docs/architecture.md).
OBJECTIVES: dict[str, ObjectiveEntry] = {
    "dpo": ObjectiveEntry(dpo, needs_negatives=True),
    "dmpo": ObjectiveEntry(dmpo, needs_negatives=True),
    "sdpo": ObjectiveEntry(sdpo, aliases=("s-dpo",), needs_negatives=True),
    "mult": ObjectiveEntry(
        mult, aliases=("mult-dpo",), extra_metrics=partial(bound_metrics, multi_level=False)
    ),
    "mult2": ObjectiveEntry(
        mult2,
        aliases=("mult2-dpo",),
        multi_level=True,
        extra_metrics=partial(bound_metrics, multi_level=True),
    ),
    "pl": ObjectiveEntry(pl),
}


def canonical_name(name: str) -> str:
    """The registry key for a loss name (case-insensitive, or one of an entry's aliases).

    Raises:
        ValueError: the name is not an objective; the message lists the valid names.
    """
    key = str(name).strip().lower()
    aliases = {alias: k for k, entry in OBJECTIVES.items() for alias in entry.aliases}
    key = aliases.get(key, key)
    if key not in OBJECTIVES:
        valid = ", ".join([*OBJECTIVES, *aliases])
        raise ValueError(f"unknown loss {name!r}; valid names: {valid}")
    return key


def names_help() -> str:
    """The objective names for help texts: ``dpo, dmpo, ...``."""
    return ", ".join(OBJECTIVES)
