"""`setdpo quickstart` (what `make demo` runs) and `setdpo report`."""

from __future__ import annotations

import argparse

from setdpo.commands.options import build_config, config_command


def add_parser(subparsers) -> None:
    p = config_command(
        subparsers,
        "quickstart",
        "setdpo.quickstart:QuickstartConfig",
        "quickstart",
        help="the main job: ML-100K -> SFT -> every objective -> evaluation -> report",
        description="Prepare ML-100K (next-k, k=3, open prompt), then for each tier (lab: a "
        "small model trained from scratch; llm: SmolLM2 with LoRA) run SFT, align with each "
        "objective, evaluate the baselines and every model on the same test contexts, and "
        "write a report. Finished stages are reused unless --fresh. Every QuickstartConfig "
        "field is an option (listed below).",
    )
    p.set_defaults(func=run_quickstart)

    r = subparsers.add_parser(
        "report",
        help="rebuild comparison.md, plots and report.md of quickstart tier directories",
    )
    r.add_argument("runs", nargs="+", help="quickstart tier directories (RUN/lab, RUN/llm)")
    r.set_defaults(func=run_report)


def run_quickstart(args: argparse.Namespace) -> int:
    from setdpo.quickstart import run_quickstart

    run_quickstart(build_config(args))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from setdpo.report import build_report

    for run in args.runs:
        print(build_report(run))
    return 0
