"""Time `setdpo data prepare` end to end on full data sets, one child process per case.

Each case runs ``python -m setdpo data prepare --source S --mode M`` (every other option at
its default: history 10, 20 candidates, chrono split, seed 0; the audit included) in its
own process, one torch/BLAS thread, and reports its wall seconds, CPU seconds (user +
system), peak RSS (the child's own ``ru_maxrss``, from `os.wait4`), the size of the
prepared directory, the temporary files at their largest (the sorted interactions and the
split runs, `stats.json` ``run`` ``temporary_mb``) and the seconds of each stage that
``run`` records. ``ml-10m`` reads the GroupLens
release under ``$SETDPO_CACHE/grouplens/ml-10m`` (e.g. the ML-10M-shaped file that
``benchmarks/make_synthetic.py`` writes). Targets (issue 12): ML-1M `next` under 60 s and
400 MB; the 10M-interaction file under 10 minutes, 8 GB of RSS and 4 GB on disk.

Run: ``.venv/bin/python benchmarks/bench_data.py --cases ml-1m:next`` (``--help``). Run one
big case at a time on a machine that is not busy with other jobs of yours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def run_case(source: str, mode: str, root: Path, files: Path | None) -> dict[str, object]:
    """Prepare one (source, mode) in a child process; its figures as a table row. Source
    ``file`` reads ``files/ratings.csv`` and ``files/items.csv`` (the Amazon shape of
    `make_synthetic.py`)."""
    out = root / f"{source}-{mode}"
    command = [sys.executable, "-m", "setdpo", "data", "prepare", "--source", source,
               "--mode", mode, "--out", str(out)]  # fmt: skip
    if source == "file":
        command += ["--interactions", str(files / "ratings.csv"), "--items",
                    str(files / "items.csv"), "--rating-col", "rating", "--domain", "generic"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load_avg = os.getloadavg()[0]
    wall = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own usage and peak RSS
    wall = time.perf_counter() - wall
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({status})")
    cpu = usage.ru_utime + usage.ru_stime
    stats = json.loads((out / "stats.json").read_text())
    sizes = [stats["splits"][s]["examples"] for s in ("train", "valid", "test")]
    row = {
        "source": source,
        "mode": mode,
        "examples (train/valid/test)": "/".join(f"{n:,}" for n in sizes),
        "wall s": f"{wall:.1f}",
        "CPU s": f"{cpu:.1f}",
        "peak RSS MB": f"{usage.ru_maxrss / 1024:,.0f}",
        "on disk MB": f"{folder_mb(out):,.0f}",
        "temporary MB": f"{stats['run']['temporary_mb']:,.0f}",
        "stage s": ", ".join(f"{k} {v:.1f}" for k, v in stats["run"]["stage_seconds"].items()),
        "load avg at start": f"{load_avg:.1f}",
    }
    subprocess.run(["rm", "-rf", str(out)], check=True)
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
    parser.add_argument("--files", type=Path, help="source `file`: folder of ratings/items.csv")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for case in args.cases:
            source, mode = case.split(":")
            rows.append(run_case(source, mode, Path(tmp), args.files))
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, one process per case\n")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
