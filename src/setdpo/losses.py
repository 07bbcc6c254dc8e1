"""Set-wise preference objectives in reward space (docs/objectives.md).

Every objective is a small pure function ``(rewards [B, n], levels [B, n]) -> [B]``
(plus the keyword options its entry names) giving the per-context loss; ``OBJECTIVES``
maps names to entries (`ObjectiveEntry`: the function and what the rest of the code asks
about it) and ``compute`` is the one entry point: it validates the batch, forms the
implicit rewards ``r = beta * (s_theta - s_ref)``, dispatches, averages over contexts and
computes the metrics. ``levels`` holds 1 for the most preferred candidates, larger values
for less preferred ones and 0 for padding, which never changes a result.

Binary objectives (``dmpo``, ``sdpo``, ``mult``) treat level 1 as positive (P, k items)
and every level > 1 as negative (N). ``dpo``, ``mult2``, ``pl``, ``lipo`` and ``simpo`` use
every level. ``simpo`` is reference-free and length-normalised (its entry says so: the
trainer then computes no reference and averages each candidate's log-prob over its tokens)
and takes one option, its target margin ``simpo_gamma``. ``dynamicpo`` and ``recpo``
(``setdpo.objectives_adaptive``) are binary, with per-pair betas or margins and options.

A context with positives but no negatives: ``pl``, ``mult2`` and ``lipo`` give 0 (the only
ordered partition has probability 1; no pair to weigh), ``mult`` gives
``sum_{p in P} (lse_P r - r_p)`` (the multinomial surrogate over the positives alone,
>= log k!), and ``dpo``, ``dmpo``, ``sdpo``, ``simpo``, ``dynamicpo`` and ``recpo`` raise
``ValueError``: they have no negative to compare against.

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

from setdpo.objectives_adaptive import dynamicpo, dynamicpo_metrics, recpo
from setdpo.plackett_luce import masked_logsumexp, present_levels, setwise_log_prob

# (rewards [B, n], levels [B, n], **options) -> per-context loss [B]
Objective = Callable[..., torch.Tensor]


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


def _ordered_pairs(levels: torch.Tensor) -> torch.Tensor:
    """[B, n, n] bool: (i, j) with 0 < g_i < g_j, i preferred to j."""
    valid = levels > 0
    return (levels[:, :, None] < levels[:, None, :]) & valid[:, :, None] & valid[:, None, :]


def _pair_logistic(rewards: torch.Tensor) -> torch.Tensor:
    """[B, n, n]: ``-log sigmoid(r_i - r_j)`` for every (i, j)."""
    return -F.logsigmoid(rewards[:, :, None] - rewards[:, None, :])


def dpo(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7) over all pairs of different levels.

    Mean over pairs (i, j) with 0 < g_i < g_j of ``-log sigmoid(r_i - r_j)``: with one
    positive and one negative the standard DPO loss; over several levels LiPO's
    pairwise Bradley-Terry form (Liu et al. 2024, arXiv 2402.01878).
    """
    pairs = _ordered_pairs(levels)
    return torch.where(pairs, _pair_logistic(rewards), 0.0).sum((1, 2)) / pairs.sum((1, 2))


SIMPO_GAMMA = 0.5  # SimPO's target margin: gamma / beta = 0.5 at beta 1 (TRL's simpo_gamma)


def simpo(
    rewards: torch.Tensor, levels: torch.Tensor, simpo_gamma: float = SIMPO_GAMMA
) -> torch.Tensor:
    """SimPO (Meng et al. 2024, arXiv 2405.14734, eq. 6) over all pairs of different levels.

    Mean over pairs (i, j) with 0 < g_i < g_j of ``-log sigmoid(r_i - r_j - gamma)``, with
    the reference-free, length-normalised reward ``r = beta / |y| log pi_theta(y|x)`` (the
    entry's ``reference_free`` and ``length_normalized``: the trainer scores no reference
    and averages log-probs over tokens). One positive and one negative give the paper's
    loss; several positives and negatives (and levels) are averaged over pairs, as ``dpo``
    does. ``simpo_gamma = 0`` is ``dpo`` on the same rewards.
    """
    pairs = _ordered_pairs(levels)
    margin_loss = -F.logsigmoid(rewards[:, :, None] - rewards[:, None, :] - simpo_gamma)
    return torch.where(pairs, margin_loss, 0.0).sum((1, 2)) / pairs.sum((1, 2))


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


@torch.no_grad()
def lambda_weights(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """LiPO-lambda's Lambda weights ``Delta_ij`` [B, n, n] (no gradient), 0 off the pairs.

    ``Delta_ij = |G_i - G_j| |1/D(tau_i) - 1/D(tau_j)|`` for pairs 0 < g_i < g_j (Liu et al.
    2024, arXiv 2402.01878, section 4; LambdaLoss, Wang et al. 2018), with

    - the graded label ``psi = G_ctx - g``: how many levels an item lies above the
      context's worst level ``G_ctx`` (binary: positives 1, negatives 0; padding ignored);
    - the gain ``G = 2^psi`` (the paper's ``2^psi - 1`` gives the same differences);
    - the discount ``D(tau) = log2(1 + tau)``, ``tau`` the item's place (1 = top) when the
      context's candidates are sorted by the current rewards, best first.

    Rewards that tie (every reward is 0 at the first step) leave ``tau`` open: the weight is
    then its mean over the orders that break the ties uniformly at random (TF-Ranking
    breaks them at random), so no column order matters. A tie group of m candidates
    holds places a..a+m-1; for two different groups the mean is ``|mean 1/D over one -
    mean 1/D over the other|``, inside one group ``sum_{p<q} (1/D(p) - 1/D(q)) / C(m, 2)``
    over its places. Computed in float64.
    """
    r, valid = rewards.double(), levels > 0
    n = r.shape[-1]
    above = (r[:, None, :] > r[:, :, None]) & valid[:, None, :]  # [B, i, j]: r_j > r_i
    tied = (r[:, None, :] == r[:, :, None]) & valid[:, None, :]  # [B, i, j]: r_j == r_i
    first = 1 + above.sum(-1)  # [B, n]: the top place of i's tie group
    last = first + tied.sum(-1) - 1  # [B, n]: its bottom place
    place = torch.arange(1, n + 1, dtype=r.dtype, device=r.device)
    inv_d = 1.0 / torch.log2(1.0 + place)  # 1 / D(p), p = 1..n
    zero = r.new_zeros(1)
    cum = torch.cat([zero, inv_d.cumsum(0)])  # cum[p] = sum_{q <= p} 1/D(q)
    cum_p = torch.cat([zero, (place * inv_d).cumsum(0)])  # sum_{q <= p} q / D(q)
    last = last.clamp(min=first)  # padding: an empty group, never read below
    size, top = (last - first + 1).to(r.dtype), first.to(r.dtype)
    s1 = cum[last] - cum[first - 1]  # sum of 1/D over the group's places
    s2 = cum_p[last] - cum_p[first - 1]
    mean = s1 / size  # [B, n]
    # sum_{k=0}^{m-1} (m - 1 - 2k) / D(a + k) = (m - 1 + 2a) s1 - 2 s2, over C(m, 2) pairs.
    within = ((size - 1 + 2 * top) * s1 - 2 * s2) * 2 / (size * (size - 1)).clamp(min=1)
    spread = torch.where(tied, within[:, :, None], (mean[:, :, None] - mean[:, None, :]).abs())
    psi = (levels.amax(-1, keepdim=True) - levels).to(r.dtype)
    gain = torch.exp2(psi)
    weights = (gain[:, :, None] - gain[:, None, :]).abs() * spread
    return torch.where(_ordered_pairs(levels), weights, 0.0).to(rewards.dtype)


def lipo(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """LiPO-lambda (Liu et al. 2024, arXiv 2402.01878, the Lambda-loss objective of section 4).

    ``sum over pairs (i, j) with g_i < g_j of Delta_ij log(1 + exp(-(r_i - r_j)))``, the
    Lambda weights ``Delta_ij`` of ``lambda_weights`` held constant (computed from the
    detached rewards, as LambdaLoss does). Summed over pairs, not averaged, as the paper
    writes it. A context with a single level gives 0.
    """
    return (lambda_weights(rewards, levels) * _pair_logistic(rewards)).sum((1, 2))


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


def _check_options(name: str, options: dict[str, float]) -> None:
    """The options of ``compute`` are the entry's, each a finite number."""
    allowed = OBJECTIVES[name].options
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) or "none"
        raise ValueError(f"{name} takes no option {', '.join(unknown)} (its options: {takes})")
    for key, value in options.items():
        try:
            ok = math.isfinite(float(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{key} must be a finite number; got {value!r}")


def compute(
    name: str,
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    levels: torch.Tensor,
    beta: float,
    **options: float,
) -> LossOutput:
    """Validate a batch, compute the implicit rewards and the objective ``name``.

    Args:
        name: an ``OBJECTIVES`` key or alias, any case.
        policy_logps: [B, n] float candidate log-probs under the policy.
        ref_logps: [B, n] same dtype under the reference, or None (reference-free:
            rewards are ``beta * policy_logps``).
        levels: [B, n] integer, 1 = most preferred, larger = less, 0 = padding.
        beta: > 0, the reward scale.
        options: the entry's ``options`` (``simpo_gamma`` for simpo, ``dynamicpo_margin``
            and ``dynamicpo_alpha`` for dynamicpo, ``recpo_lambda`` for recpo); left out,
            the function's default.

    Returns:
        ``LossOutput``; ``metrics`` are means over contexts (see ``reward_metrics``),
        plus the entry's ``extra_metrics`` (``bound_gap``, ``bound_gap_max`` and
        ``a_over_b`` for mult / mult2; ``boundary_share`` for dynamicpo).

    Raises:
        ValueError: unknown name, beta <= 0, an option the entry does not take or not a
            finite number, wrong shape or dtype, levels not matching, NaN or inf in a
            non-padding entry, a context with no positive, or (objectives with
            ``needs_negatives``: dpo, dmpo, sdpo, simpo, dynamicpo, recpo) a context with no
            negative. The
            message names the context.
    """
    key = canonical_name(name)
    entry = OBJECTIVES[key]
    _check_options(key, options)
    _validate(key, policy_logps, ref_logps, levels, beta)
    valid = levels > 0
    margin = policy_logps if ref_logps is None else policy_logps - ref_logps
    # Padding may hold anything (even NaN): replace it before any arithmetic.
    rewards = torch.where(valid, float(beta) * margin, 0.0)
    # Detached policy scores for an objective that selects by them (DynamicPO), padding 0.
    scores = {"policy_logps": torch.where(valid, policy_logps.detach(), 0.0)}
    scores = scores if entry.policy_scores else {}
    per_context = entry.function(rewards, levels, **options, **scores)
    metrics = reward_metrics(rewards.detach(), levels)
    if entry.extra_metrics is not None:
        metrics.update(entry.extra_metrics(rewards.detach(), levels, **scores))
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

    function: the per-context loss ``(rewards [B, n], levels [B, n], **options) -> [B]``.
    aliases: other accepted names (lower case).
    needs_negatives: a context without a negative is an error (``compute`` refuses it).
    multi_level: uses levels beyond positive / negative (run by default only on data
        with levels: `setdpo.quickstart`).
    extra_metrics: ``(rewards, levels) -> {name: float}`` logged beside `reward_metrics`
        (plus ``policy_logps`` under ``policy_scores``).
    reference_free: rewards are ``beta * s_theta``: the preference trainer computes, loads
        and memoises no reference log-probs (`setdpo.training.preference`).
    length_normalized: ``s_theta`` is the candidate's log-prob averaged over its tokens
        (`PrefConfig` turns ``average_logps`` on: policy and hard negatives score so).
    options: keyword arguments of ``function``, each a `PrefConfig` field of the same
        name that the trainer passes to ``compute``.
    policy_scores: ``function`` and ``extra_metrics`` also take ``policy_logps`` [B, n], the
        policy's own candidate log-probs, detached, 0 at padding (DynamicPO picks its
        boundary negatives and per-pair betas by the policy's scores, not by the rewards).
    quickstart: among the quickstart's default objectives (the README's demo and its
        measured times are for these); the others run when named (``--losses``).
    """

    function: Objective
    aliases: tuple[str, ...] = ()
    needs_negatives: bool = False
    multi_level: bool = False
    extra_metrics: Callable[..., dict[str, float]] | None = None
    reference_free: bool = False
    length_normalized: bool = False
    options: tuple[str, ...] = ()
    policy_scores: bool = False
    quickstart: bool = True


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
    "lipo": ObjectiveEntry(lipo, aliases=("lipo-lambda",), quickstart=False),
    "simpo": ObjectiveEntry(
        simpo,
        needs_negatives=True,
        reference_free=True,
        length_normalized=True,
        options=("simpo_gamma",),
        quickstart=False,
    ),
    # setdpo.objectives_adaptive: per-pair adaptive beta / margins from recommendation papers.
    "dynamicpo": ObjectiveEntry(
        dynamicpo,
        needs_negatives=True,
        extra_metrics=dynamicpo_metrics,
        options=("dynamicpo_margin", "dynamicpo_alpha"),
        policy_scores=True,
        quickstart=False,
    ),
    "recpo": ObjectiveEntry(
        recpo, needs_negatives=True, options=("recpo_lambda",), quickstart=False
    ),
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
