"""Interactions -> split contexts with candidate sets -> `PreferenceExample` rows.

Steps (docs/data.md): sort each user's interactions by time; every position with
at least `min_history` earlier items and a full target window is a context; split 8:1:1
by target time (or leave-last-out per user), dropping the windows that cross the next
split's boundary; optionally keep a seeded sample per split;
add negatives unseen by the user up to the last target, then shuffle the candidates.
All randomness comes from `config.seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from setdpo.data.config import PrepareConfig
from setdpo.data.negatives import SeenIndex, sample_negatives
from setdpo.data.sequences import (
    SPLIT_NAMES,
    Contexts,
    Sequences,
    build_contexts,
    build_sequences,
    cap_splits,
    split_contexts,
    train_counts,
)
from setdpo.data.sources import Interactions
from setdpo.errors import InputError


@dataclass
class Built:
    """The selected contexts of all splits (concatenated, train first) and their candidates.

    items / levels / ratings: [N, n] candidate item indices (int32, -1 = none), levels
    (int8, 0 = none) and ratings (NaN = sampled; None outside the rated/levels modes, which
    do not store them); ``bounds`` gives each split's slice of the N rows; ``cuts`` the chronological
    split's cut times (`Split.cuts`).
    """

    data: Interactions
    seq: Sequences
    ctx: Contexts
    items: np.ndarray
    levels: np.ndarray
    ratings: np.ndarray | None
    bounds: dict[str, slice]
    train_count: np.ndarray
    dropped: dict[str, int]
    cuts: dict[str, float | None] | None


def build(data: Interactions, config: PrepareConfig) -> Built:
    """Contexts, split and candidates for `data` under `config`."""
    seq = build_sequences(data)
    ctx, dropped = build_contexts(seq, config, data.has_ratings)
    if len(ctx) == 0:
        source = config.interactions if config.source == "file" else data.name
        raise InputError(
            f"{source}: no user has {config.min_history} history items before a target window "
            f"of {config.k if config.mode != 'next' else 1}; nothing to prepare"
        )
    split = split_contexts(seq, ctx, config)
    counts = train_counts(seq, split, len(data.items))
    splits = cap_splits(split.index, config)
    sizes = np.cumsum([0] + [len(splits[name]) for name in SPLIT_NAMES])
    bounds = {name: slice(sizes[i], sizes[i + 1]) for i, name in enumerate(SPLIT_NAMES)}
    ctx = ctx.take(np.concatenate([splits[name] for name in SPLIT_NAMES]))
    items, levels, ratings = candidate_sets(seq, ctx, counts, config)
    dropped |= split.dropped
    return Built(data, seq, ctx, items, levels, ratings, bounds, counts, dropped, split.cuts)


def candidate_sets(
    seq: Sequences, ctx: Contexts, counts: np.ndarray, config: PrepareConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Window candidates plus sampled negatives, shuffled per row: items, levels and
    (rated/levels modes) ratings, each [N, n]."""
    rng = np.random.default_rng([config.seed, 2])
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
    del sampled, seen  # ML-10M: 0.75 GB that the shuffle below need not hold beside its copies
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


def catalog_rows(built: Built) -> list[dict[str, Any]]:
    """items.json: the catalog with training interaction counts."""
    items = built.data.items
    return [
        {"item_id": item_id, "title": title, "train_count": int(count)}
        for item_id, title, count in zip(
            items["item_id"], items["title"], built.train_count.tolist(), strict=True
        )
    ]


def statistics(built: Built) -> dict[str, Any]:
    """stats.json: sizes and per-split distributions of positives, candidates, history."""
    stats: dict[str, Any] = {
        "source": built.data.name,
        "users": int(len(built.seq.user_ids)),
        "items": int(len(built.data.items)),
        "interactions": int(len(built.seq.user)),
        "dropped_contexts": built.dropped,
        "split_cuts": built.cuts,
        "splits": {},
    }
    for name, part in built.bounds.items():
        levels = built.levels[part]
        history = built.ctx.start[part] - built.ctx.hist_start[part]
        stats["splits"][name] = {
            "examples": int(levels.shape[0]),
            "positives": summary((levels == 1).sum(axis=1)),
            "candidates": summary((levels > 0).sum(axis=1)),
            "history_length": summary(history),
            "levels": {
                str(g): int(c)
                for g, c in zip(*np.unique(levels[levels > 0], return_counts=True), strict=True)
            },
            "target_time": summary(built.ctx.target_time[part]),
        }
    return stats


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
