"""Preference alignment: a Trainer whose loss is `setdpo.losses.compute` on candidate log-probs.

The policy starts from an SFT run. With LoRA, the SFT adapter is merged into the base weights and
a fresh adapter is trained on top (`setdpo.model.prepare_preference_model`); the reference is the
same network with that adapter disabled. With full fine-tuning (`peft: none`) every weight
trains and the reference is a frozen copy of the SFT model, loaded only when a log-prob is
missing from the memo. Either way the reference is the SFT model, its log-probs are computed
when a batch first needs them and memoised in the SFT run directory (`training.reference`),
and the model's dropout is off (`disable_dropout`), so every reward is 0 at the first step.
A reference-free objective (its `ObjectiveEntry.reference_free`: simpo) has no reference at
all: nothing is scored, loaded or memoised for it, unless `negatives: self` picks negatives by
the SFT model's log-probs (memoised the same way, used for the draw only).
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from setdpo import losses
from setdpo import model as models
from setdpo.errors import InputError
from setdpo.scoring import CandidateScores, ScoringOptions
from setdpo.training import early_stopping
from setdpo.training.callbacks import EpochCallback, check_finite
from setdpo.training.config import PrefConfig
from setdpo.training.data import (
    PreferenceCollator,
    PreferenceDataset,
    example_rng,
    keep_candidates,
    subset_batch,
)
from setdpo.training.reference import (
    MEMO_DIR,
    MemoFlush,
    Reference,
    ReferenceMemo,
    ReferenceModel,
    eval_mode,
    memo_key,
)
from setdpo.training.run import RunTrainer, load_examples, tokenize_lazily, train_and_close


def positive_nll(scores: CandidateScores, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over positives of the token-averaged NLL of each positive title (scalar).

    scores.token_logps [B, n, C], batch["candidate_mask"] [B, n, C], batch["levels"] [B, n].
    """
    mask = batch["candidate_mask"].to(scores.token_logps.dtype)
    per_candidate = -(scores.token_logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B, n]
    positive = batch["levels"] == 1
    return per_candidate[positive].mean()


def tokens_scored(batch: dict[str, torch.Tensor], share_prefix: bool) -> int:
    """Tokens the policy pass reads: the prompt once (shared) or once per candidate."""
    prompt = batch["prompt_mask"].sum(-1)  # [B]
    candidates = (batch["levels"] > 0).sum(-1)  # [B]
    prompt_tokens = prompt.sum() if share_prefix else (prompt * candidates).sum()
    return int(prompt_tokens + batch["candidate_mask"].sum())


class _DistributedView:
    """A DDP-wrapped model as `candidate_logps` needs it: calls go through the wrapper (so
    gradients are all-reduced), attribute reads (`get_input_embeddings`, `config`) go to the
    model inside."""

    def __init__(self, wrapped: torch.nn.Module, inner: torch.nn.Module) -> None:
        self._wrapped, self._inner = wrapped, inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass(frozen=True)
class HardNegatives:
    """Cuts a batch (every candidate) to the candidates of `keep_candidates` drawn by scores
    of each example's negatives, with the example's own generator (`example_rng`):

    - `negatives: hard`: the current policy's scores, a draw from their softmax at
      `temperature`. Scored when drawn, so a step costs one extra no-grad pass over its own
      examples and nothing is scored that training never reaches.
    - `negatives: self` (`initial` set, temperature 0): the scores of the model the stage
      starts from, the reference's memoised log-probs (the SFT model: with LoRA the policy
      with its adapter off, else the frozen copy), or of `negatives_from`'s model, memoised
      the same way; no draw: the `num_negatives` it ranks highest, the same every epoch
      (SPRec's self-play negatives).

    Either way a resumed run draws as the uninterrupted one did.
    """

    options: ScoringOptions
    seed: int
    num_negatives: int
    temperature: float
    initial: Reference | None = None

    @classmethod
    def of(cls, config: PrefConfig, initial: Reference | None = None) -> HardNegatives | None:
        """The config's draw (`initial`: the memoised log-probs of `init` or `negatives_from`,
        for `self`), or None under `negatives: random`."""
        if config.negatives == "random":
            return None
        options, k = config.scoring_options(), config.num_negatives
        if config.negatives == "self":
            if initial is None:
                raise ValueError("negatives: self needs the starting model's log-probs")
            return cls(options, config.seed, k, 0.0, initial)
        return cls(options, config.seed, k, config.hard_temperature)

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any], epoch: int) -> Any:
        """`batch` cut to the drawn candidates; `model` is the unwrapped policy."""
        if self.initial is not None:
            scores = self.initial(batch)  # [B, n] float32 on the CPU
        else:
            with torch.no_grad(), eval_mode(model):
                scores = self.options.score(model, batch).logps.float().cpu()
        keep = []
        for b, index in enumerate(batch["example_index"].tolist()):
            real = int((batch["levels"][b] > 0).sum())
            rng = example_rng(self.seed, epoch, index)
            levels = batch["levels"][b, :real].tolist()
            row = scores[b, :real].tolist()
            keep.append(keep_candidates(levels, rng, self.num_negatives, row, self.temperature))
        return subset_batch(batch, keep)


class PreferenceTrainer(RunTrainer):
    """`compute_loss` = candidate log-probs -> `losses.compute` (+ `sft_weight` x NLL).

    Logs, averaged since the last log: the loss's reward metrics (reward_accuracy, margins,
    positive and negative rewards; bound_gap, bound_gap_max and a_over_b for mult/mult2),
    `nll` when `sft_weight` > 0, contexts/s and tokens/s; `eval_*` on the valid split.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(
        self,
        *args: Any,
        reference: Reference | None,
        hard_negatives: HardNegatives | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.reference, self.hard_negatives = reference, hard_negatives
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._counts = {"tokens": 0, "contexts": 0, "since": time.perf_counter()}

    def draw_hard_negatives(self, model: torch.nn.Module, batch: dict[str, Any]) -> Any:
        """`batch` cut by `hard_negatives` (by the current policy's scores, or the starting
        model's for `negatives: self`), this epoch."""
        inner = self.accelerator.unwrap_model(model)
        return self.hard_negatives(inner, batch, self.train_dataset.epoch)

    def policy_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """`CandidateScores` of a batch under the policy (with gradients in training)."""
        inner = self.accelerator.unwrap_model(model)
        policy = model if inner is model else _DistributedView(model, inner)
        scores = self.args.scoring_options().score(policy, batch)
        if model.training:  # before losses.compute, which rejects non-finite log-probs outright
            valid = batch["levels"] > 0
            step, out_dir = self.state.global_step, self.args.output_dir
            check_finite(scores.logps[valid], "policy log-probs", step, out_dir)
        return scores

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        args, start = self.args, time.perf_counter()
        if model.training and self.hard_negatives is not None:
            inputs = self.draw_hard_negatives(model, inputs)
        ref = None if self.reference is None else self.reference(inputs)  # None: reference-free
        scores = self.policy_logps(model, inputs)
        out = losses.compute(
            args.loss,
            scores.logps,
            None if ref is None else ref.to(scores.logps),
            inputs["levels"].to(scores.logps.device),
            args.beta,
            **args.loss_options(),
        )
        loss, metrics = out.loss, dict(out.metrics)
        if args.sft_weight > 0:
            nll = positive_nll(scores, inputs)
            loss = loss + args.sft_weight * nll
            metrics["nll"] = float(nll.detach())
        if model.training:
            check_finite(loss, "training loss", self.state.global_step, args.output_dir)
            self._count(inputs, start)
        for key, value in metrics.items():
            self._metrics["train" if model.training else "eval"][key].append(value)
        return (loss, out) if return_outputs else loss

    def _count(self, batch: dict[str, torch.Tensor], start: float) -> None:
        """Add a training batch to the throughput counters (clock restarts after each log)."""
        if self._counts["contexts"] == 0:
            self._counts["since"] = start
        self._counts["tokens"] += tokens_scored(batch, self.args.share_prefix)
        self._counts["contexts"] += int(batch["levels"].shape[0])

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _flush_metrics(self, mode: str) -> dict[str, float]:
        """Means of the recorded metrics since the last log, averaged over processes."""
        recorded = self._metrics[mode]
        means = {}
        for key in sorted(recorded):
            local = torch.tensor(recorded[key], dtype=torch.float64).nanmean()
            means[key] = float(self.accelerator.reduce(local.to(self.args.device), "mean"))
        recorded.clear()
        return means

    def _flush_throughput(self) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self._counts["since"], 1e-9)
        totals = torch.tensor(
            [self._counts["tokens"], self._counts["contexts"]],
            dtype=torch.float64,
            device=self.args.device,
        )
        tokens, contexts = self.accelerator.reduce(totals, "sum").tolist()
        self._counts.update(tokens=0, contexts=0, since=now)
        return {"tokens_per_second": tokens / elapsed, "contexts_per_second": contexts / elapsed}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Updated in place: `evaluate()` returns this same dict, now with eval_reward_accuracy.
        if any(key.startswith("eval_") for key in logs):
            logs.update({f"eval_{k}": v for k, v in self._flush_metrics("eval").items()})
        elif "loss" in logs:
            logs.update(self._flush_metrics("train"))
            logs.update(self._flush_throughput())
        super().log(logs, start_time)


def _frozen_copy(config: PrefConfig, name: str | None = None) -> torch.nn.Module:
    """The SFT model (or `name`) as a separate frozen network: the reference of full
    fine-tuning, or the model `negatives_from` names."""
    return models.load_reference(name or config.init, device=config.device, dtype=torch.float32)


def reference_autocast(config: PrefConfig) -> torch.dtype | None:
    """The dtype the Trainer autocasts the policy's forward to (accelerate's mixed
    precision), which every reference pass then uses too; None in float32."""
    if config.bf16:
        return torch.bfloat16
    return torch.float16 if config.fp16 else None


def _reference(
    model: torch.nn.Module,
    tokenizer: Any,
    config: PrefConfig,
    splits: dict[str, Any],
    name: str | None = None,
) -> Reference:
    """The reference of `config.init` with its memo, filled up front with `precompute_ref`;
    with `name` (`negatives_from`), that model's log-probs the same way, from its own frozen
    copy.

    The memo lives in the SFT run directory (shared by every objective aligned from it), or in
    the output directory when `init` is not a run directory (a model folder or hub id).
    """
    source = name or config.init
    scoring = config.scoring_options()
    own_copy = config.peft == "none" or source != config.init
    load_copy = partial(_frozen_copy, config, source) if own_copy else None
    autocast = reference_autocast(config)
    settings = {**scoring.values(), "dtype": "float32", "bf16": config.bf16, "fp16": config.fp16}
    if autocast is not None:  # the key says it: memos of older versions mixed precisions
        settings["reference_autocast"] = str(autocast).removeprefix("torch.")
    key = memo_key(source, settings)
    root = Path(source) if models.is_run_dir(source) else Path(config.output_dir)
    memo = ReferenceMemo(root / MEMO_DIR / key[:16], key)
    reference = Reference(ReferenceModel(model, scoring, load_copy, autocast), memo)
    if config.precompute_ref:
        # The main process scores and writes; the others then read its shards.
        with config.main_process_first(desc="reference log-probs"):
            memo.reload()
            for name, dataset in splits.items():
                reference.fill(
                    dataset,
                    tokenizer.pad_token_id,
                    config.per_device_eval_batch_size,
                    desc=f"reference log-probs ({name})",
                    progress=not config.disable_tqdm,
                )
            memo.flush()
        reference.model.release()  # every log-prob is memoised: no copy held while training
    return reference


def build_pref_trainer(config: PrefConfig) -> PreferenceTrainer:
    """The SFT run's model (a fresh adapter, or every weight with `peft: none`), datasets, the
    memoised reference (none for a reference-free objective) and callbacks."""
    set_seed(config.seed)  # the fresh adapter's A matrices draw from the global generator
    model, tokenizer = models.prepare_preference_model(
        config.init, config.lora_settings(), device=config.device, dtype=torch.float32
    )
    if config.disable_dropout:
        models.disable_dropout(model)
    train_examples = load_examples(config.data, "train", config.max_train_examples)
    valid_examples = load_examples(config.data, "valid", config.max_eval_examples, config.seed)
    # Hard and self negatives are drawn in the trainer from scores of every candidate.
    drawn = config.num_negatives if config.negatives == "random" else 0
    train = PreferenceDataset(
        tokenize_lazily(train_examples, tokenizer, config), config.seed, drawn
    )
    valid = PreferenceDataset(tokenize_lazily(valid_examples, tokenizer, config), config.seed, 0)
    splits = {"train": train, "valid": valid} if len(valid) else {"train": train}
    if not len(valid) and config.early_stopping_patience is not None:
        raise InputError(
            f"early_stopping_patience needs a valid split, and {config.data} has no hf/valid"
        )
    callbacks: list[Any] = [EpochCallback([train]), *early_stopping.callbacks(config)]
    reference_free = losses.OBJECTIVES[config.loss].reference_free
    # Memoised log-probs by model: the reference (init), and the model of self negatives.
    drawn_by = config.negatives_from or config.init
    needed = ([] if reference_free else [config.init]) + (
        [drawn_by] if config.negatives == "self" else []
    )
    scorers = {n: _reference(model, tokenizer, config, splits, n) for n in dict.fromkeys(needed)}
    callbacks += [MemoFlush(scorer.memo) for scorer in scorers.values()]
    args = config
    if not len(valid) and config.eval_on_start:  # nothing to evaluate at the start
        args = copy.copy(config)  # the trainer's own arguments: the user's config stays as given
        args.eval_on_start = False
    return PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid if len(valid) else None,
        data_collator=PreferenceCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
        reference=None if reference_free else scorers[config.init],
        hard_negatives=HardNegatives.of(config, scorers.get(drawn_by)),
    )


def train_pref(config: PrefConfig, resume: bool = False) -> Path:
    """Preference-train from `config.init` into `config.output_dir` (`resume`: last checkpoint).

    Evaluates on the valid split before the first step (`eval_on_start`, logged at step 0)
    and after the last (`eval_*` entries of trainer_state.json). The run directory ends as
    `train_sft`'s does: with LoRA its `setdpo_model.json` lists the SFT adapter then this
    run's; with full fine-tuning the whole model is saved as `base/`. The reference memo's
    shards are merged into one file at the end. With `early_stopping_patience` the run stops
    once the valid metric stops improving and ends with its best checkpoint's weights
    (`training.early_stopping`).
    """
    trainer = build_pref_trainer(config)
    run_dir = train_and_close(trainer, config, resume, init_run=config.init)
    drawn = trainer.hard_negatives
    for scorer in {trainer.reference, drawn.initial if drawn else None} - {None}:
        if trainer.is_world_process_zero():
            scorer.memo.merge_shards()
    return run_dir
