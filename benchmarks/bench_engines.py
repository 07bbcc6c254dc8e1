"""Which out-of-core engine for `data prepare`: DuckDB against Polars' streaming engine.

Each engine reads the ML-10M-shaped ``ratings.dat`` (``::``-separated text, 10M rows),
keeps each row's file position, and writes the rows sorted by user, time and position to
Parquet: the heavy part of `setdpo data prepare`'s read stage (`setdpo/data/engine.py`).
Each run is its own process with one thread; peak RSS is the child's own (`os.wait4`).
DuckDB runs at several memory limits (its sort spills to disk past the limit); Polars'
streaming engine has no such limit.

Run (after ``benchmarks/make_synthetic.py --out /tmp/syn/grouplens/ml-10m``; Polars comes
with ``pip install -e '.[bench]'``):

    .venv/bin/python benchmarks/bench_engines.py --ratings /tmp/syn/grouplens/ml-10m/ratings.dat
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = {"user": "VARCHAR", "item": "VARCHAR", "rating": "VARCHAR", "time": "VARCHAR"}


def duckdb_sort(ratings: str, out: str, limit: str, spill: str) -> None:
    import duckdb

    con = duckdb.connect(
        config={"threads": 1, "memory_limit": limit, "temp_directory": spill,
                "preserve_insertion_order": True}
    )  # fmt: skip
    columns = ", ".join(f"'{k}': '{v}'" for k, v in COLUMNS.items())
    con.execute(
        f"""COPY (
            SELECT user, item, CAST(rating AS DOUBLE) AS rating, CAST(time AS DOUBLE) AS time,
                   position
            FROM (SELECT *, row_number() OVER () AS position FROM read_csv('{ratings}',
                  delim = '::', header = false, quote = '', escape = '', auto_detect = false,
                  columns = {{{columns}}}))
            ORDER BY user, time, position
        ) TO '{out}' (FORMAT parquet)"""
    )


def polars_sort(ratings: str, out: str) -> None:
    import polars as pl

    # Polars reads one-character separators: "::" gives empty columns in between
    frame = pl.scan_csv(
        ratings, separator=":", has_header=False, infer_schema=False, quote_char=None
    )
    frame = frame.select(
        pl.col("column_0").alias("user"),
        pl.col("column_2").alias("item"),
        pl.col("column_4").cast(pl.Float64).alias("rating"),
        pl.col("column_6").cast(pl.Float64).alias("time"),
    ).with_row_index("position")
    frame.sort(["user", "time", "position"]).sink_parquet(out, engine="streaming")


def child(engine: str, ratings: str, out: str, limit: str, spill: str) -> None:
    if engine == "duckdb":
        duckdb_sort(ratings, out, limit, spill)
    else:
        polars_sort(ratings, out)


def run(engine: str, ratings: Path, limit: str, tmp: Path) -> dict[str, str]:
    out = tmp / f"{engine}-{limit}.parquet"
    command = [sys.executable, __file__, "--child", engine, "--ratings", str(ratings),
               "--out", str(out), "--limit", limit, "--spill", str(tmp / "spill")]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{engine} failed")
    return {
        "engine": engine,
        "memory limit": limit if engine == "duckdb" else "none (no such setting)",
        "wall s": f"{wall:.1f}",
        "CPU s": f"{usage.ru_utime + usage.ru_stime:.1f}",
        "peak RSS MB": f"{usage.ru_maxrss / 1024:,.0f}",
        "Parquet MB": f"{out.stat().st_size / 1e6:,.0f}",
        "load avg at start": f"{os.getloadavg()[0]:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=Path, required=True, help="a GroupLens ratings.dat")
    parser.add_argument("--limits", nargs="+", default=["1GB", "500MB"], help="DuckDB limits")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--limit", default="1GB", help=argparse.SUPPRESS)
    parser.add_argument("--spill", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, str(args.ratings), args.out, args.limit, args.spill)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run("duckdb", args.ratings, limit, Path(tmp)) for limit in args.limits]
        rows.append(run("polars", args.ratings, "-", Path(tmp)))
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")


if __name__ == "__main__":
    main()
