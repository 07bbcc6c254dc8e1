"""Whole runs through the CLI: tiny SFT then Mult-DPO (LoRA, and full fine-tuning reloaded for
`evaluate` and `recommend`), torchrun (2 CPU processes, gloo) against one process on the same
global batch, and a killed run resumed from its last checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

import setdpo.model
from setdpo import cli
from setdpo.model import load
from setdpo.training.reference import MEMO_DIR, ReferenceModel
from setdpo.training.run import last_complete_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.xdist_group("training_runs"),  # one worker: its SFT fixture is built once
]

QUIET = ["--disable-tqdm", "true", "--logging-steps", "1", "--seed", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tiny_sft(ml100k_next_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`setdpo train sft --model tiny --max-steps 30` through the CLI entry point."""
    out = tmp_path_factory.mktemp("cli") / "sft"
    argv = ["train", "sft", "--data", str(ml100k_next_dir), "--model", "tiny", "--out", str(out)]
    argv += ["--max-steps", "30", "--learning-rate", "3e-3", "--save-steps", "10", *QUIET]
    assert cli.main(argv) == 0
    return out


@pytest.fixture
def reference_passes(monkeypatch: pytest.MonkeyPatch) -> list:
    """The batches this process's reference network scores (memo misses)."""
    scored: list = []
    real = ReferenceModel.logps
    monkeypatch.setattr(ReferenceModel, "logps", lambda self, b: scored.append(b) or real(self, b))
    return scored


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    spec = json.loads((run / "setdpo_model.json").read_text())
    return load_file(run / spec["adapters"][-1] / "adapter_model.safetensors")


def _assert_same_adapter(a: Path, b: Path, atol: float) -> None:
    wa, wb = _adapter(a), _adapter(b)
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)


def test_cli_sft_then_mult_writes_a_reloadable_run(
    tiny_sft: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pref"
    argv = ["train", "pref", "--data", str(ml100k_next_dir), "--init", str(tiny_sft)]
    argv += ["--loss", "mult", "--out", str(out), "--max-steps", "30", "--max-eval-examples", "8"]
    argv += ["--save-steps", "10", *QUIET]
    assert cli.main(argv) == 0
    for run in (tiny_sft, out):
        for name in ("setdpo_model.json", "resolved_config.yaml", "trainer_state.json"):
            assert (run / name).is_file(), (run, name)
    spec = json.loads((out / "setdpo_model.json").read_text())
    assert spec["adapters"] == ["adapters/sft", "adapters/pref"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 30
    assert sum("loss" in entry for entry in state["log_history"]) == 30
    assert "loss: mult" in (out / "resolved_config.yaml").read_text()
    model, _ = load(out)
    trained = _adapter(out)
    assert any(v.abs().max() > 0 for k, v in trained.items() if "lora_B" in k)
    assert model.peft_config  # the last adapter stays a peft adapter


def test_full_fine_tuning_sft_then_mult_reloads_for_evaluate_and_recommend(
    ml100k_next_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    real = setdpo.model.load_reference
    monkeypatch.setattr(
        setdpo.model, "load_reference", lambda *a, **k: loads.append(a) or real(*a, **k)
    )
    data, sft = str(ml100k_next_dir), tmp_path / "sft"
    small = ["--max-steps", "6", "--learning-rate", "1e-3", "--max-eval-examples", "4", *QUIET]
    argv = ["train", "sft", "--data", data, "--model", "tiny", "--peft", "none", "--out", str(sft)]
    assert cli.main(argv + small) == 0
    runs = {"mult": tmp_path / "mult", "sdpo": tmp_path / "sdpo"}
    for loss, out in runs.items():  # `--lora-r 0` means full fine-tuning too
        argv = ["train", "pref", "--data", data, "--init", str(sft), "--lora-r", "0"]
        assert cli.main(argv + ["--loss", loss, "--out", str(out), *small]) == 0
    # The second objective found every reference log-prob memoised: no frozen copy loaded.
    assert len(loads) == 1
    for run in (sft, *runs.values()):  # self-contained: the whole model is the run's base/
        spec = json.loads((run / "setdpo_model.json").read_text())
        assert (spec["base_model"], spec["adapters"]) == ("base", [])
        assert isinstance(load(run)[0], LlamaForCausalLM)
    state = json.loads((runs["mult"] / "trainer_state.json").read_text())
    first = next(entry for entry in state["log_history"] if "loss" in entry)
    assert abs(first["reward_positive"]) < 1e-5 and abs(first["reward_negative"]) < 1e-5
    before = load_file(sft / "base" / "model.safetensors")
    after = load_file(runs["mult"] / "base" / "model.safetensors")
    assert before.keys() == after.keys()
    unchanged = [key for key in before if torch.equal(before[key], after[key])]
    assert not unchanged  # every weight trained: embeddings, norms, projections, head
    results = tmp_path / "mult.json"
    argv = ["evaluate", "--model", str(runs["mult"]), "--data", data, "--limit", "5"]
    assert cli.main(argv + ["--out", str(results), "--no-progress"]) == 0
    assert json.loads(results.read_text())["protocol"]["n_contexts"] == 5
    argv = ["recommend", "--model", str(runs["mult"]), "--history", "Heat (1995)"]
    assert cli.main(argv + ["--catalog", data, "--top", "3", "--json"]) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pref_argv(data: Path, init: Path, out: Path, *extra: str) -> list[str]:
    argv = ["train", "pref", "--data", str(data), "--init", str(init), "--out", str(out)]
    return argv + ["--max-eval-examples", "2", "--max-train-examples", "32", *QUIET, *extra]


def test_torchrun_two_processes_match_one_process(
    tiny_sft: Path, ml100k_next_dir: Path, tmp_path: Path, reference_passes: list
) -> None:
    # One SGD step (sensitive to every gradient entry, unlike Adam's sign-like first step) on a
    # global batch of 4: two processes x 2 contexts against one process x 4 contexts.
    sft = Path(shutil.copytree(tiny_sft, tmp_path / "sft", ignore=shutil.ignore_patterns(MEMO_DIR)))
    step = ["--max-steps", "1", "--optim", "sgd", "--learning-rate", "0.5", "--save-strategy", "no"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(_free_port()), "-m", "setdpo"]
    two = _pref_argv(ml100k_next_dir, sft, tmp_path / "ddp", *step)
    two += ["--per-device-train-batch-size", "2"]
    done = subprocess.run(torchrun + two, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (memo,) = (sft / MEMO_DIR).iterdir()
    assert len(list(memo.glob("part-*.json"))) == 1  # both ranks' shards, merged at the end
    # One process on the same contexts finds every reference log-prob in the ranks' shards.
    one = _pref_argv(ml100k_next_dir, sft, tmp_path / "single", *step)
    assert cli.main(one + ["--per-device-train-batch-size", "4"]) == 0
    assert reference_passes == []
    _assert_same_adapter(tmp_path / "ddp", tmp_path / "single", atol=1e-5)
    assert any(
        v.abs().max() > 1e-4 for k, v in _adapter(tmp_path / "single").items() if "lora_B" in k
    )


def test_two_runs_from_one_sft_run_at_once_share_one_memo(
    tiny_sft: Path, ml100k_next_dir: Path, tmp_path: Path, reference_passes: list
) -> None:
    # Two objectives aligned from one SFT run at the same time write and merge one memo.
    sft = Path(shutil.copytree(tiny_sft, tmp_path / "sft", ignore=shutil.ignore_patterns(MEMO_DIR)))
    extra = ["--max-steps", "4", "--save-steps", "2", "--per-device-train-batch-size", "2"]
    runs = {loss: tmp_path / loss for loss in ("mult", "dpo")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "setdpo", *_pref_argv(ml100k_next_dir, sft, out, *extra)]
            + ["--loss", loss],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for loss, out in runs.items()
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    for out in runs.values():
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        first = next(entry for entry in history if "loss" in entry)
        assert (first["reward_positive"], first["reward_negative"]) == (0.0, 0.0)
    (memo,) = (sft / MEMO_DIR).iterdir()  # one key: one SFT model, one scoring setting
    assert {p.suffix for p in memo.iterdir()} == {".json"}  # no temporary, nothing damaged
    # A third objective on the same contexts finds every reference log-prob in the memo.
    argv = _pref_argv(ml100k_next_dir, sft, tmp_path / "sdpo", *extra)
    assert cli.main(argv + ["--loss", "sdpo"]) == 0
    assert reference_passes == []


def _checkpoint_written(out: Path) -> bool:
    for state in out.glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(state.read_text())
            return True
        except (OSError, json.JSONDecodeError):
            continue
    return False


def test_killed_run_resumes_to_the_uninterrupted_result(
    tiny_sft: Path, ml100k_next_dir: Path, tmp_path: Path
) -> None:
    extra = ["--max-steps", "16", "--save-steps", "4", "--per-device-train-batch-size", "2"]
    killed = tmp_path / "killed"
    argv = [sys.executable, "-m", "setdpo", *_pref_argv(ml100k_next_dir, tiny_sft, killed, *extra)]
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(argv, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not _checkpoint_written(killed) and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (killed / "setdpo_model.json").exists()  # it died before finishing
    assert cli.main(_pref_argv(ml100k_next_dir, tiny_sft, killed, *extra, "--resume")) == 0
    straight = tmp_path / "straight"
    assert cli.main(_pref_argv(ml100k_next_dir, tiny_sft, straight, *extra)) == 0
    _assert_same_adapter(killed, straight, atol=1e-5)
    state = json.loads((killed / "trainer_state.json").read_text())
    assert state["global_step"] == 16


def test_resume_takes_the_last_complete_checkpoint_and_removes_the_others(tmp_path: Path) -> None:
    # transformers writes trainer_state.json last: a folder without it (or with it cut short)
    # is a checkpoint killed while saving
    for step, state in [(2, '{"global_step": 2}'), (4, None), (6, '{"global_st')]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert last_complete_checkpoint(tmp_path / "checkpoint-2") is None  # none: a fresh start
