"""`setdpo ...`: a table of subcommands, each in its own module under `setdpo.commands`.

Each command module defines `add_parser(subparsers)`, which registers its parser and sets
`func` to a function taking the parsed arguments. Heavy imports stay inside those functions
so that `setdpo --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from setdpo.commands.options import ConfigParser
from setdpo.errors import InputError

# Modules under setdpo.commands; a module may register several subcommands.
COMMAND_MODULES = ["data", "train", "evaluate", "quickstart", "study", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setdpo",
        description="Align LLM recommenders with set-wise preferences.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=ConfigParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"setdpo.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except InputError as err:
        print(f"setdpo: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
