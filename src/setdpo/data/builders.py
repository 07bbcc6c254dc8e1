"""Sorted interactions -> split contexts with candidate sets, one range of users at a time.

Steps (docs/data.md): every position with at least `min_history` earlier items and a full
target window is a context; split 8:1:1 by target time (or leave-last-out per user),
dropping the windows that cross the next split's boundary; optionally keep a seeded sample
per split; add negatives unseen by the user up to the last target, then shuffle the
candidates. All randomness comes from `config.seed`.

Out of core: the interactions stay in the sorted Parquet file of `setdpo.data.engine`, and
the contexts are built for consecutive ranges of users (`Chunk`, at most
`CHUNK_INTERACTIONS` interactions each) twice: `plan` keeps only each context's times
(for the split cuts, the per-split order and sample), `built_chunks` then draws the
candidates of the chosen contexts range by range, in output order. One range (ML-100K,
ML-1M) draws exactly what the whole data in memory did; more ranges draw from the same
seeded stream, range after range, so the result depends on the data and the seed, never on
the machine or the memory limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from setdpo.data.config import PrepareConfig
from setdpo.data.engine import SortedInteractions, counts_before, user_ranges
from setdpo.data.negatives import SeenIndex, sample_negatives
from setdpo.data.protocols import split_protocol
from setdpo.data.sequences import (
    SPLIT_NAMES,
    Contexts,
    Sequences,
    build_contexts,
    cap_splits,
    chrono_split,
    sequences_of,
    split_contexts,
)
from setdpo.errors import InputError

CHUNK_INTERACTIONS = 1 << 20  # ML-1M (1,000,209) is one range; fixed: results depend on it


@dataclass
class Chunk:
    """The users ``lo .. hi - 1``: their interactions and all their contexts.

    ``first``: the index of ``ctx[0]`` among all contexts (ranges in user order);
    ``base``: the position of the range's first interaction in the sorted file.
    """

    lo: int
    hi: int
    seq: Sequences
    ctx: Contexts
    dropped: dict[str, int]
    first: int
    base: int


@dataclass
class Plan:
    """What the whole data decides: each split's contexts (indices among all contexts, in
    output order: first-target time, then position), their first-target times, the
    training counts per item, the contexts dropped and the chronological cuts."""

    rows: dict[str, np.ndarray]
    target_time: np.ndarray
    train_count: np.ndarray
    dropped: dict[str, int]
    cuts: dict[str, float | None] | None
    chunk_starts: np.ndarray  # index of each range's first context, and the total


@dataclass
class Built:
    """The chosen contexts of one range of users and their candidates, split by split.

    items / levels / ratings: [n, C] candidate item indices (int32, -1 = none), levels
    (int8, 0 = none) and ratings (NaN = sampled; None outside the rated/levels modes);
    ``bounds`` each split's slice of the n rows; ``users`` the range's user ids.
    """

    seq: Sequences
    ctx: Contexts
    items: np.ndarray
    levels: np.ndarray
    ratings: np.ndarray | None
    bounds: dict[str, slice]
    users: pa.Array


def chunks(source: SortedInteractions, config: PrepareConfig) -> Iterator[Chunk]:
    """Every range of users with its contexts, in user order."""
    first = 0
    for lo, hi, rows in user_ranges(source, CHUNK_INTERACTIONS):
        seq = sequences_of(rows["user"] - lo, rows["item"], rows["rating"], rows["time"])
        ctx, dropped = build_contexts(seq, config, source.has_ratings)
        yield Chunk(lo, hi, seq, ctx, dropped, first, int(source.offsets[lo]))
        first += len(ctx)


def timeline_parts(
    source: SortedInteractions,
) -> Iterator[tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]]:
    """`io.write_timelines`'s parts: each range's users, offsets, items and times."""
    for lo, hi, rows in user_ranges(source, CHUNK_INTERACTIONS):
        offsets = source.offsets[lo : hi + 1] - source.offsets[lo]
        yield source.users.slice(lo, hi - lo), offsets, rows["item"], rows["time"]


def plan(source: SortedInteractions, config: PrepareConfig) -> Plan:
    """The split, sample and training counts of all contexts (their times only in memory)."""
    per_user = split_protocol(config.split).per_user
    firsts, lasts, labels, starts = [], [], [], [0]
    dropped: Counter = Counter()
    counts = np.zeros(len(source.items), dtype=np.int64)
    for chunk in chunks(source, config):
        dropped.update(chunk.dropped)
        firsts.append(chunk.ctx.target_time)
        lasts.append(chunk.ctx.cutoff_time)
        starts.append(chunk.first + len(chunk.ctx))
        if per_user:  # leave-last-out: each range of users decides its own split
            split = split_contexts(chunk.seq, chunk.ctx, config)
            dropped.update(split.dropped)
            label = np.full(len(chunk.ctx), -1, dtype=np.int8)
            for code, name in enumerate(SPLIT_NAMES):
                label[split.index[name]] = code
            labels.append(label)
            counts += np.bincount(chunk.seq.item[split.training], minlength=len(counts))
    first = np.concatenate(firsts)
    if len(first) == 0:
        window = config.k if config.mode != "next" else 1
        name = config.interactions if config.source in ("file", "recbole") else source.name
        raise InputError(
            f"{name}: no user has {config.min_history} history items before a target "
            f"window of {window}; nothing to prepare"
        )
    if per_user:
        label = np.concatenate(labels)
        index = {
            name: _by_time(first, np.flatnonzero(label == code))
            for code, name in enumerate(SPLIT_NAMES)
        }
        cuts = None
    else:
        split = chrono_split(first, np.concatenate(lasts), config)
        dropped.update(split.dropped)
        index, cuts = split.index, split.cuts
        counts = counts_before(source, cuts["valid"])
    return Plan(
        rows=cap_splits(index, config),
        target_time=first,
        train_count=counts,
        dropped=dict(dropped),
        cuts=cuts,
        chunk_starts=np.asarray(starts, dtype=np.int64),
    )


def _by_time(first: np.ndarray, index: np.ndarray) -> np.ndarray:
    return index[np.lexsort((index, first[index]))]


def built_chunks(
    source: SortedInteractions, config: PrepareConfig, planned: Plan
) -> Iterator[tuple[int, Built]]:
    """The candidates of the planned contexts, range by range with the range's number
    (ranges without any are skipped); each split's rows in output order within the range."""
    rng = np.random.default_rng([config.seed, 2])
    owners = {
        name: _group_by_range(rows, planned.chunk_starts) for name, rows in planned.rows.items()
    }
    for number, chunk in enumerate(chunks(source, config)):
        parts = [owners[name](number) - chunk.first for name in SPLIT_NAMES]
        if not any(len(p) for p in parts):
            continue
        sizes = np.cumsum([0] + [len(p) for p in parts])
        bounds = {name: slice(sizes[i], sizes[i + 1]) for i, name in enumerate(SPLIT_NAMES)}
        ctx = chunk.ctx.take(np.concatenate(parts))
        items, levels, ratings = candidate_sets(chunk.seq, ctx, planned.train_count, config, rng)
        users = source.users.slice(chunk.lo, chunk.hi - chunk.lo)
        yield number, Built(chunk.seq, ctx, items, levels, ratings, bounds, users)


def _group_by_range(rows: np.ndarray, starts: np.ndarray):
    """A function: range number -> the entries of `rows` in that range, order kept."""
    owner = np.searchsorted(starts, rows, side="right") - 1
    order = np.argsort(owner, kind="stable")
    edges = np.searchsorted(owner[order], np.arange(len(starts)))
    return lambda number: rows[order[edges[number] : edges[number + 1]]]


def candidate_sets(
    seq: Sequences,
    ctx: Contexts,
    counts: np.ndarray,
    config: PrepareConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Window candidates plus sampled negatives, shuffled per row: items, levels and
    (rated/levels modes) ratings, each [N, n]."""
    kept = ctx.levels > 0
    need = np.maximum(config.candidates - kept.sum(axis=1), 0)
    seen = SeenIndex(seq.user, seq.item, seq.time, len(counts))
    weights = counts + 1.0 if config.negatives == "popularity" else None
    sampled = sample_negatives(rng, seen, ctx.user, ctx.cutoff_time, need, weights)
    # int32 items, int8 levels and positions: ML-10M has ~10M rows of 20 candidates
    items = np.concatenate([np.where(kept, ctx.window, -1).astype(np.int32), sampled], axis=1)
    negative = ctx.negative_level.astype(np.int8)[:, None]
    levels = np.concatenate(
        [ctx.levels.astype(np.int8), np.where(sampled >= 0, negative, np.int8(0))], axis=1
    )
    del sampled, seen  # memory the shuffle below need not hold beside its copies
    columns = np.arange(items.shape[1], dtype=np.int8)
    order = rng.permuted(np.tile(columns, (len(items), 1)), axis=1)
    if (items < 0).any():  # move padding last, keeping the shuffled order of the rest
        pad = np.take_along_axis(items, order, axis=1) < 0
        order = np.take_along_axis(order, np.argsort(pad, axis=1, kind="stable"), axis=1)
    items, levels = (np.take_along_axis(a, order, axis=1) for a in (items, levels))
    if config.mode not in ("rated", "levels"):
        return items, levels, None
    ratings = np.full(items.shape, np.nan)  # sampled negatives have none
    ratings[:, : kept.shape[1]] = np.where(kept, ctx.ratings, np.nan)
    return items, levels, np.take_along_axis(ratings, order, axis=1)


class Statistics:
    """stats.json: sizes and per-split distributions, gathered range by range as count,
    sum, min and max (integer sums: the mean equals numpy's over all rows at once)."""

    QUANTITIES = ("positives", "candidates", "history_length")

    def __init__(self, source: SortedInteractions, planned: Plan) -> None:
        self.source, self.planned = source, planned
        self.totals = {
            name: {q: [0, 0, None, None] for q in self.QUANTITIES} for name in SPLIT_NAMES
        }
        self.levels = {name: np.zeros(128, dtype=np.int64) for name in SPLIT_NAMES}

    def add(self, built: Built) -> None:
        for name, part in built.bounds.items():
            levels = built.levels[part]
            if not len(levels):
                continue
            values = {
                "positives": (levels == 1).sum(axis=1),
                "candidates": (levels > 0).sum(axis=1),
                "history_length": built.ctx.start[part] - built.ctx.hist_start[part],
            }
            for quantity, value in values.items():
                total = self.totals[name][quantity]
                total[0] += len(value)
                total[1] += int(value.sum())
                total[2] = int(value.min()) if total[2] is None else min(total[2], int(value.min()))
                total[3] = int(value.max()) if total[3] is None else max(total[3], int(value.max()))
            self.levels[name] += np.bincount(levels[levels > 0], minlength=128)

    def result(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "source": self.source.name,
            "users": int(len(self.source.users)),
            "items": int(len(self.source.items)),
            "interactions": len(self.source),
            "dropped_contexts": self.planned.dropped,
            "split_cuts": self.planned.cuts,
            "splits": {},
        }
        if self.source.filtered:  # only where something was asked to be left out
            stats["filtered"] = self.source.filtered
        for name in SPLIT_NAMES:
            summaries = {}
            for quantity, (count, total, low, high) in self.totals[name].items():
                summaries[quantity] = (
                    {"count": 0}
                    if not count
                    else {
                        "count": count,
                        "mean": round(total / count, 4),
                        "min": float(low),
                        "max": float(high),
                    }
                )
            stats["splits"][name] = {
                "examples": int(len(self.planned.rows[name])),
                **summaries,
                "levels": {str(g): int(c) for g, c in enumerate(self.levels[name]) if c},
                "target_time": summary(self.planned.target_time[self.planned.rows[name]]),
            }
        return stats


def catalog_rows(source: SortedInteractions, counts: np.ndarray) -> list[dict[str, Any]]:
    """items.json: the catalog with training interaction counts."""
    items = source.items
    return [
        {"item_id": item_id, "title": title, "train_count": int(count)}
        for item_id, title, count in zip(
            items["item_id"], items["title"], counts.tolist(), strict=True
        )
    ]


def summary(values) -> dict[str, float]:
    """count, mean, min and max of a sequence of numbers."""
    if len(values) == 0:
        return {"count": 0}
    return {
        "count": int(len(values)),
        "mean": round(float(np.mean(values)), 4),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }
