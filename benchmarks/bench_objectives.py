"""Time the set-wise objectives and the exact PL likelihood against enumeration.

Prints two markdown tables:

1. forward + backward time per 1,024 contexts of 20 candidates for every objective at
   k = 1, 5, 10 positives (float32, as in training): the objective alone on rewards,
   and ``setdpo.losses.compute`` with its validation and metrics;
2. ``pl`` (log-space quadrature, batched) against brute-force enumeration of the k!
   orderings for k = 1..9 (float64), with the largest disagreement in log P;
3. the quadrature's worst error against enumeration for several grid sizes.
   Enumeration runs one context at a time; it is timed on ``--brute-contexts`` contexts
   (fewer for large k, see ``_brute_contexts``) and scaled to 1,024, as the table says.

Run: ``.venv/bin/python benchmarks/bench_objectives.py`` (``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from setdpo import losses
from setdpo.plackett_luce import (
    DEFAULT_GRID_SIZE,
    setwise_log_prob,
    setwise_log_prob_bruteforce,
)


def _time(fn: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _batch(
    batch: int, n: int, k: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """policy and reference log-probs [batch, n] (scale of real sums) and binary levels."""
    gen = torch.Generator().manual_seed(seed)
    policy = -30 + 5 * torch.randn(batch, n, generator=gen, dtype=dtype)
    ref = policy + 0.5 * torch.randn(batch, n, generator=gen, dtype=dtype)
    levels = torch.full((batch, n), 2, dtype=torch.long)
    levels[:, :k] = 1
    return policy, ref, levels


def _objective_step(
    objective: losses.Objective, policy: torch.Tensor, ref: torch.Tensor, levels: torch.Tensor
) -> None:
    objective(0.1 * (policy - ref), levels).mean().backward()


def _compute_step(name: str, policy: torch.Tensor, ref: torch.Tensor, levels: torch.Tensor) -> None:
    losses.compute(name, policy, ref, levels, 0.1).loss.backward()


def _quadrature_step(rewards: torch.Tensor, levels: torch.Tensor) -> None:
    setwise_log_prob(rewards, levels).sum().backward()


def _brute_step(rewards: torch.Tensor, levels: torch.Tensor) -> None:
    setwise_log_prob_bruteforce(rewards, levels, max_items=9).sum().backward()


def objective_table(batch: int, n: int, repeats: int) -> str:
    """Markdown table: ms per ``batch`` contexts, forward + backward, per objective and k."""
    ks = (1, 5, 10)
    head = " | ".join(f"k={k} objective | k={k} compute()" for k in ks)
    lines = [f"| objective | {head} |", "|---" * (1 + 2 * len(ks)) + "|"]
    for name, entry in losses.OBJECTIVES.items():
        cells = []
        for k in ks:
            policy, ref, levels = _batch(batch, n, k, torch.float32)
            policy.requires_grad_()
            bare = partial(_objective_step, entry.function, policy, ref, levels)
            full = partial(_compute_step, name, policy, ref, levels)
            cells += [f"{1e3 * _time(bare, repeats):.1f}", f"{1e3 * _time(full, repeats):.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _brute_contexts(k: int, requested: int) -> int:
    """Contexts to enumerate for k positives: keep each row to about a second or two."""
    return max(1, min(requested, 2 * 10**5 // math.factorial(k)))


def pl_table(batch: int, n: int, repeats: int, brute_contexts: int, ks: range) -> str:
    """Markdown table: quadrature vs enumeration, ms per ``batch`` contexts (fwd + bwd)."""
    lines = [
        f"| k | k! | pl quadrature, ms / {batch} ctx | brute force, ms / {batch} ctx "
        "| brute contexts timed | brute / quadrature | max abs diff log P |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in ks:
        policy, _, levels = _batch(batch, n, k, torch.float64, seed=k)
        rewards = (0.3 * policy).requires_grad_()
        quad = _time(partial(_quadrature_step, rewards, levels), repeats)
        m = _brute_contexts(k, brute_contexts)
        sub_r, sub_lv = rewards[:m].detach().requires_grad_(), levels[:m]
        brute_repeats = 1 if k >= 8 else repeats
        brute = _time(partial(_brute_step, sub_r, sub_lv), brute_repeats) * (batch / m)
        with torch.no_grad():
            diff = (
                setwise_log_prob(sub_r, sub_lv) - setwise_log_prob_bruteforce(sub_r, sub_lv, 9)
            ).abs()
        scaled = "" if m == batch else f" (x{batch // m} scaled)"
        lines.append(
            f"| {k} | {math.factorial(k)} | {1e3 * quad:.1f} | {1e3 * brute:.0f}{scaled} "
            f"| {m} | {brute / quad:.1f} | {float(diff.max()):.1e} |"
        )
    return "\n".join(lines)


def grid_table(cases: int, grid_sizes: tuple[int, ...]) -> str:
    """Markdown table: worst |log P_quadrature - log P_enumerated| against grid size.

    Random contexts in the tested range: k in 1..6 positives, 1..15 negatives, rewards
    N(0, s^2) with s in [0.01, 30] and the positives shifted by N(0, (2 s)^2), float64.
    """
    gen = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(cases):
        k, n_neg = (int(torch.randint(lo, hi, (), generator=gen)) for lo, hi in ((1, 7), (1, 16)))
        scale = 0.01 + 29.99 * float(torch.rand((), generator=gen))
        r = scale * torch.randn(1, k + n_neg, generator=gen, dtype=torch.float64)
        r[0, :k] += 2 * scale * float(torch.randn((), generator=gen))
        levels = torch.tensor([[1] * k + [2] * n_neg])
        batch.append((r, levels, setwise_log_prob_bruteforce(r, levels)))
    lines = [f"| grid size | worst abs diff in log P over {cases} contexts |", "|---|---|"]
    for size in grid_sizes:
        worst = max(
            float((setwise_log_prob(r, lv, grid_size=size) - exact).abs().max())
            for r, lv, exact in batch
        )
        lines.append(f"| {size} | {worst:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024, help="contexts per batch")
    parser.add_argument("--candidates", type=int, default=20, help="candidates per context")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--brute-contexts", type=int, default=64, help="contexts enumerated at most per k"
    )
    parser.add_argument("--grid-cases", type=int, default=300, help="contexts for grid table")
    parser.add_argument("--max-k", type=int, default=9, help="largest k for pl vs brute force")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), batch {args.batch}, {args.candidates} candidates, "
        f"median of {args.repeats}\n"
    )
    print("### Forward + backward, ms per batch (float32, beta 0.1)\n")
    print(objective_table(args.batch, args.candidates, args.repeats))
    print("\n### Exact PL: quadrature vs enumeration, ms per batch (float64)\n")
    print(
        pl_table(
            args.batch, args.candidates, args.repeats, args.brute_contexts, range(1, args.max_k + 1)
        )
    )
    print(f"\n### Quadrature error against enumeration (default grid {DEFAULT_GRID_SIZE})\n")
    print(grid_table(args.grid_cases, (64, 96, 128, 160, 192, 256)))


if __name__ == "__main__":
    main()
