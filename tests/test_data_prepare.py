"""`setdpo.data.prepare` on the real ML-100K copy: layout, invariants, determinism."""

from __future__ import annotations

import json

from setdpo.data import load_items, load_split


def test_ml100k_next_fixture_layout(ml100k_next_dir):
    names = {p.name for p in ml100k_next_dir.iterdir()}
    assert {"train.jsonl", "valid.jsonl", "test.jsonl", "hf", "items.json"} <= names
    assert {"stats.json", "config.json"} <= names
    sizes = {s: len(load_split(ml100k_next_dir, s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 200, "valid": 50, "test": 50}
    for example in load_split(ml100k_next_dir, "test"):
        assert len(example.candidates) == 20
        assert sorted(example.levels) == [1] + [2] * 19
        assert example.meta["template"] == "listing" and example.meta["domain"] == "movie"
        assert len(example.meta["candidate_ids"]) == 20
    items = load_items(ml100k_next_dir)
    assert len(items) == 1682  # every ML-100K item has ratings
    config = json.loads((ml100k_next_dir / "config.json").read_text())
    assert config["source"] == "ml-100k" and config["seed"] == 0
