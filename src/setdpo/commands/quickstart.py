"""`setdpo quickstart` (what `make demo` runs) and `setdpo report`."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="the main job: ML-100K -> SFT -> alignment -> evaluation -> report",
        description="Prepare ML-100K, run SFT, align with each objective, evaluate the "
        "baselines and every model on the same test contexts, and write a report. "
        "Finished stages are reused unless --fresh.",
    )
    p.add_argument("--out", default="runs/quickstart", help="run directory (default: %(default)s)")
    p.add_argument("--model", default="embedded:smollm2-135m", help="base model")
    p.add_argument(
        "--losses",
        nargs="+",
        default=["dpo", "sdpo", "mult"],
        help="objectives (any of dpo dmpo sdpo mult mult2 pl; default: %(default)s)",
    )
    p.add_argument("--budget", choices=["small", "full", "smoke"], default="small")
    p.add_argument("--mode", default="next", help="data mode (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="re-run stages already finished")
    p.set_defaults(func=run_quickstart)

    r = subparsers.add_parser(
        "report",
        help="rebuild comparison.md, plots and report.md of quickstart directories",
    )
    r.add_argument("runs", nargs="+", help="quickstart run directories")
    r.set_defaults(func=run_report)


def run_quickstart(args: argparse.Namespace) -> int:
    from setdpo.quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig(
        out=args.out,
        model=args.model,
        losses=args.losses,
        budget=args.budget,
        mode=args.mode,
        seed=args.seed,
        fresh=args.fresh,
    )
    run_quickstart(config)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from setdpo.report import build_report

    for run in args.runs:
        print(build_report(run))
    return 0
