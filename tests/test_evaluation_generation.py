"""Greedy and trie-constrained generation on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from setdpo.data import load_split
from setdpo.evaluation.evaluate import EvalConfig, generation_values
from setdpo.evaluation.generation import TitleTrie, generate_answers
from setdpo.evaluation.matching import match_answer
from setdpo.evaluation.scorers import ModelScorer
from setdpo.model import build_tiny

EOS, PAD = 2, 0  # the tiny tokenizer's </s> and <pad>


@pytest.fixture(scope="module")
def tiny_model():
    model, tokenizer = build_tiny()
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (EOS, PAD)
    return model


# Three contexts with different prompt lengths; candidates share prefixes (5 6 .. / 5 7 ..),
# and one candidate is a prefix of another apart from EOS ([9, 2] and [9, 10, 2]).
PROMPTS = [[1, 11, 12, 13], [1, 14, 15, 16, 17, 18, 19], [1, 20]]
CANDIDATES = [
    [[5, 6, EOS], [5, 7, 8, EOS], [9, EOS], [9, 10, EOS]],
    [[21, 22, 23, EOS], [21, 24, EOS], [25, EOS]],
    [[30, EOS], [31, 32, 33, 34, EOS]],
]


def test_trie_allows_only_continuations():
    trie = TitleTrie(CANDIDATES[0])
    assert sorted(trie.allowed([])) == [5, 9]
    assert sorted(trie.allowed([5])) == [6, 7]
    assert sorted(trie.allowed([9])) == [EOS, 10]
    assert trie.allowed([5, 6, EOS]) == []
    assert trie.allowed([4]) == []
    with pytest.raises(ValueError, match="empty"):
        TitleTrie([[]])


def test_constrained_answers_are_always_candidates(tiny_model):
    answers = generate_answers(
        tiny_model, PROMPTS, EOS, PAD, candidates=CANDIDATES, batch_size=2, progress=False
    )
    assert len(answers) == 3
    for answer, cands in zip(answers, CANDIDATES, strict=True):
        assert answer + [EOS] in cands


def test_constrained_answer_is_the_greedy_path_through_the_trie(tiny_model):
    # Step by step by hand: at each step take the best allowed token under the model.
    prompt, cands = PROMPTS[1], CANDIDATES[1]
    trie, seq = TitleTrie(cands), []
    while allowed := trie.allowed(seq):
        with torch.no_grad():
            logits = tiny_model(torch.tensor([prompt + seq])).logits[0, -1]
        seq.append(max(allowed, key=lambda t: logits[t].item()))
    # Batched with a longer and a shorter prompt, so this row is left-padded.
    answers = generate_answers(
        tiny_model, PROMPTS, EOS, PAD, candidates=CANDIDATES, batch_size=3, progress=False
    )
    assert answers[1] + [EOS] == seq


def test_unconstrained_greedy_matches_a_plain_forward_loop(tiny_model):
    prompt, seq = PROMPTS[0], []
    for _ in range(5):
        with torch.no_grad():
            token = int(tiny_model(torch.tensor([prompt + seq])).logits[0, -1].argmax())
        if token == EOS:
            break
        seq.append(token)
    answers = generate_answers(tiny_model, PROMPTS, EOS, PAD, max_new_tokens=5, progress=False)
    assert answers[0] == seq
    assert all(len(a) <= 5 for a in answers)


@pytest.fixture(scope="module")
def tiny_scorer(ml100k_next_dir):
    examples = load_split(ml100k_next_dir, "test")[:6]
    texts = [ex.prompt for ex in examples] + [c for ex in examples for c in ex.candidates]
    model, tokenizer = build_tiny(texts)
    return ModelScorer(model, tokenizer, name="tiny", progress=False), examples


def test_constrained_generation_names_a_candidate_for_every_context(ml100k_next_dir, tiny_scorer):
    scorer, examples = tiny_scorer
    config = EvalConfig(model="tiny", data=str(ml100k_next_dir), constrained=True, progress=False)
    entries = generation_values(scorer, examples, config)
    for ex, entry in zip(examples, entries, strict=True):
        assert entry["values"]["ValidRatio"] == 1.0
        # The decoded answer is the matched title itself, and matching the text agrees.
        assert entry["answer"] == ex.candidates[entry["matched"]]
        assert match_answer(entry["answer"], ex.candidates) == entry["matched"]
        assert entry["values"]["GenHR@1"] == float(ex.levels[entry["matched"]] == 1)


def test_unconstrained_generation_of_a_random_model_is_rarely_valid(ml100k_next_dir, tiny_scorer):
    scorer, examples = tiny_scorer
    config = EvalConfig(model="tiny", data=str(ml100k_next_dir), max_new_tokens=8, progress=False)
    entries = generation_values(scorer, examples, config)
    # Greedy tokens of a random model do not spell a whole title with its year (seeded).
    assert all(e["matched"] is None and e["values"]["ValidRatio"] == 0.0 for e in entries)
    assert all(isinstance(e["answer"], str) for e in entries)
