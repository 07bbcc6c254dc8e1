"""Early stopping of the preference stage (`setdpo.training.early_stopping`) on the tiny model:
the run stops at the first evaluation without a new best (patience 1), restores the best
checkpoint's weights (LoRA adapter or every weight), records it and removes its checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from setdpo.errors import InputError
from setdpo.model import load
from setdpo.training import PrefConfig, SFTConfig, load_config, train_sft
from setdpo.training.config import RESOLVED_CONFIG, write_resolved_config
from setdpo.training.preference import build_pref_trainer
from setdpo.training.run import train_and_close

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("training")]

QUIET = {"disable_tqdm": True, "logging_steps": 1, "seed": 0}
MAX_STEPS = 12


@pytest.fixture(scope="module")
def sft_run(ml100k_next_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sft"
    values = {**QUIET, "data": str(ml100k_next_dir), "output_dir": str(out), "model": "tiny"}
    values |= {"max_steps": 4, "max_train_examples": 16, "max_eval_examples": 4}
    values |= {"save_strategy": "no", "learning_rate": 3e-3}
    return train_sft(load_config(SFTConfig, None, values))


class Snapshots(TrainerCallback):
    """The policy's state dict after every optimisation step, by step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.by_step = model, {}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        weights = self.model.state_dict()
        self.by_step[state.global_step] = {k: v.detach().clone() for k, v in weights.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("peft", ["lora", "none"])
def test_pref_early_stopping_restores_and_records_the_best_checkpoint(
    peft: str, sft_run: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    # A learning rate far too high: the valid loss stops improving within a few steps.
    out = tmp_path / "pref"
    values = {**QUIET, "data": str(ml100k_next_dir), "init": str(sft_run), "output_dir": str(out)}
    values |= {"peft": peft, "learning_rate": 0.3, "max_steps": MAX_STEPS, "max_eval_examples": 4}
    values |= {"eval_strategy": "steps", "eval_steps": 1, "early_stopping_patience": 1}
    config = load_config(PrefConfig, None, values)
    trainer = build_pref_trainer(config)
    snapshots = Snapshots(trainer.model)
    trainer.add_callback(snapshots)
    run = train_and_close(trainer, config, False, init_run=config.init)

    state = json.loads((run / "trainer_state.json").read_text())
    evals = [(e["step"], e["eval_loss"]) for e in state["log_history"] if "eval_loss" in e]
    during = evals[1:-1]  # after eval_on_start, before the last
    last = state["global_step"]
    assert last < MAX_STEPS and [step for step, _ in during] == list(range(1, last + 1))
    # Patience 1: training stopped at the first evaluation that did not beat the best before it.
    losses = [loss for _, loss in during]
    assert all(losses[i] < min(losses[:i]) for i in range(1, len(losses) - 1))
    assert losses[-1] >= min(losses[:-1])
    best_step, best_loss = min(during, key=lambda pair: pair[1])
    assert (state["best_global_step"], state["best_metric"]) == (best_step, best_loss)
    record = json.loads((run / "setdpo_model.json").read_text())["best"]
    assert record == {"step": best_step, "metric": "eval_loss", "value": best_loss}
    # The restored model is the best step's, not the last step's, and evaluates as it did.
    final = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    assert _same(final, snapshots.by_step[best_step])
    assert not _same(final, snapshots.by_step[last])
    assert evals[-1] == (last, pytest.approx(best_loss, abs=1e-6))
    if peft == "lora":  # the adapter restored; the merged SFT weights (the reference) untouched
        first = snapshots.by_step[1]
        assert all(torch.equal(final[k], first[k]) for k in final if "lora_" not in k)
    # The saved run holds the best weights; its checkpoints are gone.
    saved, _ = load(run)
    assert _same({k: v.detach() for k, v in saved.state_dict().items()}, final)
    assert not list(run.glob("checkpoint-*"))
    assert {"resolved_config.yaml", "trainer_state.json", "setdpo_model.json"} <= {
        path.name for path in run.iterdir()
    }


def test_pref_early_stopping_needs_a_valid_split(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    data = Path(shutil.copytree(ml100k_next_dir, tmp_path / "data"))
    shutil.rmtree(data / "hf" / "valid")
    values = {**QUIET, "data": str(data), "init": str(sft_run), "output_dir": str(tmp_path / "p")}
    values |= {"eval_strategy": "steps", "eval_steps": 1, "early_stopping_patience": 1}
    with pytest.raises(InputError, match="early_stopping_patience needs a valid split"):
        build_pref_trainer(load_config(PrefConfig, None, values))


REQUIRED = {"data": "/data/prepared", "output_dir": "/runs/x", "init": "/runs/sft"}
EVERY_5 = {**REQUIRED, "early_stopping_patience": 2, "eval_strategy": "steps", "eval_steps": 5}


@pytest.mark.parametrize(
    ("metric", "name", "greater"),
    [(None, "eval_loss", False), ("reward_accuracy", "eval_reward_accuracy", True),
     ("eval_reward_margin", "eval_reward_margin", True)],
)  # fmt: skip
def test_early_stopping_selects_on_a_valid_metric_in_its_direction(
    metric: str | None, name: str, greater: bool, tmp_path: Path
) -> None:
    values = EVERY_5 if metric is None else {**EVERY_5, "metric_for_best_model": metric}
    config = load_config(PrefConfig, None, values)
    assert (config.metric_for_best_model, config.greater_is_better) == (name, greater)
    assert config.load_best_model_at_end and config.save_strategy == "best"
    write_resolved_config(config, tmp_path)
    assert load_config(PrefConfig, tmp_path / RESOLVED_CONFIG).to_dict() == config.to_dict()
    plain = load_config(PrefConfig, None, REQUIRED)
    assert not plain.load_best_model_at_end and plain.metric_for_best_model is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"early_stopping_patience": 0}, "early_stopping_patience must be >= 1 or None, got 0"),
        ({"eval_strategy": "no"}, "early_stopping_patience needs eval_strategy `steps`"),
        ({"eval_steps": None}, "eval_strategy `steps` needs eval_steps"),
        ({"metric_for_best_model": "bound_gap"}, "metric_for_best_model must be one of"),
        ({"metric_for_best_model": "nll"}, "`nll` is logged only with sft_weight > 0"),
        ({"greater_is_better": True}, "greater_is_better must be False for .* eval_loss"),
    ],
)
def test_early_stopping_fields_are_checked_and_named(values: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_config(PrefConfig, None, {**EVERY_5, **values})
    nll = {"metric_for_best_model": "nll", "sft_weight": 0.5}
    assert load_config(PrefConfig, None, {**EVERY_5, **nll}).greater_is_better is False
