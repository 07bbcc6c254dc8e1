"""Tables and plots of a quickstart directory, and the `report.md` that embeds them.

Reads only what the stages wrote (nothing is recomputed from models):

    RUN/eval/<model>.json          `setdpo evaluate` results, one per model or baseline
    RUN/runs/<objective>/trainer_state.json   per-step logs of each preference run
    RUN/runs/sft/trainer_state.json

and writes, atomically, ``RUN/comparison.md``, ``RUN/plots/*.png`` and ``RUN/report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402

from setdpo.atomic import atomic_write_text, atomic_write_with  # noqa: E402
from setdpo.errors import InputError  # noqa: E402
from setdpo.evaluation.compare import comparison, format_by_run  # noqa: E402
from setdpo.evaluation.results import Results, load_results  # noqa: E402

# The order of rows in every table and bar plot: baselines first, then the models.
FIXED_ORDER = ["random", "popularity", "sasrec", "base", "sft"]
CAPTIONS = {
    "metrics": "Test-split metrics of every model and baseline with 95% bootstrap intervals.",
    "training": "Per-step training loss, reward accuracy and reward margin of each objective"
    " (each step sees a new batch, so single steps are noisy).",
    "bound_gap": "Mult-DPO's gap to the exact set-wise Plackett-Luce loss,"
    " 0 <= (L_mult - log k!) - L_pl <= (k-1) log(1 + A/B), beside its upper bound, and A/B"
    " over training (means over the logged batches' contexts).",
}
BAR_METRICS = ["HR@1", "HR@5", "NDCG@5", "NDCG@10", "MRR"]
# trainer_state.json log keys per panel of the training plot (see setdpo.losses).
TRAINING_PANELS = {
    "loss": "training loss",
    "reward_accuracy": "reward accuracy",
    "reward_margin": "reward margin (pos - neg)",
}


def eval_files(run_dir: Path) -> list[Path]:
    """The results files of a quickstart directory, baselines first, then SFT and the objectives."""
    files = {p.stem: p for p in sorted((run_dir / "eval").glob("*.json"))}
    if not files:
        raise InputError(f"{run_dir}: no eval/*.json results files: is it a quickstart directory?")
    order = [n for n in FIXED_ORDER if n in files] + sorted(set(files) - set(FIXED_ORDER))
    return [files[n] for n in order]


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


def plot_training(pref_runs: dict[str, Path], path: Path) -> Path:
    """One panel per logged quantity, one line per objective."""
    fig, axes = plt.subplots(1, len(TRAINING_PANELS), figsize=(5 * len(TRAINING_PANELS), 3.6))
    for ax, (key, title) in zip(axes, TRAINING_PANELS.items(), strict=True):
        for name, run in pref_runs.items():
            steps, values = series(log_history(run), key)
            if steps:
                ax.plot(steps, values, marker=".", label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Preference training (train split, logged every few steps)")
    return save_figure(fig, path)


def plot_bound_gap(run: Path, path: Path) -> Path:
    """Mult-DPO's gap to the exact Plackett-Luce loss, and A/B, over training."""
    history = log_history(run)
    fig, (ax_gap, ax_ratio) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in (
        (ax_gap, "bound_gap", "gap (L_mult - log k!) - L_pl"),
        (ax_gap, "bound_gap_max", "bound (k-1) log(1 + A/B)"),
        (ax_ratio, "a_over_b", "A / B"),
    ):
        steps, values = series(history, key)
        ax.plot(steps, values, marker=".", label=label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax_gap.set_title("gap to the exact PL loss, and its bound")
    ax_gap.legend(fontsize=8)
    ax_ratio.set_title("A / B (positive over negative mass)")
    fig.suptitle("mult: bound gap against the exact set-wise PL loss")
    return save_figure(fig, path)


def plot_metric_bars(results: dict[str, Results], path: Path) -> Path:
    """Grouped bars, one group per metric, one bar per model, with 95% interval whiskers."""
    names = list(results)
    metrics = [m for m in BAR_METRICS if all(m in r.metrics for r in results.values())]
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(metrics) + 3, 4))
    for i, name in enumerate(names):
        cells = [results[name].metrics[m] for m in metrics]
        values = [c.value for c in cells]
        errors = [[c.value - c.low for c in cells], [c.high - c.value for c in cells]]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, values, width, yerr=errors, capsize=2, label=name)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("value (95% bootstrap interval)")
    ax.set_ylim(0, 1)
    ax.legend(ncol=min(len(names), 4), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Test-split ranking metrics, same contexts and candidates for every model")
    return save_figure(fig, path)


def build_report(run_dir: str | Path, title: str = "setdpo report") -> Path:
    """Write comparison.md, the plots and report.md of a directory of ``eval/*.json`` (a
    quickstart tier) and its ``runs/``; return report.md."""
    run_dir = Path(run_dir)
    files = eval_files(run_dir)
    names = [p.stem for p in files]
    baseline = run_dir / "eval" / "sft.json" if "sft" in names else files[0]
    table = format_by_run(comparison(files, baseline=baseline))
    atomic_write_text(run_dir / "comparison.md", table)
    results = {p.stem: load_results(p) for p in files}
    pref_runs = {
        n: run_dir / "runs" / n
        for n in names
        if n not in FIXED_ORDER and (run_dir / "runs" / n).is_dir()
    }
    plots = {"metrics": plot_metric_bars(results, run_dir / "plots" / "metrics.png")}
    if pref_runs:
        plots["training"] = plot_training(pref_runs, run_dir / "plots" / "training.png")
    if "mult" in pref_runs:
        plots["bound_gap"] = plot_bound_gap(pref_runs["mult"], run_dir / "plots" / "bound_gap.png")
    captions = {name: CAPTIONS[name] for name in plots}
    if "mult" in pref_runs:
        _, gaps = series(log_history(pref_runs["mult"]), "bound_gap")
        if gaps and max(abs(g) for g in gaps) < 1e-6:
            captions["bound_gap"] += (
                f" Here every logged gap is below 1e-6 in absolute value ({max(gaps, key=abs):.1e}):"
                " with one positive per context Mult-DPO is the exact PL loss, so only"
                " quadrature error is left."
            )
    report = _report_text(run_dir, title, table, captions, results)
    return atomic_write_text(run_dir / "report.md", report)


def _report_text(
    run_dir: Path, title: str, table: str, captions: dict[str, str], results: dict[str, Results]
) -> str:
    protocol = next(iter(results.values())).protocol
    lines = [
        f"# {title}",
        "",
        f"Run directory: `{run_dir}`. Models: {', '.join(results)}.",
        "",
        "## Protocol",
        "",
        "```json",
        json.dumps(protocol, indent=1, sort_keys=True),
        "```",
        "",
        "## Comparison (differences are paired, against SFT)",
        "",
        table,
        "## Plots",
        "",
    ]
    for name, caption in captions.items():
        lines += [f"![{name}](plots/{name}.png)", "", caption, ""]
    lines += [
        "Each stage's configuration: `data/config.json`, `runs/*/resolved_config.yaml`, "
        "and the evaluation protocol inside each `eval/*.json`.",
        "",
    ]
    return "\n".join(lines)
