"""Evaluation throughput (contexts/s) with shared and with repeated prompts.

Scores the same ML-100K `next` contexts (20 candidates each, listing prompt) with the
embedded SmolLM2-135M twice: running each prompt once for all its candidates
(``share_prefix=True``) and repeating the prompt for every candidate. Reports contexts
per second, the speed-up, the largest log-prob difference between the two, and HR@1 of
both (equal up to that difference), then writes the section
``## Evaluation (bench_evaluation.py)`` of ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/bench_evaluation.py --contexts 24
"""

from __future__ import annotations

import argparse
import os
import platform
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
