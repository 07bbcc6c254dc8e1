"""`setdpo quickstart` (what `make demo` runs) and `setdpo report`."""

from __future__ import annotations

import argparse

from setdpo.quickstart import BUDGETS, TIERS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="the main job: ML-100K -> SFT -> every objective -> evaluation -> report",
        description="Prepare ML-100K (next-k, k=3, open prompt), then for each tier (lab: a "
        "small model trained from scratch; llm: SmolLM2 with LoRA) run SFT, align with each "
        "objective, evaluate the baselines and every model on the same test contexts, and "
        "write a report. Finished stages are reused unless --fresh.",
    )
    p.add_argument("--out", default="runs/quickstart", help="run directory (default: %(default)s)")
    p.add_argument("--tiers", nargs="+", choices=TIERS, default=list(TIERS), help="tiers to run")
    p.add_argument("--lab-model", default="lab", help="lab tier model (default: %(default)s)")
    p.add_argument(
        "--llm-model", default="embedded:smollm2-135m", help="llm tier model (default: %(default)s)"
    )
    p.add_argument(
        "--losses",
        nargs="+",
        default=[],
        help="lab tier objectives (default: every objective of setdpo.losses, the multi-level "
        "ones only in levels mode)",
    )
    p.add_argument(
        "--llm-losses",
        nargs="+",
        default=["sdpo", "mult"],
        help="llm tier objectives (default: %(default)s)",
    )
    p.add_argument("--budget", choices=list(BUDGETS), default="small")
    p.add_argument("--mode", default="next-k", help="data mode (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--jobs", type=int, default=2, help="tiers run at once, one thread each (default: 2)"
    )
    p.add_argument("--fresh", action="store_true", help="re-run stages already finished")
    p.set_defaults(func=run_quickstart)

    r = subparsers.add_parser(
        "report",
        help="rebuild comparison.md, plots and report.md of quickstart tier directories",
    )
    r.add_argument("runs", nargs="+", help="quickstart tier directories (RUN/lab, RUN/llm)")
    r.set_defaults(func=run_report)


def run_quickstart(args: argparse.Namespace) -> int:
    from setdpo.quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig(
        out=args.out,
        tiers=args.tiers,
        lab_model=args.lab_model,
        llm_model=args.llm_model,
        losses=args.losses,
        llm_losses=args.llm_losses,
        budget=args.budget,
        mode=args.mode,
        seed=args.seed,
        jobs=args.jobs,
        fresh=args.fresh,
    )
    run_quickstart(config)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from setdpo.report import build_report

    for run in args.runs:
        print(build_report(run))
    return 0
