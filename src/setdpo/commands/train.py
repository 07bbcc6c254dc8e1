"""`setdpo train sft|pref|selfplay`: build a configuration (YAML + overrides) and train.

    setdpo train sft  --data DIR --model M --out RUN [--config FILE] [--FIELD VALUE ...]
    setdpo train pref --data DIR --init RUN_SFT --loss mult --out RUN2 [--config FILE] [...]
    setdpo train selfplay --config PROTOCOL --data DIR --model M --out OUT [--rounds 2] [...]

`selfplay` runs rounds of both stages (`setdpo.training.selfplay`), their fields from the
protocol file's ``sft:`` and ``pref:`` sections (and `--sft k=v,...`, `--pref k=v,...`).

Any configuration field (listed by `--help`) can be given as `--field-name value` or
`--field_name value`; it overrides the YAML file (`setdpo.commands.options`). `--resume`
continues from the run directory's last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from setdpo.commands import options
from setdpo.commands.options import ConfigParser, config_command

STAGES = {
    "sft": (
        "SFT on the positive titles (completion-only loss).",
        ("--model", "model", "Base model: tiny, embedded:smollm2-135m, a hub id or a folder."),
        "setdpo.training.config:SFTConfig",
    ),
    "pref": (
        "Preference alignment from an SFT run.",
        ("--init", "init", "SFT run directory: starting policy and reference."),
        "setdpo.training.config:PrefConfig",
    ),
}
SELFPLAY = (
    "SPRec-style self-play: rounds of SFT, then preference alignment whose negatives are the "
    "model's own top predictions (negatives: self). The stages' fields come from the "
    "--config protocol file's sft: and pref: sections; OUT/round-R/{sft,pref} are ordinary "
    "runs and the last round's pref run is the result."
)
EPILOG = "Any configuration field may follow as --field-name VALUE (listed below)."
NAMED = ("data", "model", "init", "output_dir", "loss")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("train", help="Train: SFT, then preference alignment.")
    stages = parser.add_subparsers(dest="stage", required=True, parser_class=ConfigParser)
    for stage, (help_text, (flag, field, field_help), config) in STAGES.items():
        sub = config_command(
            stages,
            stage,
            config,
            stage,
            named=NAMED,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
        )
        sub.add_argument("--data", help="Prepared data directory.")
        sub.add_argument(flag, dest=field, help=field_help)
        sub.add_argument("--out", dest="output_dir", help="Run directory.")
        if stage == "pref":
            sub.add_argument("--loss", help="Objective (listed below).")
        _common_options(sub)
    sub = config_command(
        stages,
        "selfplay",
        "setdpo.training.selfplay:SelfPlayConfig",
        "selfplay",
        named=("data", "model", "output_dir"),
        help="Self-play (SPRec): rounds of SFT then preference alignment on self negatives.",
        description=SELFPLAY,
        epilog=EPILOG,
    )
    sub.add_argument("--data", help="Prepared data directory of every stage.")
    sub.add_argument("--model", help="What round 1's SFT starts from (a base model or a run).")
    sub.add_argument("--out", dest="output_dir", help="Output folder (round-R/sft, round-R/pref).")
    _common_options(sub, "Keep finished stages; continue an unfinished one from its checkpoint.")


def _common_options(
    sub: Any,
    resume: str = "Continue from the last complete checkpoint (from the start if there is none).",
) -> None:
    sub.add_argument("--resume", action="store_true", help=resume)
    sub.add_argument("--help-config", action="store_true", help="List every configuration field.")
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from setdpo.training.callbacks import NonFiniteLossError

    if args.help_config:
        options.field_parser(options.config_class(args.config_class), args.config_prog).print_help()
        return 0
    if args.stage == "selfplay":
        from setdpo.training import selfplay

        config = options.build_config(args, load=selfplay.load_config)
        train = selfplay.train_selfplay
    else:
        config = options.build_config(args)
    if args.stage == "sft":
        from setdpo.training.sft import train_sft as train
    elif args.stage == "pref":
        from setdpo.training.preference import train_pref as train
    try:
        run_dir = train(config, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"setdpo: error: {err}", file=sys.stderr)
        return 1
    print(f"run saved to {run_dir}")
    return 0
