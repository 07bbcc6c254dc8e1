"""Units of the data side: templates, negative sampling, levels, schema validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from setdpo.data.config import DOMAINS, TEMPLATES, PrepareConfig
from setdpo.data.negatives import SeenIndex, sample_negatives
from setdpo.data.prompts import load_template, render
from setdpo.data.schema import PreferenceExample
from setdpo.data.sequences import dense_levels
from setdpo.errors import InputError


@pytest.mark.parametrize(("template", "domain"), list(itertools.product(TEMPLATES, DOMAINS)))
def test_every_template_file_renders(template, domain):
    text = load_template(template, domain)
    prompt = render(template, domain, ["A {x}", "B"], ["C", "D", "E"])
    assert "A {x}, B" in prompt  # titles verbatim, braces untouched
    assert ("C, D, E" in prompt) == (template == "listing")
    assert ("3" in prompt) == ("{n_candidates}" in text)


def test_listing_wording():
    prompt = render("listing", "movie", ["Heat (1995)"], ["Jaws (1975)", "Babe (1995)"])
    assert prompt == (
        "This user has watched Heat (1995) in the previous. Please predict the next movie this "
        "user will watch. Choose the answer from the following 2 movie titles: Jaws (1975), "
        "Babe (1995). Answer:"
    )


def seen_index():
    # user 0 saw items 0,1,2 at times 1,2,3; user 1 saw items 0..7 at times 1..8; 10 items
    user = np.array([0, 0, 0] + [1] * 8)
    item = np.array([0, 1, 2] + list(range(8)))
    time = np.array([1.0, 2.0, 3.0] + [float(t) for t in range(1, 9)])
    return SeenIndex(user, item, time, n_items=10)


def test_negatives_are_unseen_up_to_the_cutoff_and_distinct():
    seen = seen_index()
    rng = np.random.default_rng(0)
    user, cutoff = np.array([0] * 200 + [1] * 200), np.array([2.0] * 200 + [8.0] * 200)
    need = np.array([5] * 200 + [2] * 200)
    out = sample_negatives(rng, seen, user, cutoff, need, chunk=64)
    for row, (u, n) in enumerate(zip(user, need, strict=True)):
        drawn = out[row][out[row] >= 0]
        assert len(drawn) == n and len(set(drawn)) == n
        # user 0 by time 2 had seen items 0 and 1 (item 2 comes at time 3: allowed)
        forbidden = {0, 1} if u == 0 else set(range(8))
        assert not forbidden & set(drawn.tolist())
    # user 1 has only items 8 and 9 left: every row gets exactly those (the exact fallback)
    assert all(set(out[r][:2]) == {8, 9} for r in range(200, 400))


def test_negatives_when_too_few_items_remain():
    out = sample_negatives(
        np.random.default_rng(0), seen_index(), np.array([1]), np.array([8.0]), np.array([5])
    )
    assert sorted(out[0][out[0] >= 0].tolist()) == [8, 9] and (out[0] == -1).sum() == 3


def test_popularity_weights_bias_the_draws():
    seen = SeenIndex(np.array([0]), np.array([0]), np.array([1.0]), n_items=10)
    weights = np.array([1.0] * 9 + [1000.0])  # item 9 is very popular
    out = sample_negatives(
        np.random.default_rng(0), seen, np.zeros(500, int), np.ones(500), np.ones(500, int), weights
    )
    # P(item 9) = 1000 / 1009 per draw
    assert (out[:, 0] == 9).mean() > 0.95


def test_dense_levels_renumber_without_gaps():
    # rows: ratings gave levels {1, 3} (no 2), {2, 2}, {4 only: no positive}; bottom = 4
    levels = np.array([[1, 3, 0], [2, 2, 0], [4, 0, 0]])
    dense, bottom = dense_levels(levels, bottom=4)
    assert dense.tolist() == [[1, 2, 0], [1, 1, 0], [0, 0, 0]]
    assert bottom.tolist() == [3, 2, 1]


def test_schema_rejects_bad_examples():
    ok = dict(
        context_id="c", user="u", history=["h"], prompt="p", candidates=["a", "b"], levels=[1, 2]
    )
    PreferenceExample(**ok)
    for change, message in [
        ({"levels": [2, 2]}, "no level-1"),
        ({"levels": [1]}, "2 candidates but 1 levels"),
        ({"candidates": ["a", "a"]}, "duplicate candidate titles"),
        ({"candidates": ["a", " "]}, "empty title"),
        ({"levels": [1, 0]}, "levels are ints >= 1"),
        ({"prompt": ""}, "empty prompt"),
    ]:
        with pytest.raises(ValueError, match=message):
            PreferenceExample(**(ok | change))


def test_config_validation():
    with pytest.raises(InputError, match="mode 'nxt'"):
        PrepareConfig(mode="nxt")
    with pytest.raises(InputError, match="must exceed the target window"):
        PrepareConfig(mode="next-k", k=5, candidates=5)
    with pytest.raises(InputError, match="needs both an interactions file and an items file"):
        PrepareConfig(source="file")
    assert PrepareConfig(max_examples=10, max_examples_per_split={"test": 3}).split_cap("test") == 3


def test_dense_ever_and_sorted_lookups_agree(monkeypatch):
    rng = np.random.default_rng(3)
    user, item = rng.integers(0, 50, 2000), rng.integers(0, 80, 2000)
    time = rng.integers(0, 100, 2000).astype(float)
    dense = SeenIndex(user, item, time, n_items=80)
    monkeypatch.setattr("setdpo.data.negatives.DENSE_CELLS", 0)
    ever = SeenIndex(user, item, time, n_items=80)
    monkeypatch.setattr("setdpo.data.negatives.EVER_CELLS", 0)
    keyed = SeenIndex(user, item, time, n_items=80)
    assert dense.dense is not None and keyed.dense is None and keyed.ever is None
    assert ever.dense is None and ever.ever is not None
    queries, cutoff = rng.integers(0, 80, (500, 30)), rng.uniform(-5, 105, 500)
    rows = rng.integers(0, 50, 500)
    expected = np.zeros((500, 30), dtype=bool)  # by hand: any interaction at or before cutoff
    for r in range(500):
        mine = item[(user == rows[r]) & (time <= cutoff[r])]
        expected[r] = np.isin(queries[r], mine)
    assert (dense.seen_by(rows, queries, cutoff) == expected).all()
    assert (ever.seen_by(rows, queries, cutoff) == expected).all()
    assert (keyed.seen_by(rows, queries, cutoff) == expected).all()
