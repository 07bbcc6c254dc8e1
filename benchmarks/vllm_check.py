"""vLLM reads a `setdpo export` the way setdpo scores it (benchmarks/gpu_check.sh, step 4).

Trains a lab run for a few steps on a small ML-100K `next` directory, exports it, loads the
export in vLLM (float32, eager), and scores each test context's candidates from vLLM's prompt
log-probs: the prompt ids followed by the candidate's ids (title, then EOS, as
`setdpo.tokenization` cuts them), summing the log-probs vLLM reports at the candidate's
positions. Compares with setdpo's scores of the same export; prints the largest difference
and exits 1 when it is over ``--atol``. Without vLLM it says so and exits 0 (skipped).

    .venv/bin/python benchmarks/vllm_check.py --contexts 8 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=8)
    parser.add_argument("--atol", type=float, default=1e-3, help="largest |difference| allowed")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if importlib.util.find_spec("vllm") is None:
        print("vllm check skipped: vLLM is not installed (pip install vllm on the GPU machine)")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("vllm check skipped: vLLM is installed but there is no CUDA device")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        figures = check(Path(tmp), args.contexts)
    figures["atol"] = args.atol
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if figures["max_abs_diff"] <= args.atol else 1


def check(root: Path, contexts: int) -> dict:
    from vllm import LLM, SamplingParams

    from setdpo import cli
    from setdpo.data import PrepareConfig, load_split, prepare
    from setdpo.model import load
    from setdpo.scoring import ScoringOptions, score_all
    from setdpo.tokenization import tokenize_example

    sizes = {"train": 64, "valid": 4, "test": contexts}
    data = prepare(PrepareConfig(source="ml-100k", mode="next", candidates=20, seed=0,
                                 out=str(root / "data"), max_examples_per_split=sizes))  # fmt: skip
    run, export = root / "run", root / "export"
    argv = ["train", "sft", "--data", str(data), "--model", "lab", "--peft", "none"]
    argv += ["--out", str(run), "--max-steps", "20", "--disable-tqdm", "true"]
    if (
        cli.main(argv + ["--max-eval-examples", "2"]) != 0
        or cli.main(["export", str(run), "--out", str(export)]) != 0
    ):
        raise SystemExit("training or exporting the lab run failed")
    model, tokenizer = load(export, device="cuda", dtype="float32")
    tokenized = [tokenize_example(ex, tokenizer) for ex in load_split(data, "test")]
    ours = score_all(model, tokenized, ScoringOptions(), tokenizer.pad_token_id)
    del model
    torch_free()
    llm = LLM(model=str(export), dtype="float32", enforce_eager=True, gpu_memory_utilization=0.3)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    diffs = []
    for row, mine in zip(tokenized, ours, strict=True):
        prompts = [{"prompt_token_ids": row.prompt_ids + ids} for ids in row.candidate_ids]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        for ids, output, score in zip(row.candidate_ids, outputs, mine.tolist(), strict=True):
            sequence = row.prompt_ids + ids
            start = len(row.prompt_ids)
            theirs = sum(
                output.prompt_logprobs[t][sequence[t]].logprob for t in range(start, len(sequence))
            )
            diffs.append(abs(theirs - score))
    return {"contexts": len(tokenized), "candidates": len(diffs), "max_abs_diff": max(diffs),
            "mean_abs_diff": sum(diffs) / len(diffs)}  # fmt: skip


def torch_free() -> None:
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
