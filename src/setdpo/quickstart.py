"""The main job (`setdpo quickstart`, `make demo`): a study configuration over two tiers.

The quickstart is a study (`setdpo.study`) with one seed and a ``tier`` axis: both tiers run
the same stages on the same prepared data (ML-100K `next-k`, k = 3: three positives per
context, so Mult-DPO is not S-DPO), each scored on its own seeded set of test contexts:

- ``lab``: a small Llama trained from scratch on the catalog (`setdpo.model.lab`) with full
  fine-tuning. Not a pretrained LLM: a fast instrument on which the objectives' effects show
  within CPU minutes.
- ``llm``: the embedded SmolLM2-135M-Instruct (or any model given as ``llm_model``) with
  LoRA, at the budget the machine allows.

`quickstart_study` turns a budget into that study's configuration; the run directory (default
``runs/quickstart``) is a study directory (layout in `setdpo.study.plan`), so finished stages
are reused, an interrupted run resumes, ``setdpo study report DIR`` rebuilds the report and
``setdpo study --config DIR/study.yaml --out DIR --print-commands`` lists every command.
``jobs`` stages run at a time, one torch thread each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from setdpo.atomic import atomic_write_json
from setdpo.errors import InputError

TIERS = ("lab", "llm")
BASELINE_MODELS = ["random", "popularity", "sasrec", "base"]
K_POSITIVES = 3


@dataclass(frozen=True)
class TierBudget:
    """How far one tier trains and on how many contexts it is measured."""

    train_examples: int | None  # None = the whole training split
    test_examples: int | None  # contexts evaluated (a seeded subset); None = all prepared
    sft_steps: int
    pref_steps: int
    sft_batch: int
    pref_batch: int
    sft_lr: float
    pref_lr: float
    peft: str  # "lora" | "none" (full fine-tuning)
    num_negatives: int  # negatives per preference step (0 = all 17)
    valid_examples: int  # valid contexts of the preference stages' loss before and after
    warmup_steps: int = 0
    max_prompt_length: int = 320
    sft_targets: str = "answer"  # SFTConfig.targets: answer | sequence (every prompt token too)
    items_as: str = "titles"  # the data's item representation (setdpo.items)
    item_init: str = "default"  # SFTConfig.item_init: default | sasrec


@dataclass(frozen=True)
class Budget:
    """Data sizes shared by the tiers, and each tier's budget."""

    test_examples: int
    tiers: dict[str, TierBudget]
    note: str


# The lab tier's CPU settings (docs/training.md, "The lab model": 2 layers, items as one
# token each, started from the data's SASRec baseline, SFT on every token of the sequence
# with AdamW 1e-3 with warm-up, batch 32, clip 1.0; alignment at 1e-4, batch 16, all 17
# negatives; chosen by configs/studies/lab_instrument.yaml) and the llm tier's (S-DPO's
# LoRA setting: 3 negatives, titles). Budgets change sizes and steps only.
LAB_MODEL = "lab:layers=2"
LAB = TierBudget(
    train_examples=None,
    test_examples=None,
    sft_steps=1000,
    pref_steps=24,
    sft_batch=32,
    pref_batch=16,
    sft_lr=1e-3,
    pref_lr=1e-4,
    peft="none",
    num_negatives=0,
    valid_examples=64,
    warmup_steps=50,
    max_prompt_length=256,
    sft_targets="sequence",
    items_as="tokens",
    item_init="sasrec",
)
LLM = TierBudget(
    train_examples=48,
    test_examples=24,
    sft_steps=12,
    pref_steps=8,
    sft_batch=4,
    pref_batch=4,
    sft_lr=2e-4,
    pref_lr=2e-4,
    peft="lora",
    num_negatives=3,
    valid_examples=8,
    max_prompt_length=320,
)

# Step counts and sizes of "small" are measured (benchmarks/RESULTS.md, "Quickstart").
BUDGETS: dict[str, Budget] = {
    "small": Budget(
        test_examples=600,
        note="CPU, under 20 minutes on 2 cores from a fresh clone (tiers in parallel)",
        tiers={"lab": LAB, "llm": LLM},
    ),
    "medium": Budget(
        test_examples=2000,
        note="CPU, lab tier about 30 minutes on 2 cores (estimated from the small budget's steps)",
        tiers={
            "lab": replace(LAB, sft_steps=2500, pref_steps=120, valid_examples=200),
            "llm": replace(
                LLM,
                train_examples=200,
                test_examples=100,
                sft_steps=50,
                pref_steps=50,
                valid_examples=16,
            ),
        },
    ),
    # seconds on a CPU: for tests and smoke runs, not for results
    "smoke": Budget(
        test_examples=16,
        note="seconds: tests and smoke runs, not results",
        tiers={
            "lab": replace(
                LAB,
                train_examples=32,
                sft_steps=4,
                pref_steps=4,
                sft_batch=4,
                pref_batch=4,
                valid_examples=8,
                warmup_steps=0,
            ),
            "llm": replace(
                LLM,
                train_examples=32,
                test_examples=12,
                sft_steps=4,
                pref_steps=4,
                max_prompt_length=256,
            ),
        },
    ),
    # the S-DPO protocol's sizes, for a GPU
    "full": Budget(
        test_examples=10_000,
        note="GPU: whole training split, S-DPO's effective batch of 128",
        tiers={
            "lab": replace(
                LAB,
                sft_steps=20_000,
                pref_steps=3000,
                sft_batch=64,
                pref_batch=32,
                valid_examples=500,
                warmup_steps=100,
            ),
            "llm": replace(
                LLM,
                train_examples=None,
                test_examples=None,
                sft_steps=-1,
                pref_steps=-1,
                sft_batch=128,
                pref_batch=128,
                sft_lr=1e-4,
                pref_lr=1e-5,
                valid_examples=500,
                max_prompt_length=1024,
            ),
        },
    ),
}


def _objectives(names: list[str], mode: str) -> list[str]:
    """Canonical objective names; empty means every objective of the quickstart's defaults
    (`ObjectiveEntry.quickstart`) that the data mode allows."""
    from setdpo.losses import OBJECTIVES, canonical_name

    default = {name: entry for name, entry in OBJECTIVES.items() if entry.quickstart}
    binary = [name for name, entry in default.items() if not entry.multi_level]
    levelled = [name for name, entry in default.items() if entry.multi_level]
    names = names or binary + (levelled if mode == "levels" else [])
    return [canonical_name(name) for name in names]


@dataclass
class QuickstartConfig:
    """What `setdpo quickstart` runs; every field is a command-line option."""

    out: str = field(default="runs/quickstart", metadata={"help": "run directory"})
    tiers: list[str] = field(
        default_factory=lambda: list(TIERS),
        metadata={"help": "lab (small model from scratch) and/or llm (pretrained, LoRA)"},
    )
    lab_model: str = field(
        default=LAB_MODEL, metadata={"help": "model of the lab tier (full fine-tuning)"}
    )
    llm_model: str = field(
        default="embedded:smollm2-135m", metadata={"help": "model of the llm tier (LoRA)"}
    )
    losses: list[str] = field(
        default_factory=list,
        metadata={
            "help": "objectives to align with (default: dpo, dmpo, sdpo, mult and pl, plus "
            "mult2 in levels mode: the objectives of setdpo.losses marked for the quickstart)"
        },
    )
    llm_losses: list[str] = field(
        default_factory=lambda: ["sdpo", "mult"],
        metadata={"help": "objectives of the llm tier (a subset: it is the slow one)"},
    )
    budget: str = field(
        default="small",
        metadata={"help": "small (CPU) | medium (CPU, longer) | full (GPU) | smoke (tests)"},
    )
    source: str = field(default="ml-100k", metadata={"help": "data source"})
    mode: str = field(
        default="next-k", metadata={"help": "data mode: next | next-k | rated | levels"}
    )
    seed: int = field(default=0, metadata={"help": "seed of data, training and bootstrap"})
    jobs: int = field(default=2, metadata={"help": "stages run at a time (one thread each)"})
    fresh: bool = field(default=False, metadata={"help": "re-run stages already finished"})

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise InputError(f"budget {self.budget!r} is not one of {list(BUDGETS)}")
        unknown = set(self.tiers) - set(TIERS)
        if unknown or not self.tiers or len(set(self.tiers)) != len(self.tiers):
            raise InputError(f"tiers must be distinct names from {list(TIERS)}, got {self.tiers}")
        if self.jobs < 1:
            raise InputError(f"jobs must be >= 1, got {self.jobs}")
        for name in ("losses", "llm_losses"):
            try:
                setattr(self, name, _objectives(getattr(self, name), self.mode))
            except ValueError as err:
                raise InputError(f"{name}: {err}") from err
            names = getattr(self, name)
            if len(set(names)) != len(names) or not names:
                raise InputError(f"{name} must be distinct and non-empty, got {names}")

    def tier_model(self, tier: str) -> str:
        return self.lab_model if tier == "lab" else self.llm_model

    def tier_losses(self, tier: str) -> list[str]:
        return self.losses if tier == "lab" else self.llm_losses


TIER_NOTES = (
    "The **lab** tier is a small language model over the catalog (a 2-layer Llama of 2.7M "
    "parameters on ML-100K: one token per item, started from the SASRec baseline's item table "
    "as LLaRA feeds collaborative embeddings to an LLM, and a tokenizer fitted to the "
    "training prompts' text), trained from scratch on every token of its training sequences: "
    "not a pretrained LLM, a fast instrument on which the objectives' effects show within CPU "
    "minutes. The **llm** tier runs the same stages on a pretrained model with LoRA, items as "
    "titles; on a CPU its budget is a few dozen examples, which moves a 135M model by no more "
    "than its noise: read its table as the pipeline working; `--budget full` on a GPU is the "
    "measurement."
)


def _tier_bundle(budget: TierBudget, model: str) -> dict[str, Any]:
    """The fields one tier sets in the SFT, preference and evaluation sections."""

    def train(stage: str) -> dict[str, Any]:
        steps = budget.sft_steps if stage == "sft" else budget.pref_steps
        return {
            f"{stage}.max_steps": steps,
            f"{stage}.per_device_train_batch_size": budget.sft_batch
            if stage == "sft"
            else budget.pref_batch,
            f"{stage}.learning_rate": budget.sft_lr if stage == "sft" else budget.pref_lr,
            f"{stage}.warmup_steps": budget.warmup_steps if stage == "sft" else 0,
            f"{stage}.peft": budget.peft,
            f"{stage}.max_train_examples": budget.train_examples,
            f"{stage}.max_prompt_length": budget.max_prompt_length,
            f"{stage}.max_eval_examples": budget.valid_examples,
            f"{stage}.logging_steps": max(1, (steps if steps > 0 else 100) // 20),
        }

    return {
        "prepare.items_as": budget.items_as,
        "sft.model": model,
        "sft.targets": budget.sft_targets,
        "sft.item_init": budget.item_init,
        **train("sft"),
        **train("pref"),
        "pref.num_negatives": budget.num_negatives,
        "evaluate.limit": budget.test_examples,
        "evaluate.max_prompt_length": budget.max_prompt_length,
    }


def quickstart_study(config: QuickstartConfig) -> Any:
    """The `setdpo.study.StudyConfig` the quickstart runs."""
    from setdpo.study import StudyConfig

    budget = BUDGETS[config.budget]
    caps = {
        "valid": max(budget.tiers[t].valid_examples for t in config.tiers),
        "test": budget.test_examples,
    }
    train_caps = [budget.tiers[t].train_examples for t in config.tiers]
    if None not in train_caps:
        caps["train"] = max(train_caps)
    losses = list(dict.fromkeys(loss for t in config.tiers for loss in config.tier_losses(t)))
    training = {
        "max_grad_norm": 1.0,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": False,
    }
    return StudyConfig(
        description=f"setdpo quickstart, budget `{config.budget}` ({budget.note}); data "
        f"`{config.source}` `{config.mode}`, open prompt, 20 candidates",
        notes=TIER_NOTES,
        seeds=[config.seed],
        prepare={
            "source": config.source,
            "mode": config.mode,
            **({"k": K_POSITIVES} if config.mode == "next-k" else {}),
            "template": "open",
            "candidates": 20,
            "max_examples_per_split": caps,
        },
        sft=dict(training),
        pref=dict(training),
        evaluate={"split": "test"},
        grid={
            "tier": {t: _tier_bundle(budget.tiers[t], config.tier_model(t)) for t in config.tiers},
            "pref.loss": losses,
        },
        exclude=[
            {"tier": t, "loss": loss}
            for t in config.tiers
            for loss in losses
            if loss not in config.tier_losses(t)
        ],
        baselines=BASELINE_MODELS,
        metrics=["HR@1", "NDCG@5", "NDCG@10", "MRR"],
        compare_with=["sft"],
    )


def run_quickstart(config: QuickstartConfig) -> Path:
    """Run every stage (reusing finished ones), print the report, return report.md."""
    from setdpo.study import run_study

    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "quickstart.json", asdict(config))
    report = run_study(quickstart_study(config), run_dir, jobs=config.jobs, fresh=config.fresh)
    print(report.read_text(encoding="utf-8"), flush=True)
    print(f"[quickstart] report: {report}")
    return report
