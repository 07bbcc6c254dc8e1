"""The report of a study directory: tables with seed-and-context intervals, paired
comparisons with Holm's correction and minimal detectable differences, and plots.

Built from whatever evaluations exist (a study still running, or cut short, reports the
seeds it has, and says how many), reading only files the stages wrote:

    eval/<model>/<tag>.json         per-context metric values (setdpo evaluate)
    select/<tag>.json               a tuned study's choices (setdpo study select)
    runs/pref/<tag>/trainer_state.json   per-step logs (bound gap and A/B of mult runs),
                                    valid evaluations (each run's valid curve)
    runs/pref/<tag>/setdpo_model.json    the restored best step of an early-stopped run
    stages/<name>.json              each stage's seconds

Each preference run is also reported at its chosen step (`setdpo.study.runs`): the restored
best under early stopping, else the last step; its valid metric, reward margin, reward
accuracy, A/B and bound gap there (from the valid evaluation at that step when there is one,
else the last training log up to it; the table says which), and its valid curve is plotted
with that step marked.

Writes ``summary.json`` (every number of the report), ``report.md`` and ``plots/*.png``,
atomically.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from setdpo.atomic import atomic_write_json, atomic_write_text
from setdpo.errors import InputError
from setdpo.evaluation.metrics import GENERATION_METRICS
from setdpo.evaluation.results import ContextResult, load_results
from setdpo.study.checks import uses_import
from setdpo.study.plan import Cell, Plan, build_plan, load_study
from setdpo.study.plots import VALID_PLOT, log_history, series
from setdpo.study.runner import read_record
from setdpo.study.runs import RUN_KEYS, pref_runs, trained_steps
from setdpo.study.stats import holm, paired_difference, summarize_cell
from setdpo.study.tune import read_choice

Setting = tuple[tuple[str, str], ...]
BOUND_KEYS = ("bound_gap", "bound_gap_max", "a_over_b")


def setting_label(setting: Setting) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting) or "(one setting)"


def load_plan(study_dir: str | Path, name: str | None = None) -> Plan:
    """The plan of the study in ``study_dir`` (its files in ``study_dir/<name>`` if named)."""
    home = Path(study_dir) / name if name else Path(study_dir)
    if not (home / "study.yaml").is_file():
        raise InputError(f"{home}: no study.yaml: not a study directory")
    return build_plan(load_study(home / "study.yaml"), study_dir, name)


def _contexts(plan: Plan, cell: Cell, model: str) -> list[ContextResult] | None:
    path = plan.stages[cell.evals[model]].output
    return load_results(path).contexts if path.is_file() else None


def collect(plan: Plan) -> dict[Setting, dict[str, dict[int, list[ContextResult]]]]:
    """setting -> model -> seed -> the evaluated contexts (only the evaluations that exist)."""
    out: dict[Setting, dict[str, dict[int, list[ContextResult]]]] = defaultdict(dict)
    for cell in plan.cells:
        for model in cell.evals:
            contexts = _contexts(plan, cell, model)
            if contexts is not None:
                out[cell.setting].setdefault(model, {})[cell.seed] = contexts
    return out


def model_order(plan: Plan) -> list[str]:
    return [*plan.config.baselines, "sft", *plan.objectives]


def _column(contexts: list[ContextResult], metric: str) -> np.ndarray:
    return np.array([c.values[metric] for c in contexts], dtype=np.float64)


def _applies(per_seed: dict[int, list[ContextResult]], metric: str) -> bool:
    """Whether a model's evaluations hold ``metric``: a generation metric (`GenHR@1`) does
    not apply to a baseline that only scores candidates (its results have no answers)."""
    return metric not in GENERATION_METRICS or all(
        metric in c.values for contexts in per_seed.values() for c in contexts
    )


def _paired_columns(
    a: dict[int, list[ContextResult]], b: dict[int, list[ContextResult]], metric: str
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Per seed both models have: their values on the same contexts, in one order."""
    cols_a, cols_b, seeds = [], [], []
    for seed in sorted(set(a) & set(b)):
        by_id = {c.context_id: c for c in b[seed]}
        if set(by_id) != {c.context_id for c in a[seed]}:
            raise InputError(f"seed {seed}: the two evaluations hold different contexts")
        cols_a.append(_column(a[seed], metric))
        cols_b.append(np.array([by_id[c.context_id].values[metric] for c in a[seed]]))
        seeds.append(seed)
    return cols_a, cols_b, seeds


def comparisons(plan: Plan) -> list[tuple[str, str]]:
    """The family of comparisons at each setting: every pair of objectives (in grid order),
    then each objective against each of ``compare_with``."""
    pairs = list(itertools.combinations(plan.objectives, 2))
    pairs += [(obj, other) for obj in plan.objectives for other in plan.config.compare_with]
    return pairs


def summarize(plan: Plan) -> dict[str, Any]:
    """Every number of the report (written as summary.json)."""
    config = plan.config
    data = collect(plan)
    cells, pairs = [], []
    for setting in plan.settings():
        models = data.get(setting, {})
        for model in model_order(plan):
            if model not in models:
                continue
            seeds = sorted(models[model])
            row: dict[str, Any] = {"setting": dict(setting), "model": model, "seeds": seeds}
            for metric in config.metrics:
                if not _applies(models[model], metric):
                    row[metric] = None  # a generation metric of a model that cannot generate
                    continue
                cols = [_column(models[model][s], metric) for s in seeds]
                row[metric] = summarize_cell(cols, config.n_resamples, seed=0).to_dict()
            cells.append(row)
        for a, b in comparisons(plan):
            if a not in models or b not in models:
                continue
            cols_a, cols_b, seeds = _paired_columns(models[a], models[b], config.metric)
            if not seeds:
                continue
            diff = paired_difference(cols_a, cols_b, config.n_resamples, seed=0)
            pairs.append(
                {"setting": dict(setting), "a": a, "b": b, "seeds": seeds, **diff.to_dict()}
            )
    for pair, adjusted in zip(pairs, holm([p["p_value"] for p in pairs]), strict=True):
        pair["p_holm"] = adjusted
    return {
        "metric": config.metric,
        "seeds": config.seeds,
        "n_comparisons": len(pairs),
        "cells": cells,
        "pairs": pairs,
        "tuning": _tuning(plan),
        "agreement": _agreement(plan, data),
        "bound": _bound(plan),
        "times": _times(plan),
        "runs": pref_runs(plan),
    }


def _tuning(plan: Plan) -> list[dict[str, Any]]:
    """Per setting, objective and seed of a tuned study: the values chosen on the valid
    split, every combination's valid metric and the chosen run's test metric (None until
    its evaluation has finished)."""
    rows = []
    for cell in plan.cells:
        for objective, name in cell.prefs.items():
            stage = plan.stages[name]
            choice = read_choice(stage.settings["choice"]) if stage.kind == "select" else None
            if choice is None:
                continue
            test = _contexts(plan, cell, objective)
            rows.append(
                {
                    "setting": dict(cell.setting),
                    "objective": objective,
                    "seed": cell.seed,
                    "metric": choice["metric"],
                    "chosen": choice["values"],
                    "valid": [
                        {"values": c["values"], "value": c["valid"]} for c in choice["candidates"]
                    ],
                    "test": float(np.mean(_column(test, choice["metric"]))) if test else None,
                }
            )
    order = {s: i for i, s in enumerate(plan.settings())}
    objectives = plan.objectives
    return sorted(
        rows,
        key=lambda r: (
            order[tuple(r["setting"].items())],
            objectives.index(r["objective"]),
            r["seed"],
        ),
    )


def _agreement(plan: Plan, data: dict) -> list[dict[str, Any]]:
    """mult against pl per setting: how often they put the same candidate first, and the
    mean absolute per-context difference of the metric (the bound's effect on the ranking)."""
    rows = []
    if not {"mult", "pl"} <= set(plan.objectives):
        return rows
    for setting in plan.settings():
        models = data.get(setting, {})
        if "mult" not in models or "pl" not in models:
            continue
        same_top, gaps = [], []
        for seed in sorted(set(models["mult"]) & set(models["pl"])):
            by_id = {c.context_id: c for c in models["pl"][seed]}
            for c in models["mult"][seed]:
                other = by_id[c.context_id]
                same_top.append(int(np.argmax(c.scores) == np.argmax(other.scores)))
                gaps.append(abs(c.values[plan.config.metric] - other.values[plan.config.metric]))
        rows.append(
            {
                "setting": dict(setting),
                "top1_agreement": float(np.mean(same_top)),
                "mean_abs_metric_difference": float(np.mean(gaps)),
                "n_contexts": len(gaps),
            }
        )
    return rows


def _bound(plan: Plan) -> list[dict[str, Any]]:
    """Per setting and mult-type objective: the logged bound gap, its upper bound and A/B,
    averaged over training steps, per seed, and the per-step curve averaged over seeds."""
    rows = []
    for setting in plan.settings():
        for objective in ("mult", "mult2"):
            runs = [
                plan.stages[c.prefs[objective]].output
                for c in plan.cells
                if c.setting == setting and objective in c.prefs
            ]
            histories = [log_history(run) for run in runs if run.is_dir()]
            histories = [h for h in histories if series(h, "bound_gap")[0]]
            if not histories:
                continue
            row: dict[str, Any] = {"setting": dict(setting), "objective": objective}
            for key in BOUND_KEYS:
                row[key] = [float(np.mean(series(h, key)[1])) for h in histories]
            steps = series(histories[0], "bound_gap")[0]
            curves = [series(h, "bound_gap")[1] for h in histories]
            length = min(len(c) for c in curves)
            row["curve"] = {
                "step": steps[:length],
                "bound_gap": np.mean([c[:length] for c in curves], 0).tolist(),
            }
            rows.append(row)
    return rows


def _times(plan: Plan) -> list[dict[str, Any]]:
    """Seconds per stage kind and model (means over the stages that finished), and seconds
    per optimisation step for training stages."""
    groups: dict[tuple[str, str], list[tuple[float, float | None, int | None]]] = defaultdict(list)
    for stage in plan.stages.values():
        record = read_record(plan, stage)
        if "seconds" not in record:
            continue
        by_name = stage.kind in ("eval", "valid")  # eval/<model>/<tag>, valid/<loss>/<tag>
        what = stage.name.split("/")[1] if by_name else stage.settings.get("loss", "")
        steps = None
        if stage.kind in ("sft", "pref"):  # taken, not the cap: early stopping ends sooner
            steps = trained_steps(stage.output) or stage.settings.get("max_steps")
        groups[(stage.kind, what)].append((record["seconds"], record.get("cpu_seconds"), steps))
    rows = []
    for (kind, what), values in groups.items():
        seconds = [s for s, _, _ in values]
        cpu = [c for _, c, _ in values if c is not None]
        per_step = [s / n for s, _, n in values if n and n > 0]
        rows.append(
            {
                "stage": kind,
                "what": what,
                "count": len(values),
                "mean_s": float(np.mean(seconds)),
                "total_s": float(np.sum(seconds)),
                "mean_cpu_s": float(np.mean(cpu)) if cpu else None,
                "s_per_step": float(np.mean(per_step)) if per_step else None,
            }
        )
    return rows


def _fmt(iv: dict[str, float], signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(iv['value'])} [{f.format(iv['low'])}, {f.format(iv['high'])}]"


def _p(value: float) -> str:
    return "<1e-6" if value < 1e-6 else f"{value:.3g}"


def _verdict(pair: dict[str, Any]) -> str:
    if pair["p_holm"] < 0.05:
        return f"{pair['a']} {'>' if pair['interval']['value'] > 0 else '<'} {pair['b']}"
    return f"not told apart at +/-{pair['mdd']:.4f}"


def report_text(plan: Plan, summary: dict[str, Any], plots: dict[str, str]) -> str:
    config = plan.config
    metric = config.metric
    lines = [
        f"# Study: {config.description or plan.home.name}",
        "",
        *([config.notes, ""] if config.notes else []),
        f"Directory `{plan.home}`; seeds {config.seeds}; objectives {plan.objectives}; "
        f"baselines {config.baselines}. {_data_sentence(plan)} Every model of a seed is scored "
        "on the same contexts. Stage commands: `commands.sh`; configuration: `study.yaml`.",
        "",
        *_generation_lines(config.metrics),
        "**Statistics.** A cell is the mean over seeds of the mean over the seed's test contexts. "
        "Intervals are 95% two-level bootstrap intervals (seeds resampled, then contexts within "
        f"each drawn seed; {config.n_resamples} resamples): they cover seed and context variation. "
        f"Paired differences ({metric}) are taken per context within each seed, bootstrapped the "
        "same way; p-values are two-sided from the bootstrap standard error and corrected with "
        f"**Holm**'s step-down method over the family of all {summary['n_comparisons']} "
        "comparisons of the study. **MDD** is the minimal detectable difference of the design: "
        "the true difference it detects with 80% power at level 0.05 (2.80 x SE); a pair whose "
        "corrected p is >= 0.05 is *not told apart at +/- MDD*.",
        "",
    ]
    for setting in plan.settings():
        rows = [c for c in summary["cells"] if tuple(c["setting"].items()) == setting]
        if not rows:
            continue
        lines += [f"## {setting_label(setting)}", ""]
        header = ["model", "seeds", *config.metrics, f"{metric} per seed"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            per_seed = (
                ", ".join(f"{v:.4f}" for v in row[metric]["seed_values"]) if row.get(metric) else ""
            )
            cells = [_fmt(row[m]["interval"]) if row[m] else "n/a" for m in config.metrics]
            lines.append(
                f"| {row['model']} | {len(row['seeds'])} | "
                + " | ".join(cells)
                + f" | {per_seed} |"
            )
        lines.append("")
        lines += _not_applicable(rows, config.metrics)
        pairs = [p for p in summary["pairs"] if tuple(p["setting"].items()) == setting]
        if pairs:
            lines += [
                f"Paired differences of {metric} (A - B):",
                "",
                "| A - B | difference [95%] | per seed | p | p (Holm) | MDD | verdict |",
                "|---|---|---|---|---|---|---|",
            ]
            for p in pairs:
                seeds = ", ".join(f"{v:+.4f}" for v in p["seed_values"])
                lines.append(
                    f"| {p['a']} - {p['b']} | {_fmt(p['interval'], True)} | {seeds} | "
                    f"{_p(p['p_value'])} | {_p(p['p_holm'])} | {p['mdd']:.4f} | {_verdict(p)} |"
                )
            lines.append("")
    lines += runs_section(plan, summary, plots)
    lines += _extra_tables(summary, metric)
    for name, caption in plots.items():
        if not name.startswith(VALID_PLOT):  # shown under their runs' table
            lines += [f"![{name}](plots/{name}.png)", "", caption, ""]
    return "\n".join(lines)


def _data_sentence(plan: Plan) -> str:
    if uses_import(plan.config):
        return (
            "Every seed reads the same imported data (`setdpo data import`: the files' test "
            "contexts and candidates); each seed has its own SFT run and preference runs."
        )
    return (
        "Each seed has its own prepared data (test contexts and candidates), SFT run and "
        "preference runs."
    )


def _generation_lines(metrics: list[str]) -> list[str]:
    listed = [m for m in metrics if m in GENERATION_METRICS]
    if not listed:
        return []
    return [
        f"**Generation** ({', '.join(listed)}): one greedy answer per context; it is valid when "
        "it names exactly one candidate (whole words, case and punctuation aside), and GenHR@1 "
        "counts a hit when that candidate is the positive, over all contexts (S-DPO's rule; "
        "`evaluate`'s protocol says whether decoding was constrained to the candidates).",
        "",
    ]


def _not_applicable(rows: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    missing = [m for m in metrics if any(row[m] is None for row in rows)]
    if not missing:
        return []
    models = [row["model"] for row in rows if any(row[m] is None for m in missing)]
    return [
        f"n/a: {', '.join(missing)} does not apply to {', '.join(models)}, which score the "
        "candidates but do not generate an answer.",
        "",
    ]


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _tuning_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    metric = rows[0]["metric"]
    lines = [
        "## Tuning",
        "",
        f"Each objective's `tune` values, chosen per setting and seed by the mean {metric} over "
        "the valid contexts (ties: the first combination written); the test split evaluated "
        "the chosen run only.",
        "",
        f"| setting | objective | seed | chosen | valid {metric} per combination | "
        f"test {metric} (chosen) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        valid = "; ".join(f"{_values(c['values'])}: {c['value']:.4f}" for c in row["valid"])
        test = "" if row["test"] is None else f"{row['test']:.4f}"
        lines.append(
            f"| {setting_label(tuple(row['setting'].items()))} | {row['objective']} | "
            f"{row['seed']} | {_values(row['chosen'])} | {valid} | {test} |"
        )
    return [*lines, ""]


def _extra_tables(summary: dict[str, Any], metric: str) -> list[str]:
    lines = _tuning_table(summary.get("tuning", []))
    if summary["agreement"]:
        lines += [
            "## mult against pl",
            "",
            f"| setting | same top-1 candidate | mean abs. {metric} difference | contexts |",
            "|---|---|---|---|",
        ]
        for row in summary["agreement"]:
            lines.append(
                f"| {setting_label(tuple(row['setting'].items()))} | {row['top1_agreement']:.3f} | "
                f"{row['mean_abs_metric_difference']:.4f} | {row['n_contexts']} |"
            )
        lines.append("")
    if summary["bound"]:
        lines += [
            "## The Mult-DPO bound during training",
            "",
            "Means over the logged training steps (per seed): the gap (L_mult - log k!) - L_pl, "
            "its upper bound (k-1) log(1 + A/B), and A/B (positive over negative mass).",
            "",
            "| setting | objective | gap | bound | A/B |",
            "|---|---|---|---|---|",
        ]
        for row in summary["bound"]:
            values = [", ".join(f"{v:.3f}" for v in row[k]) for k in BOUND_KEYS]
            lines.append(
                f"| {setting_label(tuple(row['setting'].items()))} | {row['objective']} | "
                + " | ".join(values)
                + " |"
            )
        lines.append("")
    if summary["times"]:
        lines += [
            "## Stage times (this machine, as run)",
            "",
            "Wall seconds as run (with `jobs` stages in parallel, on a machine perhaps shared) "
            "and the CPU seconds of the stage's process (its work, whatever the load).",
            "",
            "| stage | model / objective | stages | mean s | mean CPU s | s per step |",
            "|---|---|---|---|---|---|",
        ]
        for row in sorted(summary["times"], key=lambda r: (r["stage"], r["what"])):
            per_step = f"{row['s_per_step']:.2f}" if row["s_per_step"] is not None else ""
            cpu = f"{row['mean_cpu_s']:.1f}" if row["mean_cpu_s"] is not None else ""
            lines.append(
                f"| {row['stage']} | {row['what']} | {row['count']} | {row['mean_s']:.1f} | {cpu} | {per_step} |"
            )
        lines.append("")
    return lines


RUN_COLUMNS = ("reward margin", "reward accuracy", "A/B", "bound gap")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _run_line(row: dict[str, Any]) -> str:
    chosen = f"{row['chosen_step']} ({'best' if row['best'] else 'last'})"
    trained = f"{row['last_step']} / {row['max_steps']}"
    stopped = "yes" if row["stopped_early"] else "no"
    valid = "" if row["metric_value"] is None else f"{row['metric']} {row['metric_value']:.4f}"
    source = "" if row["source_step"] is None else f"{row['source']} (step {row['source_step']})"
    cells = [row["objective"], str(row["seed"]), chosen, trained, stopped, valid]
    cells += [_number(row[key]) for key in RUN_KEYS] + [source]
    return "| " + " | ".join(cells) + " |"


def runs_section(plan: Plan, summary: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """Each preference run at its chosen step, a table and a valid-curve plot per setting."""
    runs = summary.get("runs", [])
    if not runs:
        return []
    lines = [
        "## Preference runs at their chosen step",
        "",
        "Each run's weights are those of its chosen step: under early stopping "
        "(`early_stopping_patience`) the best valid evaluation's checkpoint, restored "
        "(`best` in its setdpo_model.json; the evaluation before the first step, the SFT model, "
        "is never chosen), else its last step. *steps / cap*: the steps it trained and its "
        "`max_steps`; *stopped early*: it ended before the cap. The valid metric is the one the "
        "run was selected on (`eval_loss` without early stopping). Reward margin, reward "
        "accuracy, A/B and bound gap (A/B and gap for mult and mult2 only) are the values "
        "logged at the chosen step: from the valid split's evaluation at that step "
        "(`eval_*` in trainer_state.json; *from* `valid`) when there is one, else from the last "
        "training log up to it (a mean over the `logging_steps` training batches before it; "
        "*from* `train`).",
        "",
    ]
    header = ["objective", "seed", "chosen step", "steps / cap", "stopped early"]
    header += ["valid metric", *RUN_COLUMNS, "from"]
    for index, setting in enumerate(plan.settings()):
        rows = [r for r in runs if tuple(r["setting"].items()) == setting]
        if not rows:
            continue
        lines += [f"### {setting_label(setting)}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [_run_line(row) for row in rows]
        lines.append("")
        name = f"{VALID_PLOT}{index}"
        if name in plots:
            lines += [f"![{name}](plots/{name}.png)", "", plots[name], ""]
    return lines


def build_study_report(study_dir: str | Path, name: str | None = None) -> Path:
    """summary.json, plots and report.md of a study directory (of its study ``name``, when
    several share it); returns report.md."""
    from setdpo.study.plots import (
        plot_bound,
        plot_metric_against_axes,
        plot_training,
        plot_valid_curves,
    )

    plan = load_plan(study_dir, name)
    summary = summarize(plan)
    if not summary["cells"]:
        raise InputError(f"{study_dir}: no evaluation has finished yet: nothing to report")
    atomic_write_json(plan.home / "summary.json", summary)
    plots = plot_metric_against_axes(plan, summary, plan.home / "plots")
    plots.update(plot_bound(summary, plan.home / "plots"))
    plots.update(plot_training(plan, plan.home / "plots"))
    plots.update(plot_valid_curves(plan, summary["runs"], plan.home / "plots"))
    return atomic_write_text(plan.home / "report.md", report_text(plan, summary, plots))


def load_summary(study_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(study_dir) / "summary.json").read_text(encoding="utf-8"))
