"""The results file of `setdpo evaluate`: summaries with intervals, atomic writing, reading.

Layout (JSON)::

    {"protocol": {...},                       # split, contexts, candidates, tie rule, ...
     "metrics": {"HR@1": {"value", "low", "high"}, ...},
     "timing": {"total_s", "contexts_per_s", ...},
     "contexts": [{"context_id", "scores": [n], "levels": [n], "positive_ranks": [...],
                   "values": {"HR@1": 0.0, ...},   # per-context metric values
                   "generation": {...}, "catalog": {...}}]}   # when requested

Every summary metric is ``sum(values) / sum(denominators)`` over contexts; the
denominator is 1 per context except for the generation metrics registered with one
(`metrics.register_generation_metric`: generation HR@1 over valid answers only divides by
the number of valid answers).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from setdpo.atomic import atomic_write_json
from setdpo.errors import InputError
from setdpo.evaluation.bootstrap import Interval, bootstrap_interval
from setdpo.evaluation.metrics import denominator_of


def metric_columns(contexts: Sequence[dict], name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-context values [N] of ``name`` and its denominators [N] (None: the mean)."""
    values = np.array([c["values"][name] for c in contexts], dtype=np.float64)
    den_name = denominator_of(name)
    if den_name is None:
        return values, None
    return values, np.array([c["values"][den_name] for c in contexts], dtype=np.float64)


def summarize(
    contexts: Sequence[dict], names: Sequence[str], n_resamples: int = 1000, seed: int = 0
) -> dict[str, Interval]:
    """Point estimate and 95% bootstrap interval of each metric over ``contexts``."""
    out = {}
    for name in names:
        values, denominators = metric_columns(contexts, name)
        out[name] = bootstrap_interval(values, denominators, n_resamples=n_resamples, seed=seed)
    return out


def write_json_atomic(data: dict, path: str | Path) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it into place."""
    atomic_write_json(path, data)


def load_results(path: str | Path) -> dict:
    """Read a results file, checking its layout; errors name the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such results file") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    for key in ("protocol", "metrics", "contexts"):
        if key not in data:
            raise InputError(f"{path}: not a setdpo results file (no {key!r} key)")
    for i, ctx in enumerate(data["contexts"]):
        if "context_id" not in ctx or "values" not in ctx:
            raise InputError(f"{path}: context {i} lacks 'context_id' or 'values'")
    return data
