"""Kill harness: SIGKILL a setdpo command at chosen points, rerun it, compare with a clean run.

For each `Case` (a command, the rerun's extra arguments and a reader of its result):

1. the command runs uninterrupted with ``SETDPO_FAULT_TRACE`` set: its result is the
   reference, and the trace lists the points it passed (`setdpo.faults`: a site reached the
   n-th time in one process);
2. for each chosen point, the same command runs in the same folder, with the same inputs, and
   is killed there: ``SETDPO_KILL_AT=<site>:<n>`` (the process kills itself), or, for a few
   seeded points, SIGKILL to its whole process group after a delay drawn uniformly over the
   reference's wall time (blind, as an out-of-memory kill or a pre-empted job is);
3. what a reader would take as the result at that moment (`Case.read`, None while there is
   none; a study's finished stages too) must equal the reference's;
4. the command runs again (``--resume`` for training, ``--overwrite`` for data) and its result
   must equal the reference within `TOLERANCE`; no temporary of the killed run is left
   anywhere in the folder (`setdpo.atomic.remove_stale`), and one that a running process
   holds beside the output (this one's, as a concurrent run's would be) is untouched.

Commands run in a process forked from this one (imports paid once), in a session of their
own; a killed command's children are waited for before the rerun. Every run uses the same
folder, so paths recorded in results are equal. `run_case` returns the tallies reported by
`tests/test_faults.py` and ``SETDPO_FAULT_POINTS=20``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from setdpo.atomic import is_temporary, temporary_prefix
from setdpo.faults import KILL_AT, TRACE

TOLERANCE = 1e-6
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# Keys that time a run rather than describe its result, or say whether a shared cache
# served it (SASRec's `cached`: a reference run on a cold cache trains and fills it).
_TIMING = {"timing", "times", "run", "total_flos", "cached"}


# --- processes ----------------------------------------------------------------------------


def _child(argv: list[str], env: dict[str, str], log: Path) -> None:
    """The forked process: its own session, the environment, output to `log`, `setdpo argv`."""
    code = 1
    try:
        os.setsid()
        os.environ.update(env)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        from setdpo.cli import main

        code = int(main(argv) or 0)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is left in process group `pgid`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def start_setdpo(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start `setdpo argv` in a forked process (its own session); returns its pid."""
    pid = os.fork()
    if pid == 0:
        _child(argv, {**ENV, **(env or {})}, log)
    return pid


def wait_setdpo(pid: int, kill_after: float | None = None) -> int:
    """Wait for a `start_setdpo` process; returns its exit status (-9: killed).

    `kill_after`: SIGKILL its process group after that many seconds if still running. Returns
    once no process of its group is left (a study's workers stop by themselves)."""
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if kill_after is not None and time.monotonic() - start >= kill_after:
            os.killpg(pid, signal.SIGKILL)
            kill_after = None
        time.sleep(0.01)
    deadline = time.monotonic() + 60
    while _group_alive(pid):
        assert time.monotonic() < deadline, f"processes of {pid} outlived it by 60 s"
        time.sleep(0.1)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run_setdpo(
    argv: list[str], log: Path, env: dict[str, str] | None = None, kill_after: float | None = None
) -> int:
    """`start_setdpo` then `wait_setdpo`."""
    return wait_setdpo(start_setdpo(argv, log, env), kill_after)


# --- results as comparable values ---------------------------------------------------------


def difference(a: Any, b: Any, where: str = "") -> tuple[float, str]:
    """The largest absolute difference between numbers of two equal-shaped values (dicts,
    lists, tensors) and where it is; AssertionError where their shapes, keys or other values
    differ."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {a.keys() ^ b.keys()}"
        return max((difference(a[k], b[k], f"{where}/{k}") for k in a), default=(0.0, where))
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        pairs = enumerate(zip(a, b, strict=True))
        return max((difference(x, y, f"{where}[{i}]") for i, (x, y) in pairs), default=(0.0, where))
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, f"{where}: shapes differ"
        return (float((a.double() - b.double()).abs().max()) if a.numel() else 0.0), where
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # both NaN
        return 0.0, where
    if isinstance(a, (int, float)) and not isinstance(a, bool) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)), where
    assert a == b, f"{where}: {a!r} != {b!r}"
    return 0.0, where


def _timing(key: str) -> bool:
    return key in _TIMING or key.endswith(("_runtime", "_per_second"))


def _untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not _timing(k)}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _json(path: Path) -> Any:
    return _untimed(json.loads(path.read_text(encoding="utf-8")))


def read_prepared(out: Path) -> dict[str, Any] | None:
    """A prepared directory: every file's sha256 (`stats.json`: its content, untimed)."""
    if not out.is_dir():
        return None
    found: dict[str, Any] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        name = str(path.relative_to(out))
        found[name] = (
            _json(path) if name == "stats.json" else hashlib.sha256(path.read_bytes()).hexdigest()
        )
    return found


def read_run(out: Path) -> dict[str, Any] | None:
    """A finished training run: its last adapter (or whole model) and its logged values."""
    if not (out / "setdpo_model.json").is_file():
        return None
    spec = json.loads((out / "setdpo_model.json").read_text())
    folder = out / (spec["adapters"][-1] if spec["adapters"] else spec["base_model"])
    weights = {p.name: load_file(p) for p in sorted(folder.glob("*.safetensors"))}
    log = _json(out / "trainer_state.json")["log_history"]
    return {"weights": weights, "log": log}


def read_selection(out: Path) -> dict[str, Any] | None:
    """`setdpo study select`'s result: the choice (``choice.json`` beside the chosen run's
    copy ``out``) and every file of the copy; None before the choice is written."""
    choice = out.parent / "choice.json"
    if not choice.is_file():
        return None
    return {"choice": _json(choice), "run": read_prepared(out)}


def read_selfplay(out: Path) -> dict[str, Any] | None:
    """A finished self-play folder: its record and every round's runs (`read_run`)."""
    path = out / "selfplay.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if not record.get("result"):
        return None
    stages = [
        (r["round"], stage, r[stage]) for r in record["completed"] for stage in ("sft", "pref")
    ]
    return {"record": record, **{f"{r}/{stage}": read_run(out / run) for r, stage, run in stages}}


def read_results(out: Path) -> dict[str, Any] | None:
    """An evaluation results file, untimed."""
    return _json(out) if out.is_file() else None


def read_study(out: Path) -> dict[str, Any] | None:
    """A study: each finished stage's output (what its record lets the next run reuse) and,
    once written, `summary.json`; None before any stage finished."""
    from setdpo.study.report import load_plan
    from setdpo.study.runner import is_finished

    if not (out / "study.yaml").is_file():
        return None
    plan = load_plan(out)
    readers = {"data": read_prepared, "sft": read_run, "pref": read_run, "eval": read_results}
    readers |= {"valid": read_results, "select": read_run}  # a tuned study's (setdpo.study.tune)
    found: dict[str, Any] = {}
    for stage in plan.stages.values():
        if is_finished(plan, stage):
            found[stage.name] = readers[stage.kind](stage.output)
            assert found[stage.name] is not None, f"{stage.name} has a record but no result"
    if (out / "summary.json").is_file():
        found["summary.json"] = _json(out / "summary.json")
    return found or None


# --- the harness ----------------------------------------------------------------------------


@dataclass
class Case:
    """One command under test: `argv` writes `output` (under the case's work folder)."""

    name: str
    argv: list[str]
    output: Path
    read: Callable[[Path], Any]
    rerun: list[str] = field(default_factory=list)
    setup: Callable[[], None] | None = None  # restores the inputs before each run
    # False: a complete result found after the kill is final (`data prepare` refuses an
    # existing directory, and `--overwrite` would be recorded in its config.json)
    rerun_when_done: bool = True


@dataclass
class Tally:
    """What `run_case` did: points tried, kills landed per site, reruns equal, max difference."""

    case: str
    points: int = 0
    kills: Counter = field(default_factory=Counter)
    not_landed: int = 0  # the point was past the end of the run
    partial_seen: int = 0  # kills after which a reader found a (complete, equal) result
    reruns_equal: int = 0
    no_temporary: int = 0  # reruns after which no temporary was left
    max_difference: float = 0.0
    reference_s: float = 0.0
    seconds: float = 0.0

    def line(self) -> str:
        sites = ", ".join(f"{site} {n}" for site, n in sorted(self.kills.items()))
        return (
            f"{self.case}: {self.points} points, kills [{sites}], {self.not_landed} not landed, "
            f"{self.reruns_equal}/{self.points} reruns equal, {self.no_temporary} left no "
            f"temporary, max difference "
            f"{self.max_difference:.3g}; reference {self.reference_s:.1f} s, all {self.seconds:.0f} s"
        )


def choose_points(trace: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """`n` of the traced (site, occurrence) points: round robin over the sites, each site's
    occurrences in a seeded order, so every site is hit before any is hit twice."""
    rng = random.Random(seed)
    by_site: dict[str, list[int]] = {}
    for site, k in dict.fromkeys(trace):
        by_site.setdefault(site, []).append(k)
    for ks in by_site.values():
        rng.shuffle(ks)
    chosen: list[tuple[str, int]] = []
    while len(chosen) < n and any(by_site.values()):
        for site in sorted(by_site):
            if by_site[site] and len(chosen) < n:
                chosen.append((site, by_site[site].pop()))
    return chosen


# A temporary beside its target as tempfile names it: `.<name>.<random 8><suffix>`, with
# `<host>-<pid>-` before the random part since `setdpo.atomic` names the owner.
_TEMPORARY = re.compile(r"\..+\.(\w+-\d+-)?[a-z0-9_]{8}\.[a-z0-9]+")


def temporaries(folder: Path) -> list[Path]:
    """Temporaries anywhere under `folder`, whoever named them."""
    found = folder.rglob(".*")
    return sorted(p for p in found if is_temporary(p.name) or _TEMPORARY.fullmatch(p.name))


def _fresh(case: Case, work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if case.setup is not None:
        case.setup()


def run_case(case: Case, work: Path, logs: Path, points: int, seed: int = 0) -> Tally:
    """Reference run, then `points` site kills (fewer if the command has fewer points; the
    rest, and `points // 5` more, are seeded delays), each followed by a check and a rerun."""
    tally, start = Tally(case.name), time.monotonic()
    logs.mkdir(parents=True, exist_ok=True)
    trace_file = logs / f"{case.name}.trace"
    trace_file.unlink(missing_ok=True)
    _fresh(case, work)
    t0 = time.monotonic()
    code = run_setdpo(case.argv, logs / f"{case.name}.reference.log", {TRACE: str(trace_file)})
    tally.reference_s = time.monotonic() - t0
    assert code == 0, (logs / f"{case.name}.reference.log").read_text()[-3000:]
    reference = case.read(case.output)
    assert reference is not None, f"{case.name}: the reference run wrote no result"
    trace = [
        (line.split()[1], int(line.split()[2])) for line in trace_file.read_text().splitlines()
    ]
    sited = choose_points(trace, points, seed)
    rng = random.Random(seed)
    # 0.8: the reference pays for first reads and caches that the reruns do not
    delays = [
        rng.uniform(0, 0.8 * tally.reference_s) for _ in range(points - len(sited) + points // 5)
    ]
    kills: list[tuple[str, dict[str, str], float | None]] = [
        (f"{s}:{k}", {KILL_AT: f"{s}:{k}"}, None) for s, k in sited
    ]
    kills += [(f"delay {d:.2f}s", {}, d) for d in delays]
    for i, (label, env, delay) in enumerate(kills):
        _fresh(case, work)
        log = logs / f"{case.name}.{i}.log"
        code = run_setdpo(case.argv, log, env, kill_after=delay)
        tally.points += 1
        if code == -signal.SIGKILL:
            tally.kills[label.split(":")[0] if delay is None else "delay"] += 1
        elif code == 1 and case.read is read_study:  # a worker was killed: the study stops
            tally.kills[label.split(":")[0]] += 1
        else:
            assert code == 0, f"{case.name} at {label}: exit {code}\n{log.read_text()[-3000:]}"
            tally.not_landed += 1
        seen = case.read(case.output)
        if seen is not None:
            tally.partial_seen += 1
            _check(case, label, "after the kill", reference, seen)
        if seen is None or case.rerun_when_done:
            live = case.output.parent / f"{temporary_prefix(case.output)}running_.tmp"
            live.write_text("a running process's temporary")
            code = run_setdpo(case.argv + case.rerun, log)
            assert code == 0, (
                f"{case.name} rerun after {label}: exit {code}\n{log.read_text()[-3000:]}"
            )
            assert live.is_file(), f"{case.name} rerun after {label} removed {live.name}"
            live.unlink()
            left = temporaries(work)
            assert not left, f"{case.name} rerun after {label} left {left}"
            tally.no_temporary += 1
        got = case.read(case.output)
        assert got is not None, f"{case.name} rerun after {label} wrote no result"
        tally.max_difference = max(
            tally.max_difference, _check(case, label, "rerun", reference, got)
        )
        tally.reruns_equal += 1
    tally.seconds = time.monotonic() - start
    return tally


def _check(case: Case, label: str, when: str, reference: Any, got: Any) -> float:
    if case.read is read_study:  # what had finished at the kill: a subset of the stages
        reference = {k: v for k, v in reference.items() if k in got}
    try:
        diff, where = difference(reference, got)
    except AssertionError as err:
        raise AssertionError(f"{case.name} killed at {label}, {when}: {err}") from None
    assert diff <= TOLERANCE, (
        f"{case.name} killed at {label}, {when}: {where} differs by {diff:.3g}"
    )
    return diff
