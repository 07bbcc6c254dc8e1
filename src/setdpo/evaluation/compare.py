"""Compare results files of several runs on the same contexts: one table with paired intervals.

Each cell shows a metric with its 95% bootstrap interval; for every run but the
baseline (the first file unless named), a second column shows the paired bootstrap
difference run - baseline over the same contexts, marked ``*`` when its interval
excludes zero. Files whose context ids differ are refused: a paired comparison needs
the same contexts (and the same candidates, which the levels check).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from setdpo.errors import InputError
from setdpo.evaluation.bootstrap import Interval, paired_difference
from setdpo.evaluation.results import (
    ContextResult,
    Results,
    load_results,
    metric_columns,
    summarize,
)


@dataclass
class Run:
    label: str
    path: Path
    results: Results


def _check_same_contexts(base: Run, other: Run) -> list[ContextResult]:
    """``other``'s contexts in ``base``'s order; refuses different ids or candidate levels."""
    by_id = {c.context_id: c for c in other.results.contexts}
    base_ids = [c.context_id for c in base.results.contexts]
    only_base, only_other = set(base_ids) - set(by_id), set(by_id) - set(base_ids)
    if only_base or only_other or len(by_id) != len(base_ids):
        example = sorted(only_base | only_other)[:3]
        raise InputError(
            f"{base.path} and {other.path} evaluate different contexts "
            f"({len(only_base)} only in the first, {len(only_other)} only in the second, "
            f"e.g. {example}): a paired comparison needs the same split and subset"
        )
    for ctx in base.results.contexts:
        theirs = by_id[ctx.context_id]
        if ctx.levels is not None and ctx.levels != theirs.levels:
            raise InputError(
                f"{other.path}: context {ctx.context_id!r} has other candidate levels than "
                f"in {base.path}: the candidate sets differ"
            )
    return [by_id[i] for i in base_ids]


def _fmt(iv: Interval, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    text = f"{f.format(iv.value)} [{f.format(iv.low)}, {f.format(iv.high)}]"
    return text + (" *" if signed and iv.excludes_zero() else "")


def _labels(paths: Sequence[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


@dataclass
class Comparison:
    """Every run's metrics with intervals, and paired differences against the baseline run."""

    runs: list[Run]
    base: Run
    metrics: list[str]
    values: dict[str, dict[str, Interval]]  # run label -> metric -> interval
    differences: dict[str, dict[str, Interval]]  # run label (not the base) -> metric -> diff
    n_resamples: int


def comparison(
    paths: Sequence[str | Path],
    baseline: str | Path | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Intervals and paired differences of the results files ``paths`` (same contexts)."""
    paths = [Path(p) for p in paths]
    if baseline is not None and Path(baseline) not in paths:
        paths.insert(0, Path(baseline))
    base_index = 0 if baseline is None else paths.index(Path(baseline))
    runs = [Run(lab, p, load_results(p)) for lab, p in zip(_labels(paths), paths, strict=True)]
    base = runs[base_index]
    contexts = {r.label: _check_same_contexts(base, r) for r in runs}
    names = [m for m in base.results.metrics if all(m in r.results.metrics for r in runs)]
    values = {r.label: summarize(contexts[r.label], names, n_resamples, seed) for r in runs}
    differences = {
        r.label: {
            name: paired_difference(
                *_paired_columns(contexts[r.label], contexts[base.label], name),
                n_resamples=n_resamples,
                seed=seed,
            )
            for name in names
        }
        for r in runs
        if r is not base
    }
    return Comparison(runs, base, names, values, differences, n_resamples)


def compare(
    paths: Sequence[str | Path],
    baseline: str | Path | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> str:
    """The comparison table (text) of the results files ``paths``: one row per metric."""
    cmp = comparison(paths, baseline, n_resamples, seed)
    base = cmp.base
    header = ["metric"]
    for r in cmp.runs:
        header += [r.label] if r is base else [r.label, f"{r.label} - {base.label}"]
    rows = [header]
    for name in cmp.metrics:
        row = [name]
        for r in cmp.runs:
            row.append(_fmt(cmp.values[r.label][name]))
            if r is not base:
                row.append(_fmt(cmp.differences[r.label][name], signed=True))
        rows.append(row)
    return _preamble(base) + _table(rows) + _footer(cmp.n_resamples)


def format_by_run(cmp: Comparison) -> str:
    """Two tables with one row per run: the metrics, then the differences to the baseline."""
    values = [["model", *cmp.metrics]]
    values += [[r.label, *(_fmt(cmp.values[r.label][m]) for m in cmp.metrics)] for r in cmp.runs]
    diffs = [[f"model - {cmp.base.label}", *cmp.metrics]]
    diffs += [
        [r.label, *(_fmt(cmp.differences[r.label][m], signed=True) for m in cmp.metrics)]
        for r in cmp.runs
        if r is not cmp.base
    ]
    return (
        _preamble(cmp.base)
        + _table(values)
        + f"\nPaired differences against {cmp.base.label}:\n\n"
        + _table(diffs)
        + _footer(cmp.n_resamples)
    )


def _paired_columns(
    contexts: list[ContextResult], base_contexts: list[ContextResult], name: str
) -> tuple:
    values, den = metric_columns(contexts, name)
    base_values, base_den = metric_columns(base_contexts, name)
    return values, base_values, den, base_den


def _preamble(base: Run) -> str:
    p = base.results.protocol
    cands = p.get("candidates_per_context", {})
    return (
        f"split {p.get('split')} of {p.get('data')}: {p.get('n_contexts')} contexts, "
        f"{cands.get('min')}-{cands.get('max')} candidates; baseline: {base.label}\n"
        f"ties: {p.get('tie_rule')}\n"
        f"HR@1: {p.get('hr_at_1')}\n\n"
    )


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"


def _footer(n_resamples: int) -> str:
    return (
        f"\nvalue [95% bootstrap interval, {n_resamples} resamples over contexts]; "
        "differences are paired; * = the difference's interval excludes 0\n"
    )
