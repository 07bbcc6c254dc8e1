"""Preference examples -> token ids, and their collation into padded candidate batches.

A prompt is tokenized as the model will read it (optionally through the tokenizer's chat
template: one user message, then the assistant's generation prompt); each candidate is its
title's ids as they follow that prompt in running text, then EOS, without BOS (a candidate that
is one item token has no EOS: `setdpo.items`, ``meta["items_as"]``).

"As they follow the prompt": templates end in ``Answer:``, and a title tokenized on its own
starts a text, which BPE tokenizers split differently from the same title after a space
(SmolLM2: ``Toy Story`` alone is ``T``, ``oy``, ``ĠStory``; after ``Answer:`` it is
``ĠToy``, ``ĠStory``, the split the model meets everywhere else). So each title is tokenized
together with its prompt, after a space unless the prompt text ends in a newline (as chat
templates' generation prompts do), and its ids are what follows the prompt's ids. Spaces at
the end of a prompt move to the front of each candidate (``Answer: `` + ``Toy`` is read as
``Answer:`` + `` Toy``, as the tokenizer splits the whole text). The prompt's ids must come out
unchanged, otherwise the candidate would not continue the prompt the model reads: an error.

``max_prompt_length`` never cuts a title in half: while the prompt is too long, the oldest
history item is dropped and the prompt re-rendered from its template
(`setdpo.data.prompts.render`). Examples without a template (imported TRL rows) fall back to
dropping the oldest tokens (after BOS), and that is counted too: `TruncationReport` says what
a batch of examples lost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from setdpo.data.schema import PreferenceExample
from setdpo.items import ItemRepresentation

logger = logging.getLogger(__name__)


@dataclass
class TokenizedExample:
    """Token ids of one context.

    prompt_ids: the prompt (with BOS if the tokenizer adds one).
    candidate_ids: per candidate, its title's ids after the prompt + EOS (no BOS).
    levels: preference level per candidate (1 = most preferred).
    dropped_history: oldest history items dropped to fit ``max_prompt_length``.
    dropped_tokens: oldest prompt tokens cut when dropping history could not make it fit.
    """

    prompt_ids: list[int]
    candidate_ids: list[list[int]]
    levels: list[int]
    dropped_history: int = 0
    dropped_tokens: int = 0


@dataclass
class TruncationReport:
    """What ``max_prompt_length`` cost a set of tokenized examples."""

    examples: int = 0
    history_truncated: int = 0  # examples that lost history items
    history_items_dropped: int = 0
    token_truncated: int = 0  # examples whose prompt was cut token-wise
    tokens_dropped: int = 0

    @classmethod
    def of(cls, tokenized: Sequence[TokenizedExample]) -> TruncationReport:
        return cls(
            examples=len(tokenized),
            history_truncated=sum(t.dropped_history > 0 for t in tokenized),
            history_items_dropped=sum(t.dropped_history for t in tokenized),
            token_truncated=sum(t.dropped_tokens > 0 for t in tokenized),
            tokens_dropped=sum(t.dropped_tokens for t in tokenized),
        )

    def __str__(self) -> str:
        return (
            f"{self.history_truncated}/{self.examples} prompts lost history "
            f"({self.history_items_dropped} items), {self.token_truncated} were cut "
            f"token-wise ({self.tokens_dropped} tokens)"
        )


def _prompt_text(tokenizer: Any, prompt: str, chat_template: bool) -> tuple[str, str, bool]:
    """The text the tokenizer reads for ``prompt``, split where a candidate starts: the text
    without its trailing spaces, the space that leads each candidate (those spaces, else one
    unless the text ends in other whitespace, such as a newline), and whether the tokenizer
    adds its special tokens."""
    if not chat_template:
        text, special = prompt, True
    elif not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"chat_template=True but tokenizer {tokenizer.name_or_path!r} has no chat template"
        )
    else:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        special = False  # the template writes its own special tokens (BOS included) as text
    body = text.rstrip(" ")
    space = text[len(body) :] or ("" if body[-1:].isspace() else " ")
    return body, space, special


def tokenize_prompt(tokenizer: Any, prompt: str, chat_template: bool = False) -> list[int]:
    """Prompt ids: plain text with the tokenizer's special tokens (BOS if it adds one), or
    the chat template with ``prompt`` as the user message and the generation prompt; trailing
    spaces belong to the candidates (see the module docstring)."""
    body, _, special = _prompt_text(tokenizer, prompt, chat_template)
    return list(tokenizer(body, add_special_tokens=special)["input_ids"])


def tokenize_candidates(
    tokenizer: Any,
    prompt: str,
    titles: Sequence[str],
    chat_template: bool = False,
    eos: bool = True,
) -> list[list[int]]:
    """Each title's ids as it follows ``prompt`` (see the module docstring), then EOS unless
    ``eos`` is False (a lone item token ends its candidate: `setdpo.items`).

    Raises ValueError naming the title when tokenizing it after the prompt changes the
    prompt's own ids (a merge across the boundary).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token")
    body, space, special = _prompt_text(tokenizer, prompt, chat_template)
    prompt_ids = list(tokenizer(body, add_special_tokens=special)["input_ids"])
    joint = tokenizer([body + space + title for title in titles], add_special_tokens=special)
    out = []
    for title, ids in zip(titles, joint["input_ids"], strict=True):
        if list(ids[: len(prompt_ids)]) != prompt_ids or len(ids) == len(prompt_ids):
            raise ValueError(
                f"candidate {title!r} tokenized after its prompt (...{body[-30:]!r}) changes the "
                f"prompt's last tokens or is empty, so its ids cannot follow the prompt's ids"
            )
        out.append(list(ids[len(prompt_ids) :]) + ([tokenizer.eos_token_id] if eos else []))
    return out


def candidate_eos(example: PreferenceExample) -> bool:
    """Whether ``example``'s candidates end with EOS: all but lone item tokens
    (``meta["items_as"]``, `setdpo.items`)."""
    return ItemRepresentation(example.meta.get("items_as", "titles")).candidate_eos


def truncate_tokens(ids: list[int], max_length: int, bos_token_id: int | None) -> list[int]:
    """Keep the last tokens of ``ids`` (and its leading BOS, if any) within ``max_length``."""
    if len(ids) <= max_length:
        return ids
    head = ids[:1] if bos_token_id is not None and ids and ids[0] == bos_token_id else []
    keep = max_length - len(head)
    if keep < 1:
        raise ValueError(f"max_prompt_length={max_length} leaves no room for the prompt")
    return head + ids[len(ids) - keep :]


def tokenize_example(
    example: PreferenceExample,
    tokenizer: Any,
    max_prompt_length: int | None = None,
    chat_template: bool = False,
) -> TokenizedExample:
    """Token ids of ``example``; see the module docstring for ``max_prompt_length``."""
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    prompt, prompt_ids, dropped = _fit_history(example, tokenizer, max_prompt_length, chat_template)
    before = len(prompt_ids)
    if max_prompt_length is not None:
        prompt_ids = truncate_tokens(prompt_ids, max_prompt_length, tokenizer.bos_token_id)
    return TokenizedExample(
        prompt_ids=prompt_ids,
        # a token-wise cut keeps the prompt's end, which is all the candidates' ids depend on
        candidate_ids=tokenize_candidates(
            tokenizer, prompt, example.candidates, chat_template, candidate_eos(example)
        ),
        levels=list(example.levels),
        dropped_history=dropped,
        dropped_tokens=before - len(prompt_ids),
    )


def _fit_history(
    example: PreferenceExample, tokenizer: Any, max_length: int | None, chat_template: bool
) -> tuple[str, list[int], int]:
    """The prompt (text and ids) with the fewest oldest history items dropped so that it fits
    (or with no history left), and how many were dropped. Without a template, as is."""
    text = example.prompt
    ids = tokenize_prompt(tokenizer, text, chat_template)
    template, domain = example.meta.get("template"), example.meta.get("domain")
    if max_length is None or len(ids) <= max_length or not (template and domain):
        return text, ids, 0
    from setdpo.data import prompts  # the data layer renders; imported only when needed

    dropped = 0
    while len(ids) > max_length and dropped < len(example.history):
        dropped += 1
        text = prompts.render(template, domain, example.history[dropped:], example.candidates)
        ids = tokenize_prompt(tokenizer, text, chat_template)
    return text, ids, dropped


@dataclass
class CandidateCollator:
    """Pads tokenized examples into one batch of tensors (docs/architecture.md).

    >>> batch = CandidateCollator(pad_token_id=0)([
    ...     TokenizedExample([5, 6, 7], [[8, 2], [9, 10, 2]], [1, 2]),
    ...     TokenizedExample([5, 6], [[11, 2]], [1]),
    ... ])
    >>> batch["prompt_ids"].tolist(), batch["prompt_mask"].tolist()
    ([[5, 6, 7], [5, 6, 0]], [[1, 1, 1], [1, 1, 0]])
    >>> batch["candidate_ids"].tolist()
    [[[8, 2, 0], [9, 10, 2]], [[11, 2, 0], [0, 0, 0]]]
    >>> batch["candidate_mask"].sum(-1).tolist(), batch["levels"].tolist()
    ([[2, 3], [2, 0]], [[1, 2], [1, 0]])

    prompt_ids, prompt_mask [B, P] (right-padded; mask 1 = real token);
    candidate_ids, candidate_mask [B, n, C] (right-padded); levels [B, n] (0 = padding).
    Items may also be mappings with the same keys (rows of a ``datasets`` table).
    """

    pad_token_id: int

    def __call__(self, items: Sequence[TokenizedExample | Mapping[str, Any]]) -> dict:
        if not items:
            raise ValueError("CandidateCollator got an empty batch")
        rows = [it if isinstance(it, TokenizedExample) else _from_mapping(it) for it in items]
        for i, row in enumerate(rows):
            if not row.prompt_ids or not row.candidate_ids or not all(row.candidate_ids):
                raise ValueError(f"batch item {i}: empty prompt, candidate list or candidate")
        width = max(len(r.prompt_ids) for r in rows)
        n = max(len(r.candidate_ids) for r in rows)
        c = max(len(ids) for r in rows for ids in r.candidate_ids)
        batch = {
            "prompt_ids": torch.full((len(rows), width), self.pad_token_id, dtype=torch.long),
            "prompt_mask": torch.zeros((len(rows), width), dtype=torch.long),
            "candidate_ids": torch.full((len(rows), n, c), self.pad_token_id, dtype=torch.long),
            "candidate_mask": torch.zeros((len(rows), n, c), dtype=torch.long),
            "levels": torch.zeros((len(rows), n), dtype=torch.long),
        }
        for b, row in enumerate(rows):
            batch["prompt_ids"][b, : len(row.prompt_ids)] = torch.tensor(row.prompt_ids)
            batch["prompt_mask"][b, : len(row.prompt_ids)] = 1
            batch["levels"][b, : len(row.levels)] = torch.tensor(row.levels)
            for j, ids in enumerate(row.candidate_ids):
                batch["candidate_ids"][b, j, : len(ids)] = torch.tensor(ids)
                batch["candidate_mask"][b, j, : len(ids)] = 1
        return batch


def _from_mapping(item: Mapping[str, Any]) -> TokenizedExample:
    return TokenizedExample(
        prompt_ids=list(item["prompt_ids"]),
        candidate_ids=[list(c) for c in item["candidate_ids"]],
        levels=list(item["levels"]),
    )


def tokenize_examples(
    examples: Sequence[PreferenceExample],
    tokenizer: Any,
    max_prompt_length: int | None = None,
    chat_template: bool = False,
    what: str = "examples",
) -> list[TokenizedExample]:
    """`tokenize_example` over ``examples``; warns with a `TruncationReport` if any prompt
    had to lose history items or tokens to fit ``max_prompt_length``."""
    tokenized = [
        tokenize_example(
            ex, tokenizer, max_prompt_length=max_prompt_length, chat_template=chat_template
        )
        for ex in examples
    ]
    report = TruncationReport.of(tokenized)
    if report.history_truncated or report.token_truncated:
        logger.warning("%s, max_prompt_length %s: %s", what, max_prompt_length, report)
    return tokenized
