"""Training rows and collators: SFT (completion-only) and preference (sampled candidate sets).

Both stages start from `setdpo.tokenization.tokenize_example`, so the prompts and titles they
train on are exactly those the scorer and the evaluator see. Random choices (which positive,
which negatives) are a pure function of `(seed, epoch, example index)`: a resumed run and a
run sharded over several processes draw the same sets as one uninterrupted process. The
trainer sets the epoch through `set_epoch` (see `callbacks.EpochCallback`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from setdpo.data.schema import PreferenceExample
from setdpo.data.store import Levels, SplitReader
from setdpo.tokenization import (
    CandidateCollator,
    TokenizedExample,
    TruncationReport,
    tokenize_example,
)

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of tokens outside the loss (transformers' convention)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one example in one epoch: independent of order, rank and resumption."""
    return np.random.default_rng([seed, epoch, index])


def draw_negatives(
    rng: np.random.Generator,
    negatives: Sequence[int],
    k: int,
    scores: Sequence[float] | None = None,
    temperature: float = 1.0,
) -> list[int]:
    """Pick `k` of `negatives` (candidate indices) without replacement; all of them if k is 0.

    Uniform without `scores`; otherwise from softmax(scores / temperature) by the Gumbel top-k
    trick (a draw without replacement in proportion to those weights); temperature 0 is its
    limit, no draw: the `k` highest scores (ties to the earlier candidate). Returned sorted,
    so the candidates keep their original order.
    """
    if k == 0 or k >= len(negatives):
        return list(negatives)
    if scores is None:
        keys = rng.gumbel(size=len(negatives))
    elif temperature == 0:  # the tempered draw's limit: no noise left
        keys = np.asarray(scores, dtype=np.float64)
    else:
        keys = rng.gumbel(size=len(negatives)) + np.asarray(scores, dtype=np.float64) / temperature
    chosen = np.argsort(-keys, kind="stable")[:k]
    return sorted(negatives[i] for i in chosen)


class LazyTokenized(Sequence[TokenizedExample]):
    """Examples read and tokenized when asked for, the latest `cache_size` kept.

    `examples` may be a `setdpo.data.store.SplitReader` (each example read from disk when
    first needed) or a list. Memory then follows the batch, not the split: a run tokenizes
    what it trains on, and an epoch over a million examples holds at most `cache_size` of
    them (an evicted example is tokenized again: tokenization is deterministic).
    `levels[i]` needs neither reading nor tokenization. The first prompt cut to fit
    `max_prompt_length` is logged as a warning; `report()` counts the truncations over the
    distinct examples tokenized so far.
    """

    def __init__(
        self,
        examples: Sequence[PreferenceExample],
        tokenizer: Any,
        max_prompt_length: int | None = None,
        chat_template: bool = False,
        what: str = "examples",
        cache_size: int = 8192,
    ) -> None:
        self.examples = examples
        self.levels = (
            examples.levels
            if isinstance(examples, SplitReader)
            else Levels.of_lists([ex.levels for ex in examples])
        )
        self.tokenizer, self.what = tokenizer, what
        self.max_prompt_length, self.chat_template = max_prompt_length, chat_template
        self.cache_size = cache_size
        self._done: OrderedDict[int, TokenizedExample] = OrderedDict()
        self._counted = np.zeros(len(examples), dtype=bool)
        self._report = TruncationReport()
        self._warned = False

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # negative indices, and IndexError past the end
        if index in self._done:
            self._done.move_to_end(index)
            return self._done[index]
        example = self.examples[index]
        tok = tokenize_example(
            example,
            self.tokenizer,
            max_prompt_length=self.max_prompt_length,
            chat_template=self.chat_template,
        )
        if not self._counted[index]:
            self._counted[index] = True
            counts = zip(
                dataclasses.astuple(self._report),
                dataclasses.astuple(TruncationReport.of([tok])),
                strict=True,
            )
            self._report = TruncationReport(*(a + b for a, b in counts))
        if (tok.dropped_history or tok.dropped_tokens) and not self._warned:
            self._warned = True
            logger.warning(
                "%s, max_prompt_length %s: the prompt of %r lost %d history items and "
                "%d tokens to fit (the counts over the run are logged at its end)",
                self.what,
                self.max_prompt_length,
                example.context_id,
                tok.dropped_history,
                tok.dropped_tokens,
            )
        self._done[index] = tok
        if len(self._done) > self.cache_size:
            self._done.popitem(last=False)
        return tok

    def report(self) -> TruncationReport:
        """Truncation counts over the distinct examples tokenized so far."""
        return self._report


class EpochDataset(Dataset):
    """A dataset whose draws depend on the epoch, set by the trainer before each epoch.

    `tokenized` is a list of `TokenizedExample` or a `LazyTokenized`; levels are read
    without tokenizing. The epoch lives in shared memory (a one-element tensor), so
    DataLoader workers, which hold copies of the dataset made when they started
    (`dataloader_persistent_workers` keeps them over epochs), read the epoch the main
    process set: their draws follow it.
    """

    def __init__(self, tokenized: Sequence[Any], seed: int) -> None:
        self.tokenized = tokenized if isinstance(tokenized, LazyTokenized) else list(tokenized)
        self.levels = (
            tokenized.levels
            if isinstance(tokenized, LazyTokenized)
            else Levels.of_lists([tok.levels for tok in self.tokenized])
        )
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))


class SFTDataset(EpochDataset):
    """Rows `{"prompt_ids", "answer_ids"}`: a prompt and one positive title (+ EOS).

    positives="each": one row per positive of every example (all of them, fixed rows);
    positives="one": one row per example, its positive drawn again each epoch.
    """

    def __init__(self, tokenized: Sequence[Any], seed: int, positives: str = "each") -> None:
        super().__init__(tokenized, seed)
        self.positives = positives
        example, slot = self.levels.positions(1)  # numpy: no Python object per row
        if positives == "one":  # the first positive of each example
            first = np.r_[True, example[1:] != example[:-1]] if len(example) else example > 0
            example, slot = example[first], slot[first]
        self.rows = np.stack([example, slot], axis=1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        i, j = (int(v) for v in self.rows[index])
        tok = self.tokenized[i]
        if self.positives == "one":
            positions = [p for p, level in enumerate(self.levels[i]) if level == 1]
            j = positions[int(example_rng(self.seed, self.epoch, i).integers(len(positions)))]
        return {"prompt_ids": list(tok.prompt_ids), "answer_ids": list(tok.candidate_ids[j])}


@dataclass
class SFTCollator:
    """Pads prompt + answer rows; labels cover the answer (completion-only loss), or with
    ``prompt_loss`` every token (the model shifts labels, so the first token is never one:
    each history item is then a next-item target, read after the items before it only).

    >>> batch = SFTCollator(pad_token_id=0)([
    ...     {"prompt_ids": [5, 6, 7], "answer_ids": [8, 2]},
    ...     {"prompt_ids": [5], "answer_ids": [9, 9, 2]},
    ... ])
    >>> batch["input_ids"].tolist()
    [[5, 6, 7, 8, 2], [5, 9, 9, 2, 0]]
    >>> batch["attention_mask"].tolist()
    [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    >>> batch["labels"].tolist()
    [[-100, -100, -100, 8, 2], [-100, 9, 9, 2, -100]]

    >>> SFTCollator(0, prompt_loss=True)([{"prompt_ids": [5, 6], "answer_ids": [8, 2]}])["labels"]
    tensor([[5, 6, 8, 2]])

    Shapes: input_ids, attention_mask, labels [B, L], right-padded; the model shifts labels.
    """

    pad_token_id: int
    prompt_loss: bool = False

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for b, row in enumerate(rows):
            p, a = len(row["prompt_ids"]), len(row["answer_ids"])
            ids[b, : p + a] = torch.tensor(row["prompt_ids"] + row["answer_ids"])
            mask[b, : p + a] = 1
            start = 0 if self.prompt_loss else p
            labels[b, start : p + a] = ids[b, start : p + a]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def keep_candidates(
    levels: Sequence[int],
    rng: np.random.Generator,
    num_negatives: int,
    scores: Sequence[float] | None = None,
    temperature: float = 1.0,
) -> list[int]:
    """Indices of the candidates one step uses: every graded level, plus `num_negatives` drawn
    from the lowest level (0 = all of it), in their original order.

    The lowest level is the pool of negatives (sampled unobserved items, explicit negatives):
    only it is subsampled. With levels [1, 2, 3, 4 x 17] every draw keeps the candidates of
    levels 1, 2 and 3. `scores` (one per candidate) make the draw follow
    softmax(scores / temperature) over the pool, or at temperature 0 keep its highest scores
    (`draw_negatives`).
    """
    last = max(levels)
    if last == 1:  # positives only: nothing to draw from
        return list(range(len(levels)))
    pool = [j for j, g in enumerate(levels) if g == last]
    graded = [j for j, g in enumerate(levels) if g < last]
    pool_scores = None if scores is None else [scores[j] for j in pool]
    return sorted(graded + draw_negatives(rng, pool, num_negatives, pool_scores, temperature))


class PreferenceDataset(EpochDataset):
    """Items: an example restricted to the candidates `keep_candidates` picks this epoch.

    Each item also names the example (`example_key`, a hash of its token ids: the reference
    memo's key) and the kept candidates' indices in the full example, so that reference
    log-probs can be looked up per candidate. `num_negatives=0` keeps every candidate (the
    valid split, and hard negatives, which the trainer draws from the policy's scores).
    Items are `{"example": TokenizedExample, "key": str, "index": int, "size": int (candidates
    of the full example), "candidates": [int] (kept indices)}`.
    """

    def __init__(self, tokenized: Sequence[Any], seed: int, num_negatives: int = 0) -> None:
        super().__init__(tokenized, seed)
        self.num_negatives = num_negatives
        self._keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.tokenized)

    def example_key(self, index: int) -> str:
        if index not in self._keys:
            self._keys[index] = example_key(self.tokenized[index])
        return self._keys[index]

    def candidate_indices(self, index: int) -> list[int]:
        """Indices of the candidates of example `index` used in the current epoch."""
        levels = self.levels[index]
        if self.num_negatives == 0:
            return list(range(len(levels)))
        rng = example_rng(self.seed, self.epoch, index)
        return keep_candidates(levels, rng, self.num_negatives)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index, self.candidate_indices(index))

    def item(self, index: int, keep: Sequence[int]) -> dict[str, Any]:
        """The item of example `index` with the candidates at `keep` (all: `range(size)`)."""
        keep = list(keep)
        return {
            "example": select(self.tokenized[index], keep),
            "key": self.example_key(index),
            "index": index,
            "size": len(self.levels[index]),
            "candidates": keep,
        }


def select(tok: Any, keep: Sequence[int]) -> Any:
    """`tok` (a `TokenizedExample`) restricted to the candidates at `keep`."""
    return dataclasses.replace(
        tok,
        candidate_ids=[tok.candidate_ids[j] for j in keep],
        levels=[tok.levels[j] for j in keep],
    )


def example_key(tok: Any) -> str:
    """A hash of an example's token ids (prompt, then every candidate in order).

    Reference log-probs depend on nothing else of the example (not its levels), so the memo
    keyed by it misses exactly when the data or the tokenization changed what is scored.
    """
    digest = hashlib.blake2b(digest_size=16)
    for ids in (tok.prompt_ids, *tok.candidate_ids):
        array = np.asarray(ids, dtype=np.int64)
        digest.update(np.int64(len(array)).tobytes())  # length first: unambiguous boundaries
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class PreferenceCollator:
    """`CandidateCollator`'s batch plus what locates each candidate in its full example.

    Keys: prompt_ids, prompt_mask [B, P]; candidate_ids, candidate_mask [B, n, C];
    levels [B, n] (0 = padding candidate); candidate_index [B, n] (the candidate's index in
    its full example, -1 at padding); example_index, example_sizes [B] (dataset index, and
    candidates of the full example); example_keys (list of B strings, `example_key`).
    """

    pad_token_id: int

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = dict(
            CandidateCollator(self.pad_token_id)([it["example"] for it in items])
        )
        index = torch.full(batch["levels"].shape, -1, dtype=torch.long)
        for b, it in enumerate(items):
            index[b, : len(it["candidates"])] = torch.tensor(it["candidates"])
        batch["candidate_index"] = index
        batch["example_index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        batch["example_sizes"] = torch.tensor([it["size"] for it in items], dtype=torch.long)
        batch["example_keys"] = [it["key"] for it in items]
        return batch


def subset_batch(batch: dict[str, Any], keep: Sequence[Sequence[int]]) -> dict[str, Any]:
    """`batch` (`PreferenceCollator` layout) keeping, in row b, the candidates at `keep[b]`
    (positions in the batch), left-aligned and padded again (levels 0, index -1)."""
    width = max(len(k) for k in keep)
    out = dict(batch)
    pads = {"candidate_ids": 0, "candidate_mask": 0, "levels": 0, "candidate_index": -1}
    for name, pad in pads.items():
        old = batch[name]
        new = old.new_full((old.shape[0], width, *old.shape[2:]), pad)
        for b, positions in enumerate(keep):
            new[b, : len(positions)] = old[b, list(positions)]
        out[name] = new
    return out
