"""Every command builds its configuration one way: a protocol file's section for the command,
then `--field value` options, validated by the class; `--help` lists every field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from setdpo.cli import build_parser, main
from setdpo.commands.options import build_config, config_class

# command argv, the protocol section it reads (one field set there), one field override
COMMANDS = {
    "data prepare": (["data", "prepare"], {"prepare": {"mode": "next-k"}}, ["--k", "5"]),
    "data import": (
        ["data", "import", "--domain", "movie"],
        {"import": {"format": "trl"}},
        ["--files", "train=a.jsonl"],
    ),
    "train sft": (
        ["train", "sft", "--data", "D", "--out", "R"],
        {"sft": {"max_steps": 3}},
        ["--learning-rate", "0.5"],
    ),
    "train pref": (
        ["train", "pref", "--data", "D", "--init", "S", "--out", "R"],
        {"pref": {"beta": 0.25}},
        ["--loss", "dpo"],
    ),
    "evaluate": (
        ["evaluate", "--out", "r.json"],
        {"evaluate": {"data": "D", "limit": 7}},
        ["--metrics", "HR@1", "MRR"],
    ),
    "recommend": (
        ["recommend", "--history", "Heat (1995)"],
        {"recommend": {"candidates": ["Toy Story (1995)"]}},
        ["--top", "1"],
    ),
    "quickstart": (["quickstart"], {"quickstart": {"budget": "smoke"}}, ["--llm-losses", "dpo"]),
    "serve": (["serve", "RUN"], {"serve": {"max_batch": 4}}, ["--port", "9001"]),
}
EXPECTED = {
    "data prepare": {"mode": "next-k", "k": 5},
    "data import": {"format": "trl", "files": {"train": "a.jsonl"}},
    "train sft": {"max_steps": 3, "learning_rate": 0.5},
    "train pref": {"beta": 0.25, "loss": "dpo"},
    "evaluate": {"limit": 7, "metrics": ["HR@1", "MRR"]},
    "recommend": {"candidates": ["Toy Story (1995)"], "top": 1},
    "quickstart": {"budget": "smoke", "llm_losses": ["dpo"]},
    "serve": {"model": "RUN", "max_batch": 4, "port": 9001},
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_lists_every_field_of_the_command_s_config(name, capsys) -> None:
    argv = COMMANDS[name][0][:2] if name.split()[0] in ("data", "train") else COMMANDS[name][0][:1]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    args = build_parser().parse_args(COMMANDS[name][0])
    for field in dataclasses.fields(config_class(args.config_class)):
        if field.init:
            assert f"--{field.name}" in text, (name, field.name)
    assert "--config" in text


@pytest.mark.parametrize("name", list(COMMANDS))
def test_config_section_then_field_overrides(name, tmp_path: Path) -> None:
    argv, section, override = COMMANDS[name]
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({"description": "every command's section", **section}))
    args = build_parser().parse_args([*argv, "--config", str(protocol), *override])
    config = build_config(args)
    for field, value in EXPECTED[name].items():
        assert getattr(config, field) == value, (name, field)


def test_eval_config_refuses_a_bad_prompt_budget_with_a_message(tmp_path: Path, capsys) -> None:
    argv = ["evaluate", "--model", "random", "--data", str(tmp_path), "--out", "r.json"]
    assert main([*argv, "--max-prompt-length", "0"]) == 2
    assert "max_prompt_length must be >= 1, got 0" in capsys.readouterr().err


def test_tuple_dict_and_bool_fields_parse_from_the_command_line() -> None:
    argv = ["data", "prepare", "--split-ratios", "0.7", "0.2", "0.1", "--overwrite"]
    argv += ["--max-examples-per-split", "train=20,valid=5", "--level_ratings", "5", "4"]
    config = build_config(build_parser().parse_args(argv))
    assert config.split_ratios == (0.7, 0.2, 0.1) and config.level_ratings == (5.0, 4.0)
    assert config.max_examples_per_split == {"train": 20, "valid": 5} and config.overwrite
