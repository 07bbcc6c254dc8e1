"""The results of `setdpo evaluate` (`Results`, `ContextResult`): summaries with intervals,
the file, written atomically and read back.

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from setdpo.atomic import atomic_write_json
from setdpo.errors import InputError
from setdpo.evaluation.bootstrap import Interval, bootstrap_interval
from setdpo.evaluation.metrics import denominator_of


@dataclass
class ContextResult:
    """One evaluated context: its candidates' scores and levels [n], the ranks of its
    positives, its metric values, and what generation and catalog ranking added."""

    context_id: str
    values: dict[str, float]
    scores: list[float] | None = None
    levels: list[int] | None = None
    positive_ranks: list[int] | None = None
    generation: dict[str, Any] | None = None  # {"answer", "matched"}
    catalog: dict[str, Any] | None = None  # {"n_items", "positive_ranks"}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"context_id": self.context_id}
        for key in ("scores", "levels", "positive_ranks"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["values"] = self.values
        for key in ("generation", "catalog"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ContextResult:
        if "context_id" not in data or "values" not in data:
            raise InputError(f"{where} lacks 'context_id' or 'values'")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class Results:
    """What `setdpo.evaluation.evaluate` returns and a results file holds (layout above)."""

    protocol: dict[str, Any]
    metrics: dict[str, Interval]
    contexts: list[ContextResult]
    timing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "metrics": {name: iv.to_dict() for name, iv in self.metrics.items()},
            "timing": self.timing,
            "contexts": [c.to_dict() for c in self.contexts],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Results:
        for key in ("protocol", "metrics", "contexts"):
            if key not in data:
                raise InputError(f"{where}: not a setdpo results file (no {key!r} key)")
        return cls(
            protocol=data["protocol"],
            metrics={name: Interval(**iv) for name, iv in data["metrics"].items()},
            contexts=[
                ContextResult.from_dict(c, f"{where}: context {i}")
                for i, c in enumerate(data["contexts"])
            ],
            timing=data.get("timing", {}),
        )

    def write(self, path: str | Path) -> Path:
        """The results as JSON at ``path``, written atomically."""
        return atomic_write_json(path, self.to_dict())


def metric_columns(
    contexts: Sequence[ContextResult], name: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-context values [N] of ``name`` and its denominators [N] (None: the mean)."""
    values = np.array([c.values[name] for c in contexts], dtype=np.float64)
    den_name = denominator_of(name)
    if den_name is None:
        return values, None
    return values, np.array([c.values[den_name] for c in contexts], dtype=np.float64)


def summarize(
    contexts: Sequence[ContextResult], names: Sequence[str], n_resamples: int = 1000, seed: int = 0
) -> dict[str, Interval]:
    """Point estimate and 95% bootstrap interval of each metric over ``contexts``."""
    out = {}
    for name in names:
        values, denominators = metric_columns(contexts, name)
        out[name] = bootstrap_interval(values, denominators, n_resamples=n_resamples, seed=seed)
    return out


def load_results(path: str | Path) -> Results:
    """Read a results file, checking its layout; errors name the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such results file") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    return Results.from_dict(data, str(path))
