"""Shared pytest fixtures, the hypothesis profiles and the fuzzing tally."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from setdpo.errors import InputError

# Every run draws the same examples, in CI or not, and keeps no example database: a test's
# verdict does not depend on the machine, on earlier runs or on `.hypothesis/`. Exploration
# (fresh examples each run) is asked for: `SETDPO_FUZZ_EXPLORE=1` (`make fuzz`) or
# `--hypothesis-seed N`; it keeps no database either, and prints each failing example with
# the `@reproduce_failure` blob that replays it.
EXPLORE = "SETDPO_FUZZ_EXPLORE"
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, deadline=None,
                          print_blob=True)  # fmt: skip
settings.load_profile("ci")


class FuzzTally:
    """How many fuzzed inputs each target was given, and how many it accepted or refused.

    `check` runs one input: it must succeed or raise `InputError` whose message names one of
    `where` (the file, line or field); any other exception fails the test.
    """

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}  # target -> [accepted, refused]

    def count(self, target: str, accepted: bool) -> None:
        self.counts.setdefault(target, [0, 0])[0 if accepted else 1] += 1

    def check(self, target: str, run: Callable[[], Any], *where: object) -> Any:
        try:
            result = run()
        except InputError as err:
            assert any(str(w) in str(err) for w in where), f"{err} names none of {where}"
            self.count(target, accepted=False)
            return None
        self.count(target, accepted=True)
        return result

    def merge(self, counts: dict[str, list[int]]) -> None:
        for target, (accepted, refused) in counts.items():
            mine = self.counts.setdefault(target, [0, 0])
            mine[0] += accepted
            mine[1] += refused


FUZZ_TALLY = pytest.StashKey[FuzzTally]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FUZZ_TALLY] = FuzzTally()
    if os.environ.get(EXPLORE) or config.getoption("hypothesis_seed", None) is not None:
        settings.load_profile("explore")


def pytest_report_header(config: pytest.Config) -> str:
    explore = settings.default.derandomize is False
    return "hypothesis: " + ("exploring (fresh examples)" if explore else "derandomized")


@pytest.fixture(scope="session")
def fuzz(pytestconfig: pytest.Config) -> FuzzTally:
    """The session's `FuzzTally` (printed in the terminal summary)."""
    return pytestconfig.stash[FUZZ_TALLY]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker sends its tally to the controller, which prints the sum."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fuzz"] = session.config.stash[FUZZ_TALLY].counts


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    node.config.stash[FUZZ_TALLY].merge(getattr(node, "workeroutput", {}).get("fuzz", {}))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    counts = config.stash[FUZZ_TALLY].counts
    if not counts:
        return
    terminalreporter.section("fuzz")
    for target, (accepted, refused) in sorted(counts.items()):
        terminalreporter.write_line(
            f"fuzz: {target} {accepted + refused} inputs ({accepted} accepted, {refused} refused)"
        )


@pytest.fixture(scope="session")
def ml100k_next_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared ML-100K directory (docs/architecture.md): `next` mode, 20 candidates
    (1 positive + 19 uniform negatives), listing template, seed 0, chronological split,
    a seeded sample of 200 train / 50 valid / 50 test examples. Read-only: do not write in it.
    """
    from setdpo.data import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("data") / "ml100k-next"
    config = PrepareConfig(
        source="ml-100k",
        mode="next",
        candidates=20,
        seed=0,
        out=str(out),
        max_examples_per_split={"train": 200, "valid": 50, "test": 50},
    )
    return prepare(config)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (restored after): on the shared 2-core machine,
    where other test processes compete for the cores, it runs several times faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_xdist_worker():
    """Under `pytest -n N` (as `make test` runs), each worker process uses one torch thread:
    N workers with the default thread count each would oversubscribe the cores."""
    import os

    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    yield


@pytest.fixture()
def source_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A `source_samples.FileServer` standing in for the official hosts (``SETDPO_MIRROR``),
    with the cache in `tmp_path` (``SETDPO_CACHE``)."""
    from source_samples import FileServer

    server = FileServer()
    monkeypatch.setenv("SETDPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SETDPO_MIRROR", server.url)
    yield server
    server.close()
