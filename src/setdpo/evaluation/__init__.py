"""Evaluation: ranking metrics with bootstrap intervals, generation, catalog ranking, baselines.

`evaluate(EvalConfig(...))` returns `Results` (`results.py` documents its layout);
`register_metric` adds metrics; `compare` tabulates several results files.
"""

from setdpo.evaluation.bootstrap import Interval, bootstrap_interval, paired_difference
from setdpo.evaluation.compare import compare
from setdpo.evaluation.evaluate import EvalConfig, evaluate
from setdpo.evaluation.metrics import (
    CATALOG_METRICS,
    DEFAULT_METRICS,
    compute_metrics,
    rank_order,
    register_metric,
)
from setdpo.evaluation.recommend import RecommendConfig, recommend
from setdpo.evaluation.results import ContextResult, Results, load_results
from setdpo.evaluation.scorers import ModelScorer, build_scorer

__all__ = [
    "CATALOG_METRICS",
    "ContextResult",
    "DEFAULT_METRICS",
    "EvalConfig",
    "Interval",
    "ModelScorer",
    "RecommendConfig",
    "Results",
    "bootstrap_interval",
    "build_scorer",
    "compare",
    "compute_metrics",
    "evaluate",
    "load_results",
    "paired_difference",
    "rank_order",
    "recommend",
    "register_metric",
]
