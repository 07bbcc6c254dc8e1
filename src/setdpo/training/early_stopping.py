"""Early stopping of a preference stage: train until the valid metric stops improving.

One home for the decision, on transformers' own mechanism: `configure` turns
`PrefConfig.early_stopping_patience` into TrainingArguments (`load_best_model_at_end`,
`metric_for_best_model` with its direction, `save_strategy: best`, so a checkpoint is written
only at a new best); `callbacks` adds `EarlyStoppingCallback`; at the end the Trainer restores
the best checkpoint (`Trainer._load_best_model`: the LoRA adapter, or every weight under
`peft: none`; the reference, the SFT model, is not touched), `best_record` says which it was
and `remove_checkpoints` deletes the checkpoints, whose best is now the run's own weights.
The step budget (`max_steps`, `num_train_epochs`) stays the cap.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from setdpo.errors import InputError

# Valid metrics a run may be selected on (logged as `eval_<name>`): whether greater is better.
BEST_METRICS = {"loss": False, "reward_accuracy": True, "reward_margin": True, "nll": False}


def _value(option: Any) -> str:
    """An enum option of TrainingArguments (or its string) as its string."""
    return str(getattr(option, "value", option))


def configure(config: Any) -> None:
    """Check the early-stopping fields of `config` (a `PrefConfig` before
    `TrainingArguments.__post_init__`) and set the Trainer's arguments they imply."""
    patience = config.early_stopping_patience
    if patience is None:
        return
    if patience < 1:
        raise InputError(f"early_stopping_patience must be >= 1 or None, got {patience}")
    strategy = _value(config.eval_strategy)
    if strategy not in ("steps", "epoch"):
        raise InputError(
            "early_stopping_patience needs eval_strategy `steps` (with eval_steps) or `epoch`, "
            f"got eval_strategy {strategy!r}"
        )
    if strategy == "steps" and config.eval_steps is None:
        raise InputError(
            "early_stopping_patience with eval_strategy `steps` needs eval_steps (how often to "
            "evaluate on the valid split)"
        )
    name = (config.metric_for_best_model or "eval_loss").removeprefix("eval_")
    if name not in BEST_METRICS:
        raise InputError(
            f"metric_for_best_model must be one of {sorted(BEST_METRICS)} (with or without "
            f"`eval_`) under early_stopping_patience, got {config.metric_for_best_model!r}"
        )
    if name == "nll" and config.sft_weight <= 0:
        raise InputError("metric_for_best_model `nll` is logged only with sft_weight > 0")
    greater = BEST_METRICS[name]
    if config.greater_is_better not in (None, greater):
        raise InputError(
            f"greater_is_better must be {greater} for metric_for_best_model eval_{name}, "
            f"got {config.greater_is_better}"
        )
    config.metric_for_best_model, config.greater_is_better = f"eval_{name}", greater
    config.load_best_model_at_end, config.save_strategy = True, "best"


def callbacks(config: Any) -> list[Any]:
    """`EarlyStoppingCallback` with the config's patience, or nothing without it."""
    if config.early_stopping_patience is None:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)]


def best_record(trainer: Trainer) -> dict[str, Any] | None:
    """``{"step", "metric", "value"}`` of the restored best checkpoint; None when the run did
    not select one (no early stopping, or no evaluation after a step)."""
    state = trainer.state
    if not trainer.args.load_best_model_at_end or state.best_global_step is None:
        return None
    metric = trainer.args.metric_for_best_model
    return {"step": state.best_global_step, "metric": metric, "value": state.best_metric}


def remove_checkpoints(run_dir: str | Path) -> None:
    """Delete the run's `checkpoint-*` folders (the best one's weights are the run's now)."""
    for path in Path(run_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if path.is_dir():
            shutil.rmtree(path)
