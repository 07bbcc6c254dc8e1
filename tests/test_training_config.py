"""Training configurations: shipped YAML files, overrides, validation, resolved round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from setdpo.cli import build_parser
from setdpo.commands.options import build_config, parse_fields
from setdpo.errors import InputError
from setdpo.training.config import (
    RESOLVED_CONFIG,
    PrefConfig,
    SFTConfig,
    load_config,
    write_resolved_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REQUIRED = {"data": "/data/prepared", "output_dir": "/runs/x", "init": "/runs/sft"}


def _required(cls: type) -> dict[str, str]:
    return {k: v for k, v in REQUIRED.items() if k != "init" or cls is PrefConfig}


@pytest.mark.parametrize(("name", "cls"), [("sft.yaml", SFTConfig), ("pref.yaml", PrefConfig)])
def test_shipped_configs_load_and_round_trip(name: str, cls: type, tmp_path: Path) -> None:
    config = load_config(cls, CONFIGS / name, _required(cls))
    assert config.remove_unused_columns is False
    assert config.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    write_resolved_config(config, tmp_path)
    again = load_config(cls, tmp_path / RESOLVED_CONFIG)
    assert again.to_dict() == config.to_dict()


def test_overrides_beat_the_file_and_keep_types() -> None:
    overrides = parse_fields(
        PrefConfig, ["--max-steps", "20", "--beta", "0.5", "--no-share-prefix"]
    )
    assert overrides == {"max_steps": 20, "beta": 0.5, "share_prefix": False}
    config = load_config(PrefConfig, CONFIGS / "pref.yaml", {**REQUIRED, **overrides})
    assert (config.max_steps, config.beta, config.share_prefix) == (20, 0.5, False)
    assert config.num_negatives == 3  # from the file


def test_cli_flags_and_overrides_build_the_config(tmp_path: Path) -> None:
    argv = ["train", "pref", "--data", "D", "--init", "S", "--loss", "Mult-DPO", "--out", "R"]
    argv += ["--config", str(CONFIGS / "pref.yaml"), "--max-steps", "7", "--num_negatives", "5"]
    config = build_config(build_parser().parse_args(argv))
    assert (config.data, config.init, config.output_dir) == ("D", "S", "R")
    assert (config.loss, config.max_steps, config.num_negatives) == ("mult", 7, 5)


def test_unknown_cli_field_exits_with_usage() -> None:
    args = build_parser().parse_args(["train", "sft", "--data", "D", "--out", "R", "--betta", "1"])
    with pytest.raises(SystemExit) as info:
        build_config(args)
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"loss": "ipo"}, "unknown loss 'ipo'"),
        ({"beta": 0.0}, "beta must be > 0"),
        ({"num_negatives": -1}, "num_negatives must be >= 0"),
        ({"init": None}, "init (--init) is required"),
        ({"remove_unused_columns": True}, "remove_unused_columns must be False"),
        ({"hard_temperature": 0.0}, "hard_temperature must be > 0"),
    ],
)
def test_invalid_pref_values_are_named(values: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(PrefConfig, None, {**REQUIRED, **values})


def test_full_fine_tuning_by_peft_none_or_rank_zero() -> None:
    lora = load_config(PrefConfig, None, REQUIRED)
    assert lora.peft == "lora" and lora.lora_settings().r == 8
    for values in ({"peft": "none"}, {"lora_r": 0}):
        config = load_config(SFTConfig, None, {**_required(SFTConfig), **values})
        assert config.peft == "none" and config.lora_settings() is None
    assert parse_fields(PrefConfig, ["--peft", "none"]) == {"peft": "none"}
    with pytest.raises(InputError, match=r"lora_r must be >= 1 .*\(0 = full fine-tuning\)"):
        load_config(PrefConfig, None, {**REQUIRED, "lora_r": -1})
    with pytest.raises(SystemExit):
        parse_fields(PrefConfig, ["--peft", "qlora"])


def test_valid_sample_is_bounded_by_default_and_zero_means_all() -> None:
    assert load_config(SFTConfig, None, _required(SFTConfig)).max_eval_examples == 512
    every = parse_fields(PrefConfig, ["--max-eval-examples", "0"])
    assert load_config(PrefConfig, None, {**REQUIRED, **every}).max_eval_examples is None


def test_unknown_yaml_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("beta: 1.0\nbetta: 2.0\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.yaml: unknown PrefConfig fields \['betta'\]"):
        load_config(PrefConfig, path, REQUIRED)
