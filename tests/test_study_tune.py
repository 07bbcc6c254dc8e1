"""A study's ``tune`` section (`setdpo.study.tune`): the plan trains every combination per
objective, setting and seed, evaluates each on the valid split and selects by the valid
metric only; the tiny tuned study runs, its choice is blind to the test split (the prepared
test split and the test results removed, the valid evaluations and the selection run again:
the same choice), and its report shows the choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from setdpo.cli import main
from setdpo.errors import InputError
from setdpo.study import build_plan, load_study
from setdpo.study.plan import Plan, StudyConfig
from setdpo.study.runner import record_path, run_stages
from setdpo.study.tune import SelectConfig, select

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "studies" / "smoke.yaml"
SMOKE_TUNE = ROOT / "configs" / "studies" / "smoke_tune.yaml"
TUNE = {"pref.beta": [0.1, 1.0], "pref.learning_rate": [1.0e-3, 1.0e-2]}
RUN = "runs/pref/loss=mult,seed=0"  # the chosen run's folder: the untuned run's


def config(**changes) -> StudyConfig:
    raw = yaml.safe_load(SMOKE.read_text())
    raw.update(changes)
    return StudyConfig(**raw)


def upstream(plan: Plan, name: str) -> set[str]:
    """Every stage ``name`` needs, directly or not."""
    found: set[str] = set()
    todo = list(plan.stages[name].after)
    while todo:
        stage = todo.pop()
        if stage not in found:
            found.add(stage)
            todo += plan.stages[stage].after
    return found


def test_without_tune_the_plan_is_the_untuned_one(tmp_path: Path) -> None:
    plain = build_plan(config(), tmp_path).stages
    empty = build_plan(config(tune={}), tmp_path).stages
    assert {n: s.key for n, s in plain.items()} == {n: s.key for n, s in empty.items()}
    assert {s.kind for s in plain.values()} == {"data", "sft", "pref", "eval"}


def test_tune_trains_each_combination_and_selects_on_valid_results_only(tmp_path: Path) -> None:
    plan = build_plan(config(tune=TUNE, seeds=[0], grid={"pref.loss": ["sdpo", "mult"]}), tmp_path)
    kinds = [s.kind for s in plan.stages.values()]
    assert kinds == sorted(kinds, key=["data", "sft", "pref", "valid", "select", "eval"].index)
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "data": 1,
        "sft": 1,
        "pref": 8,  # 2 objectives x 4 combinations
        "valid": 8,
        "select": 2,
        "eval": 4,  # popularity, sft, and the chosen sdpo and mult runs on test
    }
    tag = "loss=mult,beta=1.0,learning_rate=0.001,seed=0"
    pref = plan.stages[f"pref/{tag}"]
    assert (pref.settings["beta"], pref.settings["learning_rate"]) == (1.0, 1.0e-3)
    assert pref.after == ["sft/seed=0"]
    valid = plan.stages[f"valid/mult/{tag}"]
    assert valid.settings["split"] == "valid" and valid.settings["model"] == str(pref.output)
    assert valid.output == tmp_path / "valid" / "mult" / f"{tag}.json"
    chosen = plan.stages["select/loss=mult,seed=0"]
    assert chosen.command[:2] == ["study", "select"] and chosen.output == tmp_path / RUN
    assert [c["values"] for c in chosen.settings["candidates"]] == [
        {"beta": b, "learning_rate": lr} for b in (0.1, 1.0) for lr in (1.0e-3, 1.0e-2)
    ]
    assert chosen.after == [n for n in plan.stages if n.startswith("valid/mult/")]
    # the test evaluation is the untuned one's, of the chosen run's copy
    test = plan.stages["eval/mult/loss=mult,seed=0"]
    assert test.after == [chosen.name] and test.settings["model"] == str(tmp_path / RUN)
    assert "split" not in test.settings  # EvalConfig's default: test
    assert plan.cells[0].prefs == {"sdpo": "select/loss=sdpo,seed=0", "mult": chosen.name}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tune": {"sft.max_steps": [1, 2]}}, "only pref.<field> can be tuned"),
        ({"tune": {"evaluate.limit": [1]}}, "only pref.<field> can be tuned"),
        ({"tune": {"pref.loss": ["dpo"]}}, "also a grid axis"),
        (
            {"tune": {"pref.beta": [0.1]}, "grid": {"pref.beta": [1], "pref.loss": ["mult"]}},
            "also a grid axis",
        ),
        (
            {
                "tune": {"pref.beta": [0.1]},
                "grid": {"t": {"a": {"pref.beta": 1}}, "pref.loss": ["mult"]},
            },
            "also a grid axis",
        ),
        ({"tune": {"pref.betta": [0.1]}}, "unknown fields \\['betta'\\]"),
        ({"tune": {"pref.output_dir": ["x"]}}, "set by the study"),
        ({"tune": {"pref.beta": []}}, "non-empty list"),
        ({"tune": {"pref.beta": 0.1}}, "non-empty list"),
        ({"tune": {"pref.beta": [0.1, 0.1]}}, "repeated values"),
        ({"tune": {"pref.learning_rate": ["1e-4"]}}, "tune pref.learning_rate.*write 1.0e-4"),
        ({"tune": {"pref.beta": [0.1]}, "evaluate": {"split": "valid"}}, "evaluate.split"),
        (
            {
                "tune": {"pref.beta": [0.1]},
                "grid": {"t": {"v": {"evaluate.split": "valid"}}, "pref.loss": ["mult"]},
            },
            "evaluate.split",
        ),
        ({"tune": {"pref.beta": [0.1]}, "evaluate": {"metrics": ["MRR"]}}, "lacks it"),
        ({"tune": {"pref.beta": [0.1]}, "metric": "HR@3"}, "lacks it"),
    ],
)
def test_bad_tune_sections_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        config(**changes)


@pytest.mark.parametrize(
    "prepare", [{"max_examples_per_split": {"valid": 0}}, {"split_ratios": [0.9, 0.0, 0.1]}]
)
def test_a_tuned_study_refuses_data_without_a_valid_split(prepare: dict, tmp_path: Path) -> None:
    study = config(tune={"pref.beta": [0.1, 0.2]}, prepare={"source": "ml-100k", **prepare})
    with pytest.raises(InputError, match="data/seed=0: tune chooses on the valid split"):
        build_plan(study, tmp_path)
    build_plan(config(prepare={"source": "ml-100k", **prepare}), tmp_path)  # untuned: fine


def _candidate(folder: Path, name: str, split: str, values: list[float]) -> dict:
    run = folder / "runs" / name
    run.mkdir(parents=True)
    (run / "weights.txt").write_text(name)
    results = folder / "valid" / f"{name}.json"
    results.parent.mkdir(exist_ok=True)
    contexts = [{"context_id": str(i), "values": {"NDCG@5": v}} for i, v in enumerate(values)]
    protocol = {"split": split}
    results.write_text(json.dumps({"protocol": protocol, "metrics": {}, "contexts": contexts}))
    return {"values": {"beta": name}, "run": str(run), "results": str(results)}


def test_select_keeps_the_best_valid_mean_the_first_of_equal_ones(tmp_path: Path) -> None:
    candidates = [
        _candidate(tmp_path, "a", "valid", [0.2, 0.4]),
        _candidate(tmp_path, "b", "valid", [0.5, 0.3]),  # 0.4: the best, first
        _candidate(tmp_path, "c", "valid", [0.4, 0.4]),  # 0.4 too
    ]
    out, choice = tmp_path / "runs" / "chosen", tmp_path / "select" / "x.json"
    out.mkdir()
    (out / "stale.txt").write_text("an earlier choice")  # replaced whole
    made = select(SelectConfig("NDCG@5", candidates, str(out), str(choice)))
    assert made["chosen"] == 1 and made["values"] == {"beta": "b"}
    assert [c["valid"] for c in made["candidates"]] == pytest.approx([0.3, 0.4, 0.4])
    assert sorted(p.name for p in out.iterdir()) == ["weights.txt"]
    assert (out / "weights.txt").read_text() == "b"
    assert json.loads(choice.read_text()) == made
    assert made["run"] == "../runs/chosen"  # relative to the choice's folder


@pytest.mark.parametrize(
    ("split", "values", "metric", "message"),
    [
        ("test", [0.5], "NDCG@5", "split 'test'; selection reads 'valid'"),
        ("valid", [], "NDCG@5", "the valid split has no contexts"),
        ("valid", [0.5], "MRR", "no 'MRR'"),
    ],
)
def test_select_refuses_other_splits_empty_ones_and_missing_metrics(
    tmp_path: Path, split: str, values: list[float], metric: str, message: str
) -> None:
    candidates = [_candidate(tmp_path, "a", split, values)]
    settings = SelectConfig(metric, candidates, str(tmp_path / "out"), str(tmp_path / "c.json"))
    with pytest.raises(InputError, match=message):
        select(settings)
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.json").exists()


# --- the tiny tuned study, run for real ---------------------------------------------------


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study") / "tuned"
    argv = ["study", "--config", str(SMOKE_TUNE), "--out", str(out), "--jobs", "2"]
    assert main(argv) == 0
    return out


def mean_metric(path: Path, metric: str = "NDCG@5") -> float:
    return float(np.mean([c["values"][metric] for c in json.loads(path.read_text())["contexts"]]))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.xdist_group("study_tune")
def test_the_tuned_study_tests_the_run_chosen_on_valid_and_reports_it(tuned_dir: Path) -> None:
    choice = json.loads((tuned_dir / "select" / "loss=mult,seed=0.json").read_text())
    valid = [mean_metric(tuned_dir / "select" / c["results"]) for c in choice["candidates"]]
    assert [c["valid"] for c in choice["candidates"]] == pytest.approx(valid, abs=1e-12)
    assert choice["chosen"] == int(np.argmax(valid))  # the first of the best
    chosen = tuned_dir / "select" / choice["candidates"][choice["chosen"]]["run"]
    assert files(tuned_dir / RUN) == files(chosen)  # the copy the test evaluation read
    test = json.loads((tuned_dir / "eval" / "mult" / "loss=mult,seed=0.json").read_text())
    assert (test["protocol"]["split"], test["protocol"]["model"]) == ("test", str(tuned_dir / RUN))
    assert not list((tuned_dir / "eval" / "mult").glob("*beta=*"))  # no candidate on test

    summary = json.loads((tuned_dir / "summary.json").read_text())
    [row] = summary["tuning"]
    assert (row["objective"], row["seed"], row["chosen"]) == ("mult", 0, choice["values"])
    assert [c["value"] for c in row["valid"]] == pytest.approx(valid, abs=1e-12)
    test_value = mean_metric(tuned_dir / "eval" / "mult" / "loss=mult,seed=0.json")
    assert row["test"] == pytest.approx(test_value, abs=1e-12)
    report = (tuned_dir / "report.md").read_text()
    values = ", ".join(f"{k}={v}" for k, v in choice["values"].items())
    assert "## Tuning" in report and f"| mult | 0 | {values} |" in report
    assert f"| {test_value:.4f} |" in report


@pytest.mark.slow
@pytest.mark.xdist_group("study_tune")
def test_the_choice_is_blind_to_the_test_split(tuned_dir: Path, tmp_path: Path) -> None:
    """Structurally, the selection depends on no test evaluation; then, in a moved copy of
    the study (which re-runs nothing), with the prepared test split and every test result
    deleted, the valid evaluations and the selection run again: the same choice."""
    plan = build_plan(load_study(SMOKE_TUNE), tuned_dir)
    name = "select/loss=mult,seed=0"
    needs = upstream(plan, name)
    assert {plan.stages[n].kind for n in needs} == {"data", "sft", "pref", "valid"}
    assert all(plan.stages[n].settings["split"] == "valid" for n in needs if n.startswith("valid/"))
    assert not any("/eval/" in json.dumps(plan.stages[n].settings) for n in [*needs, name])
    before = json.loads((tuned_dir / "select" / "loss=mult,seed=0.json").read_text())

    moved = tmp_path / "moved"
    shutil.copytree(tuned_dir, moved)
    plan = build_plan(load_study(SMOKE_TUNE), moved)
    assert set(run_stages(plan).values()) == {"reused"}  # a moved study re-runs nothing
    shutil.rmtree(moved / "data" / "seed=0" / "hf" / "test")
    shutil.rmtree(moved / "eval")
    for stage in plan.stages.values():
        if stage.kind in ("valid", "select", "eval"):
            record_path(plan, stage).unlink()
    (moved / "select" / "loss=mult,seed=0.json").unlink()
    only = {n: s for n, s in plan.stages.items() if n in needs or n == name}
    status = run_stages(Plan(plan.config, plan.out, only, plan.cells, plan.home))
    assert {n for n, s in status.items() if s == "ran"} == {
        name,
        *(n for n in needs if n.startswith("valid/")),
    }
    after = json.loads((moved / "select" / "loss=mult,seed=0.json").read_text())
    assert after["chosen"] == before["chosen"] and after["values"] == before["values"]
    for got, want in zip(after["candidates"], before["candidates"], strict=True):
        assert got["values"] == want["values"]
        assert got["valid"] == pytest.approx(want["valid"], abs=1e-9)
    assert files(moved / RUN) == files(tuned_dir / RUN)

    # the choice follows the valid results: raise another candidate's, select again by hand
    other = next(i for i, c in enumerate(after["candidates"]) if i != after["chosen"])
    results = moved / "select" / after["candidates"][other]["results"]
    data = json.loads(results.read_text())
    for context in data["contexts"]:
        context["values"]["NDCG@5"] = 1.0
    results.write_text(json.dumps(data))
    stage_file = moved / "stages" / "select" / "loss=mult,seed=0.yaml"
    assert main(["study", "select", "--config", str(stage_file)]) == 0
    flipped = json.loads((moved / "select" / "loss=mult,seed=0.json").read_text())
    assert flipped["chosen"] == other
    run = moved / "select" / after["candidates"][other]["run"]
    assert files(moved / RUN) == files(run)
