"""Training configurations: dataclasses over `transformers.TrainingArguments` (as TRL's DPOConfig).

Project defaults live once in `_SetdpoArguments`; `SFTConfig` and `PrefConfig` add their stage's
fields. Every field carries `metadata={"help": ...}` so that `HfArgumentParser` turns it into a
command-line option, and all validation lives in `__post_init__`.

A configuration is built from a YAML file plus overrides (`load_config`); the resolved result is
written to the run directory as `resolved_config.yaml` (`write_resolved_config`), and loading that
file gives the same configuration back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from transformers import TrainingArguments

from setdpo import protocol
from setdpo.atomic import atomic_write_text
from setdpo.errors import InputError
from setdpo.losses import OBJECTIVES, SIMPO_GAMMA, canonical_name, names_help
from setdpo.objectives_adaptive import DYNAMICPO_ALPHA, DYNAMICPO_MARGIN, RECPO_LAMBDA
from setdpo.paths import store_fields
from setdpo.scoring import ScoringOptions
from setdpo.training import early_stopping
from setdpo.training.optional import check_optional_packages

RESOLVED_CONFIG = "resolved_config.yaml"
# TrainingArguments fields transformers renamed (the old name warns and goes in v6): setdpo's
# files and options may use either name.
_RENAMED = [
    ("gradient_checkpointing", "activation_checkpointing"),
    ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
]


@dataclass
class _SetdpoArguments(TrainingArguments):
    """Fields and defaults shared by both stages (data, prompt length, LoRA, logging)."""

    output_dir: str | None = field(
        default=None,
        metadata={"help": "Run directory: checkpoints, final adapter, logs.", "aliases": ["--out"]},
    )
    data: str | None = field(
        default=None,
        metadata={"help": "Prepared data directory (`setdpo data prepare --out DIR`)."},
    )
    max_train_examples: int | None = field(
        default=None,
        metadata={"help": "Use only the first N training examples (small budgets); None = all."},
    )
    max_eval_examples: int | None = field(
        default=512,
        metadata={
            "help": "Evaluate on N valid examples, a sample drawn with `seed` (the valid split is "
            "ordered by user); 0 or None = all. Bounded by default: the valid loss is a monitor, "
            "`setdpo evaluate` is the measurement, and a full split costs minutes on a CPU."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompt token budget; older history items are dropped to fit."},
    )
    chat_template: bool = field(
        default=False,
        metadata={"help": "Wrap prompts with the tokenizer's chat template."},
    )
    peft: Literal["lora", "none"] = field(
        default="lora",
        metadata={
            "help": "`lora`: train a LoRA adapter; `none`: full fine-tuning, every weight trains "
            "(the run saves the whole model as `base/`). `lora_r 0` also means `none`."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (0 = full fine-tuning)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Module names that receive a LoRA adapter."},
    )
    # Project defaults over TrainingArguments.
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Contexts per device per optimisation micro-step."}
    )
    per_device_eval_batch_size: int = field(
        default=8, metadata={"help": "Contexts per device per evaluation step."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Training epochs."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N optimisation steps."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints."}
    )
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Experiment trackers (`none` = only trainer_state.json)."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "DDP: every LoRA weight gets a gradient, so no unused-parameter scan."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must stay False: batches are built by setdpo's collators."},
    )

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise InputError("output_dir (--out) is required: the run directory")
        if not self.data:
            raise InputError("data (--data) is required: a prepared data directory")
        if self.remove_unused_columns:
            raise InputError(
                "remove_unused_columns must be False: setdpo's collators build batches"
            )
        if self.max_eval_examples == 0:  # the command line cannot say None
            self.max_eval_examples = None
        for name in ("max_train_examples", "max_eval_examples", "max_prompt_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be >= 1 or None, got {value}")
        if self.lora_r == 0:
            self.peft = "none"
        if self.peft == "lora" and (self.lora_r < 1 or not self.lora_target_modules):
            raise InputError(
                f"lora_r must be >= 1 with target modules (0 = full fine-tuning), got "
                f"r={self.lora_r}, target modules {self.lora_target_modules}"
            )
        for old, new in _RENAMED:  # the older spelling, taken without transformers' warning
            if getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
        if not self.use_cpu and not torch.accelerator.is_available():
            # Without use_cpu, accelerate does not treat a CPU-only torchrun launch as
            # distributed (every process would train alone on the same batches).
            self.use_cpu = True
        check_optional_packages(self)  # before transformers sets any global state
        super().__post_init__()

    def lora_settings(self, trainable_tokens: list[int] | None = None) -> Any:
        """The `setdpo.model.LoraSettings` these fields describe (``trainable_tokens``: the
        embedding rows that train beside it, the item tokens); None for full fine-tuning."""
        from setdpo.model import LoraSettings

        if self.peft == "none":
            return None

        return LoraSettings(
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=list(self.lora_target_modules),
            trainable_tokens=tuple(trainable_tokens or ()),
        )


@dataclass
class SFTConfig(_SetdpoArguments):
    """Supervised fine-tuning on the positives: the loss on the answer tokens, or with
    ``targets: sequence`` on every token of the prompt and the answer."""

    model: str = field(
        default="embedded:smollm2-135m",
        metadata={
            "help": "Base model: `tiny`, `embedded:smollm2-135m`, a hub id, a local folder, "
            "or a run directory (its adapters merged, a fresh adapter on top, as a preference "
            "stage starts: `setdpo train selfplay`'s later rounds)."
        },
    )
    targets: Literal["answer", "sequence"] = field(
        default="answer",
        metadata={
            "help": "`answer`: the loss on the answer tokens only (completion-only); "
            "`sequence`: on every token of prompt and answer, so each history item is a "
            "next-item target with only the items before it in its context, as SASRec learns "
            "(the same forward and backward pass per row: no extra cost)."
        },
    )
    positives: Literal["each", "one"] = field(
        default="each",
        metadata={
            "help": "With several positives: `each` = one row per positive (all of them), "
            "`one` = one positive per context, drawn again each epoch."
        },
    )
    item_init: Literal["default", "sasrec"] = field(
        default="default",
        metadata={
            "help": "How item tokens start (data with `items_as` tokens or hybrid): `default` "
            "= the lab's random rows, a pretrained model's title means; `sasrec` = the item "
            "table of the data's SASRec baseline (trained on the training split, or read from "
            "its cache) projected into the model, the collaborative signal LLaRA feeds an LLM."
        },
    )


@dataclass
class PrefConfig(_SetdpoArguments):
    """Preference alignment from an SFT run with one of `setdpo.losses.OBJECTIVES`."""

    init: str | None = field(
        default=None,
        metadata={"help": "SFT run directory: the starting policy and the reference."},
    )
    loss: str = field(default="mult", metadata={"help": f"Objective: {names_help()}."})
    beta: float = field(default=1.0, metadata={"help": "Reward scale: r = beta (s_theta - s_ref)."})
    simpo_gamma: float = field(
        default=SIMPO_GAMMA,
        metadata={
            "help": "SimPO's target reward margin gamma (`loss: simpo`, >= 0), in reward units: "
            "the paper recommends gamma / beta about 0.5, so scale it with beta."
        },
    )
    dynamicpo_margin: float = field(
        default=DYNAMICPO_MARGIN,
        metadata={
            "help": "DynamicPO's fixed margin m in its per-pair beta factor "
            "1 + alpha tanh((d1 - d2 - m) / (|d1| + |d2|)) (`loss: dynamicpo`, >= 0), in "
            "log-prob units of the policy's scores (the authors' 2.0)."
        },
    )
    dynamicpo_alpha: float = field(
        default=DYNAMICPO_ALPHA,
        metadata={
            "help": "DynamicPO's bound on the per-pair beta change: factors lie in "
            "[1 - alpha, 1 + alpha] (`loss: dynamicpo`, 0 <= alpha < 1; the authors' 0.5)."
        },
    )
    recpo_lambda: float = field(
        default=RECPO_LAMBDA,
        metadata={
            "help": "RecPO's margin weight lambda (`loss: recpo`, >= 0): a negative must trail "
            "a positive by lambda s_p / s_n, s = levels above the context's worst + 1 "
            "(binary data: 2 lambda). 0 is sdpo."
        },
    )
    num_negatives: int = field(
        default=3,
        metadata={"help": "Negatives drawn per step from each example's negatives; 0 = all."},
    )
    negatives: Literal["random", "hard", "self"] = field(
        default="random",
        metadata={
            "help": "`random` = uniform draw; `hard` = drawn from the policy's softmax over the "
            "negatives (temperature `hard_temperature`), refreshed each epoch; `self` = the "
            "`num_negatives` negatives the stage's starting model (`init`, the reference) "
            "ranks highest, the same every epoch: its own top predictions that are not "
            "positives, SPRec's self-play negatives (`setdpo train selfplay`)."
        },
    )
    negatives_from: str | None = field(
        default=None,
        metadata={
            "help": "`negatives: self`: the model whose top predictions are the negatives (a "
            "run directory or a model name, with the policy's tokenizer), scored at the "
            "reference's precision and memoised as it is; None = `init`, the stage's starting "
            "model. SPRec's code takes the model before the round's SFT (`setdpo train "
            "selfplay --negatives-from previous`)."
        },
    )
    hard_temperature: float = field(
        default=1.0, metadata={"help": "Temperature of the hard-negative softmax."}
    )
    sft_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of an added NLL term (token-averaged) on the positives."},
    )
    share_prefix: bool = field(
        default=True, metadata={"help": "Score all candidates of a prompt with one prompt pass."}
    )
    precompute_ref: bool = field(
        default=False,
        metadata={
            "help": "Score every train and valid candidate under the reference before the first "
            "step. Off: each candidate is scored when a batch first needs it. Both memoise the "
            "log-probs in the SFT run directory."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Set the model's dropout to 0 (LoRA dropout excepted): with dropout the "
            "policy (train mode) and the reference (eval mode) differ at the first step."
        },
    )
    average_logps: bool = field(
        default=False,
        metadata={
            "help": "Length-average candidate log-probs instead of summing (always on for a "
            "length-normalised objective: simpo)."
        },
    )
    chunk_size: int | None = field(
        default=None,
        metadata={"help": "Score at most this many candidates per forward pass (bounds memory)."},
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    eval_on_start: bool = field(
        default=True, metadata={"help": "Evaluate on the valid split before the first step."}
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many valid evaluations without a new best "
            "`metric_for_best_model` (default `eval_loss`; also `eval_reward_accuracy`, "
            "`eval_reward_margin`, `eval_nll`), then restore the best checkpoint. Needs "
            "eval_strategy `steps` (with eval_steps) or `epoch` and a valid split; sets "
            "load_best_model_at_end and save_strategy `best`. None = train the whole budget."
        },
    )

    def __post_init__(self) -> None:
        if not self.init:
            raise InputError("init (--init) is required: the SFT run directory")
        try:
            self.loss = canonical_name(self.loss)
        except (KeyError, ValueError) as err:
            raise InputError(f"unknown loss {self.loss!r}: {err}") from err
        if self.beta <= 0:
            raise InputError(f"beta must be > 0, got {self.beta}")
        if not math.isfinite(self.simpo_gamma) or self.simpo_gamma < 0:
            raise InputError(f"simpo_gamma must be a finite number >= 0, got {self.simpo_gamma}")
        for name in ("dynamicpo_margin", "recpo_lambda"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.dynamicpo_alpha < 1:  # NaN fails too
            raise InputError(f"dynamicpo_alpha must be >= 0 and < 1, got {self.dynamicpo_alpha}")
        if OBJECTIVES[self.loss].length_normalized:
            self.average_logps = True
        if self.num_negatives < 0:
            raise InputError(f"num_negatives must be >= 0 (0 = all), got {self.num_negatives}")
        if self.negatives_from is not None and self.negatives != "self":
            raise InputError(
                f"negatives_from names the model of negatives: self, and negatives is "
                f"{self.negatives!r}"
            )
        if self.hard_temperature <= 0:
            raise InputError(f"hard_temperature must be > 0, got {self.hard_temperature}")
        try:
            self.scoring_options()
        except ValueError as err:
            raise InputError(str(err)) from err
        if self.sft_weight < 0:
            raise InputError(f"sft_weight must be >= 0, got {self.sft_weight}")
        early_stopping.configure(self)
        super().__post_init__()

    def scoring_options(self) -> ScoringOptions:
        """How the policy, the reference and hard or self negatives score candidates."""
        return ScoringOptions(self.share_prefix, self.average_logps, self.chunk_size)

    def loss_options(self) -> dict[str, float]:
        """The objective's options (its entry's `options`), as `losses.compute` takes them."""
        return {name: getattr(self, name) for name in OBJECTIVES[self.loss].options}


def load_config(
    cls: type[_SetdpoArguments],
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Build `cls` from a YAML file (optional) with `overrides` taking precedence
    (`setdpo.protocol.load_config`, reading the `sft` or `pref` section of a protocol file)."""
    section = "sft" if issubclass(cls, SFTConfig) else "pref"
    return protocol.load_config(cls, section, config_file, overrides)


def write_resolved_config(config: _SetdpoArguments, run_dir: str | Path) -> Path:
    """Write `config` as `run_dir/resolved_config.yaml` atomically; `load_config` reads it back.
    Paths (``data``, ``init``, ``output_dir``, a local ``model``) are written relative to
    ``run_dir`` (`setdpo.paths`): the run works from any folder and after a move."""
    values = store_fields(config.to_dict(), run_dir)
    # Fields that TrainingArguments fills in from others would not round-trip as set values.
    for name in ("logging_dir",):
        values.pop(name, None)
    text = yaml.safe_dump(values, sort_keys=True)
    return atomic_write_text(Path(run_dir) / RESOLVED_CONFIG, text)
