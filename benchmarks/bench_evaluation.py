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

With ``--items-as titles,tokens`` it compares item representations (`setdpo.items`): the
same contexts prepared once per representation (same seed: the same candidates, checked),
scored with shared prompts by the same embedded model (with ``tokens``, the base model with
one new token per catalog item: ``load(..., item_titles=token_catalog(data))``, untrained,
so its HR@1 says nothing). It reports contexts/s, the tokens the shared pass reads per
context (the prompt, then every candidate but its last token: none for one-token
candidates) and both as a ratio to the first representation, measured in the same run; its
section is ``## Item representations (bench_evaluation.py --items-as)``.

    .venv/bin/python benchmarks/bench_evaluation.py --items-as titles,tokens --contexts 24
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
from setdpo.data.store import token_catalog
from setdpo.evaluation.evaluate import rank_contexts
from setdpo.evaluation.metrics import DEFAULT_METRICS
from setdpo.evaluation.scorers import ModelScorer
from setdpo.model import EMBEDDED_DEFAULT, load
from setdpo.scoring import ScoringOptions

SECTION = "## Evaluation (bench_evaluation.py)"
SHARDED_SECTION = "## Sharded evaluation (bench_evaluation.py --processes)"
ITEMS_SECTION = "## Item representations (bench_evaluation.py --items-as)"


def prepared_data(folder: Path, contexts: int, items_as: str = "titles") -> Path:
    config = PrepareConfig(
        source="ml-100k",
        mode="next",
        candidates=20,
        seed=0,
        out=str(folder),
        items_as=items_as,
        max_examples_per_split={"train": 50, "valid": 10, "test": contexts},
    )
    return prepare(config)


def machine() -> str:
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )


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
        f"batch {batch_size} contexts, best of {repeats}; {machine()}. "
        f"Max |log-prob difference| shared vs repeated: {max_diff:.2e}."
    )
    return rows, setup


def heading(section: str, command: str, setup: str, columns: list[str]) -> list[str]:
    """A section's first lines: heading, command, setup, then its table's header."""
    header, rule = "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"
    return [section, "", f"Command: `{command}`", "", setup, "", header, rule]


def markdown(rows: list[dict], setup: str, command: str) -> str:
    lines = heading(
        SECTION, command, setup, ["prompt", "seconds", "contexts/s", "speed-up", "HR@1"]
    )
    for row in rows:
        speedup = row["contexts_per_s"] / rows[-1]["contexts_per_s"]
        lines.append(
            f"| {row['prompt']} | {row['seconds']:.2f} | {row['contexts_per_s']:.3g} | "
            f"{speedup:.1f}x | {row['hr1']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run_items(
    representations: list[str], contexts: int, batch_size: int, repeats: int
) -> tuple[list[dict], str]:
    """The same contexts written as each of ``representations``, scored with shared prompts."""
    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for kind in representations:
            data = prepared_data(Path(tmp) / kind, contexts, kind)
            examples = load_split(data, "test")
            model, tokenizer = load(EMBEDDED_DEFAULT, device="cpu", item_titles=token_catalog(data))
            scorer = ModelScorer(model, tokenizer, batch_size=batch_size, progress=False)
            seconds, scores = time_scoring(scorer, examples, repeats)
            ranked = rank_contexts(examples, scores, DEFAULT_METRICS)
            read = [
                len(t.prompt_ids) + sum(len(c) - 1 for c in t.candidate_ids)
                for t in scorer.tokenize(examples)
            ]
            candidates = [(e.meta["candidate_ids"], e.levels) for e in examples]
            first = first or candidates
            rows.append(
                {
                    "items_as": kind,
                    "seconds": seconds,
                    "contexts_per_s": len(examples) / seconds,
                    "tokens_per_context": float(np.mean(read)),
                    "hr1": float(np.mean([c.values["HR@1"] for c in ranked])),
                    "same": candidates == first,
                }
            )
    setup = (
        f"{contexts} ML-100K test contexts (`next` mode, 20 candidates, listing prompt) per "
        f"representation, SmolLM2-135M (embedded, float32; item tokens added untrained), shared "
        f"prompts, batch {batch_size} contexts, best of {repeats}; {machine()}. Ratios: over "
        "the first row, same run."
    )
    return rows, setup


def markdown_items(rows: list[dict], setup: str, command: str) -> str:
    columns = ["items as", "seconds", "contexts/s", "tokens read / context", "speed ratio"]
    columns += ["tokens ratio", "HR@1", "same candidates"]
    lines = heading(ITEMS_SECTION, command, setup, columns)
    for row in rows:
        speed = row["contexts_per_s"] / rows[0]["contexts_per_s"]
        tokens = row["tokens_per_context"] / rows[0]["tokens_per_context"]
        lines.append(
            f"| {row['items_as']} | {row['seconds']:.2f} | {row['contexts_per_s']:.3g} | "
            f"{row['tokens_per_context']:.0f} | {speed:.2f}x | {tokens:.2f}x | {row['hr1']:.3f} "
            f"| {'yes' if row['same'] else 'NO'} |"
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
    columns = ["processes", "ranking s", "contexts/s", "speed-up", "wall s (with loading)"]
    lines = heading(SHARDED_SECTION, command, setup, columns + ["results equal"])
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
    parser.add_argument(
        "--items-as", help="comma-separated item representations (e.g. titles,tokens) compared"
    )
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
    if args.items_as:
        command = (
            f".venv/bin/python benchmarks/bench_evaluation.py --items-as {args.items_as} "
            f"--contexts {args.contexts} --batch-size {args.batch_size} --repeats {args.repeats} "
            f"--threads {args.threads}"
        )
        rows, setup = run_items(
            args.items_as.split(","), args.contexts, args.batch_size, args.repeats
        )
        text = markdown_items(rows, setup, command)
        print(text)
        if not args.no_write:
            write_section(ITEMS_SECTION, text)
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
