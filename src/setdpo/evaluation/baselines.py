"""Baselines that score candidates like a model does: random and popularity.

Each scorer returns, per example, a float array [n_candidates] (higher = better), the
same shape a language model's candidate log-probabilities have, so every metric,
interval and comparison runs through the same code. Popularity counts interactions in
the training split only (``train_count`` in the prepared ``items.json``); the
pessimistic tie rule applies to its many equal counts.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError


class RandomScorer:
    """Uniform random scores, seeded per context so a subset of contexts scores the same."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, examples: Sequence[PreferenceExample]) -> list[np.ndarray]:
        return [
            np.random.default_rng([self.seed, zlib.crc32(ex.context_id.encode())]).random(
                len(ex.candidates)
            )
            for ex in examples
        ]


class PopularityScorer:
    """Score = the item's interaction count in the training split.

    Candidates are looked up by item id (``meta["candidate_ids"]``) when the example has
    them, else by title; an item absent from the catalog counts 0.
    """

    name = "popularity"

    def __init__(self, items: Sequence[dict]):
        try:
            self.by_id = {str(it["item_id"]): float(it["train_count"]) for it in items}
        except KeyError as err:
            raise InputError(f"items.json: every item needs 'item_id' and {err}") from err
        self.by_title: dict[str, float] = {}
        for it in items:  # duplicate titles: keep the most popular item of that title
            title, count = str(it.get("title", "")), float(it["train_count"])
            self.by_title[title] = max(count, self.by_title.get(title, count))

    def score(self, examples: Sequence[PreferenceExample]) -> list[np.ndarray]:
        return [self._score_one(ex) for ex in examples]

    def _score_one(self, ex: PreferenceExample) -> np.ndarray:
        ids = ex.meta.get("candidate_ids")
        if ids is not None and len(ids) == len(ex.candidates):
            return np.array([self.by_id.get(str(i), 0.0) for i in ids])
        return np.array([self.by_title.get(t, 0.0) for t in ex.candidates])
