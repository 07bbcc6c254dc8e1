"""Trainer hooks: the non-finite loss guard and the per-epoch redraw of sampled sets.

The guard runs inside `compute_loss`, not in `on_log`: the Trainer filters NaN and inf out of
its logged loss (`logging_nan_inf_filter`) and would already have stepped the optimiser with
them. Raising before `backward` leaves the weights and the last checkpoint untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped before applying it."""


def check_finite(value: torch.Tensor, what: str, step: int, output_dir: str | None) -> None:
    """Raise `NonFiniteLossError` if `value` (the loss, log-probs) holds NaN or inf.

    The message names `what`, the step (1-based) and the last good checkpoint.
    """
    if bool(torch.isfinite(value.detach()).all()):
        return
    last = None
    if output_dir and Path(output_dir).is_dir():
        last = get_last_checkpoint(output_dir)
    keep = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
    raise NonFiniteLossError(
        f"{what} not finite at step {step + 1}; stopped before "
        f"applying it ({keep}). Lower the learning rate or beta, then rerun with --resume."
    )


class EpochCallback(TrainerCallback):
    """Before each epoch: tell the datasets the epoch, which keys their random draws.

    The epoch is the integer part of `state.epoch`, which is exact at an epoch boundary and
    fractional after a mid-epoch resume; accelerate's own `set_epoch` forwarding misses
    datasets under DDP samplers. The datasets keep the epoch in shared memory
    (`training.data.EpochDataset`), so their copies in DataLoader workers, persistent ones
    included, draw for the epoch set here.
    """

    def __init__(self, datasets: list[Any]) -> None:
        self.datasets = datasets

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        epoch = int(state.epoch or 0)
        for dataset in self.datasets:
            dataset.set_epoch(epoch)
