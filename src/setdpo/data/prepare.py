"""`prepare(config)`: a source's interactions -> a prepared directory (docs/architecture.md)."""

from __future__ import annotations

import hashlib
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from setdpo import faults
from setdpo.data.audit import AuditError, audit, findings, format_table
from setdpo.data.builders import build, catalog_rows, statistics
from setdpo.data.config import PrepareConfig
from setdpo.data.examples import split_table, user_strings
from setdpo.data.io import (
    TIMELINES,
    atomic_directory,
    check_target,
    dumps,
    write_json,
    write_timelines,
)
from setdpo.data.sources import Interactions, load_source
from setdpo.data.store import SPLITS, finish_hf, save_split

STAGES = ("read", "build", *SPLITS, "timelines", "audit")


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


def prepare(config: PrepareConfig, data: Interactions | None = None) -> Path:
    """Build the train/valid/test examples of `config.source` and write them to `config.out`.

    `data`: the source's interactions if already loaded (`sources.load_source(config)`),
    e.g. to prepare several modes from one read. Returns the output directory. It appears
    only once complete and audited (`setdpo.data.audit`; the counts go to `stats.json`
    ``audit``): nothing is left behind if anything fails. `stats.json` ``run`` records the
    seconds of each stage and the process's peak memory.
    """
    check_target(config.out, config.overwrite)  # fail before the slow part
    stages = Stages()
    stages.next("read")
    data = data if data is not None else load_source(config)
    stages.next("build")
    built = build(data, config)
    fingerprint = hashlib.sha256(dumps(asdict(config)).encode()).hexdigest()[:16]
    with atomic_directory(config.out, config.overwrite) as tmp:
        users = user_strings(built)
        for split in SPLITS:
            stages.next(split)
            save_split(tmp, split, split_table(built, split, users), fingerprint)
        finish_hf(tmp)
        write_json(tmp / "items.json", catalog_rows(built))
        stages.next("timelines")
        seq = built.seq
        write_timelines(tmp / TIMELINES, users, seq.offsets, seq.item, seq.time)
        stats = statistics(built)
        write_json(tmp / "config.json", asdict(config))
        write_json(tmp / "stats.json", stats)
        del built, seq, data  # free the arrays before the audit reads the files back
        stages.next("audit")
        checks = audit(tmp)
        if findings(checks):  # prepare's own rules exclude every finding: a bug, never output
            raise AuditError(f"the prepared data fails its audit:\n{format_table(checks)}")
        stages.close()
        run = {"stage_seconds": stages.seconds, "peak_rss_mb": peak_rss_mb()}
        write_json(
            tmp / "stats.json", stats | {"audit": {c.name: c.found for c in checks}, "run": run}
        )
    return Path(config.out)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
