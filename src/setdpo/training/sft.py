"""Supervised fine-tuning: the model learns to answer a prompt with a positive title and EOS.

The loss is the usual token-averaged cross-entropy, on the answer tokens only (prompt and
padding carry label -100), or with ``targets: sequence`` on the prompt's tokens too, so that
every history item is a next-item target (`SFTCollator`). With several positives per context, `positives`
picks one row per positive (`each`) or one positive per context and epoch (`one`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from setdpo import model as models
from setdpo.data.store import token_catalog
from setdpo.errors import InputError
from setdpo.evaluation.sasrec import SASRecSettings, load_or_train
from setdpo.items import add_item_tokens, item_tokens, set_item_rows, text_segments
from setdpo.training.callbacks import EpochCallback, check_finite
from setdpo.training.config import SFTConfig
from setdpo.training.data import SFTCollator, SFTDataset
from setdpo.training.run import RunTrainer, load_examples, tokenize_lazily, train_and_close


class SFTTrainer(RunTrainer):
    """transformers' Trainer with the non-finite loss guard; the model computes the loss."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training:
            check_finite(loss, "training loss", self.state.global_step, self.args.output_dir)
        return result


def _tiny_texts(examples: list[Any]) -> list[str]:
    """Texts that decide the tiny tokenizer's merges: prompts and candidate titles."""
    texts = [ex.prompt for ex in examples] + [t for ex in examples for t in ex.candidates]
    return [piece for text in texts for piece in text_segments(text)]


def _start_items_from_sasrec(model: Any, tokenizer: Any, config: SFTConfig) -> None:
    """The item tokens start from the SASRec baseline of the same data and seed (the one
    `setdpo evaluate --baselines sasrec` trains: the cache serves both)."""
    titles = token_catalog(config.data)
    if titles is None:
        raise InputError(
            f"item_init: sasrec needs item tokens, and {config.data} writes items as titles "
            "(`setdpo data prepare --items-as tokens` or `hybrid`)"
        )
    sasrec = load_or_train(
        config.data, SASRecSettings(seed=config.seed), progress=not config.disable_tqdm
    )
    vectors = sasrec.model.item_emb.weight[1:]  # row 0 pads; row i + 1 is catalog row i
    set_item_rows(model, add_item_tokens(tokenizer, len(titles)), vectors, config.seed)


def _load_start(config: SFTConfig, examples: list[Any]) -> tuple[Any, Any]:
    """The model SFT starts from: a base model, or a run directory with every adapter merged
    (self-play's next round starts from the previous round's preference run)."""
    if not models.is_run_dir(config.model):
        return models.load(
            config.model,
            device="cpu",  # the Trainer moves it to `config.device`
            dtype=torch.float32,
            tiny_texts=_tiny_texts(examples),
            lab_data=config.data,
            item_titles=token_catalog(config.data),
        )
    if config.item_init == "sasrec":
        raise InputError(
            f"item_init: sasrec starts the item tokens of a base model, and model "
            f"{config.model} is a run directory whose item tokens are trained already"
        )
    return models.load(config.model, device="cpu", dtype=torch.float32, merge_all=True)


def build_sft_trainer(config: SFTConfig) -> SFTTrainer:
    """Load the base model (or a run's, its adapters merged), add a fresh LoRA adapter (or
    train every weight with `peft: none`) and wire data, collator and callbacks."""
    train_examples = load_examples(config.data, "train", config.max_train_examples)
    eval_examples = load_examples(config.data, "valid", config.max_eval_examples, config.seed)
    model, tokenizer = _load_start(config, [*train_examples, *eval_examples])
    if config.item_init == "sasrec":
        _start_items_from_sasrec(model, tokenizer, config)
    set_seed(config.seed)  # LoRA's A matrices draw from the global generator
    lora = config.lora_settings(item_tokens(tokenizer))
    model = models.add_lora(model, lora) if lora else model.requires_grad_(True)
    train = SFTDataset(
        tokenize_lazily(train_examples, tokenizer, config), config.seed, config.positives
    )
    valid = SFTDataset(tokenize_lazily(eval_examples, tokenizer, config), config.seed, "each")
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=valid if len(valid) else None,
        data_collator=SFTCollator(tokenizer.pad_token_id, config.targets == "sequence"),
        processing_class=tokenizer,
        callbacks=[EpochCallback([train])],
    )


def train_sft(config: SFTConfig, resume: bool = False) -> Path:
    """Run SFT into `config.output_dir`; `resume` continues from its last checkpoint.

    The run directory ends with the adapter (full fine-tuning: the whole model as `base/`), the
    tokenizer and `setdpo_model.json` (so `setdpo.model.load(run_dir)` reloads the model),
    `resolved_config.yaml` and `trainer_state.json`. A run started from another run lists
    that run's adapters first (copied in, as a preference run does) and its own as
    `adapters/sft-2` (or the next free name).
    """
    trainer = build_sft_trainer(config)
    if models.is_run_dir(config.model):
        start = {"init_run": config.model, "adapter_stem": "adapters/sft"}
    else:
        start = {"base_model": config.model}
    return train_and_close(trainer, config, resume, **start)
