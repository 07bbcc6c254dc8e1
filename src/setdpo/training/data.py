"""Training rows and collators: SFT (completion-only) and preference (sampled candidate sets).

Both stages start from `setdpo.tokenization.tokenize_example`, so the prompts and titles they
train on are exactly those the scorer and the evaluator see. Random choices (which positive,
which negatives) are a pure function of `(seed, epoch, example index)`: a resumed run and a
run sharded over several processes draw the same sets as one uninterrupted process. The
trainer sets the epoch through `set_epoch` (see `callbacks.EpochCallback`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from setdpo.tokenization import CandidateCollator

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
    trick (a draw without replacement in proportion to those weights). Returned sorted, so the
    candidates keep their original order.
    """
    if k == 0 or k >= len(negatives):
        return list(negatives)
    keys = rng.gumbel(size=len(negatives))
    if scores is not None:
        keys = keys + np.asarray(scores, dtype=np.float64) / temperature
    chosen = np.argsort(-keys, kind="stable")[:k]
    return sorted(negatives[i] for i in chosen)


class EpochDataset(Dataset):
    """A dataset whose draws depend on the epoch, set by the trainer before each epoch."""

    def __init__(self, tokenized: Sequence[Any], seed: int) -> None:
        self.tokenized = list(tokenized)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class SFTDataset(EpochDataset):
    """Rows `{"prompt_ids", "answer_ids"}`: a prompt and one positive title (+ EOS).

    positives="each": one row per positive of every example (all of them, fixed rows);
    positives="one": one row per example, its positive drawn again each epoch.
    """

    def __init__(self, tokenized: Sequence[Any], seed: int, positives: str = "each") -> None:
        super().__init__(tokenized, seed)
        self.positives = positives
        self.rows = [
            (i, j)
            for i, tok in enumerate(self.tokenized)
            for j, level in enumerate(tok.levels)
            if level == 1 and (positives == "each" or j == tok.levels.index(1))
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        i, j = self.rows[index]
        tok = self.tokenized[i]
        if self.positives == "one":
            positions = [p for p, level in enumerate(tok.levels) if level == 1]
            j = positions[int(example_rng(self.seed, self.epoch, i).integers(len(positions)))]
        return {"prompt_ids": list(tok.prompt_ids), "answer_ids": list(tok.candidate_ids[j])}


@dataclass
class SFTCollator:
    """Pads prompt + answer rows; labels cover only the answer (completion-only loss).

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

    Shapes: input_ids, attention_mask, labels [B, L], right-padded; the model shifts labels.
    """

    pad_token_id: int

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for b, row in enumerate(rows):
            p, a = len(row["prompt_ids"]), len(row["answer_ids"])
            ids[b, : p + a] = torch.tensor(row["prompt_ids"] + row["answer_ids"])
            mask[b, : p + a] = 1
            labels[b, p : p + a] = torch.tensor(row["answer_ids"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class PreferenceDataset(EpochDataset):
    """Items: an example restricted to its positives and `num_negatives` drawn negatives.

    `ref_logps[i]` (all candidates of example i, from `precompute`) travel with the draw;
    `hard_scores[i]` (policy log-probs of all candidates, refreshed each epoch) make the
    draw `hard`. Items are `{"example": TokenizedExample, "ref_logps": list[float] | None}`.
    """

    def __init__(
        self,
        tokenized: Sequence[Any],
        seed: int,
        num_negatives: int = 0,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(tokenized, seed)
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.ref_logps: list[list[float]] | None = None
        self.hard_scores: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.tokenized)

    def candidate_indices(self, index: int) -> list[int]:
        """Indices of the candidates of example `index` used in the current epoch."""
        levels = self.tokenized[index].levels
        negatives = [j for j, g in enumerate(levels) if g > 1]
        scores = None
        if self.hard_scores is not None:
            scores = [self.hard_scores[index][j] for j in negatives]
        rng = example_rng(self.seed, self.epoch, index)
        drawn = draw_negatives(rng, negatives, self.num_negatives, scores, self.temperature)
        return sorted([j for j, g in enumerate(levels) if g == 1] + drawn)

    def __getitem__(self, index: int) -> dict[str, Any]:
        tok = self.tokenized[index]
        keep = self.candidate_indices(index)
        subset = dataclasses.replace(
            tok,
            candidate_ids=[tok.candidate_ids[j] for j in keep],
            levels=[tok.levels[j] for j in keep],
        )
        ref = None if self.ref_logps is None else [self.ref_logps[index][j] for j in keep]
        return {"example": subset, "ref_logps": ref}


@dataclass
class PreferenceCollator:
    """`CandidateCollator`'s batch plus `ref_logps` [B, n] (0 at padding) when precomputed.

    Keys: prompt_ids, prompt_mask [B, P]; candidate_ids, candidate_mask [B, n, C];
    levels [B, n] (0 = padding candidate); ref_logps [B, n] float32 if every item has them.
    """

    pad_token_id: int

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(CandidateCollator(self.pad_token_id)([it["example"] for it in items]))
        if all(it["ref_logps"] is not None for it in items):
            n = batch["levels"].shape[1]
            ref = torch.zeros((len(items), n), dtype=torch.float32)
            for b, it in enumerate(items):
                ref[b, : len(it["ref_logps"])] = torch.tensor(it["ref_logps"])
            batch["ref_logps"] = ref
        return batch
