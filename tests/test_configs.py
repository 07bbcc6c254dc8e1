"""Every file in configs/ is loaded and validated; the S-DPO protocol runs two steps on tiny."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from setdpo.cli import main
from setdpo.data import PrepareConfig
from setdpo.errors import InputError
from setdpo.evaluation.evaluate import EvalConfig
from setdpo.protocol import is_protocol, read_config_file, read_stage
from setdpo.training import PrefConfig, SFTConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAINING_FILES = sorted(CONFIGS.glob("*.yaml"))
PROTOCOLS = [p for p in TRAINING_FILES if is_protocol(read_config_file(p))]
REQUIRED = {"data": "prepared", "output_dir": "run", "init": "sft-run"}


def test_the_expected_configs_are_there() -> None:
    names = {p.name for p in TRAINING_FILES}
    assert {"sft.yaml", "pref.yaml"} <= names
    assert {p.name for p in PROTOCOLS} == {
        "sdpo_protocol.yaml",
        "multdpo_protocol.yaml",
        "mult2_ml1m_levels.yaml",
        "item_tokens_protocol.yaml",
    }


@pytest.mark.parametrize("path", TRAINING_FILES, ids=lambda p: p.name)
def test_training_sections_validate(path: Path) -> None:
    raw = read_config_file(path)
    stages = ["sft", "pref"] if is_protocol(raw) else [path.stem]
    for stage, cls in (("sft", SFTConfig), ("pref", PrefConfig)):
        if stage not in stages:
            continue
        values = read_stage(path, stage)
        config = load_config(
            cls, path, {k: v for k, v in REQUIRED.items() if k != "init" or stage == "pref"}
        )
        for field_name, value in values.items():  # every field in the file reached the config
            got = getattr(config, field_name)
            expected = value
            if field_name == "loss":
                continue  # canonicalised, checked below
            if hasattr(got, "value"):  # enums of TrainingArguments
                got = got.value
            assert got == expected or str(got) == str(expected), (path.name, field_name)


@pytest.mark.parametrize("path", PROTOCOLS, ids=lambda p: p.name)
def test_protocol_prepare_and_evaluate_sections_validate(path: Path) -> None:
    prepare = read_stage(path, "prepare")
    assert PrepareConfig(**prepare).source == prepare["source"]
    evaluate = EvalConfig(data="prepared", **read_stage(path, "evaluate"))
    assert evaluate.split == "test"


def test_protocols_state_the_papers_settings() -> None:
    sdpo = {s: read_stage(CONFIGS / "sdpo_protocol.yaml", s) for s in ("prepare", "pref")}
    assert sdpo["prepare"]["mode"] == "next" and sdpo["prepare"]["candidates"] == 20
    assert sdpo["prepare"]["template"] == "listing"
    pref = sdpo["pref"]
    assert (pref["loss"], pref["beta"], pref["num_negatives"]) == ("sdpo", 1.0, 3)
    assert (pref["lora_r"], pref["lora_alpha"], pref["average_logps"]) == (8, 32, False)
    assert pref["per_device_train_batch_size"] * pref["gradient_accumulation_steps"] == 128
    mult = {
        s: read_stage(CONFIGS / "multdpo_protocol.yaml", s)
        for s in ("prepare", "sft", "pref", "evaluate")
    }
    assert mult["prepare"]["template"] == "open" and mult["prepare"]["k"] > 1
    assert mult["sft"]["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert mult["pref"]["loss"] == "mult" and mult["evaluate"]["catalog"] is True
    # Mult-DPO fine-tunes every weight, at 1e-6 in the preference stage; S-DPO used LoRA.
    assert mult["sft"]["peft"] == mult["pref"]["peft"] == "none"
    assert mult["pref"]["learning_rate"] == 1e-6
    assert sdpo["pref"]["peft"] == "lora"
    levels = read_stage(CONFIGS / "mult2_ml1m_levels.yaml", "prepare")
    assert (levels["source"], levels["mode"]) == ("ml-1m", "levels")
    assert read_stage(CONFIGS / "mult2_ml1m_levels.yaml", "pref")["loss"] == "mult2"


def test_accelerate_deepspeed_config_is_zero2() -> None:
    config = yaml.safe_load((CONFIGS / "accelerate" / "deepspeed_zero2.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["zero_stage"] == 2


def test_protocol_with_a_stray_section_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare: {mode: next}\ntrainer: {beta: 1}\n")
    with pytest.raises(InputError, match=r"bad.yaml: protocol sections are .* got \['trainer'\]"):
        read_stage(bad, "prepare")


@pytest.mark.slow
def test_sdpo_protocol_runs_two_steps_on_tiny(tmp_path: Path, one_torch_thread) -> None:
    protocol = str(CONFIGS / "sdpo_protocol.yaml")
    data, sft, pref = tmp_path / "data", tmp_path / "sft", tmp_path / "sdpo"
    assert (
        main(["data", "prepare", "--config", protocol, "--out", str(data), "--max-examples", "24"])
        == 0
    )
    small = ["--max-steps", "2", "--gradient-accumulation-steps", "1", "--logging-steps", "1"]
    small += ["--max-prompt-length", "256"]
    argv = ["train", "sft", "--config", protocol, "--data", str(data), "--out", str(sft)]
    assert main([*argv, "--model", "tiny", *small]) == 0
    argv = ["train", "pref", "--config", protocol, "--data", str(data), "--init", str(sft)]
    assert main([*argv, "--out", str(pref), *small]) == 0
    resolved = yaml.safe_load((pref / "resolved_config.yaml").read_text())
    assert (resolved["loss"], resolved["beta"], resolved["num_negatives"]) == ("sdpo", 1.0, 3)
    assert resolved["lora_alpha"] == 32
    state = json.loads((pref / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert any("reward_accuracy" in entry for entry in state["log_history"])
