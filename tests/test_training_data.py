"""Training rows: completion-only masking, negative draws, epoch-keyed sampling, collation,
lazy tokenization."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader

from setdpo.tokenization import TokenizedExample
from setdpo.training.data import (
    IGNORE_INDEX,
    LazyTokenized,
    PreferenceCollator,
    PreferenceDataset,
    SFTCollator,
    SFTDataset,
    draw_negatives,
    example_key,
    example_rng,
    keep_candidates,
    subset_batch,
)


def _tok(prompt: list[int], candidates: list[list[int]], levels: list[int]) -> TokenizedExample:
    return TokenizedExample(
        prompt_ids=prompt, candidate_ids=candidates, levels=levels, dropped_history=0
    )


def test_sft_collator_masks_prompt_and_padding() -> None:
    batch = SFTCollator(pad_token_id=0)(
        [
            {"prompt_ids": [5, 6, 7], "answer_ids": [8, 2]},
            {"prompt_ids": [5], "answer_ids": [9, 9, 2]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 2], [5, 9, 9, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    m = IGNORE_INDEX
    assert batch["labels"].tolist() == [[m, m, m, 8, 2], [m, 9, 9, 2, m]]


def test_sft_dataset_one_row_per_positive_or_one_per_context() -> None:
    toks = [_tok([1], [[3, 2], [4, 2], [5, 2]], [1, 2, 1]), _tok([1], [[6, 2], [7, 2]], [2, 1])]
    each = SFTDataset(toks, seed=0, positives="each")
    assert [row["answer_ids"] for row in each] == [[3, 2], [5, 2], [7, 2]]
    one = SFTDataset(toks, seed=0, positives="one")
    assert len(one) == 2
    drawn = set()
    for epoch in range(20):
        one.set_epoch(epoch)
        drawn.add(tuple(one[0]["answer_ids"]))
        assert one[1]["answer_ids"] == [7, 2]  # a single positive is always the answer
    assert drawn == {(3, 2), (5, 2)}  # both positives of context 0 come up over epochs


def test_persistent_workers_draw_the_epoch_the_main_process_set() -> None:
    # One worker kept over epochs (persistent_workers): its copy of the dataset must follow
    # set_epoch on the main process's, for the positive drawn under `positives: one`.
    toks = [_tok([1], [[j + 3, 2] for j in range(8)], [1] * 8)]
    one = SFTDataset(toks, seed=0, positives="one")
    loader = DataLoader(one, batch_size=None, num_workers=1, persistent_workers=True)
    drawn, expected = [], []
    for epoch in range(6):
        one.set_epoch(epoch)
        drawn += [row["answer_ids"] for row in loader]
        expected.append(one[0]["answer_ids"])
    assert drawn == expected and len({tuple(ids) for ids in drawn}) > 1


def test_draw_negatives_all_uniform_and_deterministic() -> None:
    negatives = [1, 2, 4, 5, 7]
    assert draw_negatives(example_rng(0, 0, 0), negatives, 0) == negatives
    assert draw_negatives(example_rng(0, 0, 0), negatives, 9) == negatives
    a = draw_negatives(example_rng(3, 1, 7), negatives, 3)
    assert a == draw_negatives(example_rng(3, 1, 7), negatives, 3)
    assert len(a) == 3 and set(a) <= set(negatives) and a == sorted(a)


def test_temperature_zero_keeps_the_top_scores_without_a_draw() -> None:
    # `negatives: self`: the k highest scores, ties to the earlier candidate, whatever the rng.
    negatives, scores = [3, 5, 8, 9, 12], [0.5, 2.0, -1.0, 2.0, 1.0]
    for i in range(20):
        assert draw_negatives(example_rng(0, 0, i), negatives, 2, scores, 0.0) == [5, 9]
        assert draw_negatives(example_rng(0, 0, i), negatives, 1, scores, 0.0) == [5]
    levels = [2, 1, 2, 2, 2]
    # the positive scores highest and is kept; the top of the other (lowest) level joins it
    assert keep_candidates(levels, example_rng(0, 0, 0), 1, [1.0, 9.0, 0.0, 3.0, 2.0], 0) == [1, 3]


def test_hard_draw_follows_the_tempered_softmax() -> None:
    # k=1 from scores [0, log 3]: P(second) = 3 / (1 + 3) = 0.75 at temperature 1;
    # at temperature 2 the weights are [1, sqrt 3]: P = sqrt3 / (1 + sqrt3) = 0.634.
    scores = [0.0, math.log(3.0)]
    for temperature, expected in [(1.0, 0.75), (2.0, math.sqrt(3) / (1 + math.sqrt(3)))]:
        hits = sum(
            draw_negatives(example_rng(0, 0, i), [10, 11], 1, scores, temperature) == [11]
            for i in range(4000)
        )
        assert abs(hits / 4000 - expected) < 0.025  # 3.5 standard errors


def test_preference_dataset_draws_by_seed_epoch_and_index() -> None:
    toks = [_tok([1, 2], [[10 + j, 2] for j in range(8)], [1, 2, 2, 1, 2, 2, 2, 2])] * 3
    data = PreferenceDataset(toks, seed=5, num_negatives=2)
    first = [data.candidate_indices(i) for i in range(3)]
    assert [data.candidate_indices(i) for i in reversed(range(3))][::-1] == first
    for keep in first:
        assert {0, 3} <= set(keep) and len(keep) == 4  # both positives + 2 negatives
    item = data[1]
    assert item["example"].levels == [toks[1].levels[j] for j in first[1]]
    assert item["candidates"] == first[1] and item["size"] == 8 and item["index"] == 1
    assert item["key"] == example_key(toks[1])  # the full example's key, not the subset's
    epochs = set()
    for epoch in range(10):
        data.set_epoch(epoch)
        epochs.add(tuple(data.candidate_indices(0)))
    assert len(epochs) > 1  # redrawn each epoch


def test_multi_level_draws_keep_every_graded_level() -> None:
    # Levels 1, 2, 3 are graded items; the 17 candidates of level 4 are the negative pool.
    # Only the pool is subsampled: every draw keeps levels 1-3 and 3 of the pool.
    levels = [1, 2, 3] + [4] * 17
    data = PreferenceDataset([_tok([1], [[10 + j, 2] for j in range(20)], levels)], 0, 3)
    pools = set()
    for epoch in range(50):
        data.set_epoch(epoch)
        keep = data.candidate_indices(0)
        assert keep[:3] == [0, 1, 2] and len(keep) == 6, keep
        pools.add(tuple(keep[3:]))
    assert len(pools) > 10  # the pool is still drawn anew
    # A binary example draws from level 2, as before.
    assert keep_candidates([2, 1, 2, 2], example_rng(0, 0, 0), 1) in ([0, 1], [1, 2], [1, 3])
    assert keep_candidates([1, 1], example_rng(0, 0, 0), 3) == [0, 1]  # no pool


def test_example_key_follows_the_token_ids_only() -> None:
    a = _tok([1, 2], [[3, 2], [4, 2]], [1, 2])
    assert example_key(a) == example_key(_tok([1, 2], [[3, 2], [4, 2]], [2, 1]))  # levels
    assert example_key(a) != example_key(_tok([1, 2], [[3, 2], [5, 2]], [1, 2]))
    assert example_key(a) != example_key(_tok([1], [[2, 3, 2], [4, 2]], [1, 2]))  # boundaries


def test_preference_collator_locates_each_candidate() -> None:
    items = [
        {"example": _tok([4, 5, 6], [[7, 2], [8, 8, 2]], [1, 2]), "candidates": [0, 3]},
        {"example": _tok([4], [[9, 2], [7, 2], [8, 2]], [2, 1, 2]), "candidates": [1, 2, 5]},
    ]
    items = [{**it, "key": f"k{i}", "index": 10 + i, "size": 6} for i, it in enumerate(items)]
    batch = PreferenceCollator(pad_token_id=0)(items)
    assert batch["levels"].tolist() == [[1, 2, 0], [2, 1, 2]]
    assert batch["candidate_index"].tolist() == [[0, 3, -1], [1, 2, 5]]
    assert batch["example_index"].tolist() == [10, 11]
    assert batch["example_sizes"].tolist() == [6, 6]
    assert batch["example_keys"] == ["k0", "k1"]
    assert batch["candidate_ids"].shape == (2, 3, 3)
    # Row 0 keeps its second candidate, row 1 its third then first: left-aligned, re-padded.
    cut = subset_batch(batch, [[1], [2, 0]])
    assert cut["levels"].tolist() == [[2, 0], [2, 2]]
    assert cut["candidate_index"].tolist() == [[3, -1], [5, 1]]
    assert cut["candidate_ids"][1].tolist() == [[8, 2, 0], [9, 2, 0]]
    assert cut["candidate_mask"][0].tolist() == [[1, 1, 1], [0, 0, 0]]
    assert cut["prompt_ids"] is batch["prompt_ids"]


def test_lazy_tokenization_reads_levels_without_tokenizing() -> None:
    from setdpo.data.schema import PreferenceExample
    from setdpo.model import build_tiny

    _, tokenizer = build_tiny()
    examples = [
        PreferenceExample(
            context_id=f"u:{i}",
            user="u",
            history=[],
            prompt="Pick one:",
            candidates=["A", "B"],
            levels=[1, 2],
        )
        for i in range(3)
    ]
    lazy = LazyTokenized(examples, tokenizer)
    data = PreferenceDataset(lazy, seed=0, num_negatives=1)
    assert list(data.levels) == [[1, 2]] * 3 and lazy.report().examples == 0
    assert data[2]["example"].prompt_ids == tokenizer("Pick one:").input_ids
    assert lazy.report().examples == 1  # only the example read
    assert lazy[-1] is lazy[2] and len(lazy[0:2]) == 2


@pytest.mark.parametrize("k", [1, 2])
def test_draw_without_scores_is_uniform(k: int) -> None:
    counts = np.zeros(4)
    for i in range(2000):
        for j in draw_negatives(example_rng(1, 0, i), [0, 1, 2, 3], k):
            counts[j] += 1
    np.testing.assert_allclose(counts / 2000, k / 4, atol=0.04)


def test_valid_sample_is_seeded_and_keeps_file_order(ml100k_next_dir: Any) -> None:
    from setdpo.training.run import load_examples

    every = list(load_examples(ml100k_next_dir, "valid", None))
    sample = list(load_examples(ml100k_next_dir, "valid", 10, seed=0))
    assert sample == list(load_examples(ml100k_next_dir, "valid", 10, seed=0))
    assert sample != every[:10]  # the file is ordered by user: the head is a few users
    positions = [every.index(ex) for ex in sample]
    assert positions == sorted(positions) and len(set(positions)) == 10
    assert (
        list(load_examples(ml100k_next_dir, "train", 10))
        == load_examples(ml100k_next_dir, "train", None)[:10]
    )
    assert load_examples(ml100k_next_dir / "nowhere", "valid", 10) == []
