"""SFT and preference training on the tiny model and prepared ML-100K (real Trainer, real peft).

Hand-derived anchors: a fresh adapter on the merged SFT weights computes exactly the SFT model,
so at the first step every reward is 0, and with one positive among n candidates the
multinomial losses (sdpo, mult, mult2, pl) equal log n while the pairwise ones (dpo, dmpo)
equal log 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft.tuners.lora import LoraLayer

import setdpo.training.preference as preference_module
import setdpo.training.reference as reference_module
from setdpo.data import load_split
from setdpo.model import load
from setdpo.scoring import candidate_logps
from setdpo.tokenization import CandidateCollator, tokenize_example
from setdpo.training import PrefConfig, SFTConfig, load_config, train_pref, train_sft
from setdpo.training.callbacks import NonFiniteLossError
from setdpo.training.preference import build_pref_trainer

# One xdist worker per module: its SFT fixture is built once.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("training")]

QUIET = {"disable_tqdm": True, "save_strategy": "no", "logging_steps": 1, "seed": 0}
NO_EVAL = {"eval_on_start": False, "max_eval_examples": 1}


@pytest.fixture(scope="module")
def sft_run(ml100k_next_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-model SFT run: 12 steps of 4 contexts at a high learning rate."""
    config = load_config(
        SFTConfig,
        None,
        {
            **QUIET,
            "data": str(ml100k_next_dir),
            "output_dir": str(tmp_path_factory.mktemp("runs") / "sft"),
            "model": "tiny",
            "max_steps": 12,
            "max_train_examples": 48,
            "max_eval_examples": 8,
            "learning_rate": 3e-3,
        },
    )
    return train_sft(config)


def pref_config(data: Path, init: Path, out: Path, **values: Any) -> PrefConfig:
    base = {**QUIET, "data": str(data), "init": str(init), "output_dir": str(out)}
    return load_config(PrefConfig, None, {**base, **values})


def _logps(model: torch.nn.Module, tokenizer: Any, data: Path) -> torch.Tensor:
    examples = load_split(data, "valid")[:4]
    batch = CandidateCollator(tokenizer.pad_token_id)(
        [tokenize_example(ex, tokenizer) for ex in examples]
    )
    with torch.no_grad():
        return candidate_logps(model, batch).logps


def test_sft_run_reloads_and_moved_away_from_the_base(sft_run: Path, ml100k_next_dir: Path) -> None:
    for name in ("setdpo_model.json", "resolved_config.yaml", "trainer_state.json"):
        assert (sft_run / name).is_file(), name
    spec = json.loads((sft_run / "setdpo_model.json").read_text())
    assert (sft_run / spec["adapters"][-1] / "adapter_model.safetensors").is_file()
    model, tokenizer = load(sft_run)
    sft = _logps(model, tokenizer, ml100k_next_dir)
    with model.disable_adapter():
        base = _logps(model, tokenizer, ml100k_next_dir)
    assert (sft - base).abs().max() > 1e-2  # SFT log-probs are not the base model's
    history = json.loads((sft_run / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])


@pytest.fixture
def reference_counter(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts contexts scored with the LoRA adapter disabled (= reference forward passes)."""
    counts = {"reference_contexts": 0}
    real = candidate_logps

    def counting(model: torch.nn.Module, batch: dict, **kwargs: Any) -> Any:
        layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
        if layer.disable_adapters:
            counts["reference_contexts"] += int(batch["levels"].shape[0])
        return real(model, batch, **kwargs)

    monkeypatch.setattr(reference_module, "candidate_logps", counting)
    monkeypatch.setattr(preference_module, "candidate_logps", counting)
    return counts


def test_reference_is_the_sft_model_and_computed_once(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path, reference_counter: dict[str, int]
) -> None:
    values = {"max_steps": 2, "max_train_examples": 8, "max_eval_examples": 4}
    config = pref_config(ml100k_next_dir, sft_run, tmp_path / "pref", **values)
    train_pref(config)
    # Each train and valid context scored once under the reference, before training.
    assert reference_counter["reference_contexts"] == 8 + 4
    history = json.loads((tmp_path / "pref" / "trainer_state.json").read_text())["log_history"]
    first = next(entry for entry in history if "loss" in entry)
    assert abs(first["reward_positive"]) < 1e-5 and abs(first["reward_negative"]) < 1e-5
    assert first["loss"] == pytest.approx(math.log(4), abs=1e-5)  # 1 positive + 3 negatives
    evals = [entry for entry in history if "eval_loss" in entry]
    assert len(evals) == 2 and evals[0]["eval_loss"] == pytest.approx(math.log(20), abs=1e-5)
    assert evals[0]["step"] == 0
    assert {"eval_reward_accuracy", "tokens_per_second", "bound_gap", "a_over_b"} <= {
        key for entry in history for key in entry
    }
    # A second run into the same directory reads the cached reference.
    train_pref(config)
    assert reference_counter["reference_contexts"] == 8 + 4


def test_reference_per_step_without_precompute(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path, reference_counter: dict[str, int]
) -> None:
    values = {"max_steps": 2, "max_train_examples": 8, "precompute_ref": False, **NO_EVAL}
    values["chunk_size"] = 3  # candidates scored 3 at a time: same values, less memory
    trainer = build_pref_trainer(pref_config(ml100k_next_dir, sft_run, tmp_path / "p", **values))
    trainer.train()
    assert reference_counter["reference_contexts"] == 2 * 4  # every step, 4 contexts a batch
    first = trainer.state.log_history[0]
    assert abs(first["reward_positive"]) < 1e-5 and abs(first["reward_negative"]) < 1e-5


@pytest.mark.parametrize(
    ("loss", "start"),
    [
        ("dpo", math.log(2)),
        ("dmpo", math.log(2)),
        ("sdpo", math.log(20)),
        ("mult", math.log(20)),
        ("mult2", math.log(20)),
        ("pl", math.log(20)),
    ],
)
def test_every_objective_decreases_on_a_fixed_batch(
    loss: str, start: float, sft_run: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    # 2 contexts, all 20 candidates (num_negatives 0), batch 4: every step sees the same batch.
    values = {
        "loss": loss,
        "max_steps": 5,
        "max_train_examples": 2,
        "num_negatives": 0,
        "learning_rate": 1e-2,
        **NO_EVAL,
    }
    trainer = build_pref_trainer(pref_config(ml100k_next_dir, sft_run, tmp_path / loss, **values))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[0] == pytest.approx(start, abs=1e-5)
    assert losses[-1] < losses[0] - 0.05, losses


def test_non_finite_loss_stops_with_the_last_good_checkpoint(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    # Step 1 is finite (policy == reference); SGD at lr 1e30 then sends activations to inf.
    values = {
        "max_steps": 4,
        "max_train_examples": 8,
        "optim": "sgd",
        "save_strategy": "steps",
        "save_steps": 1,
        "learning_rate": 1e30,
        **NO_EVAL,
    }
    out = tmp_path / "nan"
    trainer = build_pref_trainer(pref_config(ml100k_next_dir, sft_run, out, **values))
    with pytest.raises(
        NonFiniteLossError, match=r"not finite at step 2; .*last good checkpoint: .*checkpoint-1"
    ):
        trainer.train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]


def test_hard_negatives_rescored_by_the_policy_each_epoch(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[list[float]]] = []
    real = preference_module.all_candidate_logps

    def recording(*args: Any, **kwargs: Any) -> list[list[float]]:
        result = real(*args, **kwargs)
        if kwargs.get("desc") == "hard negatives":
            calls.append(result)
        return result

    monkeypatch.setattr(preference_module, "all_candidate_logps", recording)
    values = {"negatives": "hard", "num_train_epochs": 2, "max_train_examples": 4, **NO_EVAL}
    values |= {"learning_rate": 1e-2, "hard_temperature": 0.5}
    trainer = build_pref_trainer(pref_config(ml100k_next_dir, sft_run, tmp_path / "hard", **values))
    trainer.train()  # 4 contexts, batch 4: one step per epoch
    assert trainer.state.global_step == 2 and len(calls) == 2  # one re-scoring per epoch
    data = trainer.train_dataset
    # Epoch 0 starts from the SFT model: the policy's scores are the reference's.
    torch.testing.assert_close(
        torch.tensor(calls[0]), torch.tensor(data.ref_logps), atol=1e-4, rtol=0
    )
    assert not torch.allclose(torch.tensor(calls[1]), torch.tensor(calls[0]), atol=1e-4)
    assert data.hard_scores == calls[1]


def test_sft_weight_adds_the_positive_nll(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    values = {"max_steps": 1, "max_train_examples": 4, "sft_weight": 0.5, **NO_EVAL}
    trainer = build_pref_trainer(pref_config(ml100k_next_dir, sft_run, tmp_path / "w", **values))
    trainer.train()
    first = trainer.state.log_history[0]
    # Rewards are 0 at the first step, so mult = log 4 and the rest is 0.5 x NLL.
    assert first["nll"] > 0
    assert first["loss"] == pytest.approx(math.log(4) + 0.5 * first["nll"], abs=1e-4)
