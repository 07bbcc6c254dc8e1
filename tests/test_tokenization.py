"""setdpo.tokenization: prompt and candidate ids, history-first truncation, the collator."""

from __future__ import annotations

import pytest
import torch

from setdpo.data import prompts
from setdpo.data.schema import PreferenceExample
from setdpo.model import build_tiny
from setdpo.tokenization import (
    CandidateCollator,
    TokenizedExample,
    TruncationReport,
    tokenize_candidates,
    tokenize_example,
    tokenize_examples,
)

HISTORY = [
    "Heat (1995)",
    "Casino (1995)",
    "Sabrina (1995)",
    "Toy Story (1995)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Get Shorty (1995)",
    "Copycat (1995)",
]
CANDIDATES = ["Babe (1995)", "Dead Man Walking (1995)", "Richard III (1995)"]


@pytest.fixture(scope="module")
def tokenizer():
    texts = HISTORY + CANDIDATES + [prompts.render("listing", "movie", HISTORY, CANDIDATES)]
    return build_tiny(texts)[1]


def _example(meta: dict | None = None) -> PreferenceExample:
    return PreferenceExample(
        context_id="c0",
        user="u0",
        history=list(HISTORY),
        prompt=prompts.render("listing", "movie", HISTORY, CANDIDATES),
        candidates=list(CANDIDATES),
        levels=[1, 2, 2],
        meta={"template": "listing", "domain": "movie"} if meta is None else meta,
    )


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def test_prompt_has_bos_and_candidates_are_title_plus_eos_without_bos(tokenizer) -> None:
    ex = _example()
    tok = tokenize_example(ex, tokenizer)
    assert tok.prompt_ids[0] == tokenizer.bos_token_id  # the tiny tokenizer adds <s>
    assert tok.prompt_ids == _ids(tokenizer, ex.prompt, special=True)
    for title, ids in zip(CANDIDATES, tok.candidate_ids, strict=True):
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.bos_token_id not in ids
        assert tokenizer.decode(ids[:-1]) == f" {title}"  # read after "Answer:"
    assert (tok.levels, tok.dropped_history, tok.dropped_tokens) == ([1, 2, 2], 0, 0)


def test_chat_template_wraps_the_prompt_as_the_user_message(tokenizer) -> None:
    ex = _example()
    tok = tokenize_example(ex, tokenizer, chat_template=True)
    # the tiny model's template: "<s>user: {prompt}</s>\nassistant: ", whose final space
    # leads each candidate
    expected = f"{tokenizer.bos_token}user: {ex.prompt}{tokenizer.eos_token}\nassistant:"
    assert tokenizer.decode(tok.prompt_ids) == expected
    assert tok.prompt_ids.count(tokenizer.bos_token_id) == 1  # no second BOS from the tokenizer


def test_truncation_drops_the_oldest_history_items_first_and_keeps_titles_whole(
    tokenizer,
) -> None:
    ex = _example()
    lengths = [
        len(_ids(tokenizer, prompts.render("listing", "movie", HISTORY[k:], CANDIDATES), True))
        for k in range(len(HISTORY) + 1)
    ]
    assert lengths == sorted(lengths, reverse=True) and lengths[2] > lengths[3]
    # Budget = the length with the 3 oldest items gone: dropping 2 is not enough, 3 fits.
    tok = tokenize_example(ex, tokenizer, max_prompt_length=lengths[3])
    assert (tok.dropped_history, tok.dropped_tokens) == (3, 0)
    text = tokenizer.decode(tok.prompt_ids, skip_special_tokens=True)
    assert text == prompts.render("listing", "movie", HISTORY[3:], CANDIDATES)
    assert HISTORY[2] not in text and all(title in text for title in HISTORY[3:] + CANDIDATES)
    assert tokenize_example(ex, tokenizer, max_prompt_length=lengths[0]).dropped_history == 0


def test_without_a_template_the_oldest_tokens_go_and_bos_stays(tokenizer) -> None:
    ex = _example(meta={})  # imported rows: nothing to re-render from
    full = tokenize_example(ex, tokenizer).prompt_ids
    tok = tokenize_example(ex, tokenizer, max_prompt_length=20)
    assert tok.prompt_ids == [tokenizer.bos_token_id] + full[-19:]
    assert (tok.dropped_history, tok.dropped_tokens) == (0, len(full) - 20)


def test_history_exhausted_then_tokens_cut(tokenizer) -> None:
    ex = _example()
    no_history = _ids(tokenizer, prompts.render("listing", "movie", [], CANDIDATES), True)
    tok = tokenize_example(ex, tokenizer, max_prompt_length=len(no_history) - 4)
    assert tok.dropped_history == len(HISTORY)
    assert tok.prompt_ids == [tokenizer.bos_token_id] + no_history[-(len(no_history) - 5) :]
    assert tok.dropped_tokens == 4


def test_truncation_report_counts(tokenizer) -> None:
    a = TokenizedExample([1, 2], [[3, 2]], [1], dropped_history=2)
    b = TokenizedExample([1, 2], [[3, 2]], [1], dropped_history=4)
    c = TokenizedExample([1, 2], [[3, 2]], [1], dropped_tokens=7)
    d = TokenizedExample([1, 2], [[3, 2]], [1])
    report = TruncationReport.of([a, b, c, d])
    assert report == TruncationReport(4, 2, 6, 1, 7)
    assert str(report) == "2/4 prompts lost history (6 items), 1 were cut token-wise (7 tokens)"


def test_tokenize_examples_warns_with_the_truncation_report(tokenizer, caplog) -> None:
    full = len(tokenize_example(_example(), tokenizer).prompt_ids)
    with caplog.at_level("WARNING", logger="setdpo.tokenization"):
        untouched = tokenize_examples([_example()], tokenizer, max_prompt_length=full)
    assert untouched[0].dropped_history == 0 and not caplog.records
    with caplog.at_level("WARNING", logger="setdpo.tokenization"):
        cut = tokenize_examples(
            [_example(), _example()], tokenizer, max_prompt_length=full - 1, what="valid"
        )
    assert all(t.dropped_history >= 1 for t in cut)
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"valid, max_prompt_length {full - 1}: 2/2 prompts lost history"
    )


def test_bad_max_prompt_length(tokenizer) -> None:
    with pytest.raises(ValueError, match="max_prompt_length must be >= 1"):
        tokenize_example(_example(), tokenizer, max_prompt_length=0)


def test_collator_layout() -> None:
    items = [
        TokenizedExample([5, 6, 7], [[8, 2], [9, 10, 2]], [1, 2]),
        {"prompt_ids": [5, 6], "candidate_ids": [[11, 2]], "levels": [1]},  # a dataset row
    ]
    batch = CandidateCollator(pad_token_id=0)(items)
    assert set(batch) == {"prompt_ids", "prompt_mask", "candidate_ids", "candidate_mask", "levels"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["prompt_ids"].tolist() == [[5, 6, 7], [5, 6, 0]]
    assert batch["prompt_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["candidate_ids"].tolist() == [[[8, 2, 0], [9, 10, 2]], [[11, 2, 0], [0, 0, 0]]]
    assert batch["candidate_mask"].tolist() == [[[1, 1, 0], [1, 1, 1]], [[1, 1, 0], [0, 0, 0]]]
    assert batch["levels"].tolist() == [[1, 2], [1, 0]]


def test_collator_rejects_empty_parts() -> None:
    collate = CandidateCollator(pad_token_id=0)
    with pytest.raises(ValueError, match="batch item 1: empty"):
        collate([TokenizedExample([1], [[2]], [1]), TokenizedExample([1], [[]], [1])])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_candidates_are_tokenized_as_they_follow_the_prompt(tokenizer) -> None:
    """The template ends in ``Answer:``: each title is read after a space, as in running text,
    and the prompt's ids are a prefix of the prompt and title tokenized together."""
    ex = _example()
    tok = tokenize_example(ex, tokenizer)
    alone = []
    for title, ids in zip(CANDIDATES, tok.candidate_ids, strict=True):
        assert tok.prompt_ids + ids[:-1] == _ids(tokenizer, f"{ex.prompt} {title}", special=True)
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[:-1]) == f" {title}"
        alone.append(ids[:-1] == _ids(tokenizer, title, special=False))
    assert not any(alone)  # on its own, a title starts a text: other ids


def test_a_prompt_s_final_space_leads_the_candidates(tokenizer) -> None:
    """The tiny chat template ends in ``assistant: ``: the whole text splits that space into
    the title's first token, so the prompt's ids end at ``:`` and each candidate starts with
    the space; a prompt ending in a newline gets no space."""
    ex = _example()
    tok = tokenize_example(ex, tokenizer, chat_template=True)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": ex.prompt}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("assistant: ")
    for title, ids in zip(CANDIDATES, tok.candidate_ids, strict=True):
        assert tok.prompt_ids + ids[:-1] == _ids(tokenizer, text + title, special=False)
    plain = "The user watched Heat (1995). Answer:"
    assert tokenize_candidates(tokenizer, plain + " ", CANDIDATES) == tokenize_candidates(
        tokenizer, plain, CANDIDATES
    )
    (ids,) = tokenize_candidates(tokenizer, "Heat (1995)\n", ["Babe (1995)"])
    assert tokenizer.decode(ids[:-1]) == "Babe (1995)"


def test_candidate_that_changes_the_prompt_ids_is_refused() -> None:
    """A BPE without pre-tokenizer that merges a newline with the next letter: ``x\n`` + ``y``
    is ``x``, ``\ny``, so ``y``'s ids cannot follow the prompt's ``x``, ``\n``."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {"x": 0, "\n": 1, "y": 2, "\ny": 3, "</s>": 4}
    model = BPE(vocab=vocab, merges=[("\n", "y")])
    merging = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(model), eos_token="</s>")
    with pytest.raises(ValueError, match=r"candidate 'y' tokenized after its prompt"):
        tokenize_candidates(merging, "x\n", ["y"])


def test_truncated_prompt_keeps_the_candidates_ids(tokenizer) -> None:
    ex = _example()
    full = tokenize_example(ex, tokenizer)
    for meta in ({}, None):  # token-wise cut, history dropped
        cut = tokenize_example(_example(meta), tokenizer, max_prompt_length=20)
        assert cut.candidate_ids == full.candidate_ids


@pytest.mark.smollm2
def test_smollm2_reads_a_title_after_answer_as_in_running_text() -> None:
    """The case that motivated it: ``Toy Story`` alone is ``T``, ``oy``, ``ĠStory``."""
    from setdpo.model import load

    tokenizer = load("embedded:smollm2-135m", device="cpu")[1]
    prompt = prompts.render("open", "movie", HISTORY[:3], [])
    (ids,) = tokenize_candidates(tokenizer, prompt, ["Toy Story (1995)"])
    assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["ĠToy", "ĠStory"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("Toy Story")["input_ids"]) == [
        "T",
        "oy",
        "ĠStory",
    ]
