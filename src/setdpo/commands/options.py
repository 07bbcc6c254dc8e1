"""One way from `--config FILE` and `--field value` options to a configuration dataclass.

Every command that runs from a configuration (`data prepare`, `data import`, `train sft|pref`,
`evaluate`, `recommend`, `quickstart`) registers a `ConfigParser` with `config_command`: a
few options of its own (files to write, thread counts, older spellings), `--config FILE`,
and one `--field-name VALUE` option per field of its configuration class, with the help of
the field's metadata (`--help` lists them). The file's section for the command is read
first, the command's own options next, the field options last
(`setdpo.protocol.load_config`); the class's `__post_init__` validates the result.

The field options come from `transformers.HfArgumentParser`, built only when a command
parses or prints its help, so that `setdpo --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

HELP_TITLE = "configuration fields (override --config; --field_name also accepted)"
_NUMBER = re.compile(r"-\d+|-\d*\.\d+(e[-+]?\d+)?|-inf|-nan", re.IGNORECASE)


def config_class(path: str) -> type:
    """The class at ``"module:Class"``."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _mapping(value_type: Any) -> Any:
    """A parser of ``key=value[,key=value]``; values of an ``Any`` mapping are read as YAML
    scalars (``max_steps=20,bf16=true`` -> 20 and True)."""
    convert = yaml_scalar if value_type is Any else value_type

    def parse(text: str) -> dict[str, Any]:
        """ "train=200,valid=50" -> {"train": 200, "valid": 50}."""
        try:
            pairs = (part.split("=") for part in text.split(","))
            return {k.strip(): convert(v.strip()) for k, v in pairs}
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"expected key=value[,key=value], got {text!r}"
            ) from err

    return parse


def yaml_scalar(text: str) -> Any:
    """``text`` as a YAML file would read it (``20`` an int, ``true`` a bool, ``a`` a str)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(str(err)) from err


def _without_none(hint: Any) -> Any:
    """``X | None`` -> ``X``; any other hint as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def field_parser(cls: type, prog: str | None = None) -> argparse.ArgumentParser:
    """`--field value` options for every field of `cls`; the parsed namespace holds only the
    fields given (defaults are suppressed: they must not override the file)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(cls, prog=prog, allow_abbrev=False, add_help=False)
    hints = typing.get_type_hints(cls)
    for action in parser._actions:
        # On the actions, not `set_defaults`: argparse would copy parser-level defaults in.
        action.default = argparse.SUPPRESS
        hint = _without_none(hints.get(action.dest))
        kind, args = typing.get_origin(hint), typing.get_args(hint)
        if kind is tuple:  # HfArgumentParser leaves tuples to one string
            action.nargs, action.type = "+", args[0]
        elif kind is dict:
            action.type = _mapping(args[1])
    return parser


def parse_fields(cls: type, argv: list[str], prog: str | None = None) -> dict[str, Any]:
    """Typed field values from `--max-steps 20 --beta 0.5 ...` (exits with usage on errors)."""
    return vars(field_parser(cls, prog).parse_args(argv))


class ConfigParser(argparse.ArgumentParser):
    """A parser whose unknown options are kept (as `overrides`) for its configuration class's
    field parser, and whose help lists those fields. Without `config_class` it is a plain
    `argparse.ArgumentParser` (the parser class of every subcommand table)."""

    config_class: str | None = None

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self.config_class is None:
            return super().parse_known_args(args, namespace)
        fields, rest = self._field_options(list(sys.argv[1:] if args is None else args))
        namespace, extras = super().parse_known_args(rest, namespace)
        namespace.overrides = fields + extras
        return namespace, []

    def _field_options(self, args: list[str]) -> tuple[list[str], list[str]]:
        """The field options (with their values) out of `args`, and the rest: parsed first,
        a field option's value could be taken for the command's positional argument
        (`serve --port 8001 DIR` would read 8001 as the model)."""
        actions = field_parser(config_class(self.config_class))._option_string_actions
        fields, rest, i = [], [], 0
        while i < len(args):
            name = args[i].split("=", 1)[0]
            action = None if name in self._option_string_actions else actions.get(name)
            target = rest if action is None else fields
            target.append(args[i])
            i += 1
            if action is None or "=" in target[-1] or action.nargs == 0:
                continue
            while i < len(args) and (not args[i].startswith("-") or _NUMBER.fullmatch(args[i])):
                fields.append(args[i])
                i += 1
                if action.nargs in (None, "?"):
                    break
        return fields, rest

    def format_help(self) -> str:
        text = super().format_help()
        if self.config_class is None:
            return text
        formatter = self._get_formatter()
        formatter.start_section(HELP_TITLE)
        formatter.add_arguments(field_parser(config_class(self.config_class), self.prog)._actions)
        formatter.end_section()
        return f"{text}\n{formatter.format_help()}"


def config_command(
    subparsers: Any,
    name: str,
    config: str,
    section: str,
    named: tuple[str, ...] = (),
    **parser_options: Any,
) -> ConfigParser:
    """Register the subcommand `name` of configuration class `config` (``"module:Class"``)
    reading section `section` of a protocol file, with `--config FILE`. `named`: the command's
    own options that set the field of the same name (shown in its usage line)."""
    parser = subparsers.add_parser(name, allow_abbrev=False, **parser_options)
    if not isinstance(parser, ConfigParser):
        raise TypeError(f"{name}: the subcommand table needs parser_class=ConfigParser")
    parser.config_class = config
    parser.add_argument(
        "--config", help=f"YAML/JSON file of fields (or a protocol file's `{section}` section)"
    )
    parser.set_defaults(
        config_class=config, config_section=section, config_prog=parser.prog, config_named=named
    )
    return parser


def build_config(
    args: argparse.Namespace,
    named: dict[str, Any] | None = None,
    load: Callable[[Any, dict[str, Any]], Any] | None = None,
) -> Any:
    """The command's configuration: its file section, then its own options (`config_command`'s
    `named`, and `named` here: field values its options spell otherwise; None = not given),
    then the `--field value` options. `load(file, values)` builds it (default
    `setdpo.protocol.load_config` of the command's section; `train selfplay` passes its own,
    which also reads the file's stage sections)."""
    from setdpo.protocol import load_config

    cls = config_class(args.config_class)
    given = {k: getattr(args, k, None) for k in args.config_named} | (named or {})
    values = {k: v for k, v in given.items() if v is not None}
    values.update(parse_fields(cls, args.overrides, args.config_prog))
    if load is not None:
        return load(args.config, values)
    return load_config(cls, args.config_section, args.config, values)
