"""Sharded evaluation: `torchrun --nproc_per_node 2 -m setdpo evaluate` (CPU, gloo) writes the
results one process writes, for candidate ranking, constrained generation and catalog ranking
with the timelines; a rank that fails stops the others at once, naming itself."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_split, prepare
from setdpo.data.io import TIMELINES
from setdpo.data.sources import movielens_folder
from setdpo.evaluation.catalog import EXCLUDED_CONSUMED
from setdpo.evaluation.sharding import Shard

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# Ranking, constrained generation and the catalog, 3 contexts a batch: 8 contexts are 3 batches,
# so the ranks' shards (1 and 2 batches) are uneven and cut between batches.
ARGS = ["--model", "tiny", "--constrained", "--catalog", "--batch-size", "3"]
ARGS += ["--resamples", "200", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize(("n", "unit", "world"), [(8, 3, 2), (50, 4, 2), (10, 4, 3), (3, 4, 2)])
def test_shards_cover_every_context_once_in_order_cut_between_batches(
    n: int, unit: int, world: int
) -> None:
    spans = [Shard(rank, world).span(n, unit) for rank in range(world)]
    assert [i for span in spans for i in span] == list(range(n))
    assert all(span.start % unit == 0 for span in spans)
    sizes = [len(span) for span in spans]
    assert max(sizes) - min(sizes) <= unit  # whole batches, spread evenly


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ML-100K restricted to its 40 most rated movies (a catalog of 40, ranked in seconds),
    `open` template, with timelines: 8 test contexts."""
    folder = tmp_path_factory.mktemp("slice")
    source = movielens_folder("ml-100k")
    inter = pd.read_csv(source / "ml-100k.inter", sep="\t")
    inter.columns = ["user_id", "item_id", "rating", "timestamp"]
    top = inter["item_id"].value_counts().index[:40]
    inter[inter["item_id"].isin(top)].to_csv(folder / "inter.csv", index=False)
    items = pd.read_csv(source / "ml-100k.item", sep="\t")
    items = items[items.iloc[:, 0].isin(top)]
    titles = items.iloc[:, 1] + " (" + items.iloc[:, 2].astype(str) + ")"
    pd.DataFrame({"item_id": items.iloc[:, 0], "title": titles}).to_csv(
        folder / "items.csv", index=False
    )
    config = PrepareConfig(
        source="file",
        interactions=str(folder / "inter.csv"),
        items=str(folder / "items.csv"),
        template="open",
        candidates=10,
        seed=0,
        out=str(folder / "prepared"),
        max_examples_per_split={"train": 20, "valid": 4, "test": 8},
    )
    return prepare(config)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), "-m", "setdpo", *argv]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)


def test_two_processes_write_what_one_process_writes(slice_dir: Path, tmp_path: Path) -> None:
    data = ["--data", str(slice_dir)]
    done = torchrun("evaluate", *data, *ARGS, "--out", str(tmp_path / "two.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 writes and prints, rank 1 nothing
    assert main(["evaluate", *data, *ARGS, "--out", str(tmp_path / "one.json")]) == 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    # Every float equal: each forward batch holds the same contexts in both runs.
    assert two["contexts"] == one["contexts"]
    assert two["metrics"] == one["metrics"]
    assert two["protocol"] == one["protocol"]
    assert (one["timing"]["processes"], two["timing"]["processes"]) == (1, 2)
    ids = [c["context_id"] for c in two["contexts"]]
    assert ids == [ex.context_id for ex in load_split(slice_dir, "test")]
    assert len(ids) == 8 and all("generation" in c and "catalog" in c for c in two["contexts"])
    assert two["protocol"]["catalog"]["excluded"] == EXCLUDED_CONSUMED
    assert "catalog/NDCG@5" in two["metrics"] and "GenHR@1" in two["metrics"]


def test_a_failing_rank_stops_the_other_and_is_named(slice_dir: Path, tmp_path: Path) -> None:
    # The user of the last test context (rank 1's shard) loses its timeline: its catalog
    # ranking raises there only, while rank 0 finishes its own shard and must not wait.
    broken = Path(shutil.copytree(slice_dir, tmp_path / "broken"))
    last = load_split(slice_dir, "test")[-1]
    timelines = pq.read_table(broken / TIMELINES)
    pq.write_table(timelines.filter(pc.not_equal(timelines["user"], last.user)), broken / TIMELINES)
    out = tmp_path / "broken.json"
    start = time.monotonic()
    done = torchrun("evaluate", "--data", str(broken), *ARGS, "--out", str(out))
    assert done.returncode != 0
    assert f"user {last.user!r} has no timeline" in done.stderr
    assert "rank 1 of 2 failed" in done.stderr  # rank 0's report of it
    assert time.monotonic() - start < 120 and not out.exists()
