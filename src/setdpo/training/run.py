"""What both stages share: loading and tokenizing a split, and closing a run directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import Trainer

from setdpo import model as models
from setdpo.data import load_split
from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError
from setdpo.tokenization import tokenize_examples
from setdpo.training.config import write_resolved_config

TRAINER_STATE = "trainer_state.json"


def load_examples(data_dir: str | Path, split: str, limit: int | None) -> list[PreferenceExample]:
    """The first `limit` examples of a split (all if None); [] for a missing valid split."""
    path = Path(data_dir) / f"{split}.jsonl"
    if split != "train" and not path.is_file():
        return []
    examples = load_split(data_dir, split)
    if split == "train" and not examples:
        raise InputError(f"{path}: the training split is empty")
    return examples[:limit] if limit else examples


def tokenize_all(examples: Sequence[PreferenceExample], tokenizer: Any, config: Any) -> list[Any]:
    """`tokenize_examples` with the config's prompt budget and chat template."""
    return tokenize_examples(
        examples,
        tokenizer,
        max_prompt_length=config.max_prompt_length,
        chat_template=config.chat_template,
        what=f"training data {config.data}",
    )


def write_trainer_state(trainer: Trainer, run_dir: Path) -> None:
    """transformers' `trainer_state.json` (the per-step log), written atomically."""
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{TRAINER_STATE}.", suffix=".tmp")
    os.close(fd)
    try:
        trainer.state.save_to_json(tmp)
        os.replace(tmp, run_dir / TRAINER_STATE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_and_close(trainer: Trainer, config: Any, resume: bool, **run_model: Any) -> Path:
    """Train (`resume`: from the last checkpoint), evaluate on the valid split if there is one,
    then close the run directory on the main process: the model with
    `setdpo.model.save_run_model(..., **run_model)`, the resolved config and the trainer state.
    """
    trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.eval_dataset is not None:
        trainer.evaluate()
    run_dir = Path(config.output_dir)
    if trainer.is_world_process_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        models.save_run_model(trainer.model, trainer.processing_class, run_dir, **run_model)
        write_resolved_config(config, run_dir)
        write_trainer_state(trainer, run_dir)
    trainer.accelerator.wait_for_everyone()
    return run_dir
