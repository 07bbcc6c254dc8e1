"""Self-play (`setdpo train selfplay`, `training/selfplay.py`) and `negatives: self`.

One 2-round run of the tiny model on the prepared ML-100K sample, from the command line,
with every preference draw recorded: the tests check its layout, that round 2 starts from
round 1's weights, and that every round's negatives are its SFT model's own top
non-positive candidates, scored again here independently with `score_texts`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import setdpo.training.preference as preference_module
from setdpo.data import load_split
from setdpo.errors import InputError
from setdpo.model import load, read_run_model
from setdpo.scoring import ScoringOptions, score_texts
from setdpo.serving.info import read_info
from setdpo.training import PrefConfig, SFTConfig, load_config
from setdpo.training.reference import MEMO_DIR
from setdpo.training.selfplay import RECORD_FILE, SelfPlayConfig
from setdpo.training.selfplay import load_config as load_selfplay

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("training")]

QUIET = {"disable_tqdm": True, "save_strategy": "no", "logging_steps": 1, "seed": 0}
SFT = {**QUIET, "max_steps": 4, "max_train_examples": 8, "max_eval_examples": 4}
SFT |= {"learning_rate": 3e-3}
PREF = {**QUIET, "max_steps": 2, "max_train_examples": 8, "max_eval_examples": 4}
PREF |= {"loss": "dpo", "eval_on_start": False, "learning_rate": 1e-2}
TRAIN_EXAMPLES = 8


def _recording_draws(train: Callable[[], Any]) -> dict[str, list[dict[str, Any]]]:
    """Run `train` with every preference draw recorded: {round folder name: [{"index": [B],
    "kept": [B][k]}]}."""
    draws: dict[str, list[dict[str, Any]]] = {}
    real = preference_module.PreferenceTrainer.draw_hard_negatives

    def recording(self: Any, model: torch.nn.Module, batch: dict) -> dict:
        cut = real(self, model, batch)
        name = Path(self.args.output_dir).parent.name
        index, kept = batch["example_index"].tolist(), cut["candidate_index"].tolist()
        draws.setdefault(name, []).append({"index": index, "kept": kept})
        return cut

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preference_module.PreferenceTrainer, "draw_hard_negatives", recording)
        train()
    return draws


@pytest.fixture(scope="module")
def selfplay(
    ml100k_next_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """OUT of `setdpo train selfplay` (2 rounds) and the draws of each preference run."""
    from setdpo.cli import main

    root = tmp_path_factory.mktemp("selfplay")
    protocol = root / "protocol.yaml"
    protocol.write_text(yaml.safe_dump({"sft": SFT, "pref": PREF, "selfplay": {"rounds": 2}}))
    out = root / "out"
    argv = ["train", "selfplay", "--config", str(protocol), "--data", str(ml100k_next_dir)]
    argv += ["--model", "tiny", "--out", str(out)]
    draws = _recording_draws(lambda: main(argv) == 0 or pytest.fail("selfplay failed"))
    return out, draws


def _top_non_positives(
    run: Path, data: Path, indices: list[int], k: int, average: bool = False
) -> dict[int, set]:
    """Per training example: the `k` negatives `run` scores highest (score_texts), and the
    k-th and (k+1)-th scores (the margin a float tolerance must not cross)."""
    examples = load_split(data, "train")[:TRAIN_EXAMPLES]
    model, tokenizer = load(run, device="cpu", dtype=torch.float32)
    chosen = [examples[i] for i in indices]
    prompts, titles = [e.prompt for e in chosen], [e.candidates for e in chosen]
    scores = score_texts(model, tokenizer, prompts, titles, ScoringOptions(average=average))
    top = {}
    for i, example, row in zip(indices, chosen, scores, strict=True):
        negatives = [j for j, level in enumerate(example.levels) if level == 2]
        ranked = sorted(negatives, key=lambda j: -row[j])
        assert row[ranked[k - 1]] - row[ranked[k]] > 1e-4, "a near tie: pick another seed"
        top[i] = {j for j, level in enumerate(example.levels) if level == 1} | set(ranked[:k])
    return top


def test_selfplay_layout_record_and_portable_runs(
    selfplay: tuple[Path, dict], ml100k_next_dir: Path
) -> None:
    out, _ = selfplay
    record = json.loads((out / RECORD_FILE).read_text())
    assert record == {
        "setdpo_selfplay": 1,
        "rounds": 2,
        "start": "tiny",
        "completed": [
            {"round": 1, "sft": "round-1/sft", "pref": "round-1/pref"},
            {"round": 2, "sft": "round-2/sft", "pref": "round-2/pref"},
        ],
        "result": "round-2/pref",
    }
    for r in (1, 2):
        for stage in ("sft", "pref"):
            assert (out / f"round-{r}" / stage / "setdpo_model.json").is_file()
    resolved = {
        (r, stage): yaml.safe_load((out / f"round-{r}/{stage}/resolved_config.yaml").read_text())
        for r in (1, 2)
        for stage in ("sft", "pref")
    }
    assert resolved[1, "sft"]["model"] == "tiny"
    assert resolved[2, "sft"]["model"] == "../../round-1/pref"  # relative: OUT moves whole
    assert resolved[2, "sft"]["max_steps"] == 4  # the protocol's sft section
    for r in (1, 2):
        pref = resolved[r, "pref"]
        assert pref["init"] == "../sft" and pref["output_dir"] == "."
        assert (pref["negatives"], pref["num_negatives"], pref["loss"]) == ("self", 1, "dpo")
    # Every stage's adapters, in order: round 2's SFT run holds round 1's, then its own.
    adapters = {
        (r, stage): [a.name for a in read_run_model(out / f"round-{r}" / stage).adapters]
        for r in (1, 2)
        for stage in ("sft", "pref")
    }
    assert adapters[1, "sft"] == ["sft"] and adapters[1, "pref"] == ["sft", "pref"]
    assert adapters[2, "sft"] == ["sft", "pref", "sft-2"]
    assert adapters[2, "pref"] == ["sft", "pref", "sft-2", "pref-2"]
    # Served or exported, the result names the base model the chain started from.
    assert read_info(out / "round-2/pref").base_model == "tiny"
    assert read_info(out / "round-2/sft").base_model == "tiny"
    # Round 2 trained (its SFT log is there, its loss finite).
    history = json.loads((out / "round-2/sft/trainer_state.json").read_text())["log_history"]
    assert len([entry for entry in history if "loss" in entry]) == 4


def test_round_two_starts_from_round_one_weights(selfplay: tuple[Path, dict]) -> None:
    """Round 2's SFT starts from round 1's preference model: its frozen (merged) weights
    are round 1's merged weights exactly, and its own adapter moved away from them."""
    out, _ = selfplay
    previous, _ = load(out / "round-1/pref", device="cpu", dtype=torch.float32, merge_all=True)
    sft2, _ = load(out / "round-2/sft", device="cpu", dtype=torch.float32)
    name = "model.layers.0.self_attn.q_proj"
    start = dict(sft2.named_modules())[f"base_model.model.{name}"].base_layer.weight
    torch.testing.assert_close(start, previous.get_submodule(name).weight, rtol=0, atol=0)
    base, _ = load(out / "round-1/sft", device="cpu", dtype=torch.float32, merge_all=True)
    assert not torch.equal(base.get_submodule(name).weight, start)  # round 1's pref moved it
    trained, _ = load(out / "round-2/sft", device="cpu", dtype=torch.float32, merge_all=True)
    assert not torch.equal(trained.get_submodule(name).weight, start)


@pytest.mark.parametrize("round_", [1, 2])
def test_self_negatives_are_the_sft_models_top_non_positives(
    round_: int, selfplay: tuple[Path, dict], ml100k_next_dir: Path
) -> None:
    """Every draw of round r's preference run kept the positive and the one negative that
    round r's SFT model scores highest, scored here again by `score_texts`."""
    out, draws = selfplay
    recorded = draws[f"round-{round_}"]
    assert len(recorded) == 2  # one draw per step
    indices = sorted({i for draw in recorded for i in draw["index"]})
    top = _top_non_positives(out / f"round-{round_}/sft", ml100k_next_dir, indices, k=1)
    for draw in recorded:
        for index, kept in zip(draw["index"], draw["kept"], strict=True):
            assert {j for j in kept if j >= 0} == top[index]


def test_self_negatives_are_fixed_and_need_a_starting_model(
    selfplay: tuple[Path, dict], ml100k_next_dir: Path, tmp_path: Path
) -> None:
    """`train pref --negatives self` (here 3 of them): the same candidates in every epoch,
    the 3 top-scored negatives of `init`, even as the policy moves."""
    from setdpo.training.preference import build_pref_trainer

    out, _ = selfplay
    init = out / "round-1/pref"  # any run: here round 1's result
    values = {**PREF, "negatives": "self", "num_negatives": 3, "max_train_examples": 4}
    values |= {"data": str(ml100k_next_dir), "init": str(init), "output_dir": str(tmp_path)}
    trainer = build_pref_trainer(load_config(PrefConfig, None, values))
    batch = next(iter(trainer.get_train_dataloader()))
    first = trainer.draw_hard_negatives(trainer.model, batch)["candidate_index"].tolist()
    trainer.train()  # 2 steps at a high learning rate: the policy moves, the draw does not
    trainer.train_dataset.set_epoch(5)
    again = trainer.draw_hard_negatives(trainer.model, batch)["candidate_index"].tolist()
    assert again == first
    indices = batch["example_index"].tolist()
    top = _top_non_positives(init, ml100k_next_dir, indices, k=3)
    assert [set(row) for row in first] == [top[i] for i in indices]


def test_negatives_from_the_previous_rounds_model(ml100k_next_dir: Path, tmp_path: Path) -> None:
    """`negatives_from: previous` (the authors' code): round 2's negatives are round 1's
    preference model's top non-positives; round 1's, started from a base model, its SFT's."""
    from setdpo.training.selfplay import train_selfplay

    out = tmp_path / "out"
    values = {"output_dir": str(out), "data": str(ml100k_next_dir), "model": "tiny"}
    values |= {"negatives_from": "previous", "sft": SFT, "pref": PREF}
    config = load_selfplay(None, values)
    draws = _recording_draws(lambda: train_selfplay(config))
    resolved = yaml.safe_load((out / "round-2/pref/resolved_config.yaml").read_text())
    assert resolved["negatives_from"] == "../../round-1/pref"
    first = yaml.safe_load((out / "round-1/pref/resolved_config.yaml").read_text())
    assert first["negatives_from"] is None
    for round_, scorer in ((1, "round-1/sft"), (2, "round-1/pref")):
        recorded = draws[f"round-{round_}"]
        indices = sorted({i for draw in recorded for i in draw["index"]})
        top = _top_non_positives(out / scorer, ml100k_next_dir, indices, k=1)
        for draw in recorded:
            for index, kept in zip(draw["index"], draw["kept"], strict=True):
                assert {j for j in kept if j >= 0} == top[index]
    # its log-probs are memoised in that run, as a reference's are in an SFT run
    assert list((out / "round-1/pref" / MEMO_DIR).iterdir())


def test_a_reference_free_objective_draws_self_negatives_by_its_scores(
    selfplay: tuple[Path, dict], ml100k_next_dir: Path, tmp_path: Path
) -> None:
    """simpo has no reference, yet `negatives: self` ranks by the starting model's
    length-averaged log-probs (simpo's scores), memoised for the draw only."""
    from setdpo.training.preference import build_pref_trainer

    init = selfplay[0] / "round-1/sft"
    values = {**PREF, "loss": "simpo", "negatives": "self", "num_negatives": 2}
    values |= {"data": str(ml100k_next_dir), "init": str(init), "output_dir": str(tmp_path)}
    trainer = build_pref_trainer(load_config(PrefConfig, None, values))
    assert trainer.reference is None and trainer.hard_negatives.initial is not None
    batch = next(iter(trainer.get_train_dataloader()))
    kept = trainer.draw_hard_negatives(trainer.model, batch)["candidate_index"].tolist()
    indices = batch["example_index"].tolist()
    top = _top_non_positives(init, ml100k_next_dir, indices, k=2, average=True)
    assert [set(row) - {-1} for row in kept] == [top[i] for i in indices]


def test_negatives_from_needs_self_negatives(ml100k_next_dir: Path, tmp_path: Path) -> None:
    values = {"data": str(ml100k_next_dir), "init": "tiny", "output_dir": str(tmp_path)}
    with pytest.raises(InputError, match="negatives_from"):
        load_config(PrefConfig, None, {**values, "negatives_from": "tiny"})


def _selfplay(tmp_path: Path, **values: Any) -> SelfPlayConfig:
    base = {"output_dir": str(tmp_path / "out"), "data": str(tmp_path), "model": "tiny"}
    return load_selfplay(None, {**base, **values})


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"rounds": 0}, "rounds"),
        ({"rounds": "2"}, "rounds"),
        ({"output_dir": None}, "output_dir"),
        ({"sft": {"output_dir": "x"}}, "output_dir"),
        ({"pref": {"init": "x"}}, "init"),
        ({"pref": {"negatives_from": "x"}}, "negatives_from"),
        ({"negatives_from": "last"}, "negatives_from"),
        ({"pref": {"beta": -1.0}}, "beta"),
        ({"sft": {"max_stepz": 3}}, "max_stepz"),
        ({"pref": {"num_negatives": "one"}}, "num_negatives"),
        ({"roundz": 2}, "roundz"),
    ],
)
def test_bad_selfplay_configs_name_the_field(
    values: dict[str, Any], named: str, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=named):
        _selfplay(tmp_path, **values)


def test_selfplay_reads_a_protocol_file_and_options_override_its_sections(tmp_path: Path) -> None:
    from setdpo.commands.options import parse_fields

    protocol = tmp_path / "protocol.yaml"
    sections = {"sft": {"max_steps": 7, "model": "tiny", "data": "one"}, "pref": {"beta": 0.1}}
    own = {"rounds": 3, "output_dir": "o", "data": "two"}  # every stage's data, over the sections
    protocol.write_text(yaml.safe_dump({**sections, "selfplay": own}))
    argv = ["--sft", "max_steps=9,bf16=false", "--pref", "loss=dpo,negatives=random"]
    config = load_selfplay(protocol, parse_fields(SelfPlayConfig, argv))
    assert config.rounds == 3 and config.output_dir == str(tmp_path / "o")
    assert config.data == str(tmp_path / "two")
    assert config.sft == {
        "max_steps": 9,
        "bf16": False,
        "model": "tiny",
        "data": str(tmp_path / "one"),
    }
    assert config.pref == {"beta": 0.1, "loss": "dpo", "negatives": "random"}  # for train pref
    sft = config.stage("sft", 3)
    assert isinstance(sft, SFTConfig) and sft.model == str(tmp_path / "o/round-2/pref")
    assert sft.max_steps == 9 and sft.data == str(tmp_path / "two")
    pref = config.stage("pref", 2)
    assert (pref.init, pref.output_dir) == (
        str(tmp_path / "o/round-2/sft"),
        str(tmp_path / "o/round-2/pref"),
    )
    assert (pref.negatives, pref.num_negatives, pref.beta, pref.loss) == ("self", 1, 0.1, "dpo")


def test_the_readme_selfplay_command_builds_its_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's command, configuration and all (S-DPO's protocol file, SPRec's settings
    over its pref section), without training."""
    import shlex

    from setdpo.cli import build_parser
    from setdpo.commands import options
    from setdpo.training import selfplay

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("setdpo train selfplay")]
    monkeypatch.chdir(root)
    args = build_parser().parse_args(shlex.split(line)[1:])
    config = options.build_config(args, load=selfplay.load_config)
    assert config.rounds == 3 and config.model == "embedded:smollm2-135m"
    pref = config.stage("pref", 3)
    assert (pref.loss, pref.beta, pref.num_negatives, pref.negatives) == ("dpo", 0.1, 1, "self")
    assert pref.lora_r == 8 and pref.init == "runs/selfplay/round-3/sft"
    assert config.stage("sft", 3).model == "runs/selfplay/round-2/pref"
