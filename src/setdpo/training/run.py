"""What both stages share: loading and tokenizing a split, and closing a run directory."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import Trainer

from setdpo import model as models
from setdpo.atomic import atomic_write_with
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import open_split
from setdpo.errors import InputError
from setdpo.training.config import write_resolved_config
from setdpo.training.data import LazyTokenized

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"


def load_examples(
    data_dir: str | Path, split: str, limit: int | None, seed: int | None = None
) -> Sequence[PreferenceExample]:
    """The first `limit` examples of a split (all if None), or with `seed` a sample of `limit`
    in file order; [] for a missing valid split. Read lazily (`open_split`): an example is
    read from disk when the trainer first asks for it."""
    path = Path(data_dir) / "hf" / split
    if split != "train" and not path.is_dir():
        return []
    examples = open_split(data_dir, split)
    if split == "train" and not len(examples):
        raise InputError(f"{path}: the training split is empty")
    if not limit or len(examples) <= limit:
        return examples
    if seed is None:
        return examples.take(np.arange(limit))
    chosen = np.random.default_rng(seed).choice(len(examples), size=limit, replace=False)
    return examples.take(np.sort(chosen))


def tokenize_lazily(
    examples: Sequence[PreferenceExample], tokenizer: Any, config: Any
) -> LazyTokenized:
    """`examples` tokenized on first use, with the config's prompt budget and chat template."""
    return LazyTokenized(
        examples,
        tokenizer,
        max_prompt_length=config.max_prompt_length,
        chat_template=config.chat_template,
        what=f"training data {config.data}",
    )


def log_truncation(trainer: Trainer) -> None:
    """Warn with the truncation counts over what each split tokenized, if any prompt was cut."""
    for dataset in (trainer.train_dataset, trainer.eval_dataset):
        tokenized = getattr(dataset, "tokenized", None)
        if isinstance(tokenized, LazyTokenized):
            report = tokenized.report()
            if report.history_truncated or report.token_truncated:
                logger.warning("%s: %s", tokenized.what, report)


def write_trainer_state(trainer: Trainer, run_dir: Path) -> None:
    """transformers' `trainer_state.json` (the per-step log), written atomically."""
    atomic_write_with(run_dir / TRAINER_STATE, trainer.state.save_to_json)


def train_and_close(trainer: Trainer, config: Any, resume: bool, **run_model: Any) -> Path:
    """Train (`resume`: from the last checkpoint), evaluate on the valid split if there is one,
    then close the run directory on the main process: the model with
    `setdpo.model.save_run_model(..., **run_model)`, the resolved config and the trainer state.
    """
    trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.eval_dataset is not None:
        trainer.evaluate()
    log_truncation(trainer)
    run_dir = Path(config.output_dir)
    if trainer.is_world_process_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        models.save_run_model(trainer.model, trainer.processing_class, run_dir, **run_model)
        write_resolved_config(config, run_dir)
        write_trainer_state(trainer, run_dir)
    trainer.accelerator.wait_for_everyone()
    return run_dir
