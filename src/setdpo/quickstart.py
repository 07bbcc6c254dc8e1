"""The main job (`setdpo quickstart`, `make demo`): raw data -> SFT -> alignment -> report.

Layout of the run directory (default ``runs/quickstart``)::

    data/                 prepared ML-100K (setdpo data prepare)
    runs/sft/             the SFT run (adapter, resolved_config.yaml, trainer_state.json)
    runs/<objective>/     one preference run per objective, initialised from runs/sft
    eval/<name>.json      test-split results: random, popularity, base, sft, each objective
    stages/<stage>.json   the configuration each finished stage ran with
    comparison.md  plots/*.png  report.md

A stage whose recorded configuration equals the current one and whose output exists is
reused (``fresh=True`` re-runs everything), so re-running after an interruption continues
where it stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from setdpo.atomic import atomic_write_json
from setdpo.errors import InputError

# Sizes per budget. "small" is measured to finish in under 20 minutes on a 2-core CPU with
# the embedded SmolLM2 (benchmarks/RESULTS.md); "full" is the S-DPO protocol for a GPU.
BUDGETS: dict[str, dict[str, Any]] = {
    "small": {
        "train_examples": 48,
        "valid_examples": 8,
        "test_examples": 40,
        "sft_steps": 12,
        "pref_steps": 12,
        "batch_size": 4,
        "grad_accum": 1,
        "max_prompt_length": 320,
    },
    # seconds on a CPU with `--model tiny`: for tests and smoke runs, not for results
    "smoke": {
        "train_examples": 32,
        "valid_examples": 8,
        "test_examples": 16,
        "sft_steps": 4,
        "pref_steps": 4,
        "batch_size": 4,
        "grad_accum": 1,
        "max_prompt_length": 256,
    },
    "full": {
        "train_examples": None,
        "valid_examples": 500,
        "test_examples": None,
        "sft_steps": -1,
        "pref_steps": -1,
        "batch_size": 8,
        "grad_accum": 16,
        "max_prompt_length": 1024,
    },
}
BASELINE_MODELS = ["random", "popularity"]


@dataclass
class QuickstartConfig:
    """What `setdpo quickstart` runs; every field is a command-line option."""

    out: str = field(default="runs/quickstart", metadata={"help": "run directory"})
    model: str = field(default="embedded:smollm2-135m", metadata={"help": "base model"})
    losses: list[str] = field(
        default_factory=lambda: ["dpo", "sdpo", "mult"],
        metadata={"help": "objectives to align with (any of dpo dmpo sdpo mult mult2 pl)"},
    )
    budget: str = field(default="small", metadata={"help": "small (CPU) | full (GPU)"})
    source: str = field(default="ml-100k", metadata={"help": "data source"})
    mode: str = field(
        default="next", metadata={"help": "data mode: next | next-k | rated | levels"}
    )
    seed: int = field(default=0, metadata={"help": "seed of data, training and bootstrap"})
    fresh: bool = field(default=False, metadata={"help": "re-run stages already finished"})

    def __post_init__(self) -> None:
        from setdpo.losses import canonical_name

        if self.budget not in BUDGETS:
            raise InputError(f"budget {self.budget!r} is not one of {list(BUDGETS)}")
        try:
            self.losses = [canonical_name(name) for name in self.losses]
        except ValueError as err:
            raise InputError(str(err)) from err
        if len(set(self.losses)) != len(self.losses) or not self.losses:
            raise InputError(f"losses must be distinct and non-empty, got {self.losses}")


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
        self, name: str, settings: dict[str, Any], output: Path, work: Any, after: list[str] = ()
    ) -> Path:
        wanted = {
            "settings": json.loads(json.dumps(settings, default=str)),
            "after": {up: self.record(up).get("finished") for up in after},
        }
        previous = self.record(name)
        if not self.fresh and output.exists() and previous.get("key") == wanted:
            print(f"[quickstart] {name}: reusing {output}")
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
        "train": budget["train_examples"],
        "valid": budget["valid_examples"],
        "test": budget["test_examples"],
    }
    return {
        "source": config.source,
        "mode": config.mode,
        "candidates": 20,
        "seed": config.seed,
        "out": str(data_dir),
        "max_examples_per_split": {k: v for k, v in caps.items() if v is not None} or None,
    }


def _train_settings(config: QuickstartConfig, data_dir: Path, out: Path, steps: int) -> dict:
    budget = BUDGETS[config.budget]
    return {
        "data": str(data_dir),
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": budget["batch_size"],
        "gradient_accumulation_steps": budget["grad_accum"],
        "max_prompt_length": budget["max_prompt_length"],
        "max_eval_examples": budget["valid_examples"],
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": max(1, (steps if steps > 0 else 100) // 12),
        "seed": config.seed,
        "report_to": "none",
        "disable_tqdm": False,
    }


def run_quickstart(config: QuickstartConfig) -> Path:
    """Run every stage (reusing finished ones), print the comparison, return report.md."""
    from setdpo.data import prepare
    from setdpo.data.config import PrepareConfig
    from setdpo.evaluation.evaluate import EvalConfig, evaluate
    from setdpo.report import build_report
    from setdpo.training import PrefConfig, SFTConfig, load_config, train_pref, train_sft

    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages(run_dir, config.fresh)
    atomic_write_json(run_dir / "quickstart.json", asdict(config))
    budget = BUDGETS[config.budget]
    data_dir = run_dir / "data"

    data_settings = _prepare_settings(config, data_dir)
    stages.run("data", data_settings, data_dir, lambda: prepare(PrepareConfig(**data_settings)))

    sft_dir = run_dir / "runs" / "sft"
    sft = {**_train_settings(config, data_dir, sft_dir, budget["sft_steps"]), "model": config.model}
    stages.run(
        "sft", sft, sft_dir, lambda: train_sft(load_config(SFTConfig, overrides=sft)), ["data"]
    )

    for loss in config.losses:
        out = run_dir / "runs" / loss
        pref = {
            **_train_settings(config, data_dir, out, budget["pref_steps"]),
            "init": str(sft_dir),
            "loss": loss,
        }
        stages.run(
            loss,
            pref,
            out,
            lambda p=pref: train_pref(load_config(PrefConfig, overrides=p)),
            ["sft"],
        )

    # name -> (model, the stage whose output it evaluates)
    models = {name: (name, "data") for name in [*BASELINE_MODELS, "base"]}
    models["base"] = (config.model, "data")
    models["sft"] = (str(sft_dir), "sft")
    models |= {loss: (str(run_dir / "runs" / loss), loss) for loss in config.losses}
    for name, (model, upstream) in models.items():
        settings = {
            "model": model,
            "data": str(data_dir),
            "split": "test",
            "max_prompt_length": budget["max_prompt_length"],
            "seed": config.seed,
        }
        out = run_dir / "eval" / f"{name}.json"
        work = lambda s=settings, o=out: atomic_write_json(o, evaluate(EvalConfig(**s)))  # noqa: E731
        stages.run(f"eval-{name}", settings, out, work, [upstream])

    report = build_report(run_dir)
    print((run_dir / "comparison.md").read_text(encoding="utf-8"))
    print(f"[quickstart] report: {report}")
    return report
