"""The main job (`setdpo quickstart`, `make demo`): raw data -> SFT -> every objective -> report.

Two tiers run the same stages on the same prepared data (ML-100K `next-k`, k = 3: three
positives per context, so Mult-DPO is not S-DPO), the same test contexts and candidates:

- ``lab``: a small Llama trained from scratch on the catalog (`setdpo.model.lab`) with full
  fine-tuning. Not a pretrained LLM: a fast instrument on which the objectives' effects show
  within CPU minutes.
- ``llm``: the embedded SmolLM2-135M-Instruct (or any model given as ``llm_model``) with
  LoRA, at the budget the machine allows.

Layout of the run directory (default ``runs/quickstart``)::

    data/                       prepared data (setdpo data prepare)
    <tier>/runs/sft/            the tier's SFT run
    <tier>/runs/<objective>/    one preference run per objective, initialised from sft
    <tier>/eval/<name>.json     test results: random, popularity, sasrec, base, sft, objectives
    <tier>/comparison.md  <tier>/plots/*.png  <tier>/report.md
    stages/<stage>.json         the configuration each finished stage ran with
    logs/<tier>.log             output of a tier run in a second process (``jobs`` = 2)
    report.md                   both tiers' reports

A stage whose recorded configuration equals the current one and whose output exists is
reused (``fresh=True`` re-runs everything), so re-running after an interruption continues
where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from setdpo.atomic import atomic_write_json, atomic_write_text
from setdpo.errors import InputError

TIERS = ("lab", "llm")
BASELINE_MODELS = ["random", "popularity", "sasrec"]
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


@dataclass(frozen=True)
class Budget:
    """Data sizes shared by the tiers, and each tier's budget."""

    test_examples: int
    tiers: dict[str, TierBudget]
    note: str


# The lab tier's CPU settings (docs/training.md, "The lab model": AdamW 2e-3 with warm-up,
# batch 32, clip 1.0; alignment at 1e-4, batch 16, all 17 negatives) and the llm tier's
# (S-DPO's LoRA setting: 3 negatives). Budgets change sizes and steps only.
LAB = TierBudget(
    train_examples=None,
    test_examples=None,
    sft_steps=180,
    pref_steps=24,
    sft_batch=32,
    pref_batch=16,
    sft_lr=2e-3,
    pref_lr=1e-4,
    peft="none",
    num_negatives=0,
    valid_examples=64,
    warmup_steps=50,
    max_prompt_length=256,
)
LLM = TierBudget(
    train_examples=48,
    test_examples=40,
    sft_steps=12,
    pref_steps=12,
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
        note="CPU, lab tier measured at 23 minutes on 2 cores",
        tiers={
            "lab": replace(LAB, sft_steps=1200, pref_steps=120, valid_examples=200),
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
    """Canonical objective names; empty means every objective that the data mode allows."""
    from setdpo.losses import OBJECTIVES, canonical_name

    binary = [name for name, entry in OBJECTIVES.items() if not entry.multi_level]
    levelled = [name for name, entry in OBJECTIVES.items() if entry.multi_level]
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
        default="lab", metadata={"help": "model of the lab tier (full fine-tuning)"}
    )
    llm_model: str = field(
        default="embedded:smollm2-135m", metadata={"help": "model of the llm tier (LoRA)"}
    )
    losses: list[str] = field(
        default_factory=list,
        metadata={
            "help": "objectives to align with (default: every objective of setdpo.losses, the "
            "multi-level ones only in levels mode)"
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
    jobs: int = field(default=2, metadata={"help": "1: tiers in turn; 2: in two processes"})
    fresh: bool = field(default=False, metadata={"help": "re-run stages already finished"})

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise InputError(f"budget {self.budget!r} is not one of {list(BUDGETS)}")
        unknown = set(self.tiers) - set(TIERS)
        if unknown or not self.tiers or len(set(self.tiers)) != len(self.tiers):
            raise InputError(f"tiers must be distinct names from {list(TIERS)}, got {self.tiers}")
        if self.jobs not in (1, 2):
            raise InputError(f"jobs must be 1 or 2 (one process per tier), got {self.jobs}")
        try:
            self.losses = _objectives(self.losses, self.mode)
            self.llm_losses = _objectives(self.llm_losses, self.mode)
        except ValueError as err:
            raise InputError(str(err)) from err
        for name in ("losses", "llm_losses"):
            names = getattr(self, name)
            if len(set(names)) != len(names) or not names:
                raise InputError(f"{name} must be distinct and non-empty, got {names}")

    def tier_model(self, tier: str) -> str:
        return self.lab_model if tier == "lab" else self.llm_model

    def tier_losses(self, tier: str) -> list[str]:
        return self.losses if tier == "lab" else self.llm_losses


class Stages:
    """Runs each stage unless it already finished here with the same configuration.

    A stage's record holds its settings, the records of the stages it depends on and when it
    finished; a stage that re-runs thereby invalidates every stage downstream of it.
    """

    def __init__(self, run_dir: Path, fresh: bool) -> None:
        self.dir = run_dir / "stages"
        self.fresh = fresh
        self.dir.mkdir(parents=True, exist_ok=True)

    def record(self, name: str) -> dict[str, Any]:
        path = self.dir / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def run(
        self,
        name: str,
        settings: dict[str, Any],
        output: Path,
        work: Callable[[], Any],
        after: list[str] = (),
    ) -> Path:
        wanted = {
            "settings": json.loads(json.dumps(settings, default=str)),
            "after": {up: self.record(up).get("finished") for up in after},
        }
        previous = self.record(name)
        if not self.fresh and output.exists() and previous.get("key") == wanted:
            print(f"[quickstart] {name}: reusing {output}", flush=True)
            return output
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        start = time.perf_counter()
        print(f"[quickstart] {name}: running", flush=True)
        work()
        done = {"key": wanted, "finished": time.time(), "seconds": time.perf_counter() - start}
        atomic_write_json(self.dir / f"{name}.json", done)
        print(f"[quickstart] {name}: done in {done['seconds']:.0f} s -> {output}", flush=True)
        return output


def _prepare_settings(config: QuickstartConfig, data_dir: Path) -> dict[str, Any]:
    budget = BUDGETS[config.budget]
    caps = {
        "valid": max(budget.tiers[t].valid_examples for t in config.tiers),
        "test": budget.test_examples,
    }
    train_caps = [budget.tiers[t].train_examples for t in config.tiers]
    if None not in train_caps:
        caps["train"] = max(train_caps)
    return {
        "source": config.source,
        "mode": config.mode,
        **({"k": K_POSITIVES} if config.mode == "next-k" else {}),
        "template": "open",
        "candidates": 20,
        "seed": config.seed,
        "out": str(data_dir),
        "max_examples_per_split": caps,
    }


def _train_settings(
    config: QuickstartConfig, tier: str, data_dir: Path, out: Path, stage: str
) -> dict[str, Any]:
    budget = BUDGETS[config.budget]
    tb = budget.tiers[tier]
    steps = tb.sft_steps if stage == "sft" else tb.pref_steps
    return {
        "data": str(data_dir),
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": tb.sft_batch if stage == "sft" else tb.pref_batch,
        "learning_rate": tb.sft_lr if stage == "sft" else tb.pref_lr,
        "warmup_steps": tb.warmup_steps if stage == "sft" else 0,
        "max_grad_norm": 1.0,
        "peft": tb.peft,
        "max_train_examples": tb.train_examples,
        "max_prompt_length": tb.max_prompt_length,
        "max_eval_examples": tb.valid_examples,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": max(1, (steps if steps > 0 else 100) // 20),
        "seed": config.seed,
        "report_to": "none",
        "disable_tqdm": False,
    }


def _eval_settings(
    config: QuickstartConfig, tier: str, data_dir: Path, model: str
) -> dict[str, Any]:
    tb = BUDGETS[config.budget].tiers[tier]
    return {
        "model": model,
        "data": str(data_dir),
        "split": "test",
        "limit": tb.test_examples,
        "max_prompt_length": tb.max_prompt_length,
        "seed": config.seed,
    }


def run_tier(config: QuickstartConfig, tier: str, stages: Stages, data_dir: Path) -> Path:
    """SFT, every objective and every evaluation of one tier; returns the tier's report."""
    from setdpo.report import build_report
    from setdpo.training import PrefConfig, SFTConfig, load_config, train_pref, train_sft

    tier_dir = Path(config.out) / tier
    sft_dir = tier_dir / "runs" / "sft"
    sft = {
        **_train_settings(config, tier, data_dir, sft_dir, "sft"),
        "model": config.tier_model(tier),
    }
    stages.run(
        f"{tier}-sft",
        sft,
        sft_dir,
        lambda: train_sft(load_config(SFTConfig, overrides=sft)),
        ["data"],
    )
    for loss in config.tier_losses(tier):
        out = tier_dir / "runs" / loss
        pref = {
            **_train_settings(config, tier, data_dir, out, "pref"),
            "init": str(sft_dir),
            "loss": loss,
            "num_negatives": BUDGETS[config.budget].tiers[tier].num_negatives,
        }
        stages.run(
            f"{tier}-{loss}",
            pref,
            out,
            lambda p=pref: train_pref(load_config(PrefConfig, overrides=p)),
            [f"{tier}-sft"],
        )
    evaluate_tier(config, tier, stages, data_dir)
    return build_report(tier_dir, title=f"{tier} tier: {TIER_TITLES[tier](config)}")


def evaluate_tier(
    config: QuickstartConfig,
    tier: str,
    stages: Stages,
    data_dir: Path,
    names: list[str] | None = None,
) -> None:
    """Evaluate the tier's baselines and models (or only ``names``) on its test contexts."""
    from setdpo.evaluation.evaluate import EvalConfig, evaluate

    tier_dir = Path(config.out) / tier
    # name -> (model, the stage whose output it evaluates)
    models = {name: (name, "data") for name in BASELINE_MODELS}
    models["base"] = (config.tier_model(tier), "data")
    models["sft"] = (str(tier_dir / "runs" / "sft"), f"{tier}-sft")
    for loss in config.tier_losses(tier):
        models[loss] = (str(tier_dir / "runs" / loss), f"{tier}-{loss}")
    for name in names or list(models):
        model, upstream = models[name]
        settings = _eval_settings(config, tier, data_dir, model)
        out = tier_dir / "eval" / f"{name}.json"
        work = lambda s=settings, o=out: evaluate(EvalConfig(**s)).write(o)  # noqa: E731
        stages.run(f"{tier}-eval-{name}", settings, out, work, [upstream])


TIER_NOTES = [
    "- The **lab** tier is a small language model over the catalog (a 4-layer Llama of 5.5M "
    "parameters with a tokenizer fitted to the training prompts and titles), trained from "
    "scratch: not a pretrained LLM, a fast instrument on which the objectives' effects show "
    "within CPU minutes.",
    "- The **llm** tier runs the same stages on a pretrained model with LoRA. On a CPU its "
    "budget is a few dozen examples, which moves a 135M model by no more than its noise: read "
    "its table as the pipeline working; `--budget full` on a GPU is the measurement.",
]

TIER_TITLES: dict[str, Callable[[QuickstartConfig], str]] = {
    "lab": lambda c: (
        f"`{c.lab_model}`, a small language model over the catalog trained from "
        "scratch (not a pretrained LLM), full fine-tuning"
    ),
    "llm": lambda c: f"`{c.llm_model}`, pretrained, LoRA",
}


def _tier_process(config: QuickstartConfig, first: str, tier: str, log_path: str) -> None:
    """Entry of the second process: one torch thread, output to the tier's log file.

    It evaluates the ``first`` tier's baselines before running its own ``tier``, so that the
    first process (training its models meanwhile) finds them done, SASRec's training included.
    """
    import torch

    torch.set_num_threads(1)
    with open(log_path, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        run_dir = Path(config.out)
        stages = Stages(run_dir, fresh=False)
        evaluate_tier(config, first, stages, run_dir / "data", BASELINE_MODELS)
        run_tier(config, tier, stages, run_dir / "data")


def _run_tiers(config: QuickstartConfig, stages: Stages, data_dir: Path) -> None:
    """The tiers one after the other (``jobs`` 1), or the second one in a second process."""
    import torch

    if config.jobs == 1 or len(config.tiers) == 1:
        for tier in config.tiers:
            run_tier(config, tier, stages, data_dir)
        return
    first, second = config.tiers
    log = Path(config.out) / "logs" / f"{second}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[quickstart] {second} tier: running in a second process, log {log}", flush=True)
    # fresh is spent here: a re-run data stage already invalidates every later stage.
    child = multiprocessing.get_context("spawn").Process(
        target=_tier_process, args=(replace(config, fresh=False), first, second, str(log))
    )
    child.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_tier(config, first, stages, data_dir)
    finally:
        torch.set_num_threads(threads)
        child.join()
    if child.exitcode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-30:])
        raise RuntimeError(f"the {second} tier failed (exit {child.exitcode}); log {log}:\n{tail}")


def run_quickstart(config: QuickstartConfig) -> Path:
    """Run every stage (reusing finished ones), print the comparisons, return report.md."""
    from setdpo.data import prepare
    from setdpo.data.config import PrepareConfig

    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages(run_dir, config.fresh)
    atomic_write_json(run_dir / "quickstart.json", asdict(config))
    data_dir = run_dir / "data"
    data_settings = _prepare_settings(config, data_dir)
    stages.run("data", data_settings, data_dir, lambda: prepare(PrepareConfig(**data_settings)))
    _run_tiers(config, stages, data_dir)

    sections = [
        "# setdpo quickstart",
        "",
        *TIER_NOTES,
        "",
        f"Budget `{config.budget}` ({BUDGETS[config.budget].note}); data `{config.source}` "
        f"`{config.mode}`, open prompt, 20 candidates. Each tier's models are scored on the "
        "same test contexts and candidates; differences are paired, against the tier's SFT.",
        "",
    ]
    for tier in config.tiers:
        table = (run_dir / tier / "comparison.md").read_text(encoding="utf-8")
        print(f"\n## {tier} tier\n\n{table}", flush=True)
        body = (run_dir / tier / "report.md").read_text(encoding="utf-8")
        # one heading level down, and plots linked from the run directory
        body = body.replace("](plots/", f"]({tier}/plots/")
        sections += ["#" + line if line.startswith("#") else line for line in body.splitlines()]
    report = atomic_write_text(run_dir / "report.md", "\n".join(sections))
    print(f"[quickstart] report: {report}")
    return report
