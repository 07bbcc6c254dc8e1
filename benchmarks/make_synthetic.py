"""Write a synthetic MovieLens-10M-shaped release: the stand-in for ML-10M without a network.

    python benchmarks/make_synthetic.py --out ~/.cache/setdpo/grouplens/ml-10m
    setdpo data prepare --source ml-10m --out /tmp/ml10m-next

The `ml-10m` source reads ``$SETDPO_CACHE/grouplens/ml-10m/`` (else ``~/.cache/setdpo``), the
folder `setdpo data download ml-10m` fills; writing there (or setting ``SETDPO_CACHE`` to a
folder holding ``grouplens/ml-10m``) makes the synthetic file its input. Both files use the
GroupLens ``::`` layout of the real release:

- ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, sorted by user, then time;
- ``movies.dat``: ``MovieID::Title (Year)::Genre|Genre``.

Shape (``--size full``, the default: ML-10M's own counts): 10,000,054 ratings by 69,878
users of 10,677 movies. Every user has at least 20 ratings (log-normal activity, mean about
143, capped at a quarter of the catalog) and rates an item at most once; item popularity is
Zipf-like (weight ``1 / (rank + 5)``, ranks shuffled over ids); ratings take the ten values
0.5..5 in ML-10M's proportions, from item quality (higher for popular items), user bias and
noise; each user's ratings come in sessions (a new session with probability 0.08 per rating,
gaps of days to months between sessions, seconds to minutes within one) starting at a random
time in 1995-2008; titles are made-up words with a release year. Item order inside a user's
sequence carries no signal beyond popularity: it measures data handling at scale, not models.

Deterministic by ``--seed``: the same arguments write the same bytes. Vectorised numpy; the
full size takes well under a minute on one core (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

SIZES = {  # ratings, users, items
    "full": (10_000_054, 69_878, 10_677),
    "small": (20_000, 200, 400),
}
MIN_PER_USER = 20
# ML-10M's share of each rating value 0.5, 1, ..., 5.
RATING_SHARES = np.array([0.95, 3.83, 1.18, 7.90, 3.70, 23.56, 8.79, 28.77, 5.78, 15.44])
RATING_TEXT = np.array(["0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4", "4.5", "5"])
GENRES = (
    "Action Adventure Animation Children Comedy Crime Documentary Drama Fantasy Film-Noir "
    "Horror IMAX Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
WORDS = (
    "Night Day Love City Last Blue Dark Star River Man Woman Story Time Life Dead Heart Road "
    "Summer Winter House King Queen Lost Secret Red White Black Golden Wild Little Big Long "
    "Island Dream Fire Ice Moon Sun War Game Paradise Shadow Street Return Escape Angel Devil "
    "Money Kiss Storm Ghost Girl Boy Brother Sister Family Hotel Train Ship Mountain Ocean"
).split()
START, END = (
    789_652_009,
    1_231_131_736,
)  # ML-10M's first and last timestamps (1995-01-09, 2009-01-05)


def make(out: str | Path, ratings: int, users: int, items: int, seed: int = 0) -> dict:
    """Write ``out/ratings.dat`` and ``out/movies.dat``; returns counts and timings."""
    if users * MIN_PER_USER > ratings:
        raise ValueError(f"{ratings} ratings cannot give {users} users {MIN_PER_USER} each")
    if items < 4 * MIN_PER_USER:
        raise ValueError(f"need at least {4 * MIN_PER_USER} items, got {items}")
    if ratings > users * (items // 4):
        raise ValueError(
            f"{ratings} ratings exceed {users} users x {items // 4} (a quarter of the items)"
        )
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    weights = 1.0 / (rng.permutation(items) + 6.0)  # Zipf-like, ranks shuffled over items
    user, item = draw_pairs(user_counts(ratings, users, items, rng), weights, rng)
    stamp = timestamps(user, rng)
    stars = rating_values(user, item, weights, rng)
    ids = np.sort(rng.choice(np.arange(1, 6 * items), items, replace=False))
    built = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    order = np.lexsort((stamp, user))
    write_dat(
        out / "ratings.dat",
        [user[order] + 1, ids[item[order]], RATING_TEXT[stars[order]], stamp[order]],
    )
    write_dat(out / "movies.dat", [ids, titles(items, rng), genres(items, rng)])
    return {
        "ratings": int(len(user)),
        "users": int(len(np.unique(user))),
        "items": int(len(np.unique(item))),
        "generate_s": built - start,
        "write_s": time.perf_counter() - built,
    }


def user_counts(ratings: int, users: int, items: int, rng: np.random.Generator) -> np.ndarray:
    """Ratings per user: >= 20, log-normal above that, at most items // 4, summing to ``ratings``."""
    cap = items // 4
    extra = rng.lognormal(np.log(60.0), 1.2, users)
    counts = np.full(users, MIN_PER_USER)
    while left := ratings - counts.sum():  # rescale the extras until the capped counts add up
        room = counts < cap
        add = np.floor(extra * room / (extra * room).sum() * left).astype(np.int64)
        counts = np.minimum(counts + add, cap)
        if add.sum() == 0:  # the last units, one each to random users with room
            lucky = rng.choice(np.flatnonzero(counts < cap), int(left), replace=False)
            counts[lucky] += 1
    return counts


def draw_pairs(
    counts: np.ndarray, weights: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, ``counts[u]`` per user, items drawn by ``weights``.

    Rounds of draws with replacement; each keeps the new distinct items a user still needs.
    Returned in draw order within each user (which becomes the user's time order).
    """
    n_items = len(weights)
    cdf = np.cumsum(weights) / weights.sum()
    kept_users, kept_items = [], []
    have = np.empty(0, dtype=np.int64)  # sorted keys user * n_items + item already kept
    need = counts.astype(np.int64).copy()
    while need.any():
        slots = np.repeat(np.arange(len(need)), np.where(need > 0, need + need // 2 + 1, 0))
        items = np.minimum(np.searchsorted(cdf, rng.random(len(slots))), n_items - 1)
        keys = slots * n_items + items
        _, first = np.unique(keys, return_index=True)
        first.sort()  # distinct keys, in draw order
        fresh = first[~_contains(have, keys[first])]
        # Keep at most need[u] of user u's fresh items, the earliest drawn.
        rank = np.arange(len(fresh)) - np.searchsorted(slots[fresh], slots[fresh])
        take = fresh[rank < need[slots[fresh]]]
        kept_users.append(slots[take])
        kept_items.append(items[take])
        need -= np.bincount(slots[take], minlength=len(need))
        have = np.sort(np.concatenate([have, keys[take]]))
    user, item = np.concatenate(kept_users), np.concatenate(kept_items)
    order = np.argsort(user, kind="stable")
    return user[order], item[order]


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(sorted_keys, keys), max(len(sorted_keys) - 1, 0))
    return sorted_keys[pos] == keys if len(sorted_keys) else np.zeros(len(keys), dtype=bool)


def timestamps(user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seconds since the epoch, strictly increasing within each user (rows sorted by user).

    A user is active over a span of about a year (exponential); the gaps between sessions
    share it at random; ratings inside a session are 1 s + about 40 s apart.
    """
    n = len(user)
    first = np.r_[True, user[1:] != user[:-1]]
    owner = np.cumsum(first) - 1  # the user's row in per-user arrays
    new_session = first | (rng.random(n) < 0.08)
    gap = np.where(new_session & ~first, rng.exponential(1.0, n), 0.0)
    step = np.where(new_session, 0.0, rng.exponential(40.0, n) + 1.0)
    gaps, steps = _per_user_cumsum(gap, first, owner), _per_user_cumsum(step, first, owner)
    last = np.r_[np.flatnonzero(first)[1:] - 1, n - 1]
    span = np.minimum(rng.exponential(365 * 86_400.0, len(last)), 0.5 * (END - START))
    scale = span / np.maximum(gaps[last], 1e-9)
    begin = rng.uniform(START, END - span - steps[last])
    return (begin[owner] + gaps * scale[owner] + steps).astype(np.int64)


def _per_user_cumsum(values: np.ndarray, first: np.ndarray, owner: np.ndarray) -> np.ndarray:
    total = np.cumsum(values)
    return total - (total - values)[first][owner]


def rating_values(
    user: np.ndarray, item: np.ndarray, weights: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices into RATING_TEXT: item quality (popular items better) + user bias + noise,
    cut at the quantiles that give ML-10M's rating shares."""
    log_pop = np.log(weights)
    quality = rng.normal(0, 0.5, len(weights)) + 0.3 * (log_pop - log_pop.mean()) / log_pop.std()
    bias = rng.normal(0, 0.4, user.max() + 1)
    latent = quality[item] + bias[user] + rng.normal(0, 0.8, len(user))
    cuts = np.quantile(latent, np.cumsum(RATING_SHARES)[:-1] / RATING_SHARES.sum())
    return np.searchsorted(cuts, latent)


def titles(n: int, rng: np.random.Generator) -> np.ndarray:
    """Made-up unique titles "Words (Year)", some as GroupLens writes them ("Night, The");
    the second "Night (1990)" becomes "Night 2 (1990)"."""
    length = rng.integers(1, 4, n)
    words = np.array(WORDS, dtype=object)[rng.integers(0, len(WORDS), (n, 3))]
    base = pd.Series(words[:, 0])
    for k in (1, 2):
        base = base.where(length <= k, base + " " + words[:, k])
    base = base.where(rng.random(n) > 0.15, base + ", The")
    year = (
        " ("
        + pd.Series((2008 - np.minimum(rng.exponential(12, n), 90)).astype(int)).astype(str)
        + ")"
    )
    repeat = (base + year).groupby(base + year).cumcount()
    return np.where(repeat > 0, base + " " + (repeat + 1).astype(str) + year, base + year)


def genres(n: int, rng: np.random.Generator) -> np.ndarray:
    picks = rng.random((n, len(GENRES))) < 0.12
    picks[np.arange(n), rng.integers(0, len(GENRES), n)] = True  # at least one genre
    names = np.array(GENRES, dtype=object)
    return np.array(["|".join(names[row]) for row in picks], dtype=object)


def write_dat(path: Path, columns: list[np.ndarray]) -> None:
    """``a::b::c`` lines: pandas writes one-character separators, so empty columns in between
    turn ':' into '::' (fields never contain ':' followed by ':')."""
    frame = {}
    for i, column in enumerate(columns):
        if i:
            frame[f"sep{i}"] = ""
        frame[f"col{i}"] = column
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(frame).to_csv(tmp, sep=":", header=False, index=False, quoting=3, escapechar="\\")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for ratings.dat and movies.dat")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--ratings", type=int, help="override the size's rating count")
    parser.add_argument("--users", type=int, help="override the size's user count")
    parser.add_argument("--items", type=int, help="override the size's item count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ratings, users, items = SIZES[args.size]
    stats = make(
        args.out, args.ratings or ratings, args.users or users, args.items or items, args.seed
    )
    print(
        f"wrote {args.out}: {stats['ratings']:,} ratings, {stats['users']:,} users, "
        f"{stats['items']:,} items; generate {stats['generate_s']:.1f} s, "
        f"write {stats['write_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
