"""User sequences -> contexts (history window + target window) -> train/valid/test.

Everything here is vectorised over numpy arrays: ML-1M has a million contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from setdpo.data.config import PrepareConfig
from setdpo.data.protocols import split_protocol
from setdpo.errors import InputError

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class Sequences:
    """Interactions sorted by user, then time (stable: file order breaks ties).

    Arrays of length M (interactions): ``user`` (0-based index of the user), ``item``,
    ``rating``, ``time``, ``pos`` (position in the user's sequence); ``offsets`` [U+1].
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    time: np.ndarray
    pos: np.ndarray
    offsets: np.ndarray


@dataclass
class Contexts:
    """N contexts; global positions index the `Sequences` arrays.

    window [N, w]: item of each target-window slot; levels [N, w]: its preference level
    (0 = not a candidate, e.g. a rating of 3 in `rated` mode); ``start`` the first target
    position, ``end`` the last; history is positions ``hist_start .. start-1``.
    ``cutoff_time``: the time of the last target; negatives are items the user had not
    touched by then.
    """

    user: np.ndarray
    start: np.ndarray
    end: np.ndarray
    hist_start: np.ndarray
    target_time: np.ndarray
    cutoff_time: np.ndarray
    window: np.ndarray
    levels: np.ndarray
    ratings: np.ndarray
    negative_level: np.ndarray

    def take(self, index: np.ndarray) -> Contexts:
        return Contexts(**{name: value[index] for name, value in vars(self).items()})

    def __len__(self) -> int:
        return len(self.user)


def sequences_of(
    user: np.ndarray, item: np.ndarray, rating: np.ndarray, time: np.ndarray
) -> Sequences:
    """`Sequences` of interactions already sorted by user (codes 0..U-1, each present), time
    and file order (`setdpo.data.engine`)."""
    offsets = np.searchsorted(user, np.arange(int(user[-1]) + 2 if len(user) else 1))
    return Sequences(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        rating=rating,
        time=time,
        pos=np.arange(len(user)) - offsets[user],
        offsets=offsets,
    )


def build_contexts(
    seq: Sequences, config: PrepareConfig, has_ratings: bool
) -> tuple[Contexts, dict]:
    """Every position with >= min_history earlier items and a full target window.

    Returns the contexts and counts of those dropped (and why).
    """
    if config.mode in ("rated", "levels") and not has_ratings:
        raise InputError(f"mode {config.mode!r} needs ratings; the source has no rating column")
    width = 1 if config.mode == "next" else config.k
    user_end = seq.offsets[seq.user + 1]
    ok = (seq.pos >= config.min_history) & (np.arange(len(seq.user)) + width <= user_end)
    start = np.flatnonzero(ok)
    slots = start[:, None] + np.arange(width)[None, :]
    window, ratings = seq.item[slots], seq.rating[slots]
    levels, negative_level = window_levels(ratings, config)
    hist_start = np.maximum(seq.offsets[seq.user[start]], start - config.history_window)
    contexts = Contexts(
        user=seq.user[start],
        start=start,
        end=start + width - 1,
        hist_start=hist_start,
        target_time=seq.time[start],
        cutoff_time=seq.time[start + width - 1],
        window=window,
        levels=levels,
        ratings=ratings,
        negative_level=negative_level,
    )
    has_positive = (levels == 1).any(axis=1)
    clean = ~_overlaps(seq, contexts)
    dropped = {
        "no_positive_in_window": int((~has_positive).sum()),
        "positive_repeats_history_or_window": int((has_positive & ~clean).sum()),
    }
    return contexts.take(np.flatnonzero(has_positive & clean)), dropped


def window_levels(ratings: np.ndarray, config: PrepareConfig) -> tuple[np.ndarray, np.ndarray]:
    """Level of each target-window slot (1 best, 0 not a candidate) and of sampled negatives.

    ratings [N, w] -> levels [N, w], negative_level [N].
    """
    binary = np.full(len(ratings), 2, dtype=np.int64)
    if config.mode in ("next", "next-k"):
        return np.ones(ratings.shape, dtype=np.int64), binary
    if config.mode == "rated":
        levels = np.zeros(ratings.shape, dtype=np.int64)
        levels[ratings <= config.negative_rating] = 2
        levels[ratings >= config.positive_rating] = 1
        return levels, binary
    # levels: 5 > 4 > 3 > (rated <= negative_rating, or sampled); then made dense per row
    cuts = config.level_ratings
    levels = np.zeros(ratings.shape, dtype=np.int64)
    levels[ratings <= config.negative_rating] = len(cuts) + 1
    for g, cut in reversed(list(enumerate(cuts, start=1))):
        levels[ratings >= cut] = g
    return dense_levels(levels, bottom=len(cuts) + 1)


def dense_levels(levels: np.ndarray, bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber each row's levels 1..G without gaps; `bottom` (sampled negatives) stays last.

    levels [N, w] with 0 = not a candidate. A row without any level above `bottom` gets
    no level 1 and is dropped by the caller. Returns (levels [N, w], bottom level [N]).
    """
    present = np.zeros((levels.shape[0], bottom + 1), dtype=np.int64)
    for g in range(1, bottom):
        present[:, g] = (levels == g).any(axis=1)
    present[:, bottom] = 1
    rank = np.cumsum(present, axis=1)  # rank[:, g] = new number of level g
    dense = np.take_along_axis(rank, levels, axis=1)
    dense[levels == 0] = 0
    dense[~present[:, 1:bottom].any(axis=1)] = 0
    return dense, rank[:, bottom]


def _overlaps(seq: Sequences, ctx: Contexts) -> np.ndarray:
    """[N] bool: a candidate of the window repeats another window candidate or a history item."""
    window = np.where(ctx.levels > 0, ctx.window, -1)
    w = window.shape[1]
    same = window[:, :, None] == window[:, None, :]
    same &= ~np.eye(w, dtype=bool)[None] & (window >= 0)[:, :, None]
    bad = same.any(axis=(1, 2))
    for back in range(1, int((ctx.start - ctx.hist_start).max(initial=0)) + 1):
        index = ctx.start - back
        valid = index >= ctx.hist_start
        item = np.where(valid, seq.item[np.maximum(index, 0)], -2)
        bad |= (window == item[:, None]).any(axis=1)
    return bad


@dataclass
class Split:
    """Which contexts each split keeps, and what the split boundary removed.

    ``index``: context indices per split, chronological within the split. ``dropped``:
    contexts whose target window crosses the next split's boundary (counted, never kept).
    ``cuts``: chrono only, the valid and test cut times (a context belongs to a split when
    its first target is at or after that split's cut; None: no context reaches it).
    ``training`` [M]: the interactions before the valid boundary, the only ones anything
    derived from training (popularity counts) may see (None: not computed).
    """

    index: dict[str, np.ndarray]
    dropped: dict[str, int]
    cuts: dict[str, float | None] | None
    training: np.ndarray | None


def split_contexts(seq: Sequences, ctx: Contexts, config: PrepareConfig) -> Split:
    """Split the contexts of `seq` (docs/data.md): a context belongs to a split only if its
    whole target window lies before the next split's boundary."""
    if split_protocol(config.split).per_user:
        return leave_last_out_split(seq, ctx)
    split = chrono_split(ctx.target_time, ctx.cutoff_time, config)
    valid_cut = np.inf if split.cuts["valid"] is None else split.cuts["valid"]
    split.training = seq.time < valid_cut
    return split


def chrono_split(first: np.ndarray, last: np.ndarray, config: PrepareConfig) -> Split:
    """Cut times at the 8:1:1 quantiles of the first-target times `first` [N] of every
    context; a window (its last target at `last` [N]) that reaches the next cut is dropped.
    Contexts whose first target ties with a cut go after it. ``training`` is left to the
    caller (the interactions before the valid cut)."""
    order = np.sort(first)
    shares = np.cumsum(config.split_ratios) / sum(config.split_ratios)
    at = np.round(shares[:2] * len(first)).astype(np.int64)
    valid_cut, test_cut = (float(order[i]) if i < len(order) else np.inf for i in at)
    del order
    starts = {
        "train": first < valid_cut,
        "valid": (first >= valid_cut) & (first < test_cut),
        "test": first >= test_cut,
    }
    keep = {
        "train": starts["train"] & (last < valid_cut),
        "valid": starts["valid"] & (last < test_cut),
        "test": starts["test"],
    }
    return Split(
        index={name: _by_time(first, np.flatnonzero(keep[name])) for name in SPLIT_NAMES},
        dropped={
            "window_crosses_valid_cut": int((starts["train"] & ~keep["train"]).sum()),
            "window_crosses_test_cut": int((starts["valid"] & ~keep["valid"]).sum()),
        },
        cuts={
            name: None if np.isinf(cut) else cut
            for name, cut in (("valid", valid_cut), ("test", test_cut))
        },
        training=None,
    )


def leave_last_out_split(seq: Sequences, ctx: Contexts) -> Split:
    """Per user: test = the last context, valid = the latest context whose window ends
    before the test window starts, train = the contexts whose window ends before the
    valid window starts (the test window's, for a user without a valid context)."""
    n_users = len(seq.offsets) - 1
    test_start = np.full(n_users, -1, dtype=np.int64)
    np.maximum.at(test_start, ctx.user, ctx.start)
    test = ctx.start == test_start[ctx.user]
    valid_start = np.full(n_users, -1, dtype=np.int64)
    before = ctx.end < test_start[ctx.user]
    np.maximum.at(valid_start, ctx.user[before], ctx.start[before])
    valid = ctx.start == valid_start[ctx.user]
    # The valid boundary of each user: its valid context, else its test context.
    boundary = np.where(valid_start >= 0, valid_start, test_start)
    train = ctx.end < boundary[ctx.user]
    crossing = ~(train | valid | test)
    user_end = seq.offsets[1:]
    limit = np.where(boundary >= 0, boundary, user_end)  # a user without contexts: all
    return Split(
        index={
            name: _by_time(ctx.target_time, np.flatnonzero(mask))
            for name, mask in zip(SPLIT_NAMES, (train, valid, test), strict=True)
        },
        dropped={
            "window_crosses_valid_cut": int((crossing & (ctx.start < boundary[ctx.user])).sum()),
            "window_crosses_test_cut": int((crossing & (ctx.start > boundary[ctx.user])).sum()),
        },
        cuts=None,
        training=np.arange(len(seq.user)) < limit[seq.user],
    )


def _by_time(first: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`index` ordered by first-target time `first` (ties: by index)."""
    return index[np.lexsort((index, first[index]))]


def cap_splits(splits: dict[str, np.ndarray], config: PrepareConfig) -> dict[str, np.ndarray]:
    """A seeded sample of at most `config.split_cap(name)` contexts per split (order kept)."""
    rng = np.random.default_rng([config.seed, 1])
    capped = {}
    for name in SPLIT_NAMES:
        index, cap = splits[name], config.split_cap(name)
        if cap is not None and len(index) > cap:
            keep = np.sort(rng.choice(len(index), size=cap, replace=False))
            index = index[keep]
        capped[name] = index
    return capped


def train_counts(seq: Sequences, split: Split, n_items: int) -> np.ndarray:
    """Interactions per item before the valid boundary (`Split.training`)."""
    return np.bincount(seq.item[split.training], minlength=n_items)
