"""Plots of a study's summary: a metric against each numeric grid axis (one line per model,
95% interval bands), and the Mult-DPO bound gap and A/B per setting and over training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setdpo.report import plt, save_figure
from setdpo.study.plan import Plan


def _numeric(labels: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in labels]
    except ValueError:
        return None


def plot_metric_against_axes(plan: Plan, summary: dict[str, Any], folder: Path) -> dict[str, str]:
    """One figure per numeric axis with more than one value: the metric against the axis, a
    line per model (and per value of the other axes), with its interval as a band."""
    metric = summary["metric"]
    plots = {}
    for axis in plan.config.axes:
        labels = [v.label for v in axis.values]
        xs = _numeric(labels)
        if axis.key == "pref.loss" or xs is None or len(xs) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        lines: dict[str, list[tuple[float, dict]]] = {}
        for row in summary["cells"]:
            if metric not in row or axis.name not in row["setting"]:
                continue
            others = ", ".join(f"{k}={v}" for k, v in row["setting"].items() if k != axis.name)
            name = row["model"] + (f" ({others})" if others else "")
            lines.setdefault(name, []).append(
                (float(row["setting"][axis.name]), row[metric]["interval"])
            )
        for name, points in lines.items():
            points.sort(key=lambda p: p[0])
            x = [p[0] for p in points]
            ax.plot(x, [p[1]["value"] for p in points], marker="o", label=name)
            ax.fill_between(
                x, [p[1]["low"] for p in points], [p[1]["high"] for p in points], alpha=0.15
            )
        ax.set_xlabel(axis.name)
        ax.set_xticks(xs)
        ax.set_ylabel(f"{metric} (mean over seeds, 95% two-level interval)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{metric} against {axis.name}")
        name = f"{metric.replace('@', '')}_vs_{axis.name}"
        plots[name] = str(save_figure(fig, folder / f"{name}.png"))
    return {
        name: f"{metric} against `{name.split('_vs_')[1]}`: mean over seeds, band = 95% "
        "two-level bootstrap interval."
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
