"""Catalog ranking: the catalog example, and catalog ranking against candidate ranking."""

from __future__ import annotations

import pytest

from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError
from setdpo.evaluation.catalog import catalog_example

CATALOG = [{"item_id": str(i), "title": f"Movie {i} (199{i % 10})"} for i in range(1, 9)]


def open_example(**changes) -> PreferenceExample:
    fields = dict(
        context_id="u1:5",
        user="u1",
        history=["Movie 1 (1991)", "Movie 2 (1992)"],
        prompt="The user watched Movie 1 (1991), Movie 2 (1992). Next:",
        candidates=["Movie 5 (1995)", "Movie 3 (1993)", "Movie 7 (1997)"],
        levels=[1, 2, 2],
        meta={"template": "open", "domain": "movie", "candidate_ids": ["5", "3", "7"]},
    )
    return PreferenceExample(**(fields | changes))


def test_catalog_example_excludes_history_and_grades_the_rest():
    big = catalog_example(open_example(), CATALOG, max_level=2)
    # Items 1 and 2 are the history; the other 6 remain in catalog order.
    assert big.candidates == [f"Movie {i} (199{i})" for i in (3, 4, 5, 6, 7, 8)]
    assert big.meta["candidate_ids"] == ["3", "4", "5", "6", "7", "8"]
    # Only the held-out positive is relevant; sampled negatives are plain catalog items.
    assert big.levels == [2, 2, 1, 2, 2, 2]
    assert big.prompt == open_example().prompt


def test_graded_levels_survive_and_unobserved_items_get_the_worst_level():
    ex = open_example(levels=[1, 2, 4], meta={"template": "open"})
    big = catalog_example(ex, CATALOG, max_level=4)
    assert dict(zip(big.candidates, big.levels, strict=True)) == {
        "Movie 3 (1993)": 2,
        "Movie 4 (1994)": 4,
        "Movie 5 (1995)": 1,
        "Movie 6 (1996)": 4,
        "Movie 7 (1997)": 4,
        "Movie 8 (1998)": 4,
    }


def test_listing_prompts_and_unknown_positives_are_refused():
    with pytest.raises(InputError, match="'open' template"):
        catalog_example(open_example(meta={"template": "listing"}), CATALOG, 2)
    stranger = open_example(candidates=["Unknown (2001)", "Movie 3 (1993)", "Movie 7 (1997)"])
    with pytest.raises(InputError, match="not in the catalog"):
        catalog_example(stranger, CATALOG, 2)
