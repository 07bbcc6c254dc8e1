"""`setdpo study --config FILE --out DIR`, `setdpo study report DIR` and
`setdpo study select --config FILE` (a tuned study's selection stage)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "study",
        help="run a seeded grid of stages (data, SFT, objectives, evaluations) and report it",
        description="Expand a study configuration (configs/studies/*.yaml) into stages, each a "
        "setdpo command, shared where equal; run those not finished (an interrupted study "
        "resumes), then write DIR/report.md with intervals over seeds and contexts, paired "
        "differences with Holm's correction and minimal detectable differences. "
        "`setdpo study report DIR` rebuilds the report from whatever runs exist; "
        "`setdpo study select --config DIR/stages/select/TAG.yaml` is a tuned study's "
        "selection stage (the best valid result among the tune combinations).",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["report", "select"],
        help="report: rebuild the report of DIR; select: run a selection stage from --config",
    )
    p.add_argument("dir", nargs="?", help="with report: the study directory")
    p.add_argument(
        "--config", help="study configuration file (YAML); with select: the stage's file"
    )
    p.add_argument("--out", help="study directory")
    p.add_argument(
        "--name",
        help="keep this study's files (study.yaml, commands.sh, report) in OUT/NAME, so that "
        "several studies share OUT's stages (equal ones run once)",
    )
    p.add_argument("--jobs", type=int, default=1, help="stages run in parallel (worker processes)")
    p.add_argument("--fresh", action="store_true", help="re-run every stage, finished or not")
    p.add_argument(
        "--print-commands",
        action="store_true",
        help="print every stage's command in dependency order (for SLURM or any scheduler); run nothing",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from setdpo.errors import InputError

    if args.action == "report":
        from setdpo.study.report import build_study_report

        if not args.dir:
            raise InputError("setdpo study report DIR: the study directory is missing")
        print(build_study_report(args.dir, args.name))
        return 0
    if args.action == "select":
        from setdpo.study.tune import load_select, select

        if not args.config:
            raise InputError("setdpo study select needs --config FILE (stages/select/TAG.yaml)")
        choice = select(load_select(args.config))
        print(f"[select] {choice['values']} ({choice['metric']} on valid) -> {choice['run']}")
        return 0
    if not args.config or not args.out:
        raise InputError("setdpo study needs --config FILE and --out DIR")
    from setdpo.study import build_plan, load_study, run_study
    from setdpo.study.runner import commands_text, write_plan_files

    config = load_study(args.config)
    if args.print_commands:
        plan = build_plan(config, args.out, args.name)
        write_plan_files(plan)
        print(commands_text(plan), end="")
        return 0
    from setdpo.study.runner import StageFailed

    try:
        report = run_study(config, args.out, jobs=args.jobs, fresh=args.fresh, name=args.name)
    except StageFailed as err:
        print(f"setdpo: study stage failed: {err}", file=sys.stderr)
        return 1
    print(report.read_text(encoding="utf-8"))
    print(f"[study] report: {report}")
    return 0
