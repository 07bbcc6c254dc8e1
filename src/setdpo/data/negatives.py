"""Seeded negative sampling: items a user had not interacted with up to a cutoff time.

Vectorised rejection sampling over all contexts at once; the few contexts whose users
have seen most of the catalog fall back to exact sampling from their remaining items.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

DENSE_CELLS = 40_000_000  # users x items up to which lookups use a dense int32 table
EVER_CELLS = 200_000_000  # ... and a dense "ever seen" bool table (1 byte a cell)


class SeenIndex:
    """When each user first interacted with each item.

    Sorted keys (user * n_items + item) with their first time; for catalogs small enough
    (ML-1M: 6,040 x 3,706) also a dense [users, items] table of the first time's rank
    among all distinct times, which answers lookups by plain indexing (no binary search);
    up to `EVER_CELLS` a table of whether the user ever saw the item, so that only those
    few lookups search the keys (a range of the ML-10M-shaped file: 7k users x 10k items).
    """

    def __init__(self, user: np.ndarray, item: np.ndarray, time: np.ndarray, n_items: int):
        self.n_items = n_items
        key = user.astype(np.int64) * n_items + item
        order = np.lexsort((time, key))
        key, time = key[order], time[order]
        first = np.r_[True, key[1:] != key[:-1]]
        self.keys, self.first_time = key[first], time[first]
        self.times, self.dense, self.ever = np.unique(time), None, None
        n_users = int(user.max(initial=-1)) + 1
        if DENSE_CELLS < n_users * n_items <= EVER_CELLS:
            self.ever = np.zeros((n_users, n_items), dtype=bool)
            self.ever[self.keys // n_items, self.keys % n_items] = True
        if n_users * n_items <= DENSE_CELLS:
            self.dense = np.full((n_users, n_items), np.iinfo(np.int32).max, dtype=np.int32)
            ranks = np.searchsorted(self.times, self.first_time).astype(np.int32)
            self.dense[self.keys // n_items, self.keys % n_items] = ranks

    def seen_by(self, user: np.ndarray, item: np.ndarray, cutoff: np.ndarray) -> np.ndarray:
        """[N, m] bool: had `user` [N] interacted with `item` [N, m] at or before `cutoff` [N]?"""
        if self.dense is not None:
            last = np.searchsorted(self.times, cutoff, side="right") - 1  # rank of cutoff
            return self.dense[user[:, None], item] <= last[:, None]
        if self.ever is not None:
            seen = np.zeros(item.shape, dtype=bool)
            rows, cols = np.nonzero(self.ever[user[:, None], item])
            seen[rows, cols] = self._search(user[rows], item[rows, cols], cutoff[rows])
            return seen
        return self._search(user[:, None], item, cutoff[:, None])

    def _search(self, user: np.ndarray, item: np.ndarray, cutoff: np.ndarray) -> np.ndarray:
        key = user.astype(np.int64) * self.n_items + item
        at = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        return (self.keys[at] == key) & (self.first_time[at] <= cutoff)

    def unseen_items(self, user: int, cutoff: float) -> np.ndarray:
        """Items `user` had not interacted with by `cutoff` (sorted)."""
        lo, hi = np.searchsorted(self.keys, [user * self.n_items, (user + 1) * self.n_items])
        seen = (self.keys[lo:hi] - user * self.n_items)[self.first_time[lo:hi] <= cutoff]
        return np.setdiff1d(np.arange(self.n_items), seen)


def sample_negatives(
    rng: np.random.Generator,
    seen: SeenIndex,
    user: np.ndarray,
    cutoff: np.ndarray,
    need: np.ndarray,
    weights: np.ndarray | None = None,
    chunk: int = 65536,
) -> np.ndarray:
    """Distinct unseen items for each context.

    user, cutoff, need: [N]; weights: [n_items] sampling weights (None: uniform).
    Returns [N, max(need)] item indices (int32), -1 past each row's `need` (or where a user has
    fewer unseen items than needed). Rows go in chunks to bound memory.
    """
    out = np.full((len(user), int(need.max(initial=0))), -1, dtype=np.int32)
    if out.shape[1] == 0:
        return out
    cdf = None if weights is None else np.cumsum(weights) / np.sum(weights)
    width = out.shape[1]
    starts = range(0, len(user), chunk)
    for lo in tqdm(starts, desc="negatives", unit="chunk", disable=len(starts) < 4):
        part = slice(lo, lo + chunk)
        out[part] = _sample_rows(
            rng, seen, user[part], cutoff[part], need[part], width, width + 8, cdf
        )
    # Users who have seen much of the catalog: more draws, then exact sampling.
    short = np.flatnonzero((out >= 0).sum(axis=1) < need)
    out[short] = _sample_rows(
        rng, seen, user[short], cutoff[short], need[short], width, 4 * width + 32, cdf
    )
    for row in np.flatnonzero((out >= 0).sum(axis=1) < need):
        pool = seen.unseen_items(int(user[row]), float(cutoff[row]))
        size = min(int(need[row]), len(pool))
        p = None if weights is None else weights[pool] / weights[pool].sum()
        out[row] = -1
        out[row, :size] = rng.choice(pool, size=size, replace=False, p=p)
    return out


def _sample_rows(rng, seen, user, cutoff, need, width, draws, cdf) -> np.ndarray:
    """One chunk of rejection sampling: [n, width], -1 where too few draws were usable."""
    out = np.full((len(user), width), -1, dtype=np.int64)
    items = _draw(rng, cdf, seen.n_items, (len(user), draws))
    ok = ~seen.seen_by(user, items, cutoff) & ~_repeats(items)
    rank = np.cumsum(ok, axis=1)
    take = ok & (rank <= need[:, None])
    rows, cols = np.nonzero(take)
    out[rows, rank[rows, cols] - 1] = items[rows, cols]
    return out


def _draw(rng: np.random.Generator, cdf: np.ndarray | None, n_items: int, shape) -> np.ndarray:
    if cdf is None:
        return rng.integers(0, n_items, size=shape)
    return np.minimum(np.searchsorted(cdf, rng.random(shape), side="right"), n_items - 1)


def _repeats(items: np.ndarray) -> np.ndarray:
    """[N, m] bool: the item already appeared earlier in its row."""
    order = np.argsort(items, axis=1, kind="stable")
    sorted_items = np.take_along_axis(items, order, axis=1)
    dup_sorted = np.zeros(items.shape, dtype=bool)
    dup_sorted[:, 1:] = sorted_items[:, 1:] == sorted_items[:, :-1]
    dup = np.zeros(items.shape, dtype=bool)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup
