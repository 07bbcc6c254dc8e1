"""Evaluation throughput (contexts/s) with shared and with repeated prompts.

Scores the same ML-100K `next` contexts (20 candidates each, listing prompt) with the
embedded SmolLM2-135M twice: running each prompt once for all its candidates
(``share_prefix=True``) and repeating the prompt for every candidate. Reports contexts
per second, the speed-up, the largest log-prob difference between the two, and HR@1 of
both (equal up to that difference), then writes the section
``## Evaluation (bench_evaluation.py)`` of ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/bench_evaluation.py --contexts 24

With ``--processes 1,2`` it measures sharded evaluation instead: the same ``setdpo evaluate``
command as one process and under ``torchrun --nproc_per_node N`` (``--threads`` each), on
``--model`` (default the lab model), reporting contexts/s of the ranking (all ranks
together), the command's wall time (model loading included) and whether the results files
are equal; its section is ``## Sharded evaluation (bench_evaluation.py --processes)``.

    .venv/bin/python benchmarks/bench_evaluation.py --processes 1,2 --contexts 100
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

import numpy as np
import torch
from results_md import write_section

from setdpo.data import PrepareConfig, load_split, prepare
from setdpo.evaluation.evaluate import rank_contexts
from setdpo.evaluation.metrics import DEFAULT_METRICS
from setdpo.evaluation.scorers import ModelScorer
from setdpo.model import EMBEDDED_DEFAULT, load
from setdpo.scoring import ScoringOptions

SECTION = "## Evaluation (bench_evaluation.py)"
SHARDED_SECTION = "## Sharded evaluation (bench_evaluation.py --processes)"


def prepared_data(folder: Path, contexts: int) -> Path:
    config = PrepareConfig(
        source="ml-100k",
        mode="next",
        candidates=20,
        seed=0,
        out=str(folder),
        max_examples_per_split={"train": 50, "valid": 10, "test": contexts},
    )
    return prepare(config)


def time_scoring(scorer: ModelScorer, examples, repeats: int) -> tuple[float, list[np.ndarray]]:
    """Best wall time of ``repeats`` runs (tokenization included) and the scores."""
    best, scores = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = scorer.score(examples)
        best = min(best, time.perf_counter() - start)
    return best, scores


def run(contexts: int, batch_size: int, repeats: int) -> tuple[list[dict], str]:
    model, tokenizer = load(EMBEDDED_DEFAULT, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        examples = load_split(prepared_data(Path(tmp) / "ml100k", contexts), "test")
    rows, all_scores = [], {}
    for share in (True, False):
        scorer = ModelScorer(
            model,
            tokenizer,
            options=ScoringOptions(share_prefix=share),
            batch_size=batch_size,
            progress=False,
        )
        seconds, scores = time_scoring(scorer, examples, repeats)
        ranked = rank_contexts(examples, scores, DEFAULT_METRICS)
        all_scores[share] = np.concatenate(scores)
        rows.append(
            {
                "prompt": "shared" if share else "repeated",
                "seconds": seconds,
                "contexts_per_s": len(examples) / seconds,
                "hr1": float(np.mean([c.values["HR@1"] for c in ranked])),
            }
        )
    max_diff = float(np.abs(all_scores[True] - all_scores[False]).max())
    prompt_tokens = np.mean([len(t.prompt_ids) for t in scorer.tokenize(examples)])
    setup = (
        f"{len(examples)} ML-100K test contexts (`next` mode, 20 candidates, listing prompt, "
        f"{prompt_tokens:.0f} prompt tokens on average), SmolLM2-135M (embedded, float32), "
        f"batch {batch_size} contexts, best of {repeats}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores. Max |log-prob difference| shared vs repeated: {max_diff:.2e}."
    )
    return rows, setup


def markdown(rows: list[dict], setup: str, command: str) -> str:
    lines = [SECTION, "", f"Command: `{command}`", "", setup, ""]
    lines += ["| prompt | seconds | contexts/s | speed-up | HR@1 |", "|---|---|---|---|---|"]
    for row in rows:
        speedup = row["contexts_per_s"] / rows[-1]["contexts_per_s"]
        lines.append(
            f"| {row['prompt']} | {row['seconds']:.2f} | {row['contexts_per_s']:.3g} | "
            f"{speedup:.1f}x | {row['hr1']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def evaluate_command(processes: int, model: str, data: Path, batch_size: int, threads: int):
    """`setdpo evaluate` as one process (1) or under torchrun (N > 1), as a user runs it."""
    launch = [sys.executable]
    if processes > 1:
        launch += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
        ]
    argv = ["-m", "setdpo", "evaluate", "--model", model, "--data", str(data), "--no-progress"]
    return launch + argv + ["--batch-size", str(batch_size), "--threads", str(threads)]


def run_processes(
    processes: list[int], model: str, contexts: int, batch_size: int, threads: int
) -> tuple[list[dict], str]:
    """One `setdpo evaluate` per process count on the same contexts: throughput, wall time,
    and whether its results (per-context scores, metrics) equal the first count's."""
    rows, first, loads = [], None, [os.getloadavg()[0]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        data = prepared_data(Path(tmp) / "ml100k", contexts)
        for n in processes:
            out = Path(tmp) / f"processes-{n}.json"
            command = evaluate_command(n, model, data, batch_size, threads) + ["--out", str(out)]
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            wall = time.perf_counter() - start
            results = json.loads(out.read_text())
            first = first or results
            same = (results["contexts"], results["metrics"]) == (
                first["contexts"],
                first["metrics"],
            )
            timing = results["timing"]
            rows.append({"processes": n, "wall_s": wall, "same": same, **timing})
            loads.append(os.getloadavg()[0])
    setup = (
        f"{contexts} ML-100K test contexts (`next` mode, 20 candidates, listing prompt), "
        f"model `{model}`, batch {batch_size} contexts, {threads} thread(s) per process; torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores, 1-minute load average {min(loads):.1f}-{max(loads):.1f} during the runs."
    )
    return rows, setup


def markdown_processes(rows: list[dict], setup: str, command: str) -> str:
    lines = [SHARDED_SECTION, "", f"Command: `{command}`", "", setup, ""]
    lines += [
        "| processes | ranking s | contexts/s | speed-up | wall s (with loading) | results equal |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        speedup = row["contexts_per_s"] / rows[0]["contexts_per_s"]
        lines.append(
            f"| {row['processes']} | {row['ranking_s']:.2f} | {row['contexts_per_s']:.3g} | "
            f"{speedup:.2f}x | {row['wall_s']:.1f} | {'yes' if row['same'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--processes", help="comma-separated process counts (e.g. 1,2): sharded evaluation"
    )
    parser.add_argument("--model", default="lab", help="with --processes: the model evaluated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.processes:
        counts = [int(n) for n in args.processes.split(",")]
        command = (
            f".venv/bin/python benchmarks/bench_evaluation.py --processes {args.processes} "
            f"--model {args.model} --contexts {args.contexts} --batch-size {args.batch_size} "
            f"--threads {args.threads}"
        )
        rows, setup = run_processes(
            counts, args.model, args.contexts, args.batch_size, args.threads
        )
        text = markdown_processes(rows, setup, command)
        print(text)
        if not args.no_write:
            write_section(SHARDED_SECTION, text)
        return
    command = (
        f".venv/bin/python benchmarks/bench_evaluation.py --contexts {args.contexts} "
        f"--batch-size {args.batch_size} --repeats {args.repeats} --threads {args.threads}"
    )
    rows, setup = run(args.contexts, args.batch_size, args.repeats)
    text = markdown(rows, setup, command)
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
