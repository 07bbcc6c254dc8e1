"""`setdpo study`: the plan shares equal stages; the smoke study runs, re-runs nothing, resumes
after its process is killed, prints its commands, and its report's numbers equal a
computation from the raw results files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from setdpo.cli import main
from setdpo.errors import InputError
from setdpo.study import build_plan, load_study
from setdpo.study.plan import StudyConfig
from setdpo.study.runner import check_not_held, commands_text, owner, record_path, run_stages
from setdpo.study.stats import holm

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "studies" / "smoke.yaml"
STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))


def smoke_config(**changes) -> StudyConfig:
    raw = yaml.safe_load(SMOKE.read_text())
    raw.update(changes)
    return StudyConfig(**raw)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_config_loads_and_expands(path: Path, tmp_path: Path) -> None:
    plan = build_plan(load_study(path), tmp_path)
    kinds = [s.kind for s in plan.stages.values()]
    assert kinds == sorted(kinds, key=["data", "sft", "pref", "valid", "select", "eval"].index)
    assert len(plan.cells) == len(plan.settings()) * len(plan.config.seeds)


def test_equal_stages_are_shared(tmp_path: Path) -> None:
    grid = {"prepare.k": [1, 3], "pref.num_negatives": [3, 7, 0], "pref.loss": ["sdpo", "mult"]}
    plan = build_plan(smoke_config(grid=grid, seeds=[0, 1, 2], baselines=["popularity"]), tmp_path)
    count = {
        k: sum(s.kind == k for s in plan.stages.values()) for k in ("data", "sft", "pref", "eval")
    }
    # one data set and one SFT per k and seed; a pref run per k, negatives, loss and seed;
    # popularity per data set, sft per SFT run, one evaluation per pref run
    assert count == {"data": 6, "sft": 6, "pref": 36, "eval": 6 + 6 + 36}
    sft = plan.stages["sft/k=3,seed=1"]
    assert sft.settings["data"] == str(tmp_path / "data" / "k=3,seed=1")
    assert sft.settings["seed"] == 1
    pref = plan.stages["pref/k=3,num_negatives=7,loss=mult,seed=1"]
    assert pref.after == ["sft/k=3,seed=1"]
    assert pref.settings["init"] == str(tmp_path / "runs" / "sft" / "k=3,seed=1")
    assert (pref.settings["num_negatives"], pref.settings["loss"]) == (7, "mult")


def test_a_changed_field_changes_its_stage_and_downstream_keys_only(tmp_path: Path) -> None:
    before = build_plan(smoke_config(), tmp_path).stages
    changed = smoke_config()
    changed.pref["beta"] = 0.5
    after = build_plan(changed, tmp_path).stages
    for name, stage in before.items():
        downstream = name.startswith("pref/") or name.split("/")[1] in ("sdpo", "mult")
        assert (stage.key != after[name].key) == downstream, name


def test_a_record_of_the_older_location_dependent_key_counts_as_finished(
    tmp_path: Path,
) -> None:
    from setdpo.study.runner import is_finished

    plan = build_plan(smoke_config(), tmp_path)
    stage = plan.stages["data/seed=0"]
    stage.output.mkdir(parents=True)
    record_path(plan, stage).parent.mkdir(parents=True)
    record_path(plan, stage).write_text(json.dumps({"key": stage.legacy_key}))
    assert stage.key != stage.legacy_key and is_finished(plan, stage)
    assert json.loads(record_path(plan, stage).read_text())["key"] == stage.key  # upgraded


def test_bundle_axes_set_several_fields(tmp_path: Path) -> None:
    grid = {
        "tier": {"small": {"sft.max_steps": 2, "pref.max_steps": 2}, "big": {"sft.max_steps": 5}},
        "pref.loss": ["mult"],
    }
    plan = build_plan(smoke_config(grid=grid, seeds=[0]), tmp_path)
    assert plan.stages["sft/tier=small,seed=0"].settings["max_steps"] == 2
    assert plan.stages["sft/tier=big,seed=0"].settings["max_steps"] == 5
    assert plan.stages["pref/tier=big,loss=mult,seed=0"].settings["max_steps"] == 3  # the file's
    assert "data/seed=0" in plan.stages  # the bundles touch no prepare field: one data set


def test_named_studies_share_the_equal_stages_of_one_directory(tmp_path: Path) -> None:
    first = build_plan(smoke_config(), tmp_path, "first")
    grid = {"pref.num_negatives": [3], "pref.loss": ["dpo"]}
    second = build_plan(smoke_config(grid=grid), tmp_path, "second")
    common = set(first.stages) & set(second.stages)
    assert {n.split("/")[0] for n in common} == {"data", "sft", "eval"}
    assert {n for n in common if n.startswith("eval/")} == {
        "eval/popularity/seed=0",
        "eval/popularity/seed=1",
        "eval/sft/seed=0",
        "eval/sft/seed=1",
    }
    assert all(first.stages[n].key == second.stages[n].key for n in common)
    assert (first.home, second.home) == (tmp_path / "first", tmp_path / "second")
    with pytest.raises(InputError, match="plain folder name"):
        build_plan(smoke_config(), tmp_path, "../elsewhere")


def test_a_study_does_not_overwrite_another_studys_stage_of_the_same_name(tmp_path: Path) -> None:
    """A tuned or otherwise changed study given another study's directory: the stages whose
    names it shares with other settings are refused before anything is written."""
    first = build_plan(smoke_config(), tmp_path, "first")
    for stage in first.stages.values():  # as if `first` had run: its records
        record_path(first, stage).parent.mkdir(parents=True, exist_ok=True)
        record_path(first, stage).write_text(json.dumps({"key": stage.key, "study": "first"}))
    changed = smoke_config()
    changed.pref["beta"] = 0.5  # pref and its evaluations change; data, sft, baselines do not
    second = build_plan(changed, tmp_path, "second")
    before = {p: p.read_bytes() for p in (tmp_path / "stages").rglob("*") if p.is_file()}
    with pytest.raises(
        InputError, match=r"another study's stages.*pref/loss=sdpo,seed=0 \(study 'first'\)"
    ):
        run_stages(second, jobs=1)
    after = {p: p.read_bytes() for p in (tmp_path / "stages").rglob("*") if p.is_file()}
    assert after == before and not (tmp_path / "second").exists()  # nothing written
    # the study that wrote them may change its own stages; equal stages stay shared
    assert owner(first) == "first" and owner(build_plan(smoke_config(), tmp_path)) == "."
    same = build_plan(smoke_config(), tmp_path, "third")
    check_not_held(same)  # equal keys: shared, not refused
    rename = build_plan(changed, tmp_path, "first")
    check_not_held(rename)  # its own records


def test_evaluate_processes_launch_evaluations_under_torchrun_with_the_same_keys(
    tmp_path: Path,
) -> None:
    one = build_plan(smoke_config(), tmp_path)
    two = build_plan(smoke_config(evaluate_processes=2), tmp_path)
    for name, stage in two.stages.items():
        line = stage.command_line(1)
        launcher = (
            "torchrun --standalone --nproc_per_node 2 -m setdpo "
            if stage.kind == "eval"
            else "setdpo "
        )
        assert line == "OMP_NUM_THREADS=1 " + launcher + " ".join(stage.command), name
        assert stage.key == one.stages[name].key  # the same results: nothing re-runs
    assert commands_text(two).count("torchrun") == 8  # 2 seeds x 4 evaluations
    with pytest.raises(InputError, match="evaluate_processes"):
        smoke_config(evaluate_processes=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grid": {"prepare.k": [1]}}, "objective axis"),
        ({"grid": {"pref.lose": ["mult"], "pref.loss": ["mult"]}}, "unknown fields \\['lose'\\]"),
        ({"grid": {"pref.loss": ["mult"], "sft.output_dir": ["x"]}}, "set by the study"),
        ({"grid": {"pref.loss": ["nope"]}}, "pref.loss"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"baselines": ["oracle"]}, "baselines"),
        ({"sft": {"max_step": 3}}, "unknown fields \\['max_step'\\]"),
    ],
)
def test_bad_study_configs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        smoke_config(**changes)


def test_unknown_study_keys_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(SMOKE.read_text() + "\nseed: 3\n")
    with pytest.raises(InputError, match=f"{path}: unknown study keys \\['seed'\\]"):
        load_study(path)


# --- the smoke study, run for real -------------------------------------------------------


def run_study_cli(out: Path, *extra: str) -> None:
    assert main(["study", "--config", str(SMOKE), "--out", str(out), "--jobs", "2", *extra]) == 0


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study") / "smoke"
    run_study_cli(out)
    return out


def records(out: Path) -> dict[str, dict]:
    return {
        str(p.relative_to(out / "stages")): json.loads(p.read_text())
        for p in (out / "stages").rglob("*.json")
    }


@pytest.mark.slow
@pytest.mark.xdist_group("study")
def test_rerun_recomputes_nothing(smoke_dir: Path, capsys: pytest.CaptureFixture) -> None:
    before = records(smoke_dir)
    assert len(before) == 16  # 2 seeds x (data, sft, sdpo, mult, 4 evaluations)
    run_study_cli(smoke_dir)
    assert "16 finished, 0 to run" in capsys.readouterr().out
    assert records(smoke_dir) == before
    # the same study under a name in the same directory: its own report, the same stages
    run_study_cli(smoke_dir, "--name", "again")
    assert "16 finished, 0 to run" in capsys.readouterr().out
    assert records(smoke_dir) == before
    again = json.loads((smoke_dir / "again" / "summary.json").read_text())
    assert again["cells"] == json.loads((smoke_dir / "summary.json").read_text())["cells"]


@pytest.mark.slow
@pytest.mark.xdist_group("study")
def test_a_moved_study_reruns_nothing_and_its_runs_still_load(
    smoke_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(smoke_dir, copy)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    os.rename(copy, moved)  # mv
    monkeypatch.chdir(tmp_path / "elsewhere")  # another working directory, a relative --out
    capsys.readouterr()
    run_study_cli(Path("moved"))
    assert "16 finished, 0 to run" in capsys.readouterr().out
    assert {k: v["key"] for k, v in records(moved).items()} == {
        k: v["key"] for k, v in records(smoke_dir).items()
    }
    run = moved / "runs" / "pref" / "loss=mult,seed=0"
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "`eval/mult/loss=mult,seed=0.json`: split `test`" in card  # found after the move


@pytest.mark.slow
@pytest.mark.xdist_group("study")
def test_print_commands_lists_every_stage_in_dependency_order(
    smoke_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["study", "--config", str(SMOKE), "--out", str(smoke_dir), "--print-commands"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("OMP_")]
    assert len(lines) == 16
    assert sorted(lines) == sorted(r["command"] for r in records(smoke_dir).values())
    seen: set[str] = set()
    for line in lines:  # every output a command reads was written by a line above it
        config = yaml.safe_load(Path(line.split("--config ")[1].split()[0]).read_text())
        for needed in (config.get("data"), config.get("init")):
            assert needed is None or needed in seen, line
        model = config.get("model", "")
        assert "/runs/" not in model or model in seen, line
        seen |= {str(v) for k, v in config.items() if k in ("out", "output_dir")}


@pytest.mark.slow
@pytest.mark.xdist_group("study")
def test_an_evaluation_stage_under_torchrun_writes_the_one_process_results(
    smoke_dir: Path, tmp_path: Path
) -> None:
    plan = build_plan(smoke_config(evaluate_processes=2), smoke_dir)
    stage = plan.stages["eval/sft/seed=0"]
    record = record_path(plan, stage)
    saved = {path: tmp_path / f"{i}.json" for i, path in enumerate((stage.output, record))}
    for path, copy in saved.items():
        path.replace(copy)  # the one-process run's, put back below
    try:
        assert run_stages(plan, jobs=1)[stage.name] == "ran"
        assert json.loads(record.read_text())["command"].startswith(
            "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m setdpo evaluate"
        )
        two, one = (json.loads(p.read_text()) for p in (stage.output, saved[stage.output]))
        for part in ("contexts", "metrics", "protocol"):
            assert two[part] == one[part], part
        assert two["timing"]["processes"] == 2
    finally:
        for path, copy in saved.items():
            copy.replace(path)


def raw_metric(path: Path, metric: str) -> dict[str, float]:
    contexts = json.loads(path.read_text())["contexts"]
    return {c["context_id"]: c["values"][metric] for c in contexts}


@pytest.mark.slow
@pytest.mark.xdist_group("study")
def test_report_numbers_equal_a_computation_from_the_results_files(smoke_dir: Path) -> None:
    (smoke_dir / "report.md").unlink()
    (smoke_dir / "summary.json").unlink()
    assert main(["study", "report", str(smoke_dir)]) == 0
    report = (smoke_dir / "report.md").read_text()
    assert "Holm" in report and "MDD" in report and "not told apart at" in report
    summary = json.loads((smoke_dir / "summary.json").read_text())
    evals = {
        name: sorted((smoke_dir / "eval" / name).glob("*.json"))
        for name in ("popularity", "sft", "sdpo", "mult")
    }
    for row in summary["cells"]:
        per_seed = [np.mean(list(raw_metric(p, "NDCG@5").values())) for p in evals[row["model"]]]
        assert row["NDCG@5"]["seed_values"] == pytest.approx(per_seed, abs=1e-12)
        assert row["NDCG@5"]["interval"]["value"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert f"| {row['model']} | 2 |" in report
    pairs = summary["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [("sdpo", "mult"), ("sdpo", "sft"), ("mult", "sft")]
    for pair in pairs:
        diffs = []
        for path_a, path_b in zip(evals[pair["a"]], evals[pair["b"]], strict=True):
            a, b = raw_metric(path_a, "NDCG@5"), raw_metric(path_b, "NDCG@5")
            diffs.append(np.mean([a[k] - b[k] for k in a]))
        assert pair["seed_values"] == pytest.approx(diffs, abs=1e-12)
        assert pair["mdd"] == pytest.approx(2.801585 * pair["se"], rel=1e-6)
    assert [p["p_holm"] for p in pairs] == pytest.approx(holm([p["p_value"] for p in pairs]))
    assert (smoke_dir / "plots" / "bound.png").read_bytes()[:4] == b"\x89PNG"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.xdist_group("study")
def test_a_killed_study_resumes_and_ends_as_an_uninterrupted_one(
    smoke_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "setdpo",
        "study",
        "--config",
        str(SMOKE),
        "--out",
        str(out),
        "--jobs",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((out / "stages" / "sft").glob("*.json")):  # kill once an SFT has finished
        assert proc.poll() is None and time.monotonic() < deadline, "the study ended too soon"
        time.sleep(0.2)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)  # the study process only: its workers must stop by themselves
    proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "workers outlived the killed study"
    finished = records(out)
    assert finished and len(finished) < 16
    run_study_cli(out)
    after = records(out)
    assert len(after) == 16
    for name, record in finished.items():  # what had finished was reused, not re-run
        assert after[name]["finished"] == record["finished"], name
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((smoke_dir / "summary.json").read_text())
    for got, want in zip(summary["cells"], expected["cells"], strict=True):
        assert got["model"] == want["model"]
        assert got["NDCG@5"]["seed_values"] == pytest.approx(
            want["NDCG@5"]["seed_values"], abs=1e-6
        )


def test_a_numeric_axis_gets_its_metric_and_difference_plot(tmp_path: Path) -> None:
    from setdpo.study.plots import plot_metric_against_axes

    plan = build_plan(smoke_config(grid={"prepare.k": [1, 3], "pref.loss": ["mult"]}), tmp_path)
    interval = {"value": 0.4, "low": 0.3, "high": 0.5}
    cells = [
        {"setting": {"k": k}, "model": m, "NDCG@5": {"interval": interval}}
        for k in ("1", "3")
        for m in ("sft", "mult")
    ]
    pairs = [{"setting": {"k": k}, "a": "mult", "b": "sft", "interval": interval} for k in "13"]
    summary = {"metric": "NDCG@5", "cells": cells, "pairs": pairs}
    captions = plot_metric_against_axes(plan, summary, tmp_path)
    assert list(captions) == ["NDCG5_vs_k"] and "paired difference to sft" in captions["NDCG5_vs_k"]
    assert (tmp_path / "NDCG5_vs_k.png").read_bytes()[:4] == b"\x89PNG"
