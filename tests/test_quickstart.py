"""`setdpo quickstart` end to end on a slice of ML-100K: a study with the lab tier (the lab
model from scratch, full fine-tuning) and the llm tier (the tiny model with LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from setdpo.cli import main
from setdpo.evaluation.results import load_results
from setdpo.quickstart import QuickstartConfig, quickstart_study
from setdpo.study import build_plan

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("quickstart")]

BASELINES = ["random", "popularity", "sasrec", "base", "sft"]
EXPECTED = {"lab": [*BASELINES, "dpo", "mult"], "llm": [*BASELINES, "mult"]}
ARGV = ["quickstart", "--llm-model", "tiny", "--budget", "smoke"]
LOSSES = ["--losses", "dpo", "mult", "--llm-losses", "mult"]


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quickstart") / "run"
    assert main([*ARGV, "--out", str(out), *LOSSES]) == 0
    return out


def eval_file(run: Path, model: str, tier: str) -> Path:
    loss = "" if model in BASELINES else f"loss={model},"
    return run / "eval" / model / f"tier={tier},{loss}seed=0.json"


def test_the_quickstart_is_a_study_of_two_tiers(tmp_path: Path) -> None:
    config = QuickstartConfig(llm_model="tiny", budget="smoke", losses=["dpo", "sdpo"])
    plan = build_plan(quickstart_study(config), tmp_path)
    prefs = sorted(name for name in plan.stages if name.startswith("pref/"))
    # each tier runs its own objectives (llm_losses defaults to sdpo and mult)
    assert prefs == [
        "pref/tier=lab,loss=dpo,seed=0",
        "pref/tier=lab,loss=sdpo,seed=0",
        "pref/tier=llm,loss=mult,seed=0",
        "pref/tier=llm,loss=sdpo,seed=0",
    ]
    sft = plan.stages["sft/tier=llm,seed=0"].settings
    assert (sft["model"], sft["peft"], sft["max_steps"]) == ("tiny", "lora", 4)
    lab = plan.stages["pref/tier=lab,loss=sdpo,seed=0"].settings
    assert (lab["peft"], lab["num_negatives"], lab["learning_rate"]) == ("none", 0, 1e-4)
    # the lab writes items as tokens, the llm as titles: one data directory each, same split
    data = {name: stage for name, stage in plan.stages.items() if name.startswith("data/")}
    assert sorted(data) == ["data/tier=lab,seed=0", "data/tier=llm,seed=0"]
    assert data["data/tier=lab,seed=0"].settings["items_as"] == "tokens"
    assert data["data/tier=llm,seed=0"].settings["items_as"] == "titles"
    assert plan.stages["sft/tier=lab,seed=0"].settings["item_init"] == "sasrec"


def test_default_objectives_are_the_ones_the_readme_times() -> None:
    # Objectives added later (lipo, simpo) run when named: the demo stays what it measured.
    assert QuickstartConfig().losses == ["dpo", "dmpo", "sdpo", "mult", "pl"]
    assert QuickstartConfig(mode="levels").losses == ["dpo", "dmpo", "sdpo", "mult", "pl", "mult2"]
    assert QuickstartConfig(losses=["lipo", "SimPO"]).losses == ["lipo", "simpo"]


def test_every_artefact_exists(quickstart_dir: Path) -> None:
    for name in ["report.md", "quickstart.json", "study.yaml", "commands.sh", "summary.json"]:
        assert (quickstart_dir / name).is_file(), name
    report = (quickstart_dir / "report.md").read_text()
    for name in ["bound", "training_0", "training_1"]:
        png = quickstart_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"(plots/{name}.png)" in report
    for tier, evals in EXPECTED.items():
        for run in [e for e in evals if e not in BASELINES]:
            run_dir = quickstart_dir / "runs" / "pref" / f"tier={tier},loss={run},seed=0"
            for name in ["setdpo_model.json", "resolved_config.yaml", "trainer_state.json"]:
                assert (run_dir / name).is_file(), (tier, run, name)
        for name in evals:
            assert eval_file(quickstart_dir, name, tier).is_file(), (tier, name)


def test_lab_tier_is_full_fine_tuning_and_llm_tier_lora(quickstart_dir: Path) -> None:
    runs = quickstart_dir / "runs" / "sft"
    lab = json.loads((runs / "tier=lab,seed=0" / "setdpo_model.json").read_text())
    llm = json.loads((runs / "tier=llm,seed=0" / "setdpo_model.json").read_text())
    assert lab["adapters"] == [] and llm["adapters"]


def test_report_numbers_equal_the_metrics_files(quickstart_dir: Path) -> None:
    report = (quickstart_dir / "report.md").read_text()
    checked = 0
    for tier, evals in EXPECTED.items():
        section = report.split(f"## tier={tier}")[1].split("\n## ")[0]
        for name in evals:
            results = load_results(eval_file(quickstart_dir, name, tier))
            row = next(line for line in section.splitlines() if line.startswith(f"| {name} |"))
            for metric in ["HR@1", "NDCG@5", "NDCG@10", "MRR"]:
                # one seed: the study's value is the results file's mean over contexts
                assert f"{results.metrics[metric].value:.4f} [" in row, (tier, name, metric, row)
                checked += 1
    assert checked == 4 * sum(len(e) for e in EXPECTED.values())


def test_every_model_of_a_tier_is_scored_on_the_same_contexts(quickstart_dir: Path) -> None:
    sizes = {"lab": 16, "llm": 12}  # the smoke budget's test slice, and the llm tier's subset
    for tier, evals in EXPECTED.items():
        contexts = {
            name: [
                c.context_id for c in load_results(eval_file(quickstart_dir, name, tier)).contexts
            ]
            for name in evals
        }
        first = contexts["random"]
        assert len(first) == sizes[tier]
        assert all(ids == first for ids in contexts.values())


def test_setwise_data_makes_mult_differ_from_its_pl_bound(quickstart_dir: Path) -> None:
    run = quickstart_dir / "runs" / "pref" / "tier=lab,loss=mult,seed=0"
    history = json.loads((run / "trainer_state.json").read_text())
    gaps = [h["bound_gap"] for h in history["log_history"] if "bound_gap" in h]
    bounds = [h["bound_gap_max"] for h in history["log_history"] if "bound_gap_max" in h]
    assert gaps and all(0 < g <= b for g, b in zip(gaps, bounds, strict=True))


def test_rerun_reuses_finished_stages(quickstart_dir: Path, capsys) -> None:
    records = sorted((quickstart_dir / "stages").rglob("*.json"))
    before = [p.read_text() for p in records]
    assert main([*ARGV, "--out", str(quickstart_dir), *LOSSES, "--jobs", "1"]) == 0
    assert f"{len(records)} finished, 0 to run" in capsys.readouterr().out
    assert [p.read_text() for p in records] == before
