"""Baselines that score candidates like a model does: random and popularity.

Each scorer returns, per example, a float array [n_candidates] (higher = better), the
same shape a language model's candidate log-probabilities have, so every metric,
interval and comparison runs through the same code. Popularity counts interactions in
the training split only (``train_count`` in the prepared ``items.json``).

Integer counts tie often (many candidates of a context share a count), and the
evaluation's pessimistic tie rule, right for model scores, would rank a positive below
every negative with its count. Popularity therefore breaks ties uniformly at random: its
score is the count plus a fraction in [0, 1) drawn per candidate from the seed and the
context id, which orders equal counts at random and never reorders different counts.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError

# Separate random streams per purpose, so popularity's tie-breaks are not the random
# baseline's scores for the same context and seed.
RANDOM_STREAM, TIE_BREAK_STREAM = 0, 1


def context_rng(seed: int, context_id: str, stream: int) -> np.random.Generator:
    """A generator that depends on the seed, the stream and the context id only, so a
    context scores the same in any subset and any order."""
    key = [seed, zlib.crc32(context_id.encode())]
    # The random baseline's stream keeps the key it always had (its published figures).
    return np.random.default_rng(key if stream == RANDOM_STREAM else key + [stream])


class RandomScorer:
    """Uniform random scores, seeded per context so a subset of contexts scores the same."""

    name = "random"
    scoring = "baseline random: uniform scores in [0, 1), seeded by (seed, CRC32 of context id)"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, examples: Sequence[PreferenceExample]) -> list[np.ndarray]:
        return [
            context_rng(self.seed, ex.context_id, RANDOM_STREAM).random(len(ex.candidates))
            for ex in examples
        ]


class PopularityScorer:
    """Score = the item's interaction count in the training split + a random tie-break.

    Candidates are looked up by item id (``meta["candidate_ids"]``) when the example has
    them, else by title; an item absent from the catalog counts 0. The added fraction in
    [0, 1) breaks ties between equal (integer) counts uniformly at random, seeded per
    context: ``floor(score)`` is the count.
    """

    name = "popularity"
    scoring = (
        "baseline popularity: training-split interaction count + a uniform tie-break in [0, 1) "
        "seeded by (seed, context id); equal counts are ordered at random, different counts "
        "never swap"
    )

    def __init__(self, items: Sequence[dict], seed: int = 0):
        self.seed = seed
        try:
            self.by_id = {str(it["item_id"]): _count(it) for it in items}
        except KeyError as err:
            raise InputError(f"items.json: every item needs 'item_id' and {err}") from err
        self.by_title: dict[str, float] = {}
        for it in items:  # duplicate titles: keep the most popular item of that title
            title, count = str(it.get("title", "")), _count(it)
            self.by_title[title] = max(count, self.by_title.get(title, count))

    def score(self, examples: Sequence[PreferenceExample]) -> list[np.ndarray]:
        return [self._score_one(ex) for ex in examples]

    def counts(self, ex: PreferenceExample) -> np.ndarray:
        """The candidates' training counts [n], without tie-break."""
        ids = ex.meta.get("candidate_ids")
        if ids is not None and len(ids) == len(ex.candidates):
            return np.array([self.by_id.get(str(i), 0.0) for i in ids])
        return np.array([self.by_title.get(t, 0.0) for t in ex.candidates])

    def _score_one(self, ex: PreferenceExample) -> np.ndarray:
        tie_break = context_rng(self.seed, ex.context_id, TIE_BREAK_STREAM).random(
            len(ex.candidates)
        )
        return self.counts(ex) + tie_break


def _count(item: dict) -> float:
    """``train_count`` as a float; it must be a whole number for the tie-break to be exact."""
    count = item["train_count"]
    if isinstance(count, bool) or not isinstance(count, int | float) or count < 0 or count % 1:
        raise InputError(
            f"items.json: item {item.get('item_id')!r} has train_count {count!r}; "
            "expected a whole number >= 0"
        )
    return float(count)
