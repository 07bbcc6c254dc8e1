"""Run a study's stages: reuse the finished ones, resume the rest, N at a time.

A stage is finished when its record (``stages/<name>.json``) holds the stage's key (the hash
of its configuration, its command and its upstream stages' keys) and its output exists. The
record is written atomically after the command succeeds, so a stage killed midway has no
record: the next run removes its partial output and runs it again. A changed field changes
the key of its stage and of everything downstream; nothing else re-runs.

Stages run in worker processes (``jobs`` of them, ``threads`` torch threads each) that call
`setdpo.cli.main` with the stage's command, its output going to ``logs/<name>.log``: the
same command a user would type, without paying the import of torch and transformers again
for every stage. An evaluation stage of a study with ``evaluate_processes`` N > 1 is instead
launched from its worker as ``torchrun --standalone --nproc_per_node N -m setdpo ...`` (a
free port of its own, so stages run side by side). A worker whose study process dies stops
too (it watches its parent), ending the torchrun it launched, so a killed study leaves no
stage running behind it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import yaml

from setdpo import faults
from setdpo.atomic import atomic_write_json, atomic_write_text
from setdpo.errors import InputError
from setdpo.study.plan import Plan, Stage

LOG_TAIL_LINES = 30


class StageFailed(RuntimeError):
    """A stage's command failed; the message names it and shows its log's tail."""


def record_path(plan: Plan, stage: Stage) -> Path:
    return plan.out / "stages" / f"{stage.name}.json"


def read_record(plan: Plan, stage: Stage) -> dict:
    path = record_path(plan, stage)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def is_finished(plan: Plan, stage: Stage) -> bool:
    """Whether the stage's output exists and its record holds its key. A record of the key
    older setdpo wrote (which held where the study lay) is rewritten with today's key."""
    if not stage.output.exists():
        return False
    record = read_record(plan, stage)
    if record.get("key") == stage.legacy_key and stage.legacy_key:
        atomic_write_json(record_path(plan, stage), record | {"key": stage.key})
        return True
    return record.get("key") == stage.key


def owner(plan: Plan) -> str:
    """The name a stage record gives the study that wrote it: its ``--name``, or ``.``."""
    return plan.home.relative_to(plan.out).as_posix()


def check_not_held(plan: Plan) -> None:
    """Refuse to overwrite a stage another study of the directory wrote with other settings.

    Studies share a directory (``--name``) by stage name: an equal stage (same name, same key)
    runs once. A stage of the same name and another key, whose record names another study,
    would be re-run here and replace that study's result under it (and its configuration
    file): a tuned and an untuned study with equal tags, say. Records older than the ``study``
    field are not checked.
    """
    mine, held = owner(plan), []
    for stage in plan.stages.values():
        record = read_record(plan, stage)
        other = record.get("study")
        if other is not None and other != mine and record.get("key") != stage.key:
            held.append(f"{stage.name} (study {other!r})")
    if held:
        shown = "; ".join(held[:3]) + (f"; and {len(held) - 3} more" if len(held) > 3 else "")
        raise InputError(
            f"{plan.out}: {len(held)} stage(s) of this study have the names of another study's "
            f"stages with other settings, and would overwrite them: {shown}. Give this study "
            "its own --out (copying the other's data/, runs/sft/ and their stages/ records in "
            "reuses those that are equal)"
        )


def write_plan_files(plan: Plan) -> None:
    """study.yaml, commands.sh and every stage's configuration file."""
    study = plan.config.to_file()
    atomic_write_text(plan.home / "study.yaml", yaml.safe_dump(study, sort_keys=False))
    for stage in plan.stages.values():
        path = plan.out / "stages" / f"{stage.name}.yaml"
        text = yaml.safe_dump(stage.settings, sort_keys=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
    atomic_write_text(plan.home / "commands.sh", commands_text(plan))


def commands_text(plan: Plan) -> str:
    """Every stage's command line in dependency order, one per line (a SLURM array's input)."""
    lines = [
        "#!/usr/bin/env bash",
        "# Every stage of the study, in dependency order: a stage needs only lines above it.",
        "set -euo pipefail",
    ]
    lines += [stage.command_line(plan.config.threads) for stage in plan.stages.values()]
    return "\n".join(lines) + "\n"


# The torchrun this worker process launched and waits for (at most one), ended with it.
_launched: list[subprocess.Popen] = []


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            for child in _launched:
                child.terminate()  # torchrun ends its ranks on SIGTERM
            os._exit(1)
        time.sleep(1.0)


def _init_worker(threads: int, parent: int) -> None:
    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that ended (a torchrun and its ranks)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _launch(command: list[str], processes: int, log_path: str) -> int:
    """`setdpo <command>` on ``processes`` ranks (torchrun on a free port), output to the log;
    each rank gets this worker's thread count."""
    import torch

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    argv += ["--nproc_per_node", str(processes), "-m", "setdpo", *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        _launched.append(child)
        try:
            return child.wait()
        finally:
            _launched.remove(child)


def _run_in_worker(
    command: list[str], log_path: str, processes: int = 1
) -> tuple[int, float, float]:
    """Run `setdpo <command>` here (on ``processes`` > 1: under torchrun) with stdout and
    stderr to ``log_path``: (exit code, wall seconds, CPU seconds of this process and its
    children: on a loaded machine the second says the work)."""
    import gc
    import traceback

    from setdpo.cli import main

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), _cpu_seconds()
    if processes > 1:
        code = _launch(command, processes, log_path)
        return code, time.perf_counter() - start, _cpu_seconds() - cpu
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            code = main(command)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    gc.collect()
    return int(code or 0), time.perf_counter() - start, _cpu_seconds() - cpu


def _log_tail(path: Path) -> str:
    try:
        return "\n".join(
            path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        )
    except OSError:
        return "(no log)"


def run_stages(plan: Plan, jobs: int = 1, fresh: bool = False) -> dict[str, str]:
    """Run every stage that is not finished; returns stage name -> "reused" | "ran".

    Raises `RuntimeError` naming the failed stage and its log's tail, after the stages
    already running have ended.
    """
    if jobs < 1:
        raise InputError(f"jobs must be >= 1, got {jobs}")
    check_not_held(plan)
    write_plan_files(plan)
    status: dict[str, str] = {}
    for stage in plan.stages.values():
        if not fresh and is_finished(plan, stage):
            status[stage.name] = "reused"
    todo = [s for s in plan.stages.values() if s.name not in status]
    total = len(plan.stages)
    print(
        f"[study] {plan.out}: {total} stages, {total - len(todo)} finished, {len(todo)} to run "
        f"({jobs} at a time, {plan.config.threads} thread(s) each)",
        flush=True,
    )
    if not todo:
        return status
    failed: list[str] = []
    n_run = len(todo)
    running: dict[Future, Stage] = {}
    context = get_context("spawn")
    with ProcessPoolExecutor(
        jobs,
        mp_context=context,
        initializer=_init_worker,
        initargs=(plan.config.threads, os.getpid()),
    ) as pool:
        while todo or running:
            for stage in list(todo):
                if failed or len(running) >= jobs:
                    break
                if any(status.get(up) not in ("reused", "ran") for up in stage.after):
                    continue
                todo.remove(stage)
                if stage.output.exists():  # a partial output of an interrupted run
                    shutil.rmtree(stage.output) if stage.output.is_dir() else stage.output.unlink()
                record_path(plan, stage).unlink(missing_ok=True)
                stage.output.parent.mkdir(parents=True, exist_ok=True)
                log = plan.out / "logs" / f"{stage.name}.log"
                print(f"[study] run  {stage.name}", flush=True)
                running[pool.submit(_run_in_worker, stage.command, str(log), stage.processes)] = (
                    stage
                )
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                code, seconds, cpu_seconds = future.result()
                log = plan.out / "logs" / f"{stage.name}.log"
                if code != 0 or not stage.output.exists():
                    failed.append(f"{stage.name} (exit {code}); log {log}:\n{_log_tail(log)}")
                    continue
                record = {
                    "key": stage.key,
                    "study": owner(plan),
                    "command": stage.command_line(plan.config.threads),
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "finished": time.time(),
                    "settings": stage.settings,
                }
                faults.reached("study.record")
                atomic_write_json(record_path(plan, stage), record)
                status[stage.name] = "ran"
                ran = sum(v == "ran" for v in status.values())
                print(f"[study] done {stage.name} in {seconds:.0f} s ({ran}/{n_run})", flush=True)
    if failed:
        raise StageFailed("\n\n".join(failed))
    return status
