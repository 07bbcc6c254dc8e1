"""`setdpo quickstart` (what `make demo` runs): the main job, a study over two tiers."""

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
        "write a report. It runs as a study (setdpo study): finished stages are reused unless "
        "--fresh, and `setdpo study report OUT` rebuilds the report. Every QuickstartConfig "
        "field is an option (listed below).",
    )
    p.set_defaults(func=run_quickstart)


def run_quickstart(args: argparse.Namespace) -> int:
    from setdpo.quickstart import run_quickstart

    run_quickstart(build_config(args))
    return 0
