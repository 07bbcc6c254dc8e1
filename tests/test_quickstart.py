"""`setdpo quickstart` end to end with the tiny model on a slice of ML-100K."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from setdpo.cli import main
from setdpo.evaluation.results import load_results

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("quickstart")]

EXPECTED_EVALS = ["random", "popularity", "base", "sft", "dpo", "mult"]


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> Path:
    out = tmp_path_factory.mktemp("quickstart") / "run"
    argv = ["quickstart", "--model", "tiny", "--budget", "smoke", "--out", str(out)]
    assert main([*argv, "--losses", "dpo", "mult"]) == 0
    return out


def test_every_artefact_exists(quickstart_dir: Path) -> None:
    for name in ["report.md", "comparison.md", "quickstart.json", "data/config.json"]:
        assert (quickstart_dir / name).is_file(), name
    for name in ["metrics", "training", "bound_gap"]:
        png = quickstart_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for run in ["sft", "dpo", "mult"]:
        run_dir = quickstart_dir / "runs" / run
        for name in ["setdpo_model.json", "resolved_config.yaml", "trainer_state.json"]:
            assert (run_dir / name).is_file(), run_dir / name
    assert sorted(p.stem for p in (quickstart_dir / "eval").glob("*.json")) == sorted(
        EXPECTED_EVALS
    )
    report = (quickstart_dir / "report.md").read_text()
    for name in ["metrics", "training", "bound_gap"]:
        assert f"(plots/{name}.png)" in report


def test_report_numbers_equal_the_metrics_files(quickstart_dir: Path) -> None:
    report = (quickstart_dir / "report.md").read_text()
    checked = 0
    for name in EXPECTED_EVALS:
        results = load_results(quickstart_dir / "eval" / f"{name}.json")
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} "))
        for metric in ["HR@1", "NDCG@5", "NDCG@10", "MRR"]:
            cell = results["metrics"][metric]
            text = f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"
            assert text in row, (name, metric, text, row)
            checked += 1
    assert checked == 4 * len(EXPECTED_EVALS)


def test_every_model_is_scored_on_the_same_contexts(quickstart_dir: Path) -> None:
    contexts = {
        name: [
            c["context_id"]
            for c in load_results(quickstart_dir / "eval" / f"{name}.json")["contexts"]
        ]
        for name in EXPECTED_EVALS
    }
    first = contexts["random"]
    assert len(first) == 16  # the smoke budget's test slice
    assert all(ids == first for ids in contexts.values())


def test_rerun_reuses_finished_stages(quickstart_dir: Path, capsys) -> None:
    stamp = json.loads((quickstart_dir / "stages" / "sft.json").read_text())["finished"]
    argv = ["quickstart", "--model", "tiny", "--budget", "smoke", "--out", str(quickstart_dir)]
    assert main([*argv, "--losses", "dpo", "mult"]) == 0
    printed = capsys.readouterr().out
    for stage in ["data", "sft", "dpo", "mult", "eval-base", "eval-mult"]:
        assert f"[quickstart] {stage}: reusing" in printed, stage
    assert json.loads((quickstart_dir / "stages" / "sft.json").read_text())["finished"] == stamp
