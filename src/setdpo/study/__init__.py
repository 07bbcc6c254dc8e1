"""Seeded studies: a grid over data, training and evaluation fields times seeds, each stage a
`setdpo` command, shared where equal, reused when finished; statistics that cover seeds and
contexts (`setdpo.study.stats`) and a report (`setdpo.study.report`)."""

from __future__ import annotations

from pathlib import Path

from setdpo.study.plan import Plan, StudyConfig, build_plan, load_study


def run_study(
    config: StudyConfig,
    out: str | Path,
    jobs: int = 1,
    fresh: bool = False,
    name: str | None = None,
) -> Path:
    """Run every stage not yet finished (`setdpo.study.runner`), then write the report
    (in ``out/<name>`` with a name: studies that share ``out`` share their equal stages)."""
    from setdpo.study.report import build_study_report
    from setdpo.study.runner import run_stages

    plan = build_plan(config, out, name)
    run_stages(plan, jobs=jobs, fresh=fresh)
    return build_study_report(plan.out, name)


__all__ = ["Plan", "StudyConfig", "build_plan", "load_study", "run_study"]
