"""`setdpo quickstart` end to end on a slice of ML-100K: the lab tier (the lab model from
scratch, full fine-tuning) and the llm tier (the tiny model with LoRA) in two processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from setdpo.cli import main
from setdpo.evaluation.results import load_results

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("quickstart")]

BASELINES = ["random", "popularity", "sasrec", "base", "sft"]
EXPECTED = {"lab": [*BASELINES, "dpo", "mult"], "llm": [*BASELINES, "mult"]}
ARGV = ["quickstart", "--llm-model", "tiny", "--budget", "smoke"]
LOSSES = ["--losses", "dpo", "mult", "--llm-losses", "mult"]


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> Path:
    out = tmp_path_factory.mktemp("quickstart") / "run"
    assert main([*ARGV, "--out", str(out), *LOSSES]) == 0
    return out


def test_every_artefact_exists(quickstart_dir: Path) -> None:
    for name in ["report.md", "quickstart.json", "data/config.json", "logs/llm.log"]:
        assert (quickstart_dir / name).is_file(), name
    report = (quickstart_dir / "report.md").read_text()
    for tier, evals in EXPECTED.items():
        tier_dir = quickstart_dir / tier
        assert (tier_dir / "comparison.md").is_file()
        for name in ["metrics", "training", "bound_gap"]:
            png = tier_dir / "plots" / f"{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
            assert f"({tier}/plots/{name}.png)" in report
        for run in [e for e in evals if e not in BASELINES] + ["sft"]:
            for name in ["setdpo_model.json", "resolved_config.yaml", "trainer_state.json"]:
                assert (tier_dir / "runs" / run / name).is_file(), (tier, run, name)
        assert sorted(p.stem for p in (tier_dir / "eval").glob("*.json")) == sorted(evals)


def test_lab_tier_is_full_fine_tuning_and_llm_tier_lora(quickstart_dir: Path) -> None:
    lab = json.loads((quickstart_dir / "lab/runs/sft/setdpo_model.json").read_text())
    llm = json.loads((quickstart_dir / "llm/runs/sft/setdpo_model.json").read_text())
    assert lab["adapters"] == [] and llm["adapters"]


def test_report_numbers_equal_the_metrics_files(quickstart_dir: Path) -> None:
    report = (quickstart_dir / "report.md").read_text()
    checked = 0
    for tier, evals in EXPECTED.items():
        section = report.split(f"# {tier} tier")[1]
        for name in evals:
            results = load_results(quickstart_dir / tier / "eval" / f"{name}.json").to_dict()
            row = next(line for line in section.splitlines() if line.startswith(f"| {name} "))
            for metric in ["HR@1", "NDCG@5", "NDCG@10", "MRR"]:
                cell = results["metrics"][metric]
                text = f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"
                assert text in row, (tier, name, metric, text, row)
                checked += 1
    assert checked == 4 * sum(len(e) for e in EXPECTED.values())


def test_every_model_of_a_tier_is_scored_on_the_same_contexts(quickstart_dir: Path) -> None:
    sizes = {"lab": 16, "llm": 12}  # the smoke budget's test slice, and the llm tier's subset
    for tier, evals in EXPECTED.items():
        contexts = {
            name: [
                c.context_id
                for c in load_results(quickstart_dir / tier / "eval" / f"{name}.json").contexts
            ]
            for name in evals
        }
        first = contexts["random"]
        assert len(first) == sizes[tier]
        assert all(ids == first for ids in contexts.values())


def test_setwise_data_makes_mult_differ_from_its_pl_bound(quickstart_dir: Path) -> None:
    history = json.loads((quickstart_dir / "lab/runs/mult/trainer_state.json").read_text())
    gaps = [h["bound_gap"] for h in history["log_history"] if "bound_gap" in h]
    bounds = [h["bound_gap_max"] for h in history["log_history"] if "bound_gap_max" in h]
    assert gaps and all(0 < g <= b for g, b in zip(gaps, bounds, strict=True))


def test_rerun_reuses_finished_stages(quickstart_dir: Path, capsys) -> None:
    stamp = json.loads((quickstart_dir / "stages" / "lab-sft.json").read_text())["finished"]
    assert main([*ARGV, "--out", str(quickstart_dir), *LOSSES, "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    for stage in ["data", "lab-sft", "lab-dpo", "lab-eval-base", "llm-sft", "llm-eval-mult"]:
        assert f"[quickstart] {stage}: reusing" in printed, stage
    assert json.loads((quickstart_dir / "stages" / "lab-sft.json").read_text())["finished"] == stamp
