"""Shared-prefix scoring against repetition (and TRL's pairwise DPO) on SmolLM2-135M, CPU.

One real ML-100K listing prompt (the first test context of a prepared `next` split with 20
candidates), LoRA r=8 on every projection (dropout 0):

1. evaluation: log-probs of the 20 candidates without gradient, shared vs repeated;
2. one training step (policy forward + backward through LoRA, S-DPO loss, reference
   log-probs computed beforehand) on 1 positive and 3, 7, 19 negatives, shared vs repeated,
   and TRL's `DPOTrainer.compute_loss` + backward on the same context with the negatives
   flattened into pairs (prompt, positive, negative_i) -- TRL's route for several
   negatives -- with its reference log-probs precomputed too (``precompute_ref_log_probs``),
   all pairs in one batch or, with ``--trl-micro-batch``, gradient accumulation over
   micro-batches of pairs (1+19 at once ran out of this machine's memory);
3. the `score_texts` check: shared and repeated agree within 1e-3 and shared is >= 6x faster;
4. ``--sections routes``: one training step per route and candidate count (1+3, 1+19, 1+99:
   the context's own negatives, then catalog titles), timed, with the peak memory above the
   model's (`device_stats.PeakMemory`): the cache route, the packed row, the packed row with
   gradient checkpointing, repeated, repeated with checkpointing (``--skip`` leaves out what
   this machine cannot hold or afford). ``--json`` writes its rows.

Tokens: what each route feeds the model (shared: prompt + each candidate but its last
token; repeated: prompt + candidate but its last token per row; TRL: prompt + chosen and
prompt + rejected per pair). The ideal ratio is ``n (P + C) / (P + n C)`` with the real
lengths (sum over candidates of P + C_i over P + sum C_i). Methods are timed round-robin
(one run of each, repeated), so load from other processes hits them alike; medians.

Run: ``.venv/bin/python benchmarks/bench_scoring.py`` (``--help`` for repeats, negatives,
``--device cuda --dtype bf16``). Needs TRL for the TRL column: ``.venv/bin/pip install -e
'.[bench]'`` (or ``--no-trl``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from device_stats import PeakMemory, describe, mfu

from setdpo.atomic import atomic_write_json
from setdpo.data import PrepareConfig, load_items, load_split, prepare
from setdpo.data.schema import PreferenceExample
from setdpo.losses import compute
from setdpo.model import LoraSettings, add_lora, load
from setdpo.scoring import ScoringOptions, candidate_logps, score_texts
from setdpo.tokenization import (
    CandidateCollator,
    TokenizedExample,
    tokenize_candidates,
    tokenize_example,
)

MODEL = "embedded:smollm2-135m"


def _round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (s) of each function over ``repeats`` rounds, after one warm-up call
    of the first (cheapest) one: the routes share every kernel, and warming the repeated
    route too would cost minutes."""
    next(iter(fns.values()))()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _policy(seed: int = 0, device: str = "cpu", dtype: str = "float32"):
    model, tokenizer = load(MODEL, device=device, dtype=dtype)
    torch.manual_seed(seed)  # same LoRA A for every copy
    return add_lora(model, LoraSettings(r=8, alpha=16, dropout=0.0)), tokenizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _listing_example(workdir: Path) -> tuple[PreferenceExample, list[str]]:
    """The first test context and the catalog's titles."""
    out = prepare(
        PrepareConfig(
            source="ml-100k",
            mode="next",
            candidates=20,
            seed=0,
            out=str(workdir / "ml100k"),
            max_examples_per_split={"train": 20, "valid": 5, "test": 5},
        )
    )
    return load_split(out, "test")[0], [str(item["title"]) for item in load_items(out)]


def _subset(tok: TokenizedExample, negatives: int) -> TokenizedExample:
    """The positive and the first ``negatives`` negatives; the prompt still lists all 20."""
    keep = [tok.levels.index(1)] + [j for j, g in enumerate(tok.levels) if g > 1][:negatives]
    return TokenizedExample(
        tok.prompt_ids, [tok.candidate_ids[j] for j in keep], [tok.levels[j] for j in keep]
    )


def _tokens(tok: TokenizedExample) -> dict[str, float]:
    p, cands = len(tok.prompt_ids), [len(c) for c in tok.candidate_ids]
    return {
        "P": p,
        "C": sum(cands) / len(cands),
        "shared": p + sum(c - 1 for c in cands),
        "repeated": sum(p + c - 1 for c in cands),
        "ideal": sum(p + c for c in cands) / (p + sum(cands)),
    }


def _row(label: str, tok: TokenizedExample, t: dict[str, float], extra: str = "") -> str:
    n = _tokens(tok)
    ratio = t["repeated"] / t["shared"]
    return (
        f"| {label} | {len(tok.levels)} | {n['P']} | {n['C']:.1f} | {n['shared']} | "
        f"{n['repeated']} | {t['shared']:.2f} | {t['repeated']:.2f} | {ratio:.1f}x | "
        f"{n['ideal']:.1f}x | {100 * ratio / n['ideal']:.0f}% |{extra}"
    )


HEADER = (
    "| case | n | P | mean C | tokens shared | tokens repeated | shared (s) | repeated (s) | "
    "ratio | ideal | % of ideal |"
)


def evaluation(model, tok: TokenizedExample, pad: int, repeats: int) -> str:
    batch = CandidateCollator(pad)([tok])

    def run(share: bool) -> Callable[[], object]:
        return lambda: candidate_logps(model, batch, share_prefix=share)

    with torch.no_grad():
        times = _round_robin({"shared": run(True), "repeated": run(False)}, repeats)
    return _row("evaluation, no grad", tok, times)


def training_step(
    model,
    trl_trainer,
    tok: TokenizedExample,
    pad: int,
    repeats: int,
    trl_micro_batch: int | None = None,
) -> str:
    batch = CandidateCollator(pad)([tok])
    with torch.no_grad(), model.disable_adapter():
        ref = candidate_logps(model, batch).logps

    def run(share: bool) -> Callable[[], object]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            logps = candidate_logps(model, batch, share_prefix=share).logps
            compute("sdpo", logps, ref, batch["levels"], beta=1.0).loss.backward()

        return step

    fns = {"shared": run(True), "repeated": run(False)}
    extra = ""
    if trl_trainer is not None:
        pairs = list(trl_trainer.train_dataset)
        size = trl_micro_batch or len(pairs)
        micro = [trl_trainer.data_collator(pairs[i : i + size]) for i in range(0, len(pairs), size)]

        def trl_step() -> None:  # gradient accumulation over micro-batches of pairs
            trl_trainer.model.zero_grad(set_to_none=True)
            for inputs in micro:
                share = len(inputs["ref_chosen_logps"]) / len(pairs)
                (trl_trainer.compute_loss(trl_trainer.model, inputs) * share).backward()

        fns["trl"] = trl_step
    model.train()
    times = _round_robin(fns, repeats)
    model.eval()
    if trl_trainer is not None:
        trl_tokens = sum(int(inputs["attention_mask"].sum()) for inputs in micro)
        extra = f" {trl_tokens} | {times['trl']:.2f} | {times['trl'] / times['shared']:.1f}x |"
    return _row(f"train step, 1+{len(tok.levels) - 1}", tok, times, extra)


def trl_trainer_for(example: PreferenceExample, negatives: int, workdir: Path):
    """A TRL DPOTrainer on the pairs (prompt, positive, negative_i), i < ``negatives``."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    positive = example.positives[0]
    rows = [
        {"prompt": example.prompt, "chosen": positive, "rejected": negative}
        for negative in example.negatives[:negatives]
    ]
    model, tokenizer = _policy()
    args = DPOConfig(
        output_dir=str(workdir / f"trl-{negatives}"),
        per_device_train_batch_size=negatives,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=1,
        max_length=None,
        beta=1.0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.model.train()
    return trainer


def score_texts_check(model, tokenizer, example: PreferenceExample, repeats: int) -> str:
    prompts, candidates = [example.prompt], [example.candidates]
    results: dict[str, list[list[float]]] = {}

    def run(share: bool) -> Callable[[], object]:
        def call() -> None:
            results[str(share)] = score_texts(
                model, tokenizer, prompts, candidates, ScoringOptions(share_prefix=share)
            )

        return call

    times = _round_robin({"shared": run(True), "repeated": run(False)}, repeats)
    diff = max(abs(a - b) for a, b in zip(results["True"][0], results["False"][0], strict=True))
    speedup = times["repeated"] / times["shared"]
    ok = diff <= 1e-3 and speedup >= 6
    return (
        f"score_texts, 20 candidates: max |shared - repeated| = {diff:.2e} (<= 1e-3), "
        f"shared {times['shared']:.2f} s, repeated {times['repeated']:.2f} s, "
        f"speedup {speedup:.1f}x (>= 6x): {'PASS' if ok else 'FAIL'}"
    )


ROUTES = {  # name: (share_prefix, gradient checkpointing)
    "cache": ("cache", False),
    "packed": ("packed", False),
    "packed+ckpt": (True, True),
    "repeated": (False, False),
    "repeated+ckpt": (False, True),
}


def _with_negatives(tok: TokenizedExample, extra: list[list[int]], k: int) -> TokenizedExample:
    """The positive and k negatives: the context's own first, then ``extra`` (catalog titles
    tokenized after the same prompt)."""
    own = _subset(tok, k)
    more = extra[: max(k + 1 - len(own.levels), 0)]
    return TokenizedExample(tok.prompt_ids, own.candidate_ids + more, own.levels + [2] * len(more))


def routes(
    model, tok: TokenizedExample, extra: list[list[int]], args: argparse.Namespace
) -> list[dict]:
    """One S-DPO training step (forward + backward through LoRA) per route and size, or with
    ``--no-grad`` one evaluation call (eval mode, no gradient, ``--chunk-size``)."""
    device = model.get_input_embeddings().weight.device
    memory, params = PeakMemory(device), sum(p.numel() for p in model.parameters())
    rows = []
    for k in args.route_negatives:
        case = _with_negatives(tok, extra, k)
        batch = CandidateCollator(args.pad)([case])
        with torch.no_grad(), model.disable_adapter():
            ref = candidate_logps(model, batch).logps
        n = _tokens(case)
        for name in args.routes:
            if f"{name}:{k}" in args.skip:
                continue
            share, checkpointing = ROUTES[name]
            if checkpointing:
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.activation_checkpointing_disable()
            model.train(not args.no_grad)
            times, peak = [], 0.0
            for _ in range(args.train_repeats):
                model.zero_grad(set_to_none=True)
                memory.reset()
                start = time.perf_counter()
                with torch.set_grad_enabled(not args.no_grad):
                    logps = candidate_logps(
                        model, batch, share_prefix=share, chunk_size=args.chunk_size
                    ).logps
                    if not args.no_grad:
                        compute("sdpo", logps, ref, batch["levels"], beta=1.0).loss.backward()
                _sync(device)
                times.append(time.perf_counter() - start)
                peak = max(peak, memory.read_mb())
            model.eval()
            seconds = statistics.median(times)
            tokens = n["repeated" if share is False else "shared"]
            util = mfu(params, tokens / seconds, device, training=not args.no_grad)
            rows.append(
                {
                    "route": name,
                    "candidates": f"1+{k}",
                    "P": n["P"],
                    "tokens": tokens,
                    "seconds": seconds,
                    "tokens_per_s": tokens / seconds,
                    "contexts_per_s": 1 / seconds,
                    "peak_mb": peak,
                    "mfu": util,
                }
            )
            print(_route_row(rows[-1]), flush=True)
    model.activation_checkpointing_disable()
    return rows


ROUTE_HEADER = (
    "| route | candidates | P | tokens read | step s | tokens/s | contexts/s | peak MB | MFU |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def _route_row(r: dict) -> str:
    util = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    return (
        f"| {r['route']} | {r['candidates']} | {r['P']} | {r['tokens']} | {r['seconds']:.2f} | "
        f"{r['tokens_per_s']:.0f} | {r['contexts_per_s']:.3f} | {r['peak_mb']:.0f} | {util} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (evaluation)")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed rounds (training)")
    parser.add_argument("--negatives", type=int, nargs="+", default=[3, 7, 19])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see RESULTS.md)")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL's pairwise route")
    parser.add_argument(
        "--trl-micro-batch",
        type=int,
        default=None,
        help="pairs per TRL forward, gradients accumulated (default: all pairs at once)",
    )
    parser.add_argument(
        "--skip-eval", action="store_true", help="training steps only (no evaluation, no check)"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["steps"],
        choices=["steps", "routes"],
        help="steps: evaluation, training steps, check (above); routes: time and memory per route",
    )
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    parser.add_argument("--route-negatives", type=int, nargs="+", default=[3, 19, 99])
    parser.add_argument(
        "--skip",
        nargs="*",
        default=["repeated:19", "repeated:99", "repeated+ckpt:99"],
        help="route:negatives pairs to leave out (default: what a 23 GB CPU machine cannot "
        "hold or afford: repeated 1+19 took 16 GB)",
    )
    parser.add_argument("--no-grad", action="store_true", help="routes: evaluation calls")
    parser.add_argument("--chunk-size", type=int, default=None, help="routes: chunk_size")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--dtype", default="float32", help="float32 | bf16 (model weights)")
    parser.add_argument("--json", type=Path, default=None, help="write the routes rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {describe(torch.device(args.device), args.threads)} at start, {args.dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        example, catalog = _listing_example(workdir)
        model, tokenizer = _policy(device=args.device, dtype=args.dtype)
        model.eval()
        tok = tokenize_example(example, tokenizer)
        args.pad = pad = tokenizer.pad_token_id
        if "steps" in args.sections:
            trl_cols = " tokens TRL | TRL (s) | TRL / shared |"
            print(HEADER + (trl_cols if not args.no_trl else ""))
            print("|---" * (11 + (0 if args.no_trl else 3)) + "|")
            if not args.skip_eval:
                print(evaluation(model, tok, pad, args.repeats), flush=True)
            for k in args.negatives:
                trainer = None if args.no_trl else trl_trainer_for(example, k, workdir)
                row = training_step(
                    model, trainer, _subset(tok, k), pad, args.train_repeats, args.trl_micro_batch
                )
                print(row, flush=True)
                del trainer
            if not args.skip_eval:
                print(score_texts_check(model, tokenizer, example, args.repeats))
        if "routes" in args.sections:
            seen = set(example.history) | set(example.candidates)
            titles = [t for t in catalog if t not in seen][: max(args.route_negatives)]
            extra = tokenize_candidates(tokenizer, example.prompt, titles)
            print(ROUTE_HEADER, flush=True)
            rows = routes(model, tok, extra, args)
            if args.json:
                atomic_write_json(
                    args.json,
                    {
                        "setup": describe(torch.device(args.device), args.threads),
                        "dtype": args.dtype,
                        "rows": rows,
                    },
                )
    print(f"# {describe(torch.device(args.device), args.threads)} at end")


if __name__ == "__main__":
    main()
