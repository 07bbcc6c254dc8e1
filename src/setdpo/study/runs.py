"""Each preference run of a study at its chosen step, and its valid curve.

The chosen step is the step whose weights the run holds: under early stopping the restored
best checkpoint (`best` in ``setdpo_model.json``: step, metric, value;
`setdpo.training.early_stopping`), else the last step. Read from the run's files only:

    setdpo_model.json    "best": {"step", "metric", "value"} (early-stopped runs)
    trainer_state.json   global_step, max_steps (the cap) and log_history

``log_history`` holds, in order: the valid evaluation before the first step (step 0, the SFT
model: on the curve, never a best), training entries (``loss``, ``reward_margin``,
``reward_accuracy``, ``reward_positive``, ``reward_negative``; ``a_over_b``, ``bound_gap``,
``bound_gap_max`` for mult/mult2; ``nll`` with ``sft_weight``; each a mean over the
``logging_steps`` steps before it) and valid evaluations every ``eval_steps`` (the same keys
as ``eval_*``, on the whole valid sample), then the entry closing training (``train_runtime``)
and one more valid evaluation of the weights the run ends with (at the last step: the
restored best's values under early stopping, else the last step's).

The numbers at the chosen step come from the valid evaluation logged at that step (the one
during training when there are two) when there is one, else from the last training entry
up to it; ``source`` says which.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from setdpo.study.plan import Plan

# Logged keys reported at the chosen step (`setdpo.losses`: A/B and the gap for mult/mult2).
RUN_KEYS = ("reward_margin", "reward_accuracy", "a_over_b", "bound_gap")
DEFAULT_METRIC = "eval_loss"  # a run without early stopping: the Trainer's own valid metric


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _is_eval(entry: dict[str, Any]) -> bool:
    return any(key.startswith("eval_") for key in entry)


def _training_end(history: list[dict[str, Any]]) -> int:
    """Index of the entry closing training (``train_runtime``); len(history) without one."""
    return next((i for i, e in enumerate(history) if "train_runtime" in e), len(history))


def valid_curve(
    history: list[dict[str, Any]], metric: str, restored: bool
) -> tuple[list[int], list[float]]:
    """(steps, values) of ``metric`` over the valid evaluations of the training trajectory:
    those during training, plus the one after it when the run did not restore another
    step's weights and no evaluation during training was at that step already."""
    end = _training_end(history)
    points = [(e["step"], e[metric]) for e in history[:end] if _is_eval(e) and metric in e]
    after = [(e["step"], e[metric]) for e in history[end:] if _is_eval(e) and metric in e]
    if after and not restored and after[0][0] not in {s for s, _ in points}:
        points.append(after[0])
    return [s for s, _ in points], [v for _, v in points]


def _entry_at(history: list[dict[str, Any]], step: int) -> tuple[str, dict[str, Any] | None]:
    """The entry the chosen step's numbers come from: ("valid", the first valid evaluation
    logged at ``step``), else ("train", the last training entry up to it)."""
    end = _training_end(history)
    evals = [e for e in history[:end] + history[end:] if _is_eval(e) and e.get("step") == step]
    if evals:
        return "valid", evals[0]
    train = [e for e in history[:end] if "loss" in e and e.get("step", 0) <= step]
    return "train", (train[-1] if train else None)


def chosen_point(run_dir: Path) -> dict[str, Any] | None:
    """A finished preference run at its chosen step (the module docstring); None without
    ``trainer_state.json``."""
    state = _read(run_dir / "trainer_state.json")
    if not state:
        return None
    best = _read(run_dir / "setdpo_model.json").get("best")
    history = state.get("log_history", [])
    last, cap = state.get("global_step", 0), state.get("max_steps")
    step = best["step"] if best else last
    source, entry = _entry_at(history, step)
    prefix = "eval_" if source == "valid" else ""
    values = {k: (entry or {}).get(prefix + k) for k in RUN_KEYS}
    metric = best["metric"] if best else DEFAULT_METRIC
    if best:
        value = best["value"]
    else:
        value = (entry or {}).get(metric) if source == "valid" else None
    steps, curve = valid_curve(history, metric, restored=best is not None)
    return {
        "chosen_step": step,
        "best": best is not None,
        "last_step": last,
        "max_steps": cap,
        "stopped_early": best is not None and cap is not None and last < cap,
        "metric": metric,
        "metric_value": value,
        "source": source,
        "source_step": None if entry is None else entry.get("step"),
        **values,
        "curve": {"step": steps, "value": curve},
    }


def pref_runs(plan: Plan) -> list[dict[str, Any]]:
    """Every finished preference run of the study at its chosen step, by setting, objective
    (grid order) and seed."""
    rows = []
    for setting in plan.settings():
        cells = [c for c in plan.cells if c.setting == setting]
        for objective in plan.objectives:
            for cell in sorted(cells, key=lambda c: c.seed):
                if objective not in cell.prefs:
                    continue
                run = plan.stages[cell.prefs[objective]].output
                point = chosen_point(run) if (run / "setdpo_model.json").is_file() else None
                if point is not None:
                    where = {"run": str(run.relative_to(plan.out))}
                    head = {"setting": dict(setting), "objective": objective, "seed": cell.seed}
                    rows.append({**head, **where, **point})
    return rows


def trained_steps(run_dir: Path) -> int | None:
    """The optimisation steps a training run took (``global_step``); None if unknown."""
    return _read(run_dir / "trainer_state.json").get("global_step")
