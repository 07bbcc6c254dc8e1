"""What both stages share: loading and tokenizing a split, and closing a run directory."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import broadcast_object_list
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from setdpo import faults
from setdpo import model as models
from setdpo.atomic import atomic_write_with
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import open_split
from setdpo.errors import InputError
from setdpo.training import early_stopping
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


class LossBeforeResume(TrainerCallback, ExportableState):
    """The training loss summed over the steps before this session, kept in checkpoints:
    transformers' `train_loss` averages only the steps of the current `train()` call, so a
    resumed run would log another value than the uninterrupted one."""

    def __init__(self, total: float = 0.0) -> None:
        self.before = self.total = total  # restored; as of the checkpoint being written

    def state(self) -> dict[str, Any]:
        return {"args": {"total": self.total}, "attributes": {}}


class RunTrainer(Trainer):
    """transformers' Trainer with what both stages add so that a resumed run logs what an
    uninterrupted one does (`train_loss` over every step: `LossBeforeResume`; `eval_on_start`
    once), and the fault-injection sites of a training run
    (`setdpo.faults`): after each training step, and inside a checkpoint (the model written,
    the rest not)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(LossBeforeResume())
        self._resuming = False

    def _loss_before(self) -> LossBeforeResume:
        (carried,) = [c for c in self.callback_handler.callbacks if isinstance(c, LossBeforeResume)]
        return carried

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        session = self._total_loss_scalar + self._tr_loss.item()  # logged + not yet logged
        self._loss_before().total = self._loss_before().before + session
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> Any:
        before = None  # the checkpoint's sum (None: not resumed, or a checkpoint without it)
        if resume_from_checkpoint:
            state = json.loads((Path(resume_from_checkpoint) / TRAINER_STATE).read_text())
            stored = state.get("stateful_callbacks", {}).get(LossBeforeResume.__name__, {})
            before = stored.get("args", {}).get("total")
        self._loss_before().before = before or 0.0
        self._resuming = bool(resume_from_checkpoint)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if before is not None:  # the mean over every step, as an uninterrupted run logs it
            session = output.training_loss * (self.state.global_step - self._initial_global_step)
            logged = next(e for e in reversed(self.state.log_history) if "train_loss" in e)
            logged["train_loss"] = (before + session) / self.state.global_step
        return output

    def _evaluate(self, trial: Any, ignore_keys_for_eval: Any, skip_scheduler: bool = False) -> Any:
        # `eval_on_start` (the one call with `skip_scheduler`) is in a resumed run's history
        # already, at step 0: transformers would evaluate and log it again
        if skip_scheduler and self._resuming:
            return {}
        return super()._evaluate(trial, ignore_keys_for_eval, skip_scheduler)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        loss = super().training_step(*args, **kwargs)
        faults.reached("train.step")
        return loss

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        faults.reached("checkpoint.save")
        super()._save_optimizer_and_scheduler(output_dir)


def _complete(checkpoint: Path) -> bool:
    """A checkpoint is complete once its `trainer_state.json` reads: the Trainer writes that
    file last (`Trainer._save_checkpoint`), in place and not atomically."""
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def last_complete_checkpoint(run_dir: str | Path) -> Path | None:
    """The highest-numbered complete `checkpoint-*` of `run_dir`, after removing the
    incomplete ones above it (a run killed while saving): a resumed run neither starts from
    them nor writes its next checkpoint over their leftovers. None if no checkpoint is complete.
    """
    found = [
        (int(path.name.split("-")[1]), path)
        for path in Path(run_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.is_dir() and path.name.split("-")[1].isdigit()
    ]
    for _, path in sorted(found, reverse=True):
        if _complete(path):
            return path
        logger.warning("%s is incomplete (killed while saving?): removed", path)
        shutil.rmtree(path)
    return None


def train_and_close(trainer: Trainer, config: Any, resume: bool, **run_model: Any) -> Path:
    """Train (`resume`: from the last complete checkpoint, from the start if there is none),
    evaluate on the valid split if there is one, then close the run directory on the main
    process: the resolved config, the trainer state and the model with
    `setdpo.model.save_run_model(..., **run_model)`, whose `setdpo_model.json` comes last, so
    a folder that has it is a finished run.

    A run that restored its best checkpoint (`load_best_model_at_end`: early stopping) saves
    those weights, records the checkpoint as `best` in `setdpo_model.json` (`step`, `metric`,
    `value`; `best_global_step` and `best_metric` in `trainer_state.json`) and then deletes
    its checkpoints.
    """
    checkpoint = None
    if resume and trainer.is_world_process_zero():
        checkpoint = last_complete_checkpoint(config.output_dir)
    if resume and trainer.accelerator.num_processes > 1:
        checkpoint = broadcast_object_list([checkpoint])[0]  # rank 0 decided (and cleaned up)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if trainer.eval_dataset is not None:
        trainer.evaluate()
    log_truncation(trainer)
    run_dir = Path(config.output_dir)
    best = early_stopping.best_record(trainer)
    if best is not None:
        trainer.state.best_model_checkpoint = None  # removed below: its weights are the run's
        run_model["best"] = best
    if trainer.is_world_process_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / models.RUN_MODEL_FILE).unlink(missing_ok=True)  # a finished run trained again
        write_resolved_config(config, run_dir)
        write_trainer_state(trainer, run_dir)
        models.save_run_model(trainer.model, trainer.processing_class, run_dir, **run_model)
        if best is not None:
            early_stopping.remove_checkpoints(run_dir)
    trainer.accelerator.wait_for_everyone()
    return run_dir
