"""Per-objective tuning inside a study: the ``tune`` section and the selection stage.

A study's ``tune`` section names preference fields and the values to try::

    tune:
      pref.beta: [0.05, 0.1, 0.2]
      pref.learning_rate: [5.0e-5, 1.0e-4]

Every combination (the product of the lists, in the order written) is trained for each
objective, setting and seed, and evaluated on the **valid** split; the selection stage
(`setdpo study select --config stages/select/<tag>.yaml`) reads only those valid results,
keeps the combination with the best mean ``metric`` over the valid contexts (ties: the first
combination written) and copies its run to the untuned run's folder (``runs/pref/<tag>``),
so the test evaluation and everything downstream are those of a study without ``tune``. The
choice is written to ``select/<tag>.json``: the candidates, their valid values, the chosen
combination. The test split is read only by the test evaluation of the chosen run.
"""

from __future__ import annotations

import itertools
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setdpo.errors import InputError

TUNABLE = "pref"  # the only section whose fields are tuned
SPLIT = "valid"  # what the candidates are evaluated on

# one combination: (field, value) pairs in the order the tune section writes them
Combination = tuple[tuple[str, Any], ...]


def combinations(tune: dict[str, Any], axes: list[Any]) -> list[Combination]:
    """The tune section's combinations (none without ``tune``), after checking it: only
    ``pref.*`` fields not set by a grid axis, each a non-empty list of distinct values."""
    from setdpo.protocol import check_types
    from setdpo.training.config import PrefConfig

    gridded = {k for a in axes for v in a.values for k in v.settings} | {a.name for a in axes}
    lists = []
    for key, values in tune.items():
        section, _, name = str(key).partition(".")
        if section != TUNABLE or not name:
            raise InputError(f"tune {key!r}: only {TUNABLE}.<field> can be tuned")
        if key in gridded or name in gridded:
            raise InputError(f"tune {key!r}: also a grid axis; tune it or grid it, not both")
        if not isinstance(values, list) or not values:
            raise InputError(f"tune {key}: a non-empty list of values")
        if len({str(v) for v in values}) != len(values):
            raise InputError(f"tune {key}: repeated values {values}")
        for value in values:
            check_types(PrefConfig, {name: value}, lambda _, k=key: f"tune {k}")
        lists.append([(name, v) for v in values])
    return list(itertools.product(*lists)) if lists else []


def check_evaluations(metric: str, evaluates: list[dict[str, Any]]) -> None:
    """The study's evaluations (``evaluates``: its evaluate section, and that section with each
    axis value's evaluate fields) are on the test split and compute the choice's metric."""
    from setdpo.evaluation.metrics import DEFAULT_METRICS

    for values in evaluates:
        split, metrics = values.get("split", "test"), values.get("metrics", DEFAULT_METRICS)
        if split != "test":
            raise InputError(f"tune chooses on valid and tests on test; evaluate.split: {split!r}")
        if not isinstance(metrics, list) or metric not in metrics:
            raise InputError(f"tune chooses by metric {metric!r}: evaluate.metrics lacks it")


def check_valid_split(prepare: dict[str, Any], where: str) -> None:
    """Refuse data whose configuration leaves the valid split empty (a valid share or cap of
    0): the choice is made there. (An empty valid split otherwise fails its evaluation.)"""
    ratios, caps = prepare.get("split_ratios"), prepare.get("max_examples_per_split")
    share = ratios[1] if isinstance(ratios, list | tuple) and len(ratios) == 3 else None
    cap = caps.get(SPLIT) if isinstance(caps, dict) else None
    if share == 0 or cap == 0:
        field = "split_ratios" if share == 0 else "max_examples_per_split"
        raise InputError(f"{where}: tune chooses on the valid split, which {field} leaves empty")


def labels(combination: Combination) -> list[tuple[str, str]]:
    """Tag labels of a combination: ``[("beta", "0.1"), ("learning_rate", "0.0001")]``."""
    return [(name, str(value)) for name, value in combination]


@dataclass
class SelectConfig:
    """What `setdpo study select` reads (``stages/select/<tag>.yaml``, written by the plan)."""

    metric: str  # chosen by its mean over the valid contexts, higher is better
    candidates: list[dict[str, Any]]  # each {"values": {field: value}, "run": dir, "results": file}
    out: str  # the chosen run is copied here
    choice: str  # the choice's record (select/<tag>.json)

    def __post_init__(self) -> None:
        if not self.candidates:
            raise InputError("select: no candidates")
        for c in self.candidates:
            paths = [c.get("run"), c.get("results")]
            if (
                set(c) != {"values", "run", "results"}
                or not isinstance(c["values"], dict)
                or not all(isinstance(p, str) for p in paths)
            ):
                raise InputError(
                    f"select: a candidate is {{values: mapping, run: dir, results: file}}, got {c!r}"
                )


def load_select(path: str | Path) -> SelectConfig:
    """The selection stage's file; relative paths are read against its folder."""
    from setdpo.paths import resolved
    from setdpo.protocol import check_types, read_config_file

    raw = read_config_file(path)
    folder = Path(path).parent
    check_types(SelectConfig, raw, lambda _: path)
    try:
        config = SelectConfig(**raw)
    except TypeError as err:
        raise InputError(f"{path}: {err}") from err
    config.out, config.choice = resolved(config.out, folder), resolved(config.choice, folder)
    for c in config.candidates:
        c["run"], c["results"] = resolved(c["run"], folder), resolved(c["results"], folder)
    return config


def valid_value(results_path: str | Path, metric: str) -> tuple[float, int]:
    """The mean of ``metric`` over a valid results file's contexts, and their count; refuses
    results of any other split, and an empty split."""
    from setdpo.evaluation.results import load_results

    results = load_results(results_path)
    split = results.protocol.get("split")
    if split != SPLIT:
        raise InputError(f"{results_path}: results of split {split!r}; selection reads {SPLIT!r}")
    if not results.contexts:
        raise InputError(f"{results_path}: the valid split has no contexts to choose by")
    try:
        values = [c.values[metric] for c in results.contexts]
    except KeyError as err:
        raise InputError(
            f"{results_path}: no {metric!r} (has {sorted(results.contexts[0].values)}); "
            "add it to the study's evaluate.metrics"
        ) from err
    return float(sum(values) / len(values)), len(values)


def select(config: SelectConfig) -> dict[str, Any]:
    """Choose the candidate with the best valid ``metric`` (the first on ties), copy its run
    to ``config.out`` atomically, then write the choice; returns the choice."""
    from setdpo.atomic import atomic_write_json
    from setdpo.data.io import atomic_directory
    from setdpo.paths import stored

    folder = Path(config.choice).parent
    rows = []
    for c in config.candidates:
        value, n = valid_value(c["results"], config.metric)
        rows.append(
            {
                "values": c["values"],
                "valid": value,
                "contexts": n,
                "run": stored(c["run"], folder),
                "results": stored(c["results"], folder),
            }
        )
    scores = [-math.inf if math.isnan(r["valid"]) else r["valid"] for r in rows]
    best = max(range(len(rows)), key=scores.__getitem__)  # the first of equal ones
    choice = {
        "metric": config.metric,
        "split": SPLIT,
        "chosen": best,
        "values": rows[best]["values"],
        "run": stored(config.out, folder),
        "candidates": rows,
    }
    with atomic_directory(config.out, overwrite=True) as tmp:
        shutil.copytree(config.candidates[best]["run"], tmp, dirs_exist_ok=True)
    atomic_write_json(config.choice, choice)
    return choice


def read_choice(path: str | Path) -> dict[str, Any] | None:
    """A choice written by `select` (None while there is none)."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
