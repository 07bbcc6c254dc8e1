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
        ({"loss": "simpo", "simpo_gamma": -0.1}, "simpo_gamma must be a finite number >= 0"),
        ({"simpo_gamma": float("nan")}, "simpo_gamma must be a finite number >= 0, got nan"),
        ({"dynamicpo_margin": -1.0}, "dynamicpo_margin must be a finite number >= 0"),
        ({"dynamicpo_alpha": 1.0}, "dynamicpo_alpha must be >= 0 and < 1, got 1.0"),
        ({"dynamicpo_alpha": float("nan")}, "dynamicpo_alpha must be >= 0 and < 1, got nan"),
        ({"recpo_lambda": float("inf")}, "recpo_lambda must be a finite number >= 0, got inf"),
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


def test_the_objective_s_entry_sets_scoring_and_options() -> None:
    # simpo is length-normalised (average_logps on whatever was asked) and takes simpo_gamma.
    simpo = load_config(PrefConfig, None, {**REQUIRED, "loss": "simpo", "simpo_gamma": 1.25})
    assert simpo.average_logps and simpo.scoring_options().average
    assert simpo.loss_options() == {"simpo_gamma": 1.25}
    assert parse_fields(PrefConfig, ["--simpo-gamma", "0.3"]) == {"simpo_gamma": 0.3}
    recpo = load_config(PrefConfig, None, {**REQUIRED, "loss": "RecPO", "recpo_lambda": 2.0})
    assert recpo.loss_options() == {"recpo_lambda": 2.0} and not recpo.average_logps
    dynamic = load_config(PrefConfig, None, {**REQUIRED, "loss": "dynamicpo"})
    assert dynamic.loss_options() == {"dynamicpo_margin": 2.0, "dynamicpo_alpha": 0.5}
    lipo = load_config(PrefConfig, None, {**REQUIRED, "loss": "LiPO-lambda"})
    assert lipo.loss == "lipo" and not lipo.average_logps and lipo.loss_options() == {}


def test_valid_sample_is_bounded_by_default_and_zero_means_all() -> None:
    assert load_config(SFTConfig, None, _required(SFTConfig)).max_eval_examples == 512
    every = parse_fields(PrefConfig, ["--max-eval-examples", "0"])
    assert load_config(PrefConfig, None, {**REQUIRED, **every}).max_eval_examples is None


def test_unknown_yaml_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("beta: 1.0\nbetta: 2.0\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.yaml: unknown PrefConfig fields \['betta'\]"):
        load_config(PrefConfig, path, REQUIRED)


# Fields that need a package setdpo does not install (or, FSDP, a distributed launch):
# (values, the package or launch the message names, the install command)
NEEDS_A_PACKAGE = {
    "deepspeed": ({"deepspeed": str(CONFIGS / "accelerate/deepspeed_zero2.yaml")}, "deepspeed",
                  "pip install deepspeed"),
    "wandb": ({"report_to": "wandb"}, "wandb", "pip install wandb"),
    "tensorboard": ({"report_to": ["none", "tensorboard"]}, "tensorboard",
                    "pip install tensorboard"),
    "mlflow": ({"report_to": ["mlflow"]}, "mlflow", "pip install mlflow"),
    "bitsandbytes": ({"optim": "paged_adamw_8bit"}, "bitsandbytes", "pip install bitsandbytes"),
    "onnxruntime": ({"torch_compile_backend": "onnxrt"}, "onnxruntime",
                    "pip install onnxruntime"),
    "fsdp": ({"fsdp": "full_shard"}, "distributed launch", "torchrun --nproc_per_node N"),
}  # fmt: skip


@pytest.fixture
def nothing_optional_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine with none of the optional packages (wherever the suite runs)."""
    from setdpo.training import optional

    monkeypatch.setattr(optional, "installed", lambda module: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.mark.usefixtures("nothing_optional_installed")
@pytest.mark.parametrize("cls", [SFTConfig, PrefConfig])
@pytest.mark.parametrize("case", sorted(NEEDS_A_PACKAGE))
def test_a_field_that_needs_a_missing_package_names_it_and_its_install(
    case: str, cls: type
) -> None:
    """Found by the fuzzing: `--deepspeed FILE` without deepspeed was transformers'
    `PackageNotFoundError`; `report_to: wandb`, a bitsandbytes optimizer or a compile
    backend failed only once the model had loaded."""
    values, package, install = NEEDS_A_PACKAGE[case]
    with pytest.raises(InputError) as err:
        load_config(cls, None, {**_required(cls), **values})
    message = str(err.value)
    assert package in message and install in message and "\n" not in message
    assert next(iter(values)) in message  # the field


def test_an_unknown_compile_backend_is_named() -> None:
    with pytest.raises(InputError, match="'nosuch' is not a torch.compile backend; known: "):
        load_config(SFTConfig, None, {**_required(SFTConfig), "torch_compile_backend": "nosuch"})


def test_optional_packages_that_are_installed_or_absent_from_the_fields_pass() -> None:
    from setdpo.training import optional

    assert optional.installed("torch") and not optional.installed("no_such_package_27")
    config = load_config(SFTConfig, None, {**_required(SFTConfig), "report_to": "none"})
    assert config.report_to == [] and config.deepspeed is None
