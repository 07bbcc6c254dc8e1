"""Preference alignment: a Trainer whose loss is `setdpo.losses.compute` on candidate log-probs.

The policy starts from an SFT run whose adapter is merged into the base weights, with a fresh
LoRA adapter on top (`setdpo.model.prepare_preference_model`); the reference is the same network
with that adapter disabled, i.e. the SFT model. Its log-probs are computed once before training
and cached in the run directory (`precompute_ref`), or, with that off, at every step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, set_seed

from setdpo import losses
from setdpo import model as models
from setdpo.scoring import CandidateScores, candidate_logps
from setdpo.tokenization import TOKENIZATION
from setdpo.training.callbacks import EpochCallback, check_finite
from setdpo.training.config import PrefConfig
from setdpo.training.data import PreferenceCollator, PreferenceDataset
from setdpo.training.reference import (
    all_candidate_logps,
    cached_reference,
    fingerprint,
    model_files,
)
from setdpo.training.run import load_examples, tokenize_all, train_and_close


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


class PreferenceTrainer(Trainer):
    """`compute_loss` = candidate log-probs -> `losses.compute` (+ `sft_weight` x NLL).

    Logs, averaged since the last log: the loss's reward metrics (reward_accuracy, margins,
    positive and negative rewards; bound_gap, bound_gap_max and a_over_b for mult/mult2),
    `nll` when `sft_weight` > 0, contexts/s and tokens/s; `eval_*` on the valid split.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._counts = {"tokens": 0, "contexts": 0, "since": time.perf_counter()}

    def reference_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """Reference log-probs [B, n] of a batch: the policy network with its adapter off."""
        peft_model = self.accelerator.unwrap_model(model)
        with torch.no_grad(), peft_model.disable_adapter():
            scores = candidate_logps(
                peft_model,
                batch,
                share_prefix=self.args.share_prefix,
                average=self.args.average_logps,
                chunk_size=self.args.chunk_size,
            )
        return scores.logps.detach()

    def policy_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """`CandidateScores` of a batch under the policy (with gradients in training)."""
        inner = self.accelerator.unwrap_model(model)
        policy = model if inner is model else _DistributedView(model, inner)
        args = self.args
        scores = candidate_logps(
            policy,
            batch,
            share_prefix=args.share_prefix,
            average=args.average_logps,
            chunk_size=args.chunk_size,
        )
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
        ref = inputs.get("ref_logps")
        if ref is None:
            ref = self.reference_logps(model, inputs)
        scores = self.policy_logps(model, inputs)
        out = losses.compute(
            args.loss, scores.logps, ref.to(scores.logps.dtype), inputs["levels"], args.beta
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


def _reference_logps(
    model: Any, tokenizer: Any, config: PrefConfig, splits: dict[str, list[Any]]
) -> dict[str, list[list[float]]]:
    """Reference log-probs of every candidate of each split, from the cache or computed.

    The reference is the SFT model, so its log-probs are cached in the SFT run directory
    (`config.init`): every preference run from that SFT run on the same data (several
    objectives, reruns) computes them once.
    """
    data_files = [Path(config.data) / f"{name}.jsonl" for name in splits]
    settings = {
        "sizes": {name: len(toks) for name, toks in splits.items()},
        "max_prompt_length": config.max_prompt_length,
        "chat_template": config.chat_template,
        "share_prefix": config.share_prefix,
        "average_logps": config.average_logps,
        "tokenization": TOKENIZATION,
    }
    key = fingerprint(data_files + model_files(config.init), settings)

    def compute() -> dict[str, list[list[float]]]:
        return {
            name: all_candidate_logps(
                model,
                toks,
                tokenizer.pad_token_id,
                batch_size=config.per_device_eval_batch_size,
                share_prefix=config.share_prefix,
                average=config.average_logps,
                chunk_size=config.chunk_size,
                reference=True,
                desc=f"reference log-probs ({name})",
            )
            for name, toks in splits.items()
        }

    with config.main_process_first(desc="reference log-probs"):
        return cached_reference(config.init, key, compute)


def build_pref_trainer(config: PrefConfig) -> PreferenceTrainer:
    """The SFT run's model with a fresh adapter, datasets (reference attached) and callbacks."""
    set_seed(config.seed)  # the fresh adapter's A matrices draw from the global generator
    model, tokenizer = models.prepare_preference_model(
        config.init, config.lora_settings(), device=config.device, dtype=torch.float32
    )
    splits = {
        "train": tokenize_all(
            load_examples(config.data, "train", config.max_train_examples), tokenizer, config
        ),
        "valid": tokenize_all(
            load_examples(config.data, "valid", config.max_eval_examples), tokenizer, config
        ),
    }
    train = PreferenceDataset(
        splits["train"], config.seed, config.num_negatives, config.hard_temperature
    )
    valid = PreferenceDataset(splits["valid"], config.seed, num_negatives=0)
    if config.precompute_ref:
        ref = _reference_logps(model, tokenizer, config, splits)
        train.ref_logps, valid.ref_logps = ref["train"], ref["valid"]

    def refresh_hard_negatives(policy: torch.nn.Module) -> None:
        train.hard_scores = all_candidate_logps(
            policy,
            train.tokenized,
            tokenizer.pad_token_id,
            batch_size=config.per_device_eval_batch_size,
            share_prefix=config.share_prefix,
            average=config.average_logps,
            chunk_size=config.chunk_size,
            desc="hard negatives",
        )

    refresh = refresh_hard_negatives if config.negatives == "hard" else None
    return PreferenceTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=valid if len(valid) else None,
        data_collator=PreferenceCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[EpochCallback([train], refresh)],
    )


def train_pref(config: PrefConfig, resume: bool = False) -> Path:
    """Preference-train from `config.init` into `config.output_dir` (`resume`: last checkpoint).

    Evaluates on the valid split before the first step (`eval_on_start`, logged at step 0)
    and after the last (`eval_*` entries of trainer_state.json). The run directory ends as `train_sft`'s does, its
    `setdpo_model.json` listing the SFT adapter then this run's.
    """
    trainer = build_pref_trainer(config)
    if trainer.eval_dataset is None:  # no valid split: nothing to evaluate at the start
        config.eval_on_start = False
    return train_and_close(trainer, config, resume, init_run=config.init)
