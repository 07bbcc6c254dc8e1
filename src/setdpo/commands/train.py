"""`setdpo train sft|pref`: build a configuration (YAML + overrides) and run a training stage.

    setdpo train sft  --data DIR --model M --out RUN [--config FILE] [--FIELD VALUE ...]
    setdpo train pref --data DIR --init RUN_SFT --loss mult --out RUN2 [--config FILE] [...]

Any configuration field (see `--help-config`) can be given as `--field-name value` or
`--field_name value`; it overrides the YAML file. `--resume` continues from the run
directory's last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

STAGES = {
    "sft": (
        "SFT on the positive titles (completion-only loss).",
        ("--model", "model", "Base model: tiny, embedded:smollm2-135m, a hub id or a folder."),
    ),
    "pref": (
        "Preference alignment from an SFT run.",
        ("--init", "init", "SFT run directory: starting policy and reference."),
    ),
}
EPILOG = "Any configuration field may follow as --field-name VALUE (list: --help-config)."


class _OverridesParser(argparse.ArgumentParser):
    """Keeps unknown `--field value` options as `overrides` for the configuration parser."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.overrides = extras
        return namespace, []


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("train", help="Train: SFT, then preference alignment.")
    stages = parser.add_subparsers(dest="stage", required=True, parser_class=_OverridesParser)
    for stage, (help_text, (flag, field, field_help)) in STAGES.items():
        sub = stages.add_parser(
            stage, help=help_text, description=help_text, epilog=EPILOG, allow_abbrev=False
        )
        sub.add_argument("--data", help="Prepared data directory.")
        sub.add_argument(flag, dest=field, help=field_help)
        sub.add_argument("--out", dest="output_dir", help="Run directory.")
        if stage == "pref":
            sub.add_argument("--loss", help="Objective (--help-config lists them).")
        sub.add_argument("--config", help="YAML file of configuration fields.")
        sub.add_argument("--resume", action="store_true", help="Continue from the last checkpoint.")
        sub.add_argument(
            "--help-config", action="store_true", help="List every configuration field."
        )
        sub.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """The stage's configuration: YAML file, then the named flags, then the field overrides."""
    from setdpo.training.config import PrefConfig, SFTConfig, load_config, parse_overrides

    cls = SFTConfig if args.stage == "sft" else PrefConfig
    named = ("data", "model", "init", "output_dir", "loss")
    values = {k: getattr(args, k) for k in named if getattr(args, k, None) is not None}
    values.update(parse_overrides(cls, args.overrides))
    return load_config(cls, args.config, values)


def run(args: argparse.Namespace) -> int:
    from setdpo.training.callbacks import NonFiniteLossError
    from setdpo.training.config import override_parser

    if args.help_config:
        from setdpo.training.config import PrefConfig, SFTConfig

        override_parser(SFTConfig if args.stage == "sft" else PrefConfig).print_help()
        return 0
    config = build_config(args)
    if args.stage == "sft":
        from setdpo.training.sft import train_sft as train
    else:
        from setdpo.training.preference import train_pref as train
    try:
        run_dir = train(config, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"setdpo: error: {err}", file=sys.stderr)
        return 1
    print(f"run saved to {run_dir}")
    return 0
