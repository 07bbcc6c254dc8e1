"""Write synthetic interaction files without a network: an ML-10M-shaped GroupLens release
(``--shape movielens``, the default) or an Amazon-reviews-shaped CSV pair (``--shape amazon``).

    python benchmarks/make_synthetic.py --out ~/.cache/setdpo/grouplens/ml-10m
    setdpo data prepare --source ml-10m --out /tmp/ml10m-next

    python benchmarks/make_synthetic.py --shape amazon --size amazon-100m --out /tmp/amazon100m
    setdpo data prepare --source file --interactions /tmp/amazon100m/ratings.csv \
        --items /tmp/amazon100m/items.csv --rating-col rating --domain generic --out /tmp/a100m

Shape ``movielens``. The `ml-10m` source reads ``$SETDPO_CACHE/grouplens/ml-10m/`` (else
``~/.cache/setdpo``), the folder `setdpo data download ml-10m` fills; writing there (or setting
``SETDPO_CACHE`` to a folder holding ``grouplens/ml-10m``) makes the synthetic file its input.
Both files use the GroupLens ``::`` layout of the real release:

- ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, sorted by user, then time;
- ``movies.dat``: ``MovieID::Title (Year)::Genre|Genre``.

Sizes ``full`` (the default: ML-10M's own counts): 10,000,054 ratings by 69,878 users of
10,677 movies; ``small``: 20,000 / 200 / 400. Every user has at least 20 ratings (log-normal
activity, mean about 143, capped at a quarter of the catalog) and rates an item at most once;
item popularity is Zipf-like (weight ``1 / (rank + 5)``, ranks shuffled over ids); ratings take
the ten values 0.5..5 in ML-10M's proportions, from item quality (higher for popular items),
user bias and noise; each user's ratings come in sessions (a new session with probability 0.08
per rating, gaps of days to months between sessions, seconds to minutes within one) starting at
a random time in 1995-2008; titles are made-up words with a release year.

Shape ``amazon``: many users with short histories and a long-tail catalog, the file source's
default column names:

- ``ratings.csv``: ``user_id,item_id,rating,timestamp``, grouped by user (in generation order),
  sorted by time within a user; user ids like reviewer ids (``A`` + 12 of ``0-9A-X``), item ids
  like ASINs (``B0`` + 8), ratings 1-5 (shares 8/5/8/18/61 %, Amazon's skew toward 5), unix
  seconds in 1996-2023 (the sessions above);
- ``items.csv``: ``item_id,title``, every item (some never rated), made-up unique titles
  ("Brand Adjective Noun", some with ", N Pack" or a quoted word: CSV-quoted as needed).

Sizes ``amazon-100m`` (the default): 100,000,000 interactions by 15,000,000 users of 1,500,000
items; ``amazon-small``: 50,000 / 8,000 / 5,000. Activity is log-normal (median 3, mean
ratings / users, about 6.7; at least 1, at most min(2,000, items / 4)); popularity is Zipf-like
(weight ``1 / (rank + 10)``); a user rates an item at most once. Memory is bounded: the rows are
generated and appended in chunks of about ``CHUNK_ROWS`` interactions (whole users), each chunk
from its own generator ``default_rng([seed, chunk])``; only per-user counts and per-item arrays
are global. Both files are written to a temporary name and renamed (`setdpo.atomic`).

``--ratings/--users/--items`` override a size's counts. Item order inside a user's sequence
carries no signal beyond popularity: these files measure data handling at scale, not models.
Deterministic by ``--seed``: the same arguments write the same bytes. Vectorised numpy; ``full``
takes well under a minute on one core; timings in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from setdpo.atomic import atomic_write_with

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

AMAZON_SIZES = {  # interactions, users, items
    "amazon-100m": (100_000_000, 15_000_000, 1_500_000),
    "amazon-small": (50_000, 8_000, 5_000),
}
SHAPES = {"movielens": SIZES, "amazon": AMAZON_SIZES}
CHUNK_ROWS = 1_000_000  # interactions per generated and written chunk (about 150k users)
MAX_PER_USER = 2_000
AMAZON_SIGMA = 1.27  # log-normal activity: median 3, mean exp(sigma**2 / 2) x 3 = 6.7
# Share of 1, 2, 3, 4 and 5 stars, Amazon reviews' skew toward 5 (about).
AMAZON_SHARES = np.array([8.0, 5.0, 8.0, 18.0, 61.0])
AMAZON_START, AMAZON_END = 820_454_400, 1_703_980_799  # 1996-01-01 .. 2023-12-30 23:59:59
ID_ALPHABET = np.frombuffer(b"0123456789ABCDEFGHJKLMNPQRSTUVWX", np.uint8)
USER_MULTIPLIER, ASIN_MULTIPLIER = 0x9E3779B97F4A7C15, 0x2545F4914F6CDD1D  # odd
ID_OFFSET = 0x5851F42D4C957F2D
SYLLABLES = (
    "ka lo ra mi ne to vu sa de li po ze ta nu fi go be xa qua ri mo ve lu ti so na ry el "
    "on ar is um ex or in al ix"
).split()
ADJECTIVES = (
    "Classic Compact Deluxe Portable Wireless Premium Organic Digital Smart Ultra Mini "
    "Heavy-Duty Stainless Vintage Rechargeable Waterproof Ergonomic Adjustable Foldable "
    "Handmade Magnetic Bamboo Leather Cotton Ceramic Titanium Professional Essential"
).split()
NOUNS = (
    "Lamp Headphones Blender Backpack Notebook Charger Kettle Sneakers Watch Speaker Mug "
    "Pillow Camera Keyboard Mouse Novel Cookbook Guitar Tent Jacket Wallet Candle Drill "
    "Helmet Scarf Puzzle Toothbrush Shampoo Frame Bottle Skillet Router Monitor Cable Case "
    "Rug Planter Telescope Journal Thermos"
).split()


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
    stars = rating_values(user, item, item_quality(weights, rng), RATING_SHARES, rng)
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


def timestamps(
    user: np.ndarray, rng: np.random.Generator, start: int = START, end: int = END
) -> np.ndarray:
    """Seconds since the epoch in [start, end], strictly increasing within each user (rows
    sorted by user).

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
    span = np.minimum(rng.exponential(365 * 86_400.0, len(last)), 0.5 * (end - start))
    scale = span / np.maximum(gaps[last], 1e-9)
    begin = rng.uniform(start, end - span - steps[last])
    return (begin[owner] + gaps * scale[owner] + steps).astype(np.int64)


def _per_user_cumsum(values: np.ndarray, first: np.ndarray, owner: np.ndarray) -> np.ndarray:
    total = np.cumsum(values)
    return total - (total - values)[first][owner]


def item_quality(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-item latent quality: noise plus a lift for popular items."""
    log_pop = np.log(weights)
    return rng.normal(0, 0.5, len(weights)) + 0.3 * (log_pop - log_pop.mean()) / log_pop.std()


def rating_values(
    user: np.ndarray,
    item: np.ndarray,
    quality: np.ndarray,
    shares: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices into the rating values: item quality + user bias + noise, cut at the
    quantiles that give ``shares`` (one per value, lowest first)."""
    bias = rng.normal(0, 0.4, user.max() + 1)
    latent = quality[item] + bias[user] + rng.normal(0, 0.8, len(user))
    cuts = np.quantile(latent, np.cumsum(shares)[:-1] / shares.sum())
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


def make_amazon(out: str | Path, ratings: int, users: int, items: int, seed: int = 0) -> dict:
    """Write ``out/ratings.csv`` and ``out/items.csv`` in user chunks; returns counts, seconds
    and file sizes. Memory is bounded by the chunk (``CHUNK_ROWS``) and the per-user and
    per-item arrays, whatever ``ratings`` is."""
    cap = min(MAX_PER_USER, items // 4)
    if not 0 < users <= ratings <= users * cap:
        raise ValueError(f"need users <= ratings <= users x {cap}; got {users}, {ratings}")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    weights = 1.0 / (rng.permutation(items) + 11.0)  # 1 / (rank + 10), ranks shuffled
    quality = item_quality(weights, rng)
    asins = encoded_ids(np.arange(items), "B0", 8, ASIN_MULTIPLIER)
    out = Path(out)
    atomic_write_with(  # first: the titles are freed before the per-user arrays exist
        out / "items.csv",
        lambda tmp: pd.DataFrame({"item_id": asins, "title": product_titles(items, rng)}).to_csv(
            tmp, index=False
        ),
    )
    counts = activity_counts(ratings, users, cap, rng)
    # Chunk c holds the users whose first interaction falls in [c, c + 1) x CHUNK_ROWS.
    bounds = np.r_[
        np.searchsorted(np.cumsum(counts) - counts, np.arange(0, ratings, CHUNK_ROWS)), users
    ]
    per_item = np.zeros(items, dtype=np.int64)

    def write_ratings(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write("user_id,item_id,rating,timestamp\n")
            for chunk in tqdm(range(len(bounds) - 1), desc="ratings.csv", unit="chunk"):
                lo, hi = bounds[chunk], bounds[chunk + 1]
                frame, item = amazon_chunk(
                    counts[lo:hi], lo, weights, quality, asins, [seed, chunk]
                )
                per_item[:] += np.bincount(item, minlength=items)
                frame.to_csv(handle, header=False, index=False)

    atomic_write_with(out / "ratings.csv", write_ratings)
    return {
        "ratings": int(per_item.sum()),
        "users": int(users),
        "items": int(np.count_nonzero(per_item)),
        "seconds": time.perf_counter() - start,
        "bytes": {name: (out / name).stat().st_size for name in ("ratings.csv", "items.csv")},
    }


def activity_counts(ratings: int, users: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user in [1, cap], summing to ``ratings``: a log-normal (median 3)
    rounded, rescaled by bisection to the mean, the last units +-1 at random users."""
    draw = rng.lognormal(np.log(3.0), AMAZON_SIGMA, users)

    def counts_at(scale: float) -> np.ndarray:
        return np.clip(np.rint(draw * scale), 1, cap).astype(np.int32)

    low, high = 0.0, float(cap)
    for _ in range(50):
        middle = (low + high) / 2
        total = counts_at(middle).sum(dtype=np.int64)
        low, high = (middle, high) if total < ratings else (low, middle)
    counts = counts_at(high)
    left = ratings - int(counts.sum(dtype=np.int64))  # <= 0 at `high`: a few units too many
    lucky = rng.choice(np.flatnonzero(counts > 1), -left, replace=False)
    counts[lucky] -= 1
    return counts


def amazon_chunk(
    counts: np.ndarray,
    first_user: int,
    weights: np.ndarray,
    quality: np.ndarray,
    asins: np.ndarray,
    seed: list[int],
) -> tuple[pd.DataFrame, np.ndarray]:
    """One chunk's rows (users ``first_user ...``, ``counts[u]`` each, sorted by user, then
    time) as the CSV columns, and their item indices."""
    rng = np.random.default_rng(seed)
    user, item = draw_pairs(counts, weights, rng)
    stamp = timestamps(user, rng, AMAZON_START, AMAZON_END)
    stars = rating_values(user, item, quality, AMAZON_SHARES, rng) + 1
    order = np.lexsort((stamp, user))
    user_ids = encoded_ids(
        np.arange(first_user, first_user + len(counts)), "A", 12, USER_MULTIPLIER
    )
    return pd.DataFrame(
        {
            "user_id": user_ids[user[order]],
            "item_id": asins[item[order]],
            "rating": stars[order],
            "timestamp": stamp[order],
        }
    ), item


def encoded_ids(index: np.ndarray, prefix: str, digits: int, multiplier: int) -> np.ndarray:
    """Ids ``prefix`` + ``digits`` base-32 characters, distinct for distinct indices below
    2**(5 x digits): ``index x multiplier + ID_OFFSET`` modulo 2**(5 x digits) is a bijection
    (odd multiplier), so the ids look random but never collide."""
    bits = 5 * digits
    value = (index.astype(np.uint64) * np.uint64(multiplier) + np.uint64(ID_OFFSET)) & np.uint64(
        (1 << bits) - 1
    )
    shifts = np.arange(bits - 5, -1, -5, dtype=np.uint64)
    codes = ((value[:, None] >> shifts) & np.uint64(31)).astype(np.intp)
    chars = np.concatenate(
        [np.tile(np.frombuffer(prefix.encode(), np.uint8), (len(index), 1)), ID_ALPHABET[codes]],
        axis=1,
    )
    return np.ascontiguousarray(chars).view(f"S{chars.shape[1]}").ravel().astype(str).astype(object)


def product_titles(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unique made-up product titles: "Brand Adjective Noun", some with a quoted nickname or
    ", N Pack" (commas and quotes exercise CSV quoting); the second copy of a title gets
    " #2" (no base title has '#', so the numbered ones cannot collide)."""
    syllables = np.array(SYLLABLES, dtype=object)
    parts = syllables[rng.integers(0, len(SYLLABLES), (n, 3))]
    brand = pd.Series(parts[:, 0] + parts[:, 1]).where(
        rng.random(n) < 0.5, parts[:, 0] + parts[:, 1] + parts[:, 2]
    )
    brand = brand.str.capitalize()
    adjective = np.array(ADJECTIVES, dtype=object)[rng.integers(0, len(ADJECTIVES), n)]
    noun = np.array(NOUNS, dtype=object)[rng.integers(0, len(NOUNS), n)]
    base = brand + " " + adjective + " " + noun
    base = base.where(rng.random(n) > 0.05, brand + ' "' + adjective + '" ' + noun)
    pack = ", " + pd.Series(rng.integers(2, 25, n)).astype(str) + " Pack"
    base = base.where(rng.random(n) > 0.2, base + pack)
    repeat = base.groupby(base).cumcount()
    return np.where(repeat > 0, base + " #" + (repeat + 1).astype(str), base).astype(object)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the files")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="movielens")
    parser.add_argument(
        "--size",
        choices=[name for sizes in SHAPES.values() for name in sizes],
        help="default: the shape's first (full, amazon-100m)",
    )
    parser.add_argument("--ratings", type=int, help="override the size's rating count")
    parser.add_argument("--users", type=int, help="override the size's user count")
    parser.add_argument("--items", type=int, help="override the size's item count")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = SHAPES[args.shape]
    size = args.size or next(iter(sizes))
    if size not in sizes:
        parser.error(f"size {size!r} is not a {args.shape} size: {list(sizes)}")
    ratings, users, items = sizes[size]
    maker = make_amazon if args.shape == "amazon" else make
    stats = maker(
        args.out, args.ratings or ratings, args.users or users, args.items or items, args.seed
    )
    print(
        f"wrote {args.out}: {stats['ratings']:,} ratings, {stats['users']:,} users, "
        f"{stats['items']:,} items; "
        + (
            f"{stats['seconds']:.1f} s; "
            + ", ".join(f"{name} {size / 2**20:,.1f} MiB" for name, size in stats["bytes"].items())
            if "bytes" in stats
            else f"generate {stats['generate_s']:.1f} s, write {stats['write_s']:.1f} s"
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
