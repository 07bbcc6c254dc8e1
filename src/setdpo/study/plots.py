"""Plots of a study: a metric against each numeric grid axis (one line per model, 95%
interval bands), the preference runs' training curves per setting, and the Mult-DPO bound gap
and A/B per setting and over training. Every PNG is written atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402

from setdpo.atomic import atomic_write_with  # noqa: E402
from setdpo.study.plan import Plan  # noqa: E402

# trainer_state.json log keys per panel of the training plot (see setdpo.losses).
TRAINING_PANELS = {
    "loss": "training loss",
    "reward_accuracy": "reward accuracy",
    "reward_margin": "reward margin (pos - neg)",
}


def log_history(run_dir: Path) -> list[dict]:
    """transformers' per-step log of a training run (empty if the run wrote none)."""
    path = run_dir / "trainer_state.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8")).get("log_history", [])


def series(history: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged key, training entries only."""
    points = [(h["step"], h[key]) for h in history if key in h and "step" in h]
    return [s for s, _ in points], [v for _, v in points]


def save_figure(fig: plt.Figure, path: Path) -> Path:
    try:
        return atomic_write_with(
            path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"), suffix=".png"
        )
    finally:
        plt.close(fig)


def _step_panel(ax: Any, title: str) -> None:
    """A panel over training steps: its title, integer steps, a grid."""
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)


def _save_titled(fig: plt.Figure, folder: Path, name: str, title: str) -> str:
    """``folder/<name>.png`` under ``title``; returns ``name``."""
    fig.suptitle(title)
    save_figure(fig, folder / f"{name}.png")
    return name


def _label(setting: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting) or "all"


def plot_training(plan: Plan, folder: Path) -> dict[str, str]:
    """Per setting: one panel per logged quantity, one line per objective (the first seed)."""
    plots = {}
    for index, setting in enumerate(plan.settings()):
        cell = next(c for c in plan.cells if c.setting == setting)
        runs = {name: plan.stages[stage].output for name, stage in cell.prefs.items()}
        runs = {name: run for name, run in runs.items() if log_history(run)}
        if not runs:
            continue
        fig, axes = plt.subplots(1, len(TRAINING_PANELS), figsize=(5 * len(TRAINING_PANELS), 3.6))
        for ax, (key, title) in zip(axes, TRAINING_PANELS.items(), strict=True):
            for name, run in runs.items():
                steps, values = series(log_history(run), key)
                if steps:
                    ax.plot(steps, values, marker=".", label=name)
            _step_panel(ax, title)
        axes[0].legend()
        label = _label(setting)
        title = f"Preference training, {label}, seed {cell.seed} (train split)"
        plots[_save_titled(fig, folder, f"training_{index}", title)] = (
            f"Training loss, reward accuracy and reward margin per step of each objective "
            f"({label}, seed {cell.seed}; each step sees a new batch, so steps are noisy)."
        )
    return plots


def _numeric(labels: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in labels]
    except ValueError:
        return None


def _lines(
    rows: list[dict[str, Any]], axis: str, name_of: Any, interval_of: Any
) -> dict[str, list[tuple[float, dict]]]:
    """Points (axis value, interval) per line; a line per name (and other axes' values)."""
    lines: dict[str, list[tuple[float, dict]]] = {}
    for row in rows:
        if axis not in row["setting"]:
            continue
        others = ", ".join(f"{k}={v}" for k, v in row["setting"].items() if k != axis)
        name = name_of(row) + (f" ({others})" if others else "")
        lines.setdefault(name, []).append((float(row["setting"][axis]), interval_of(row)))
    return lines


def _draw(ax: Any, lines: dict[str, list[tuple[float, dict]]]) -> None:
    for name, points in lines.items():
        points.sort(key=lambda p: p[0])
        x = [p[0] for p in points]
        ax.plot(x, [p[1]["value"] for p in points], marker="o", label=name)
        ax.fill_between(
            x, [p[1]["low"] for p in points], [p[1]["high"] for p in points], alpha=0.15
        )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def plot_metric_against_axes(plan: Plan, summary: dict[str, Any], folder: Path) -> dict[str, str]:
    """One figure per numeric axis with more than one value: left, the metric against the
    axis, a line per model (and per value of the other axes) with its interval as a band;
    right, each objective's paired difference to the first of ``compare_with``."""
    metric = summary["metric"]
    reference = plan.config.compare_with[0] if plan.config.compare_with else None
    plots = {}
    for axis in plan.config.axes:
        xs = _numeric([v.label for v in axis.values])
        if axis.key == "pref.loss" or xs is None or len(xs) < 2:
            continue
        fig, (ax, ax_diff) = plt.subplots(1, 2, figsize=(13, 4.2))
        cells = [row for row in summary["cells"] if row.get(metric)]  # None: does not apply
        _draw(ax, _lines(cells, axis.name, lambda r: r["model"], lambda r: r[metric]["interval"]))
        ax.set_ylabel(f"{metric} (mean over seeds, 95% two-level interval)")
        ax.set_title(f"{metric} against {axis.name}")
        pairs = [p for p in summary["pairs"] if p["b"] == reference]
        _draw(
            ax_diff,
            _lines(pairs, axis.name, lambda p: f"{p['a']} - {p['b']}", lambda p: p["interval"]),
        )
        ax_diff.axhline(0.0, color="black", linewidth=0.8)
        ax_diff.set_title(f"paired difference to {reference} (95% two-level interval)")
        for a in (ax, ax_diff):
            a.set_xlabel(axis.name)
            a.set_xticks(xs)
        name = f"{metric.replace('@', '')}_vs_{axis.name}"
        plots[name] = str(save_figure(fig, folder / f"{name}.png"))
    return {
        name: f"{metric} against `{name.split('_vs_')[1]}` (mean over seeds; bands: 95% "
        f"two-level bootstrap intervals), and each objective's paired difference to {reference}."
        for name in plots
    }


def plot_bound(summary: dict[str, Any], folder: Path) -> dict[str, str]:
    """Left: the gap (L_mult - log k!) - L_pl over training, per setting (mean over seeds);
    right: mean gap, bound and A/B per setting (points = seeds)."""
    rows = summary["bound"]
    if not rows:
        return {}
    fig, (ax_curve, ax_gap, ax_ratio) = plt.subplots(1, 3, figsize=(15, 4))
    names = []
    for i, row in enumerate(rows):
        name = ", ".join(f"{k}={v}" for k, v in row["setting"].items()) or "all"
        name = f"{row['objective']} {name}"
        names.append(name)
        ax_curve.plot(row["curve"]["step"], row["curve"]["bound_gap"], marker=".", label=name)
        for ax, key in ((ax_gap, "bound_gap"), (ax_gap, "bound_gap_max"), (ax_ratio, "a_over_b")):
            marker = "x" if key == "bound_gap_max" else "o"
            ax.scatter([i] * len(row[key]), row[key], marker=marker, color=f"C{i}")
    ax_curve.set_title("gap (L_mult - log k!) - L_pl over training")
    ax_curve.set_xlabel("step")
    ax_curve.legend(fontsize=7)
    ax_gap.set_title("mean gap (o) and its bound (x) per seed")
    ax_ratio.set_title("mean A/B per seed")
    for ax in (ax_gap, ax_ratio):
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=7)
    for ax in (ax_curve, ax_gap, ax_ratio):
        ax.grid(alpha=0.3)
    fig.suptitle("Mult-DPO against the exact set-wise Plackett-Luce loss")
    save_figure(fig, folder / "bound.png")
    return {
        "bound": "The Mult-DPO bound during training: the gap to the exact PL loss (mean over "
        "seeds) over steps, and per setting the mean gap, its upper bound (k-1) log(1 + A/B) "
        "and A/B for each seed."
    }


VALID_PLOT = "valid_"  # plots/valid_<setting index>.png


def plot_valid_curves(plan: Plan, runs: list[dict[str, Any]], folder: Path) -> dict[str, str]:
    """Per setting: each preference run's valid metric at every evaluation, one line per
    objective and seed, the chosen step starred (the restored best under early stopping,
    else the last step). A panel per objective (their losses differ in scale; and per valid
    metric when runs were selected on several), a line style per seed. ``runs``:
    `setdpo.study.runs.pref_runs`."""
    plots = {}
    styles = ["-", "--", ":", "-."]
    for index, setting in enumerate(plan.settings()):
        rows = [r for r in runs if tuple(r["setting"].items()) == setting and r["curve"]["step"]]
        if not rows:
            continue
        panels = list(dict.fromkeys((r["objective"], r["metric"]) for r in rows))
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
        for i, (ax, (objective, metric)) in enumerate(zip(axes[0], panels, strict=True)):
            for row in rows:
                if (row["objective"], row["metric"]) != (objective, metric):
                    continue
                style = styles[plan.config.seeds.index(row["seed"]) % len(styles)]
                curve, color = row["curve"], f"C{i}"
                ax.plot(curve["step"], curve["value"], style, color=color, marker=".",
                        label=f"seed {row['seed']}")  # fmt: skip
                if row["metric_value"] is not None:
                    ax.plot(row["chosen_step"], row["metric_value"], "*", color=color, ms=14,
                            markeredgecolor="black")  # fmt: skip
            _step_panel(ax, f"{objective}: {metric}")
            ax.legend(fontsize=7)
        label = _label(setting)
        title = f"Valid curves of the preference runs, {label} (*: the chosen step)"
        plots[_save_titled(fig, folder, f"{VALID_PLOT}{index}", title)] = (
            f"Valid curves ({label}): the valid metric at every evaluation of each preference "
            "run (step 0: the SFT model, evaluated before the first step), a panel per "
            "objective, a line per seed; the star is the chosen step: the restored best under "
            "early stopping, else the last step."
        )
    return plots
