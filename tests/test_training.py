"""SFT and preference training on the tiny model and prepared ML-100K (real Trainer, real peft).

Hand-derived anchors: a fresh adapter on the merged SFT weights computes exactly the SFT model,
so at the first step every reward is 0, and with one positive among n candidates the
multinomial losses (sdpo, mult, mult2, pl) equal log n while the pairwise ones (dpo, dmpo)
equal log 2, and lipo sums log 2 times the Lambda weights of a tie (`_lipo_at_a_tie`).
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import setdpo
import setdpo.training.preference as preference_module
from setdpo.data import load_split
from setdpo.model import build_tiny, load
from setdpo.scoring import candidate_logps
from setdpo.tokenization import CandidateCollator, tokenize_example
from setdpo.training import PrefConfig, SFTConfig, load_config, train_pref, train_sft
from setdpo.training.callbacks import NonFiniteLossError
from setdpo.training.preference import PreferenceTrainer, build_pref_trainer
from setdpo.training.reference import MEMO_DIR, ReferenceModel, eval_mode

# One xdist worker per module: its SFT fixture is built once.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("training")]

QUIET = {"disable_tqdm": True, "save_strategy": "no", "logging_steps": 1, "seed": 0}
NO_EVAL = {"eval_on_start": False, "max_eval_examples": 1}


def sft_config(data: Path, out: Path, **values: Any) -> SFTConfig:
    """A tiny-model SFT run: 12 steps of 4 contexts at a high learning rate."""
    base = {**QUIET, "data": str(data), "output_dir": str(out), "model": "tiny"}
    base |= {"max_steps": 12, "max_train_examples": 48, "max_eval_examples": 8}
    return load_config(SFTConfig, None, {**base, "learning_rate": 3e-3, **values})


@pytest.fixture(scope="module")
def sft_run(ml100k_next_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sft(sft_config(ml100k_next_dir, tmp_path_factory.mktemp("runs") / "sft"))


@pytest.fixture
def fresh_sft(sft_run: Path, tmp_path: Path) -> Path:
    """A copy of the SFT run without any reference memo (tests that count reference passes)."""
    return Path(shutil.copytree(sft_run, tmp_path / "sft", ignore=shutil.ignore_patterns(MEMO_DIR)))


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


def test_a_refused_configuration_leaves_no_global_state_behind(
    ml100k_next_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the fuzzing: `--deepspeed FILE` without deepspeed set transformers' global
    DeepSpeed configuration before failing, and the next `from_pretrained` in the process
    failed on it (`'HfTrainerDeepSpeedConfig' object has no attribute 'is_zero3'`). Every
    refused field leaves the environment and transformers' globals as they were: a model
    then trains and loads."""
    import os

    from transformers.integrations import deepspeed

    from setdpo.errors import InputError
    from setdpo.training import optional

    monkeypatch.setattr(optional, "installed", lambda module: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    environment = dict(os.environ)
    deepspeed_file = Path(__file__).parents[1] / "configs/accelerate/deepspeed_zero2.yaml"
    refused = [{"deepspeed": str(deepspeed_file)}, {"fsdp": "full_shard"},
               {"report_to": "wandb"}, {"optim": "adamw_bnb_8bit"},
               {"torch_compile_backend": "onnxrt"}]  # fmt: skip
    errors = []  # kept alive, as hypothesis keeps a failing example's exception
    for values in refused:
        with pytest.raises(InputError) as err:
            sft_config(ml100k_next_dir, tmp_path / "refused", **values)
        errors.append(err.value)
    assert dict(os.environ) == environment
    assert deepspeed.deepspeed_config() is None and not deepspeed.is_deepspeed_zero3_enabled()
    run = train_sft(sft_config(ml100k_next_dir, tmp_path / "sft", max_steps=1))
    model, _ = load(run)
    assert model.peft_config and len(errors) == len(refused)


@pytest.fixture
def reference_counter(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts contexts scored by the reference network (= reference forward passes)."""
    counts = {"reference_contexts": 0}
    real = ReferenceModel.logps

    def counting(self: ReferenceModel, batch: dict) -> torch.Tensor:
        counts["reference_contexts"] += int(batch["levels"].shape[0])
        return real(self, batch)

    monkeypatch.setattr(ReferenceModel, "logps", counting)
    return counts


def _first_step(run: Path) -> dict[str, float]:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return next(entry for entry in history if "loss" in entry)


def test_reference_is_the_sft_model_computed_when_needed_and_memoised(
    fresh_sft: Path, ml100k_next_dir: Path, tmp_path: Path, reference_counter: dict[str, int]
) -> None:
    # 200 training contexts are there; 2 steps of 4 use 8 of them, the valid sample 4.
    values = {"max_steps": 2, "max_eval_examples": 4}
    config = pref_config(ml100k_next_dir, fresh_sft, tmp_path / "pref", **values)
    train_pref(config)
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
    (memo,) = (fresh_sft / MEMO_DIR).iterdir()
    assert len(list(memo.glob("part-*.json"))) == 1  # the run's shards merged into one
    # A rerun and a second objective aligned from the same SFT run read the memo.
    train_pref(config)
    dpo = pref_config(ml100k_next_dir, fresh_sft, tmp_path / "dpo", loss="dpo", **values)
    train_pref(dpo)
    assert reference_counter["reference_contexts"] == 8 + 4
    assert _first_step(tmp_path / "dpo")["loss"] == pytest.approx(math.log(2), abs=1e-5)
    # A changed tokenization (a shorter prompt budget) changes what is scored: it misses.
    short = pref_config(
        ml100k_next_dir, fresh_sft, tmp_path / "short", max_prompt_length=120, **values
    )
    train_pref(short)
    assert reference_counter["reference_contexts"] == 2 * (8 + 4)
    assert abs(_first_step(tmp_path / "short")["reward_positive"]) < 1e-5


def test_precompute_ref_scores_every_candidate_up_front(
    fresh_sft: Path, ml100k_next_dir: Path, tmp_path: Path, reference_counter: dict[str, int]
) -> None:
    values = {"max_steps": 2, "max_train_examples": 40, "precompute_ref": True, **NO_EVAL}
    values["chunk_size"] = 3  # candidates scored 3 at a time: same values, less memory
    trainer = build_pref_trainer(pref_config(ml100k_next_dir, fresh_sft, tmp_path / "p", **values))
    assert reference_counter["reference_contexts"] == 40 + 1  # every train and valid context
    train, memo = trainer.train_dataset, trainer.reference.memo
    assert all(memo.complete(train.example_key(i)) for i in range(40))  # every candidate
    assert trainer.reference.model.copy is None
    trainer.train()
    assert reference_counter["reference_contexts"] == 40 + 1  # training read them all
    first = trainer.state.log_history[0]
    assert abs(first["reward_positive"]) < 1e-5 and abs(first["reward_negative"]) < 1e-5


@pytest.mark.parametrize(
    "reference",
    [{}, {"precompute_ref": True}, {"peft": "none"}, {"peft": "none", "precompute_ref": True}],
    ids=["lora-lazy", "lora-precomputed", "full-lazy", "full-precomputed"],
)
def test_bf16_reference_runs_in_the_policy_precision(
    reference: dict[str, Any], fresh_sft: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    # The policy runs under bf16 autocast; a reference scored in float32 instead (precomputed
    # before the Trainer wraps the model, or the frozen copy of full fine-tuning) gave
    # first-step rewards of 3e-4 to 8e-4 here. Policy and reference are one model: exactly 0.
    values = {"bf16": True, "max_steps": 1, "max_train_examples": 8, **NO_EVAL, **reference}
    values["per_device_train_batch_size"] = 8
    values["num_negatives"] = 0
    train_pref(pref_config(ml100k_next_dir, fresh_sft, tmp_path / "bf16", **values))
    first = _first_step(tmp_path / "bf16")
    assert (first["reward_positive"], first["reward_negative"]) == (0.0, 0.0)
    # The memo's key says the precision: a float32 run reads none of the bf16 log-probs.
    values["bf16"] = False
    train_pref(pref_config(ml100k_next_dir, fresh_sft, tmp_path / "fp32", **values))
    first = _first_step(tmp_path / "fp32")
    assert (first["reward_positive"], first["reward_negative"]) == (0.0, 0.0)
    assert len(list((fresh_sft / MEMO_DIR).iterdir())) == 2


def test_a_truncated_memo_shard_does_not_break_later_runs(
    fresh_sft: Path, ml100k_next_dir: Path, tmp_path: Path, reference_counter: dict[str, int]
) -> None:
    values = {"max_steps": 1, "max_train_examples": 4, **NO_EVAL}
    train_pref(pref_config(ml100k_next_dir, fresh_sft, tmp_path / "a", **values))
    ((shard,),) = [list(memo.glob("part-*.json")) for memo in (fresh_sft / MEMO_DIR).iterdir()]
    shard.write_bytes(shard.read_bytes()[:40])  # cut short, as a crash can leave a file
    train_pref(pref_config(ml100k_next_dir, fresh_sft, tmp_path / "b", **values))
    assert reference_counter["reference_contexts"] == 2 * (4 + 1)  # recomputed, not lost
    first = _first_step(tmp_path / "b")
    assert (first["reward_positive"], first["reward_negative"]) == (0.0, 0.0)


def test_persistent_workers_draw_each_epoch_anew(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A DataLoader worker holds its own copy of the dataset; with persistent workers the
    # epoch set on the main process's copy never reached it (the same draws every epoch).
    drawn: dict[int, dict[int, list[int]]] = {}  # epoch -> example -> candidates drawn
    real = PreferenceTrainer.compute_loss

    def recording(self: PreferenceTrainer, model: Any, inputs: dict, *args: Any, **kw: Any) -> Any:
        if model.training:
            index, candidates = inputs["example_index"], inputs["candidate_index"]
            rows = zip(index.tolist(), candidates.tolist(), strict=True)
            drawn.setdefault(self.train_dataset.epoch, {}).update(rows)
        return real(self, model, inputs, *args, **kw)

    monkeypatch.setattr(PreferenceTrainer, "compute_loss", recording)
    values = {"max_train_examples": 4, "per_device_train_batch_size": 4, "num_train_epochs": 3}
    values |= {"dataloader_num_workers": 1, "dataloader_persistent_workers": True, **NO_EVAL}
    trainer = build_pref_trainer(pref_config(ml100k_next_dir, sft_run, tmp_path / "p", **values))
    trainer.train()
    assert sorted(drawn) == [0, 1, 2]
    dataset = trainer.train_dataset
    for epoch, rows in drawn.items():  # what the main process draws for that epoch
        dataset.set_epoch(epoch)
        assert rows == {i: dataset.candidate_indices(i) for i in range(4)}, epoch
    assert drawn[0] != drawn[1] != drawn[2] != drawn[0]


def test_retrained_sft_run_misses_the_memo(
    ml100k_next_dir: Path, tmp_path: Path, reference_counter: dict[str, int]
) -> None:
    # A run directory below a folder named like a checkpoint: its files must still count.
    sft = tmp_path / "checkpoint-runs" / "sft"
    train_sft(sft_config(ml100k_next_dir, sft, max_steps=3))
    values = {"max_steps": 1, "max_train_examples": 4, **NO_EVAL}
    train_pref(pref_config(ml100k_next_dir, sft, tmp_path / "a", **values))
    train_sft(sft_config(ml100k_next_dir, sft, max_steps=3, seed=1))  # retrained in place
    train_pref(pref_config(ml100k_next_dir, sft, tmp_path / "b", **values))
    assert reference_counter["reference_contexts"] == 2 * (4 + 1)  # computed again
    for run in ("a", "b"):  # the reference is the SFT model of the moment: rewards 0
        first = _first_step(tmp_path / run)
        assert abs(first["reward_positive"]) < 1e-5 and abs(first["reward_negative"]) < 1e-5
    assert len(list((sft / MEMO_DIR).iterdir())) == 2  # one memo per SFT model


def test_missing_valid_split_trains_without_evaluation(
    ml100k_next_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(ml100k_next_dir, data, ignore=shutil.ignore_patterns("valid"))  # hf/valid
    sft = train_sft(sft_config(data, tmp_path / "sft", max_steps=1))
    values = {"max_steps": 1, "max_train_examples": 4, "precompute_ref": True}
    config = pref_config(data, sft, tmp_path / "pref", **values)
    run = train_pref(config)
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert any("loss" in entry for entry in history)
    assert not any("eval_loss" in entry for entry in history)
    assert config.eval_on_start  # the trainer's arguments skip it; the user's config is as given


SRC = Path(setdpo.__file__).resolve().parent
_DEPRECATED_NAME = re.compile(r"`([\w.]+)` (?:is|are) deprecated")


def _calls_from_setdpo(message: str, callers: list[str]) -> bool:
    """Whether a deprecation is setdpo's doing: the deprecated function (`callers[0]`, the
    frame that warned) was called from setdpo's code, or the message names a deprecated API
    that setdpo's source calls (through a forwarding layer, as peft's `__getattr__`)."""
    if any(Path(caller).is_relative_to(SRC) for caller in callers[:2]):
        return True
    names = {name.rsplit(".", 1)[-1] for name in _DEPRECATED_NAME.findall(message)}
    return bool(names & _names_in_setdpo())


@functools.cache
def _names_in_setdpo() -> set[str]:
    """The attributes, keywords and identifier strings (`getattr(model, "name")`, config
    keys) in setdpo's code; not its prose (docstrings, comments)."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.isidentifier():
                    names.add(node.value)
    return names


@contextmanager
def deprecations_from_setdpo() -> Iterator[list[str]]:
    """Every FutureWarning or DeprecationWarning raised by setdpo's own calls in the block,
    each shown (all of them, not once per place) while the call that raised it is on the
    stack, so its callers can be read."""
    found: list[str] = []

    def show(message: Warning | str, category: type, filename: str, lineno: int, *_: Any):
        if not issubclass(category, (FutureWarning, DeprecationWarning)):
            return
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename == warnings.__file__:
            frame = frame.f_back
        callers = []
        while frame is not None and len(callers) < 2:
            callers.append(frame.f_code.co_filename)
            frame = frame.f_back
        if _calls_from_setdpo(str(message), [filename, *callers]):
            found.append(f"{filename}:{lineno}: {category.__name__}: {message}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield found


def test_no_deprecated_call_from_setdpo_under_gradient_checkpointing(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    """Found by running the suite: `TrainingArguments(gradient_checkpointing=...)` and
    `model.is_gradient_checkpointing` warned that they go in transformers v6. The older
    option name is still accepted (`--gradient-checkpointing true`, as in docs/training.md)."""
    from setdpo.cli import main

    data = ["--data", str(ml100k_next_dir), "--max-steps", "1", "--max-train-examples", "4"]
    quiet = ["--disable-tqdm", "true", "--save-strategy", "no", "--max-eval-examples", "2"]
    options = [*data, *quiet, "--gradient-checkpointing", "true"]
    with deprecations_from_setdpo() as found:
        sft = tmp_path / "sft"
        assert main(["train", "sft", "--model", "tiny", "--out", str(sft), *options]) == 0
        pref = ["train", "pref", "--init", str(sft_run), "--out", str(tmp_path / "pref")]
        assert main([*pref, *options]) == 0
    assert found == []
    resolved = load_config(SFTConfig, sft / "resolved_config.yaml")
    assert resolved.activation_checkpointing is True


@pytest.fixture(scope="module")
def gpt2_with_dropout(ml100k_next_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 (dropout 0.1 on embeddings, attention and residuals) saved as a folder."""
    examples = load_split(ml100k_next_dir, "train")[:20]
    _, tokenizer = build_tiny([ex.prompt for ex in examples])
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, **ids)
    assert config.resid_pdrop == config.attn_pdrop == config.embd_pdrop == 0.1
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2") / "model"
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("disable", [True, False])
def test_dropout_is_off_in_preference_training_unless_kept(
    disable: bool, gpt2_with_dropout: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    values = {"max_steps": 1, "max_train_examples": 8, "disable_dropout": disable, **NO_EVAL}
    values |= {"lora_target_modules": ["c_attn"], "per_device_train_batch_size": 8}
    config = pref_config(ml100k_next_dir, gpt2_with_dropout, tmp_path / "p", **values)
    trainer = build_pref_trainer(config)
    trainer.train()
    first = trainer.state.log_history[0]
    rewards = max(abs(first["reward_positive"]), abs(first["reward_negative"]))
    if disable:  # policy (train mode) == reference (eval mode): rewards 0, mult = log 4
        assert rewards < 1e-5 and first["loss"] == pytest.approx(math.log(4), abs=1e-5)
    else:  # kept: the policy's dropout makes the first rewards noise
        assert rewards > 1e-3
        drops = [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
        assert 0.1 in drops


def _lipo_at_a_start(n: int) -> tuple[float, float]:
    """The range of lipo at policy == reference for one positive among n candidates. The
    rewards are 0 up to float noise (the memoised reference was scored in other batches), and
    the Lambda weights rank by that noise: the positive at place a weighs
    sum_q |1/log2(1 + a) - 1/log2(1 + q)| log 2; an exact tie gives the mean over a."""
    inv_d = [1 / math.log2(1 + place) for place in range(1, n + 1)]
    at = [sum(abs(a - b) for b in inv_d) * math.log(2) for a in inv_d]
    return min(at), max(at)


@pytest.mark.parametrize(
    ("loss", "start"),
    [
        ("dpo", math.log(2)),
        ("dmpo", math.log(2)),
        ("sdpo", math.log(20)),
        ("mult", math.log(20)),
        ("mult2", math.log(20)),
        ("pl", math.log(20)),
        ("lipo", _lipo_at_a_start(20)),
        ("simpo", None),  # reference-free: its first rewards are the SFT model's log-probs
        ("dynamicpo", math.log(2)),  # tied rewards: every negative is boundary, beta x 0.5
        ("recpo", math.log(1 + 19 * math.e)),  # 19 negatives, margin 2 lambda = 1
    ],
)
def test_every_objective_decreases_on_a_fixed_batch(
    loss: str,
    start: float | tuple[float, float] | None,
    sft_run: Path,
    ml100k_next_dir: Path,
    tmp_path: Path,
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
    if isinstance(start, tuple):
        assert start[0] - 1e-5 <= losses[0] <= start[1] + 1e-5, (losses[0], start)
    elif start is not None:
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


def test_hard_negatives_drawn_from_the_current_policy(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At temperature 1e-4 the draw is the 3 negatives the policy scores highest, when drawn.
    draws: list[tuple[dict, torch.Tensor, list[list[int]]]] = []
    real = preference_module.PreferenceTrainer.draw_hard_negatives

    def recording(self: Any, model: torch.nn.Module, batch: dict) -> dict:
        with torch.no_grad(), eval_mode(model):
            scores = candidate_logps(model, batch).logps
        cut = real(self, model, batch)
        draws.append((batch, scores, cut["candidate_index"].tolist()))
        return cut

    monkeypatch.setattr(preference_module.PreferenceTrainer, "draw_hard_negatives", recording)
    values = {"negatives": "hard", "num_train_epochs": 2, "max_train_examples": 4, **NO_EVAL}
    values |= {"learning_rate": 1e-2, "hard_temperature": 1e-4}
    trainer = build_pref_trainer(pref_config(ml100k_next_dir, sft_run, tmp_path / "hard", **values))
    trainer.train()  # 4 contexts, batch 4: one step per epoch
    assert trainer.state.global_step == 2 and len(draws) == 2
    for batch, scores, kept in draws:
        for b, row in enumerate(kept):
            levels = batch["levels"][b]
            negatives = torch.where(levels == 2, scores[b], -torch.inf).topk(3).indices
            positives = torch.where(levels == 1)[0]
            assert row == sorted(positives.tolist() + negatives.tolist())
    assert not torch.allclose(draws[0][1], draws[1][1], atol=1e-4)  # the policy moved


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


@pytest.mark.parametrize(
    ("loss", "values"),
    [
        ("lipo", []),
        ("simpo", []),
        ("simpo", ["--peft", "none", "--precompute-ref", "true"]),
        ("dynamicpo", ["--dynamicpo-margin", "1.0", "--dynamicpo-alpha", "0.25"]),
        ("recpo", ["--recpo-lambda", "1.5"]),
    ],
    ids=["lipo", "simpo", "simpo-full-precomputed", "dynamicpo", "recpo"],
)
def test_newer_objectives_train_from_the_command_line(
    loss: str,
    values: list[str],
    fresh_sft: Path,
    ml100k_next_dir: Path,
    tmp_path: Path,
    reference_counter: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`setdpo train pref --loss NAME` end to end; simpo, reference-free, scores, loads and
    memoises no reference (no pass, no frozen copy even with full fine-tuning, no memo)."""
    from setdpo.cli import main

    def no_copy(config: PrefConfig) -> torch.nn.Module:
        raise AssertionError("the frozen reference copy was loaded")

    if loss == "simpo":
        monkeypatch.setattr(preference_module, "_frozen_copy", no_copy)
    out = tmp_path / "pref"
    argv = ["train", "pref", "--loss", loss, "--init", str(fresh_sft), "--out", str(out)]
    argv += ["--data", str(ml100k_next_dir), "--max-steps", "2", "--max-train-examples", "8"]
    argv += ["--max-eval-examples", "4", "--disable-tqdm", "true", "--save-strategy", "no"]
    assert main([*argv, *values]) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [entry["loss"] for entry in history if "loss" in entry]
    assert len(steps) == 2 and all(math.isfinite(value) for value in steps)
    assert len([entry for entry in history if "eval_loss" in entry]) == 2
    resolved = load_config(PrefConfig, out / "resolved_config.yaml")
    assert resolved.loss == loss
    if loss != "simpo":
        assert reference_counter["reference_contexts"] == 8 + 4
        assert len(list((fresh_sft / MEMO_DIR).iterdir())) == 1
        options = {
            "lipo": {},
            "dynamicpo": {"dynamicpo_margin": 1.0, "dynamicpo_alpha": 0.25},
            "recpo": {"recpo_lambda": 1.5},
        }
        assert resolved.loss_options() == options[loss]
    else:
        assert reference_counter["reference_contexts"] == 0
        assert not (fresh_sft / MEMO_DIR).exists() and not (out / MEMO_DIR).exists()
        assert resolved.average_logps and resolved.simpo_gamma == 0.5


def test_simpo_rewards_are_length_normalised(
    sft_run: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    # A model whose logits are all 0 gives every token log(1/V): titles of different
    # lengths then have different summed log-probs but the same mean, so SimPO's rewards
    # beta / |y| log pi(y|x) all tie and every pair costs softplus(gamma).
    values = {"loss": "simpo", "max_train_examples": 4, "beta": 2.0, "simpo_gamma": 0.7, **NO_EVAL}
    config = pref_config(ml100k_next_dir, sft_run, tmp_path / "s", **values)
    assert config.average_logps  # a length-normalised objective turns it on
    trainer = build_pref_trainer(config)
    model = trainer.model
    model.get_output_embeddings().weight.data.zero_()
    batch = next(iter(trainer.get_train_dataloader()))
    lengths = batch["candidate_mask"].sum(-1)[batch["levels"] > 0]
    assert len(set(lengths.tolist())) > 1  # titles of several lengths
    scores = trainer.policy_logps(model, batch)
    vocab = model.get_output_embeddings().weight.shape[0]
    real = scores.logps[batch["levels"] > 0].detach()
    torch.testing.assert_close(real, torch.full_like(real, -math.log(vocab)))
    loss, out = trainer.compute_loss(model, batch, return_outputs=True)
    torch.testing.assert_close(out.rewards[batch["levels"] > 0], 2.0 * real)
    assert float(loss.detach()) == pytest.approx(math.log1p(math.exp(0.7)), rel=1e-6)
