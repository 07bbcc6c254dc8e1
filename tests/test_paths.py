"""Portable runs (`setdpo.paths`): paths in files are relative to the file, so a run made in one
folder is exported, served, evaluated and resumed from another folder and after a move."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from setdpo import cli
from setdpo.paths import resolve_fields, resolved, store_fields, stored


def test_stored_paths_are_relative_to_the_file_and_read_back_absolute(tmp_path: Path) -> None:
    run, data = tmp_path / "runs" / "sft", tmp_path / "data" / "seed=0"
    data.mkdir(parents=True)
    run.mkdir(parents=True)
    values = {"data": str(data), "output_dir": str(run), "model": "tiny", "init": None, "k": 3}
    written = store_fields(values, run)
    assert written == {"data": "../../data/seed=0", "output_dir": ".", "model": "tiny",
                       "init": None, "k": 3}  # fmt: skip
    assert resolve_fields(written, run) == values
    assert resolved("embedded:smollm2-135m", run, always=False) == "embedded:smollm2-135m"
    assert stored("lab:layers=2", run, always=False) == "lab:layers=2"


def test_a_path_written_relative_to_the_working_directory_still_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files written before paths were relative (from the folder they were made in)."""
    (tmp_path / "runs" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolved("runs/data", tmp_path / "runs" / "sft") == str(tmp_path / "runs" / "data")


def _train(argv: list[str]) -> None:
    quiet = ["--disable-tqdm", "true", "--seed", "0", "--max-eval-examples", "4"]
    assert cli.main(argv + quiet) == 0


def _works_from_elsewhere(pref: Path, data: Path, out: Path, steps: int) -> None:
    """Export, serve (the service), evaluate and resume the run ``pref`` from the working
    directory, a folder that is not the one it was made in."""
    from setdpo.serving.service import RankingService, ServeConfig

    export = out / "nested" / "export"  # parent folders are created
    assert cli.main(["export", str(pref), "--out", str(export)]) == 0
    service = RankingService(ServeConfig(model=str(pref), device="cpu"))
    job = service.rank_job(["Heat (1995)"], ["Babe (1995)", "Casino (1995)"])
    assert len(service.score([job])[0]) == 2
    evaluated = out / "eval.json"
    argv = ["evaluate", "--model", str(pref), "--data", str(data), "--limit", "4"]
    assert cli.main([*argv, "--progress", "false", "--out", str(evaluated)]) == 0
    config = pref / "resolved_config.yaml"
    _train(["train", "pref", "--config", str(config), "--resume", "--max-steps", str(steps)])
    state = json.loads((pref / "trainer_state.json").read_text())
    assert state["global_step"] == steps


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_works_from_another_folder_and_after_a_move(
    ml100k_next_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(ml100k_next_dir, made / "data" / "seed=0")
    monkeypatch.chdir(made)  # relative paths everywhere, as a user types them
    steps = ["--max-steps", "2", "--save-strategy", "steps", "--save-steps", "1"]
    _train(["train", "sft", "--data", "data/seed=0", "--model", "tiny", "--out", "runs/sft",
            *steps])  # fmt: skip
    _train(["train", "pref", "--data", "data/seed=0", "--init", "runs/sft", "--loss", "mult",
            "--out", "runs/pref", *steps])  # fmt: skip
    resolved_config = yaml.safe_load(Path("runs/pref/resolved_config.yaml").read_text())
    assert (resolved_config["data"], resolved_config["init"]) == ("../../data/seed=0", "../sft")
    for checkpoint in Path("runs/pref").glob("checkpoint-2"):
        shutil.rmtree(checkpoint)  # resume from checkpoint-1

    monkeypatch.chdir(elsewhere)
    _works_from_elsewhere(made / "runs" / "pref", made / "data" / "seed=0", elsewhere / "a", 2)

    moved = tmp_path / "moved"
    os.rename(made, moved)  # mv
    for checkpoint in (moved / "runs" / "pref").glob("checkpoint-2"):
        shutil.rmtree(checkpoint)
    _works_from_elsewhere(moved / "runs" / "pref", moved / "data" / "seed=0", elsewhere / "b", 2)
