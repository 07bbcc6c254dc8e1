"""The study report's preference runs at their chosen step (`setdpo.study.runs`): a tiny real
study whose pref section stops early runs as is, and its table and summary hold the numbers
read independently from each run's trainer_state.json and setdpo_model.json; the rule for
which log entry is "at the chosen step" on hand-written logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from setdpo.cli import main
from setdpo.study.runs import chosen_point, valid_curve

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "studies" / "smoke.yaml"
CAP = 12


def early_stopping_study(path: Path) -> Path:
    """The smoke study on one seed with early stopping in its pref section (a learning rate
    far too high: the valid loss stops improving within a few steps), and a bundle axis
    against a run of fixed length that evaluates every step too."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw |= {"seeds": [0], "baselines": [], "n_resamples": 100}
    raw["pref"] |= {"max_steps": CAP, "learning_rate": 0.3, "eval_strategy": "steps"}
    raw["pref"] |= {"eval_steps": 1, "early_stopping_patience": 1}
    raw["grid"] = {
        "stop": {
            "early": {"pref.early_stopping_patience": 1},
            "fixed": {"pref.early_stopping_patience": None, "pref.max_steps": 4},
        },
        "pref.loss": ["sdpo", "mult"],
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_study(config: Path, out: Path) -> None:
    assert main(["study", "--config", str(config), "--out", str(out), "--jobs", "2"]) == 0


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("early")
    out = home / "study"
    run_study(early_stopping_study(home / "study.yaml"), out)
    return out


def expected(run: Path) -> dict:
    """A run at its chosen step, read straight from its files."""
    state = json.loads((run / "trainer_state.json").read_text())
    best = json.loads((run / "setdpo_model.json").read_text()).get("best")
    chosen = best["step"] if best else state["global_step"]
    at_step = [e for e in state["log_history"] if e["step"] == chosen and "eval_loss" in e]
    entry = at_step[0]  # the evaluation during training (under early stopping, a second one
    # after training evaluates the restored weights, logged at the last step)
    return {
        "best": best,
        "chosen_step": chosen,
        "last_step": state["global_step"],
        "max_steps": state["max_steps"],
        "metric_value": best["value"] if best else entry["eval_loss"],
        **{k: entry.get(f"eval_{k}") for k in ("reward_margin", "reward_accuracy")},
        **{k: entry.get(f"eval_{k}") for k in ("a_over_b", "bound_gap")},
    }


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


@pytest.mark.slow
@pytest.mark.xdist_group("study")
def test_report_shows_each_run_at_the_step_its_files_say(study: Path) -> None:
    summary = json.loads((study / "summary.json").read_text())
    report = (study / "report.md").read_text()
    runs = {row["run"]: row for row in summary["runs"]}
    assert sorted(runs) == sorted(
        f"runs/pref/stop={s},loss={o},seed=0" for s in ("early", "fixed") for o in ("sdpo", "mult")
    )
    for name, row in runs.items():
        want = expected(study / name)
        early = "stop=early" in name
        assert (want["best"] is not None) == early == row["best"]
        if early:  # the chosen step is the restored best's, on the selection metric
            assert row["chosen_step"] == want["best"]["step"]
            assert row["metric"] == want["best"]["metric"] == "eval_loss"
            assert row["stopped_early"] == (want["last_step"] < CAP) and want["max_steps"] == CAP
        else:
            assert row["chosen_step"] == want["last_step"] == want["max_steps"] == 4
            assert not row["stopped_early"]
        for key in ("chosen_step", "last_step", "max_steps", "metric_value"):
            assert row[key] == want[key], (name, key)
        for key in ("reward_margin", "reward_accuracy", "a_over_b", "bound_gap"):
            assert row[key] == want[key], (name, key)
        assert (row["a_over_b"] is not None) == ("loss=mult" in name)
        assert (row["source"], row["source_step"]) == ("valid", row["chosen_step"])
        # the table's line, formatted from the same numbers
        numbers = [_cell(want[k]) for k in ("reward_margin", "reward_accuracy")]
        numbers += [_cell(want[k]) for k in ("a_over_b", "bound_gap")]
        line = (
            f"| {row['objective']} | 0 | {want['chosen_step']} ({'best' if early else 'last'}) "
            f"| {want['last_step']} / {want['max_steps']} | {'yes' if row['stopped_early'] else 'no'} "
            f"| eval_loss {want['metric_value']:.4f} | "
            + " | ".join(numbers)
            + f" | valid (step {want['chosen_step']}) |"
        )
        assert line in report, line
        # the curve: every evaluation of the trajectory, the chosen step on it at its value
        steps, values = row["curve"]["step"], row["curve"]["value"]
        assert steps == list(range(want["last_step"] + 1))
        assert values[steps.index(row["chosen_step"])] == pytest.approx(want["metric_value"])
    assert any(row["stopped_early"] for row in runs.values())
    for index in (0, 1):  # a valid-curve figure per setting, shown under its table
        assert (study / "plots" / f"valid_{index}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"![valid_{index}](plots/valid_{index}.png)" in report
    assert (
        report.index("### stop=early") < report.index("![valid_0]") < report.index("### stop=fixed")
    )


@pytest.mark.slow
@pytest.mark.xdist_group("study")
def test_an_early_stopped_study_is_finished_and_times_count_the_steps_taken(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert not list((study / "runs").rglob("checkpoint-*"))  # removed by each run
    capsys.readouterr()
    run_study(early_stopping_study(tmp_path / "study.yaml"), study)
    assert "11 finished, 0 to run" in capsys.readouterr().out
    summary = json.loads((study / "summary.json").read_text())
    for what in ("sdpo", "mult"):
        per_step = []
        for stop in ("early", "fixed"):
            tag = f"stop={stop},loss={what},seed=0"
            record = json.loads((study / "stages" / "pref" / f"{tag}.json").read_text())
            state = json.loads((study / "runs" / "pref" / tag / "trainer_state.json").read_text())
            per_step.append(record["seconds"] / state["global_step"])
        (row,) = [r for r in summary["times"] if (r["stage"], r["what"]) == ("pref", what)]
        assert row["s_per_step"] == pytest.approx(np.mean(per_step))


def _log(step: int, **values: float) -> dict:
    return {"step": step, **values}


HISTORY = [
    _log(0, eval_loss=2.0, eval_reward_margin=0.0),
    _log(1, loss=1.9, reward_margin=0.1, reward_accuracy=0.5),
    _log(2, loss=1.8, reward_margin=0.2, reward_accuracy=0.6),
    _log(2, eval_loss=1.7, eval_reward_margin=0.3, eval_reward_accuracy=0.7),
    _log(3, loss=1.6, reward_margin=0.4, reward_accuracy=0.8),
    _log(3, train_loss=1.8, train_runtime=1.0),
]


def test_without_a_valid_evaluation_at_the_chosen_step_the_last_training_log_is_used(
    tmp_path: Path,
) -> None:
    (tmp_path / "setdpo_model.json").write_text("{}")
    state = {"global_step": 3, "max_steps": 3, "log_history": HISTORY}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    point = chosen_point(tmp_path)
    assert (point["chosen_step"], point["best"], point["stopped_early"]) == (3, False, False)
    assert (point["source"], point["source_step"]) == ("train", 3)
    assert (point["reward_margin"], point["reward_accuracy"], point["a_over_b"]) == (0.4, 0.8, None)
    assert point["metric_value"] is None  # no valid loss at step 3
    assert point["curve"] == {"step": [0, 2], "value": [2.0, 1.7]}


def test_the_evaluation_after_training_joins_the_curve_only_for_the_last_steps_weights() -> None:
    after = [*HISTORY, _log(3, eval_loss=1.75, eval_reward_margin=0.25)]
    assert valid_curve(after, "eval_loss", restored=False) == ([0, 2, 3], [2.0, 1.7, 1.75])
    # restored: the last evaluation is the best step's weights again, not step 3's
    assert valid_curve(after, "eval_loss", restored=True) == ([0, 2], [2.0, 1.7])
