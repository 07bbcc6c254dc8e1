"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


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
