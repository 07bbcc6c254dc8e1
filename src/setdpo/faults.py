"""Fault injection for tests: SIGKILL this process the n-th time it reaches a named site.

A no-op unless one of two environment variables is set (`tests/faults.py` sets them):

- ``SETDPO_KILL_AT="<site>:<n>"``: the n-th call of `reached(site)` in this process sends
  it SIGKILL, as a crash, an out-of-memory kill or a pre-empted job would.
- ``SETDPO_FAULT_TRACE=FILE``: every call appends ``<pid> <site> <n>`` to FILE, so a harness
  learns from an uninterrupted run which points exist.

Sites (docs/guarantees.md lists them): ``atomic.replace`` (an atomic write, between the
fsync and the rename), ``directory.replace`` (a prepared directory, before its rename),
``prepare.stage`` (each stage of `data prepare`), ``prepare.run`` (a run file of a split
written), ``prepare.merge`` (a merged table of a split written), ``train.step`` (each training step),
``download.block`` (a block of a download written to its ``.part``),
``checkpoint.save`` (inside a Trainer checkpoint: the model written, the optimiser, RNG and
trainer state not yet), ``memo.merge`` (the reference memo's merged shard written, the shards
it replaces not yet deleted), ``score.batch`` (each batch of `score_all`: evaluation) and
``study.record`` (a study stage finished, its record not yet written).
"""

from __future__ import annotations

import os
import signal

KILL_AT = "SETDPO_KILL_AT"
TRACE = "SETDPO_FAULT_TRACE"

_counts: dict[str, int] = {}  # calls per site in this process


def reached(site: str) -> None:
    """Count a call at `site`; trace it and kill this process where the variables say."""
    kill_at, trace = os.environ.get(KILL_AT), os.environ.get(TRACE)
    if not kill_at and not trace:
        return
    n = _counts[site] = _counts.get(site, 0) + 1
    if trace:
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {site} {n}\n")
    if kill_at == f"{site}:{n}":
        os.kill(os.getpid(), signal.SIGKILL)
