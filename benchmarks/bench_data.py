"""Time `setdpo data prepare` on the full MovieLens copies (no `max_examples`).

For each (source, mode) it runs `setdpo.data.prepare` once, end to end (read, build,
write the jsonl splits, the `hf/` DatasetDict and the json files), and reports wall and
CPU seconds, and separately the time of reading the source and of building the contexts
and negatives (`load_source`, `build`), so the rest is writing. Output goes to a
temporary folder that is deleted afterwards. Target: ML-1M `next` and `levels` under a
minute on the 2-core machine.

Run: ``.venv/bin/python benchmarks/bench_data.py`` (``--help`` for the cases).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from setdpo.data import PrepareConfig, prepare
from setdpo.data.builders import build
from setdpo.data.sources import load_source


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def read_and_build(config: PrepareConfig) -> tuple[float, float, float, float]:
    """Wall and CPU seconds of `load_source` and of `build` (their results are dropped)."""
    data, load_wall, load_cpu = timed(lambda: load_source(config))
    _, build_wall, build_cpu = timed(lambda: build(data, config))
    return load_wall, load_cpu, build_wall, build_cpu


def run_case(source: str, mode: str, root: Path) -> dict[str, object]:
    config = PrepareConfig(source=source, mode=mode, out=str(root / f"{source}-{mode}"), seed=0)
    load_wall, load_cpu, build_wall, build_cpu = read_and_build(config)
    load_avg = os.getloadavg()[0]
    out, wall, cpu = timed(lambda: prepare(config))
    sizes = [sum(1 for _ in (out / f"{s}.jsonl").open("rb")) for s in ("train", "valid", "test")]
    row = {
        "source": source,
        "mode": mode,
        "examples (train/valid/test)": "/".join(f"{n:,}" for n in sizes),
        "prepare wall s": f"{wall:.1f}",
        "prepare CPU s": f"{cpu:.1f}",
        "read s (wall/CPU)": f"{load_wall:.1f} / {load_cpu:.1f}",
        "build s (wall/CPU)": f"{build_wall:.1f} / {build_cpu:.1f}",
        "output MB (jsonl+hf)": f"{folder_mb(out):,.0f}",
        "load avg at start": f"{load_avg:.1f}",
    }
    shutil.rmtree(out)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["ml-1m:next", "ml-1m:levels", "ml-100k:next"],
        help="source:mode pairs",
    )
    parser.add_argument("--tmp", default=None, help="folder for the temporary outputs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for case in args.cases:
            source, mode = case.split(":")
            rows.append(run_case(source, mode, Path(tmp)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, peak RSS {peak:,.0f} MB, 1 process\n")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
