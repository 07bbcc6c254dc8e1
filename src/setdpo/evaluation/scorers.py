"""Scorers: anything that turns examples into per-candidate scores [n] (higher = better).

`ModelScorer` scores with a causal LM's candidate log-probabilities (summed, or
length-averaged with ``average=True``) through the shared-prefix engine of
`setdpo.scoring`; `build_scorer` also accepts ``"random"`` and ``"popularity"``, the
baselines of `setdpo.evaluation.baselines`, and ``"sasrec"`` (`setdpo.evaluation.sasrec`),
so one evaluation loop serves them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from setdpo.data import load_items
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import token_catalog
from setdpo.evaluation.baselines import PopularityScorer, RandomScorer
from setdpo.evaluation.sasrec import SASRecSettings, load_or_train
from setdpo.model import load
from setdpo.scoring import ScoringOptions, score_all
from setdpo.tokenization import tokenize_examples

BASELINES = ("random", "popularity", "sasrec")


class Scorer(Protocol):
    name: str

    def score(self, examples: Sequence[PreferenceExample]) -> list[np.ndarray]:
        """Per example, a float array [n_candidates]."""
        ...


@dataclass
class ModelScorer:
    """Candidate log-probabilities under a causal LM (plain or peft).

    ``batch_size`` contexts go through one `candidate_logps` call; ``options.chunk_size``
    bounds the candidates scored per forward pass (for catalogs of thousands of items).
    """

    model: Any
    tokenizer: Any
    name: str = "model"
    options: ScoringOptions = ScoringOptions()
    batch_size: int = 4
    max_prompt_length: int | None = None
    chat_template: bool = False
    progress: bool = True

    def tokenize(self, examples: Sequence[PreferenceExample]) -> list:
        """`setdpo.tokenization.TokenizedExample` per example, with this scorer's settings."""
        return tokenize_examples(
            examples,
            self.tokenizer,
            max_prompt_length=self.max_prompt_length,
            chat_template=self.chat_template,
            what=f"scoring ({self.name})",
        )

    def score(self, examples: Sequence[PreferenceExample]) -> list[np.ndarray]:
        return self.score_tokenized(self.tokenize(examples))

    def score_tokenized(self, tokenized: Sequence) -> list[np.ndarray]:
        """Scores of already tokenized examples, ``batch_size`` contexts per forward batch."""
        scores = score_all(
            self.model,
            tokenized,
            self.options,
            self.tokenizer.pad_token_id,
            self.batch_size,
            desc=f"scoring ({self.name})",
            progress=self.progress,
        )
        return [row.numpy() for row in scores]


def build_scorer(
    model: str,
    data_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    sasrec: SASRecSettings | None = None,
    **model_options,
) -> tuple[Scorer, object | None]:
    """A scorer for ``model`` (``"random"``, ``"popularity"``, ``"sasrec"``, or anything
    `setdpo.model.load` accepts) and the loaded tokenizer (None for the baselines).

    Popularity reads ``DATA_DIR/items.json``; SASRec trains on ``DATA_DIR``'s training split
    with ``sasrec`` (default settings, this seed) or reuses its cached model.
    ``model_options`` go to `ModelScorer`.
    """
    if model == "random":
        return RandomScorer(seed), None
    if model in BASELINES and data_dir is None:
        raise ValueError(f"the {model} baseline needs the prepared data directory")
    if model == "popularity":
        return PopularityScorer(load_items(data_dir), seed), None
    if model == "sasrec":
        settings = sasrec or SASRecSettings(seed=seed)
        return load_or_train(data_dir, settings, model_options.get("progress", True)), None
    titles = token_catalog(data_dir) if data_dir is not None else None
    lm, tokenizer = load(model, device=device, lab_data=data_dir, item_titles=titles)
    return ModelScorer(lm, tokenizer, name=str(model), **model_options), tokenizer
