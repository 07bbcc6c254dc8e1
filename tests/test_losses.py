"""The set-wise objectives: closed forms, equivalences, the PL bound, gradients, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from setdpo import losses, objectives_adaptive
from setdpo.losses import compute

F64 = torch.float64
NAMES = list(losses.OBJECTIVES)


def _logps(seed: int, shape: tuple[int, int], scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def _binary_levels(k: int, n_neg: int, pad: int = 0) -> torch.Tensor:
    return torch.tensor([[1] * k + [2] * n_neg + [0] * pad])


seeds = st.integers(0, 2**31 - 1)
betas = st.floats(0.05, 5.0)


@settings(max_examples=50, deadline=None)
@given(seed=seeds, beta=betas)
def test_dpo_one_pair_is_standard_dpo(seed, beta):
    pol, ref = _logps(seed, (1, 2), 5.0), _logps(seed + 1, (1, 2), 5.0)
    (pc, pr), (rc, rr) = pol[0], ref[0]
    expected = -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
    out = compute("dpo", pol, ref, torch.tensor([[1, 2]]), beta)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(seed=seeds, beta=betas, k=st.integers(1, 4), n_neg=st.integers(1, 8))
def test_sdpo_is_the_sdpo_formula(seed, beta, k, n_neg):
    # |r| <= 5 * 3 * 5 scale-wise: the naive sum of exps cannot overflow in float64.
    pol, ref = _logps(seed, (1, k + n_neg), 3.0), _logps(seed + 1, (1, k + n_neg), 3.0)
    r = beta * (pol - ref)[0]
    naive = [-F.logsigmoid(-torch.log(torch.exp(r[k:] - r[p]).sum())) for p in range(k)]
    out = compute("sdpo", pol, ref, _binary_levels(k, n_neg), beta)
    torch.testing.assert_close(out.loss, torch.stack(naive).mean(), rtol=1e-10, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(seed=seeds, beta=betas, n_neg=st.integers(1, 12), pad=st.integers(0, 3))
def test_k1_mult_and_pl_equal_sdpo(seed, beta, n_neg, pad):
    n = 1 + n_neg + pad
    pol, ref = _logps(seed, (1, n), 10.0), _logps(seed + 1, (1, n), 10.0)
    levels = _binary_levels(1, n_neg, pad)
    sdpo = compute("sdpo", pol, ref, levels, beta).per_context
    torch.testing.assert_close(compute("mult", pol, ref, levels, beta).per_context, sdpo)
    pl = compute("pl", pol, ref, levels, beta).per_context
    torch.testing.assert_close(pl, sdpo, rtol=1e-9, atol=1e-10)


@settings(max_examples=50, deadline=None)
@given(
    seed=seeds,
    beta=betas,
    k=st.integers(1, 6),
    n_neg=st.integers(1, 10),
    worse=st.integers(2, 5),
)
def test_mult2_with_two_levels_is_mult(seed, beta, k, n_neg, worse):
    # Two levels, 1 and any later value, in shuffled columns with padding.
    levels = torch.tensor([[1] * k + [worse] * n_neg + [0, 0]])
    levels = levels[
        :, torch.randperm(levels.shape[1], generator=torch.Generator().manual_seed(seed))
    ]
    pol, ref = _logps(seed, tuple(levels.shape), 4.0), _logps(seed + 1, tuple(levels.shape), 4.0)
    mult = compute("mult", pol, ref, levels, beta).per_context
    torch.testing.assert_close(compute("mult2", pol, ref, levels, beta).per_context, mult)


@settings(max_examples=50, deadline=None)
@given(seed=seeds, k=st.integers(1, 8), n_neg=st.integers(1, 15), scale=st.floats(0.01, 20.0))
def test_mult_pl_bound(seed, k, n_neg, scale):
    # 0 <= (L_mult - log k!) - L_pl <= (k - 1) log(1 + A/B)   (docs/objectives.md).
    levels = _binary_levels(k, n_neg)
    pol = _logps(seed, tuple(levels.shape), scale)
    r = pol[0]
    mult = compute("mult", pol, None, levels, 1.0)
    gap = mult.loss - math.lgamma(k + 1) - compute("pl", pol, None, levels, 1.0).loss
    log_a_over_b = torch.logsumexp(r[:k], 0) - torch.logsumexp(r[k:], 0)
    upper = (k - 1) * F.softplus(log_a_over_b)
    assert -1e-9 <= gap.item() <= upper.item() + 1e-9
    assert mult.metrics["bound_gap"] == pytest.approx(gap.item(), abs=1e-9)
    assert mult.metrics["bound_gap_max"] == pytest.approx(upper.item(), rel=1e-12)


def test_mult2_bound_per_level():
    # Per-level generalisation: the gaps and bounds of stages 1|{2,3} and 2|3 add up.
    levels = torch.tensor([[1, 1, 2, 2, 2, 3, 3, 0], [3, 1, 2, 1, 1, 3, 3, 3]])
    pol = _logps(11, tuple(levels.shape), 2.0)
    out = compute("mult2", pol, None, levels, 1.0)
    pl = compute("pl", pol, None, levels, 1.0).per_context
    gaps, uppers = [], []
    for b in range(2):
        r, lv = pol[b], levels[b]
        gap, upper = out.per_context[b] - pl[b], 0.0
        for g in (1, 2):
            here, later = r[lv == g], r[lv > g]
            gap = gap - math.lgamma(len(here) + 1)
            log_ratio = torch.logsumexp(here, 0) - torch.logsumexp(later, 0)
            upper += (len(here) - 1) * F.softplus(log_ratio).item()
        assert -1e-9 <= gap.item() <= upper + 1e-9
        gaps.append(gap.item())
        uppers.append(upper)
    assert out.metrics["bound_gap"] == pytest.approx(sum(gaps) / 2, abs=1e-9)
    assert out.metrics["bound_gap_max"] == pytest.approx(sum(uppers) / 2, rel=1e-12)


def test_hand_computed_losses():
    # Rewards r = (2, 0 | 1, -1) with levels (1, 1 | 2, 2); beta 1, reference-free.
    pol = torch.tensor([[2.0, 0.0, 1.0, -1.0]], dtype=F64)
    levels = torch.tensor([[1, 1, 2, 2]])
    sp = F.softplus
    t = torch.tensor

    def check(name: str, expected: float) -> None:
        got = compute(name, pol, None, levels, 1.0).loss
        torch.testing.assert_close(got, t(expected, dtype=F64), msg=name)

    # dpo: mean of softplus(-(r_p - r_n)) over the 4 pairs: diffs 1, 3, -1, 1.
    check("dpo", float(sum(sp(t(-d)) for d in (1.0, 3.0, -1.0, 1.0)) / 4))
    # dmpo: mean negative reward 0; mean of softplus(-2), softplus(0).
    check("dmpo", float((sp(t(-2.0)) + sp(t(0.0))) / 2))
    lse_n = math.log(math.e + math.exp(-1))
    # sdpo: mean over p of log(e^{r_p} + e^1 + e^-1) - r_p.
    check("sdpo", (math.log(math.e**2 + math.exp(lse_n)) - 2 + math.log(1 + math.exp(lse_n))) / 2)
    lse_all = math.log(math.e**2 + 1 + math.e + math.exp(-1))
    check("mult", 2 * lse_all - 2.0)
    check("mult2", 2 * lse_all - 2.0)
    # pl: P = sum over both orders of the two positives of the sequential choices.
    w = [math.e**2, 1.0, math.e, math.exp(-1)]
    total = sum(w)
    prob = w[0] / total * w[1] / (total - w[0]) + w[1] / total * w[0] / (total - w[1])
    check("pl", -math.log(prob))
    # simpo (gamma 0.5): mean over the 4 pairs of softplus(-(r_p - r_n - 0.5)).
    check("simpo", float(sum(sp(t(0.5 - d)) for d in (1.0, 3.0, -1.0, 1.0)) / 4))
    # lipo: rewards order the candidates 2 > 1 > 0 > -1, places (1, 3 | 2, 4); gains 2, 1.
    # Delta_pn = |1/log2(1 + tau_p) - 1/log2(1 + tau_n)|: pairs (1,2), (1,4), (3,2), (3,4).
    inv_d = [1 / math.log2(1 + place) for place in (1, 2, 3, 4)]
    pairs = [(0, 1, 1.0), (0, 3, 3.0), (2, 1, -1.0), (2, 3, 1.0)]  # places, r_p - r_n
    check("lipo", sum(abs(inv_d[a] - inv_d[b]) * float(sp(t(-d))) for a, b, d in pairs))


def test_dpo_over_levels_is_lipo_pairwise():
    # Levels 1 > 2 > 3 with rewards (0, 1, 3): pairs (1,2), (1,3), (2,3).
    pol = torch.tensor([[0.0, 1.0, 3.0]], dtype=F64)
    out = compute("dpo", pol, None, torch.tensor([[1, 2, 3]]), 1.0)
    expected = sum(F.softplus(torch.tensor(d, dtype=F64)) for d in (1.0, 3.0, 2.0)) / 3
    torch.testing.assert_close(out.loss, expected)


def test_positives_without_negatives():
    # Two positives with equal reward and no negative.
    pol = torch.tensor([[0.5, 0.5, 0.0], [0.3, -1.0, 2.0]], dtype=F64)
    levels = torch.tensor([[1, 1, 0], [1, 2, 2]])
    pl = compute("pl", pol, None, levels, 1.0).per_context
    assert pl[0].item() == 0.0  # probability 1
    mult = compute("mult", pol, None, levels, 1.0).per_context
    assert mult[0].item() == pytest.approx(2 * math.log(2), rel=1e-12)  # 2 (lse_P - r_p)
    assert compute("mult2", pol, None, levels, 1.0).per_context[0].item() == 0.0
    for name in ("dpo", "dmpo", "sdpo", "S-DPO", "dynamicpo", "recpo"):
        with pytest.raises(ValueError, match=r"context 0 has positives but no negative"):
            compute(name, pol, None, levels, 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name, monkeypatch):
    levels = torch.tensor([[1, 2, 2, 1, 0], [2, 1, 3, 2, 3]])
    if name in ("dmpo", "sdpo", "mult"):
        levels = levels.clamp(max=2)
    pol = _logps(21, (2, 5), 2.0).requires_grad_()
    ref = _logps(22, (2, 5), 2.0).requires_grad_()
    if name == "dynamicpo":  # its beta factors are constants of the step: hold them fixed
        fixed = objectives_adaptive.dynamicpo_selection(pol.detach(), levels)
        monkeypatch.setattr(objectives_adaptive, "dynamicpo_selection", lambda *a: fixed)
    assert torch.autograd.gradcheck(
        lambda p, r: compute(name, p, r, levels, 0.7).per_context, (pol, ref)
    )


@pytest.mark.parametrize("name", NAMES)
def test_padding_never_changes_results(name):
    levels = torch.tensor([[1, 2, 2, 2], [2, 1, 1, 2]])
    if name in ("dpo", "mult2", "pl", "lipo", "simpo", "dynamicpo", "recpo"):
        levels[1, 3] = 3
    pol, ref = _logps(31, (2, 4), 3.0), _logps(32, (2, 4), 3.0)
    base = compute(name, pol, ref, levels, 0.5)
    junk = _logps(33, (2, 3), 1e3)
    junk[0, 1] = math.nan  # padding may hold anything, even NaN
    padded = compute(
        name,
        torch.cat([junk, pol], 1),
        torch.cat([-junk, ref], 1),
        torch.cat([torch.zeros(2, 3, dtype=levels.dtype), levels], 1),
        0.5,
    )
    torch.testing.assert_close(padded.per_context, base.per_context, rtol=1e-12, atol=1e-13)
    assert padded.metrics == pytest.approx(base.metrics, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_rewards_finite(name, dtype, scale):
    levels = torch.tensor([[1, 2, 2, 2, 2, 0], [1, 1, 1, 2, 3, 3], [1, 1, 1, 1, 1, 2]])
    if name in ("dmpo", "sdpo", "mult"):
        levels = levels.clamp(max=2)
    pol = (_logps(41, (3, 6)) * scale).to(dtype).requires_grad_()
    out = compute(name, pol, None, levels, 1.0)
    (grad,) = torch.autograd.grad(out.loss, pol)
    assert torch.isfinite(out.per_context).all() and torch.isfinite(grad).all()


def test_metrics_hand_computed():
    # Context 0: rewards (3 | 1, 2), ordered. Context 1: (0, 2 | 1), not ordered.
    pol = torch.tensor([[3.0, 1.0, 2.0], [0.0, 2.0, 1.0]], dtype=F64)
    levels = torch.tensor([[1, 2, 2], [1, 1, 2]])
    m = compute("mult", pol, None, levels, 1.0).metrics
    assert m["reward_positive"] == pytest.approx((3.0 + 1.0) / 2)
    assert m["reward_negative"] == pytest.approx((1.5 + 1.0) / 2)
    assert m["reward_margin"] == pytest.approx((1.5 + 0.0) / 2)
    assert m["reward_accuracy"] == 0.5
    a_over_b = (math.exp(3) / (math.e + math.e**2) + (1 + math.e**2) / math.e) / 2
    assert m["a_over_b"] == pytest.approx(a_over_b, rel=1e-12)
    assert "bound_gap" not in compute("sdpo", pol, None, levels, 1.0).metrics
    # Three levels: accuracy needs level 2 above level 3 too.
    m3 = compute("pl", pol[:1], None, torch.tensor([[1, 3, 2]]), 1.0).metrics
    assert m3["reward_accuracy"] == 1.0
    m3 = compute("pl", pol[:1], None, torch.tensor([[1, 2, 3]]), 1.0).metrics
    assert m3["reward_accuracy"] == 0.0


def test_rewards_reference_free_and_names():
    pol, ref = _logps(51, (2, 3)), _logps(52, (2, 3))
    levels = torch.tensor([[1, 2, 0], [1, 2, 2]])
    out = compute("SDPO", pol.requires_grad_(), ref, levels, 2.0)
    expected = torch.where(levels > 0, 2.0 * (pol - ref), 0.0).detach()
    torch.testing.assert_close(out.rewards, expected)
    assert not out.rewards.requires_grad and out.loss.requires_grad
    torch.testing.assert_close(
        compute("sdpo", pol, None, levels, 2.0).loss,
        compute("sdpo", pol, torch.zeros_like(pol), levels, 2.0).loss,
    )
    aliases = [("s-dpo", "sdpo"), ("Mult-DPO", "mult"), ("MULT2-dpo", "mult2")]
    for alias, key in [*aliases, ("LiPO-lambda", "lipo")]:
        assert losses.canonical_name(alias) == key
        torch.testing.assert_close(
            compute(alias, pol, ref, levels, 1.0).loss, compute(key, pol, ref, levels, 1.0).loss
        )
    assert [losses.canonical_name(n.upper()) for n in NAMES] == NAMES


GOOD_LEVELS = torch.tensor([[1, 2, 2], [1, 2, 0]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "ipo"}, r"unknown loss 'ipo'; valid names: dpo, dmpo, sdpo, mult, mult2, pl"),
        ({"beta": 0.0}, r"beta must be a finite number > 0; got 0.0"),
        ({"beta": -1.0}, r"beta must be a finite number > 0; got -1.0"),
        ({"beta": math.nan}, r"beta must be a finite number > 0; got nan"),
        ({"policy_logps": torch.zeros(3)}, r"policy_logps must be 2-D \[B, n\]; got shape \(3,\)"),
        ({"ref_logps": torch.zeros(2, 4)}, r"ref_logps has shape \(2, 4\) but policy_logps .*\(2, 3\)"),
        ({"levels": torch.ones(2, 4, dtype=torch.long)}, r"levels has shape \(2, 4\) but"),
        ({"levels": torch.ones(3, 3, dtype=torch.long)}, r"levels has shape \(3, 3\) but"),
        ({"policy_logps": torch.zeros(2, 3, dtype=torch.long)}, r"policy_logps must be a float tensor; got dtype torch.int64"),
        ({"ref_logps": torch.zeros(2, 3, dtype=torch.float32)}, r"ref_logps has dtype torch.float32 but policy_logps has torch.float64"),
        ({"levels": GOOD_LEVELS.double()}, r"levels must be an integer tensor; got dtype torch.float64"),
        ({"levels": torch.tensor([[1, 2, 2], [2, 2, 0]])}, r"context 1 has no positive \(level 1\) candidate; levels \[2, 2, 0\]"),
        ({"levels": torch.tensor([[1, 2, 2], [0, 0, 0]])}, r"context 1 has no positive \(level 1\)"),
        ({"levels": torch.tensor([[1, 2, -1], [1, 2, 0]])}, r"context 0: levels must be >= 0; got \[1, 2, -1\]"),
        ({"policy_logps": torch.tensor([[0.0, 1.0, 2.0], [0.0, math.nan, 0.0]], dtype=F64)}, r"policy_logps is nan at context 1, candidate 1"),
        ({"ref_logps": torch.tensor([[0.0, 1.0, math.inf], [0.0, 0.0, 0.0]], dtype=F64)}, r"ref_logps is inf at context 0, candidate 2"),
        ({"policy_logps": torch.zeros(0, 3, dtype=F64), "ref_logps": None, "levels": torch.zeros(0, 3, dtype=torch.long)}, r"empty batch"),
        ({"name": "dpo", "simpo_gamma": 0.5}, r"dpo takes no option simpo_gamma \(its options: none\)"),
        ({"name": "simpo", "gamma": 0.5}, r"simpo takes no option gamma \(its options: simpo_gamma\)"),
        ({"name": "simpo", "simpo_gamma": math.nan}, r"simpo_gamma must be a finite number; got nan"),
        ({"name": "simpo", "levels": torch.tensor([[1, 2, 2], [1, 1, 0]])}, r"context 1 has positives but no negative .*simpo needs one"),
    ],
)  # fmt: skip
def test_bad_input_messages(kwargs, message):
    args = {
        "name": "pl",
        "policy_logps": _logps(61, (2, 3)),
        "ref_logps": _logps(62, (2, 3)),
        "levels": GOOD_LEVELS,
        "beta": 1.0,
    }
    with pytest.raises(ValueError, match=message):
        compute(**{**args, **kwargs})


def test_unknown_name_in_canonical_name():
    with pytest.raises(ValueError, match=r"unknown loss 'orpo'; valid names: .*s-dpo, mult-dpo"):
        losses.canonical_name("orpo")


def test_a_new_objective_is_one_registry_entry(monkeypatch):
    """What docs/architecture.md promises: an entry in `OBJECTIVES` is all it takes for
    `compute`, its aliases, the negatives check, its extra metrics and the training config."""
    from setdpo.training.config import PrefConfig, load_config

    def hinge(rewards: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        pos = torch.where(levels == 1, rewards, math.inf).amin(-1)
        neg = torch.where(levels > 1, rewards, -math.inf).amax(-1)
        return F.relu(1 - (pos - neg))

    entry = losses.ObjectiveEntry(
        hinge,
        aliases=("hinge-dpo",),
        needs_negatives=True,
        extra_metrics=lambda rewards, levels: {"max_reward": float(rewards.max())},
    )
    monkeypatch.setitem(losses.OBJECTIVES, "hinge", entry)
    pol, ref = torch.tensor([[0.5, 0.25, 0.0]], dtype=F64), torch.zeros(1, 3, dtype=F64)
    out = compute("Hinge-DPO", pol, ref, torch.tensor([[1, 2, 2]]), 2.0)
    torch.testing.assert_close(out.loss, torch.tensor(0.5, dtype=F64))  # 1 - (1.0 - 0.5)
    assert out.metrics["max_reward"] == 1.0 and "reward_accuracy" in out.metrics
    with pytest.raises(ValueError, match="hinge needs one"):
        compute("hinge", pol, ref, torch.tensor([[1, 1, 0]]), 1.0)
    values = {"data": "/data", "init": "/runs/sft", "output_dir": "/runs/x", "loss": "hinge-dpo"}
    config = load_config(PrefConfig, None, values)
    assert config.loss == "hinge"
    assert "hinge" in losses.names_help()


# --- LiPO-lambda and SimPO -----------------------------------------------------------------


def test_lipo_hand_computed():
    # Delta_ij = |2^psi_i - 2^psi_j| |1/log2(1 + tau_i) - 1/log2(1 + tau_j)|, psi = G_ctx - g;
    # the pair term is Delta_ij log(1 + exp(-(r_i - r_j))), summed over pairs g_i < g_j.
    def lipo(rewards: list[float], levels: list[int]) -> float:
        pol = torch.tensor([rewards], dtype=F64)
        return compute("lipo", pol, None, torch.tensor([levels]), 1.0).loss.item()

    # Two candidates, places 1 and 2, gains 2 and 1: (1 - 1/log2 3) log(1 + e^-1).
    assert lipo([1.0, 0.0], [1, 2]) == pytest.approx(0.36907024642854247 * 0.31326168751822286)
    # Levels 1 and 4: psi 3 and 0, gains 8 and 1: the same pair weighs 7 times as much.
    assert lipo([1.0, 0.0], [1, 4]) == pytest.approx(7 * 0.11561556820897158)
    # Levels 1 > 2 > 3 (gains 4, 2, 1) with rewards (0, 2, 1): places 3, 1, 2.
    # (1,2): 2 |1/2 - 1| = 1.0, log(1 + e^2) = 2.1269280110429727;
    # (1,3): 3 |1/2 - 1/log2 3| = 0.3927892607143726, log(1 + e) = 1.3132616875182228;
    # (2,3): 1 |1 - 1/log2 3| = 0.36907024642854247, log(1 + e^-1) = 0.31326168751822286.
    expected = 2.1269280110429727 + 0.3927892607143726 * 1.3132616875182228
    expected += 0.36907024642854247 * 0.31326168751822286
    assert lipo([0.0, 2.0, 1.0], [1, 2, 3]) == pytest.approx(expected, rel=1e-12)
    # Tied rewards: the weight is its mean over the orders that break the tie. Two
    # candidates: both orders give 1 - 1/log2 3; the logistic term is log 2.
    assert lipo([0.0, 0.0], [1, 2]) == pytest.approx(0.36907024642854247 * math.log(2))
    # Three tied candidates, places 1..3 with 1/D = 1, 0.6309, 0.5: the mean gap over two
    # distinct places is (0.3691 + 0.5 + 0.1309) / 3 = 1/3; two pairs (1, 2), (1, 3).
    assert lipo([0.0, 0.0, 0.0], [1, 2, 2]) == pytest.approx(2 / 3 * math.log(2), rel=1e-12)
    # One level only: no pair, 0.
    assert lipo([0.3, -1.0], [1, 1]) == 0.0


def _lipo_bruteforce(rewards: list[float], levels: list[int]) -> float:
    """LiPO-lambda from its definition, by explicit loops: for every order of the real
    candidates that sorts their rewards best first (several when rewards tie), the
    paper's sum over pairs with its ranks; the mean over those orders."""
    real = [i for i, g in enumerate(levels) if g > 0]
    worst = max(levels[i] for i in real)
    orders = [
        order
        for order in itertools.permutations(real)
        if all(rewards[a] >= rewards[b] for a, b in itertools.pairwise(order))
    ]
    total = 0.0
    for order in orders:
        tau = {i: place for place, i in enumerate(order, start=1)}
        for i in real:
            for j in real:
                if levels[i] < levels[j]:
                    gain = abs(2.0 ** (worst - levels[i]) - 2.0 ** (worst - levels[j]))
                    gap = abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                    total += gain * gap * math.log1p(math.exp(-(rewards[i] - rewards[j])))
    return total / len(orders)


@settings(max_examples=60, deadline=None)
@given(
    seed=seeds,
    n=st.integers(2, 6),
    pad=st.integers(0, 2),
    ties=st.booleans(),
    scale=st.floats(0.1, 5.0),
)
def test_lipo_matches_bruteforce(seed, n, pad, ties, scale):
    # Three contexts of n real candidates (levels 1..4, at least one 1) in random columns
    # among padding; with `ties`, rewards take 5 values, so ties are common.
    gen = torch.Generator().manual_seed(seed)
    pol = torch.full((3, n + pad), math.nan, dtype=F64)
    levels = torch.zeros(3, n + pad, dtype=torch.long)
    for b in range(3):
        lv = torch.randint(1, 5, (n,), generator=gen)
        lv[torch.randint(0, n, (1,), generator=gen)] = 1
        if ties:
            r = torch.randint(-2, 3, (n,), generator=gen).to(F64) * scale
        else:
            r = torch.randn(n, generator=gen, dtype=F64) * scale
        columns = torch.randperm(n + pad, generator=gen)[:n]
        pol[b, columns], levels[b, columns] = r, lv
    out = compute("lipo", pol, None, levels, 1.0).per_context
    expected = [_lipo_bruteforce(pol[b].tolist(), levels[b].tolist()) for b in range(3)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=F64), rtol=1e-10, atol=1e-12)


def test_lipo_weights_carry_no_gradient():
    # d/dr of sum Delta_ij softplus(-(r_i - r_j)) with Delta held fixed (LambdaLoss).
    pol = torch.tensor([[0.0, 2.0, 1.0]], dtype=F64, requires_grad=True)
    levels = torch.tensor([[1, 2, 3]])
    (grad,) = torch.autograd.grad(compute("lipo", pol, None, levels, 1.0).loss, pol)
    weights = losses.lambda_weights(pol.detach(), levels)[0]
    expected = torch.zeros(3, dtype=F64)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        push = weights[i, j] * torch.sigmoid(-(pol[0, i] - pol[0, j])).detach()
        expected[i] -= push
        expected[j] += push
    torch.testing.assert_close(grad[0], expected)


@settings(max_examples=50, deadline=None)
@given(seed=seeds, beta=betas, gamma=st.floats(0.0, 3.0))
def test_simpo_one_pair_is_the_paper_formula(seed, beta, gamma):
    # Eq. 6 on length-averaged log-probs, no reference: -log sigmoid(b s_w - b s_l - gamma).
    avg = _logps(seed, (1, 2), 2.0)
    expected = -F.logsigmoid(beta * avg[0, 0] - beta * avg[0, 1] - gamma)
    out = compute("simpo", avg, None, torch.tensor([[1, 2]]), beta, simpo_gamma=gamma)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, beta=betas)
def test_simpo_with_no_margin_is_dpo_on_its_rewards(seed, beta):
    levels = torch.tensor([[1, 2, 3, 0, 1, 2], [2, 2, 1, 1, 1, 2]])
    pol = _logps(seed, tuple(levels.shape), 3.0)
    simpo = compute("simpo", pol, None, levels, beta, simpo_gamma=0.0).per_context
    torch.testing.assert_close(simpo, compute("dpo", pol, None, levels, beta).per_context)
    # A margin only raises the loss: every pair needs gamma more.
    assert (compute("simpo", pol, None, levels, beta).per_context > simpo).all()


def test_the_new_entries_say_what_the_trainer_needs():
    simpo, lipo = losses.OBJECTIVES["simpo"], losses.OBJECTIVES["lipo"]
    assert simpo.reference_free and simpo.length_normalized and simpo.options == ("simpo_gamma",)
    assert not (lipo.reference_free or lipo.length_normalized or lipo.options)
    assert losses.OBJECTIVES["dynamicpo"].options == ("dynamicpo_margin", "dynamicpo_alpha")
    assert losses.OBJECTIVES["recpo"].options == ("recpo_lambda",)
    # The quickstart's defaults stay the five objectives its README timings are for.
    default = [name for name, entry in losses.OBJECTIVES.items() if entry.quickstart]
    assert default == ["dpo", "dmpo", "sdpo", "mult", "mult2", "pl"]
