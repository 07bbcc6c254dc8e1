"""`setdpo evaluate`, `setdpo compare` and `setdpo recommend`: parse, call the library, print."""

from __future__ import annotations

import argparse
import json

from setdpo.commands.options import build_config, config_command


def add_parser(subparsers) -> None:
    _add_evaluate(subparsers)
    _add_compare(subparsers)
    _add_recommend(subparsers)


def _add_evaluate(subparsers) -> None:
    p = config_command(
        subparsers,
        "evaluate",
        "setdpo.evaluation.evaluate:EvalConfig",
        "evaluate",
        help="rank each context's candidates with a model or baseline; metrics with intervals",
        description="Evaluate a model, a run directory, or the 'random'/'popularity'/'sasrec' baseline "
        "on a prepared split. Writes a results JSON with the protocol, every metric with its "
        "95% bootstrap interval, and per context the candidates' scores and positives' ranks. "
        "Every EvalConfig field is an option (listed below). Launched on N processes "
        "(torchrun --nproc_per_node N -m setdpo evaluate ...), each scores 1/N of the contexts "
        "and rank 0 writes the results of all, equal to one process's.",
    )
    p.add_argument("--out", required=True, help="results JSON file to write")
    p.add_argument(
        "--repeat-prompt",
        action="store_true",
        help="score each candidate with its own copy of the prompt (slower; for checks; "
        "= --share-prefix false)",
    )
    p.add_argument("--resamples", type=int, help="bootstrap resamples (= --n-resamples)")
    _add_threads(p)
    p.set_defaults(func=run_evaluate)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); 1 is often fastest on a CPU "
        "shared with other jobs",
    )


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def run_evaluate(args: argparse.Namespace) -> int:
    from setdpo.evaluation.evaluate import evaluate
    from setdpo.evaluation.sharding import launched

    _set_threads(args.threads)
    named = {"share_prefix": False if args.repeat_prompt else None, "n_resamples": args.resamples}
    config = build_config(args, named)
    with launched(config.shard_timeout_s) as shard:  # under torchrun: this rank's shard
        results = evaluate(config)
    if not shard.is_main:  # rank 0 writes and prints for all
        return 0
    results.write(args.out)
    p, t = results.protocol, results.timing
    print(f"{p['model']} on {p['split']} ({p['n_contexts']} contexts): {t['total_s']:.1f} s")
    for name, iv in results.metrics.items():
        print(f"  {name:<16} {iv.value:.4f}  [{iv.low:.4f}, {iv.high:.4f}]")
    print(f"wrote {args.out}")
    return 0


def _add_compare(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="one table of several results files, with paired bootstrap differences",
        description="Compare results files of runs on the same contexts: each metric with its "
        "interval, and the paired difference to the baseline (* = interval excludes 0).",
    )
    p.add_argument("files", nargs="+", help="results JSON files from `setdpo evaluate`")
    p.add_argument("--baseline", help="file the others are compared with (default: the first)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from setdpo.evaluation.compare import compare

    print(compare(args.files, baseline=args.baseline, n_resamples=args.resamples, seed=args.seed))
    return 0


def _add_recommend(subparsers) -> None:
    p = config_command(
        subparsers,
        "recommend",
        "setdpo.evaluation.recommend:RecommendConfig",
        "recommend",
        help="rank candidate titles (or a whole catalog) for a viewing history",
        description="Render the prompt for a history and print the candidates ranked by the "
        "model's log-probability of each title. Every RecommendConfig field is an option "
        "(listed below).",
    )
    _add_threads(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_recommend)


def run_recommend(args: argparse.Namespace) -> int:
    from setdpo.evaluation.recommend import recommend

    _set_threads(args.threads)
    ranked = recommend(build_config(args))
    if args.json:
        print(json.dumps(ranked, indent=1))
        return 0
    for entry in ranked:
        print(f"{entry['rank']:>4}  {entry['score']:>10.3f}  {entry['title']}")
    return 0
