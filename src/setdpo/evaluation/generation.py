"""Greedy generation of an answer per prompt, optionally constrained to the candidate titles.

Constrained decoding walks a prefix trie of the candidates' token sequences (each title's
ids followed by EOS, exactly as `setdpo.tokenization` builds them for scoring): at every
step only the children of the current trie node are allowed, through transformers'
``prefix_allowed_tokens_fn``. The answer is therefore always one whole candidate title,
and generation ends when the EOS closing a title is produced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


class TitleTrie:
    """A prefix trie over token sequences.

    >>> trie = TitleTrie([[5, 6, 2], [5, 7, 2]])
    >>> trie.allowed([]), trie.allowed([5]), trie.allowed([5, 6, 2])
    ([5], [6, 7], [])
    """

    def __init__(self, sequences: Sequence[Sequence[int]]):
        if not sequences:
            raise ValueError("a title trie needs at least one sequence")
        self.root: dict[int, dict] = {}
        for seq in sequences:
            if not seq:
                raise ValueError("a title trie cannot hold an empty token sequence")
            node = self.root
            for token in seq:
                node = node.setdefault(int(token), {})

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow ``prefix``; empty when ``prefix`` is complete or off the trie."""
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return []
        return list(node)


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts so that generation continues every row at the same position.

    Returns input_ids [b, P] and attention_mask [b, P].
    """
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _trie_constraint(tries: list[TitleTrie], prompt_width: int, finished_token: int):
    """``prefix_allowed_tokens_fn`` for a left-padded batch whose row i follows ``tries[i]``."""

    def allowed(batch_id: int, sequence: torch.Tensor) -> list[int]:
        tokens = tries[batch_id].allowed(sequence[prompt_width:].tolist())
        # A row that finished its title keeps receiving pad tokens; any one token will do.
        return tokens or [finished_token]

    return allowed


def _strip_after_eos(tokens: list[int], eos_id: int, pad_id: int) -> list[int]:
    """The answer's ids up to (without) the first EOS; trailing padding removed."""
    if eos_id in tokens:
        return tokens[: tokens.index(eos_id)]
    while tokens and tokens[-1] == pad_id:
        tokens = tokens[:-1]
    return tokens


@torch.no_grad()
def generate_answers(
    model,
    prompts: Sequence[Sequence[int]],
    eos_id: int,
    pad_id: int,
    candidates: Sequence[Sequence[Sequence[int]]] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
) -> list[list[int]]:
    """Greedy answers, one token list per prompt (EOS and padding removed).

    Args:
        model: a causal LM (plain or peft).
        prompts: per context, the prompt token ids (BOS included when the tokenizer uses it).
        eos_id: the token that ends an answer (the one closing every candidate sequence).
        pad_id: padding token for left-padding the prompts.
        candidates: when given, per context the candidates' token sequences (each ending
            with ``eos_id``); decoding is then constrained to them and ``max_new_tokens``
            is the longest candidate.
    """
    if candidates is not None and len(candidates) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    model.eval()
    device = next(model.parameters()).device
    answers: list[list[int]] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generating", disable=not progress, unit="batch"):
        batch = prompts[start : start + batch_size]
        ids, mask = _left_pad(batch, pad_id)
        kwargs = {"max_new_tokens": max_new_tokens}
        if candidates is not None:
            cands = candidates[start : start + batch_size]
            tries = [TitleTrie(c) for c in cands]
            kwargs["prefix_allowed_tokens_fn"] = _trie_constraint(tries, ids.shape[1], pad_id)
            kwargs["max_new_tokens"] = max(len(s) for c in cands for s in c)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,
            num_beams=1,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            **kwargs,
        )
        for row in out[:, ids.shape[1] :].tolist():
            answers.append(_strip_after_eos(row, eos_id, pad_id))
    return answers
