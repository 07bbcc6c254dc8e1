"""`prepare(config)`: a source's interactions -> a prepared directory (docs/architecture.md).

Out of core (docs/data.md, "At scale"): the interactions are read and sorted by DuckDB
under `config.memory_limit_mb`; contexts and candidates are built for one range of users
at a time (`setdpo.data.builders`); each split is written range by range into a run file
and the runs are merged into the split's order (first-target time) at the end.
"""

from __future__ import annotations

import hashlib
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from setdpo import faults
from setdpo.atomic import scratch_folder
from setdpo.data.audit import AuditError, audit, findings, format_table
from setdpo.data.builders import (
    Plan,
    Statistics,
    built_chunks,
    catalog_rows,
    plan,
    timeline_parts,
)
from setdpo.data.config import PrepareConfig
from setdpo.data.engine import SortedInteractions
from setdpo.data.examples import split_batches
from setdpo.data.io import (
    TIMELINES,
    atomic_directory,
    check_target,
    dumps,
    write_json,
    write_timelines,
)
from setdpo.data.sources import require_source, sort_source
from setdpo.data.store import SPLITS, SplitWriter, finish_hf, split_schema
from setdpo.paths import store_fields

STAGES = ("read", "split", "build", "merge", "timelines", "audit")
MERGE_ROWS = 65536  # rows of a split merged at once
RUN_BATCH = 8192  # rows per record batch of a run file


class Stages:
    """A progress bar over `STAGES` (shown after a second: a bad input fails sooner, with
    its one-line error) that also times each stage."""

    def __init__(self) -> None:
        self.bar = tqdm(total=len(STAGES), desc="prepare", unit="stage", file=sys.stderr, delay=1)
        self.seconds: dict[str, float] = {}
        self._name, self._start = "", 0.0

    def next(self, name: str) -> None:
        """End the current stage (if any) and start `name`."""
        faults.reached("prepare.stage")
        self._end()
        self.bar.set_postfix_str(name)
        self._name, self._start = name, time.perf_counter()

    def _end(self) -> None:
        if self._name:
            self.seconds[self._name] = round(time.perf_counter() - self._start, 2)
            self.bar.update()

    def close(self) -> None:
        self._end()
        self.bar.close()


def prepare(config: PrepareConfig) -> Path:
    """Build the train/valid/test examples of `config.source` and write them to `config.out`.

    Returns the output directory. It appears only once complete and audited
    (`setdpo.data.audit`; the findings go to `stats.json` ``audit``, the counts of what the
    split protocol does not guarantee to ``audit_measured``): nothing is left behind
    if anything fails. `stats.json` ``run`` records the seconds of each stage and the
    process's peak memory.
    """
    out = check_target(config.out, config.overwrite)  # fail before the slow part
    require_source(config)
    stages = Stages()
    fingerprint = hashlib.sha256(dumps(asdict(config)).encode()).hexdigest()[:16]
    with (
        scratch_folder(out) as work,
        atomic_directory(out, config.overwrite) as tmp,
    ):
        work = Path(work)
        stages.next("read")
        source = sort_source(config, work)
        stages.next("split")
        planned = plan(source, config)
        stages.next("build")
        stats = Statistics(source, planned)
        runs = _write_runs(source, config, planned, stats, work)
        temporary_mb = round(sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 1e6)
        stages.next("merge")
        ratings = config.mode in ("rated", "levels")
        for split in SPLITS:
            _merge(
                runs[split],
                planned,
                split,
                SplitWriter(tmp, split, split_schema(ratings), fingerprint),
            )
        finish_hf(tmp)
        write_json(tmp / "items.json", catalog_rows(source, planned.train_count))
        stages.next("timelines")
        write_timelines(tmp / TIMELINES, timeline_parts(source))
        write_json(tmp / "config.json", store_fields(asdict(config), out))  # paths: from out
        stats = stats.result()
        write_json(tmp / "stats.json", stats)  # the audit reads the cuts
        del planned, runs
        stages.next("audit")
        checks = audit(tmp)
        if findings(checks):  # prepare's own rules exclude every finding: a bug, never output
            raise AuditError(f"the prepared data fails its audit:\n{format_table(checks)}")
        stages.close()
        run = {
            "stage_seconds": stages.seconds,
            "peak_rss_mb": peak_rss_mb(),
            "temporary_mb": temporary_mb,
        }
        audited = {  # findings of what the split guarantees; counts of what it does not
            "audit": {c.name: c.found for c in checks if not c.measured},
            "audit_measured": {c.name: c.found for c in checks if c.measured},
        }
        write_json(tmp / "stats.json", stats | audited | {"run": run})
    return out


def _write_runs(
    source: SortedInteractions,
    config: PrepareConfig,
    planned: Plan,
    stats: Statistics,
    work: Path,
) -> dict[str, dict[int, Path]]:
    """Each range's rows of each split in an Arrow file (`work/runs`), keyed by range number."""
    schema = split_schema(ratings=config.mode in ("rated", "levels"))
    folder = work / "runs"
    folder.mkdir()
    runs: dict[str, dict[int, Path]] = {split: {} for split in SPLITS}
    for number, built in built_chunks(source, config, planned):
        stats.add(built)
        for split in SPLITS:
            if built.bounds[split].stop == built.bounds[split].start:
                continue
            path = folder / f"{split}-{number:05d}.arrow"
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for batch in split_batches(built, split):  # small record batches:
                    writer.write_table(pa.Table.from_batches([batch]), RUN_BATCH)  # the merge
            runs[split][number] = path  # holds one of each run at a time
            faults.reached("prepare.run")
    return runs


def _merge(runs: dict[int, Path], planned: Plan, split: str, writer: SplitWriter) -> None:
    """The runs of `split` into its order: row ``j`` of the split comes from the next unread
    row of the range that holds context ``planned.rows[split][j]``."""
    owner = np.searchsorted(planned.chunk_starts, planned.rows[split], side="right") - 1
    readers = {number: _Run(path) for number, path in runs.items()}
    for lo in range(0, len(owner), MERGE_ROWS):
        own = owner[lo : lo + MERGE_ROWS]
        numbers, counts = np.unique(own, return_counts=True)
        pieces = [readers[int(n)].take(int(c)) for n, c in zip(numbers, counts, strict=True)]
        # rows of range numbers[i] sit at their positions in `own`, in order
        order = np.argsort(own, kind="stable")
        place = np.empty(len(own), dtype=np.int64)
        place[order] = np.arange(len(own))
        writer.write(pa.concat_tables(pieces).take(pa.array(place)))
        faults.reached("prepare.merge")
    writer.close()


class _Run:
    """Sequential reading of one run file, any number of rows at a time."""

    def __init__(self, path: Path) -> None:
        self.reader = pa.ipc.open_stream(pa.OSFile(str(path)))
        self.table = self.reader.schema.empty_table()

    def take(self, n: int) -> pa.Table:
        while self.table.num_rows < n:  # slices and concatenation copy nothing
            batch = pa.Table.from_batches([self.reader.read_next_batch()])
            self.table = pa.concat_tables([self.table, batch])
        head, self.table = self.table.slice(0, n), self.table.slice(n)
        return head


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
