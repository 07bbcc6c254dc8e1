"""`setdpo evaluate`, `setdpo compare` and `setdpo recommend`: parse, call the library, print."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    _add_evaluate(subparsers)
    _add_compare(subparsers)
    _add_recommend(subparsers)


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="rank each context's candidates with a model or baseline; metrics with intervals",
        description="Evaluate a model, a run directory, or the 'random'/'popularity'/'sasrec' baseline "
        "on a prepared split. Writes a results JSON with the protocol, every metric with its "
        "95% bootstrap interval, and per context the candidates' scores and positives' ranks.",
    )
    p.add_argument(
        "--model",
        default="embedded:smollm2-135m",
        help="run dir, model folder, "
        "hub id, 'embedded:smollm2-135m', 'tiny', 'random', 'popularity' or 'sasrec' (trained on "
        "the data's training split, cached in $SETDPO_CACHE/sasrec) (default: %(default)s)",
    )
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--out", required=True, help="results JSON file to write")
    p.add_argument("--limit", type=int, help="evaluate a seeded random subset of N contexts")
    p.add_argument(
        "--metrics", nargs="+", help="ranking metrics (default: HR@1,5,10 NDCG@5,10,20 MRR AUC)"
    )
    p.add_argument("--average", action="store_true", help="length-average candidate log-probs")
    p.add_argument(
        "--repeat-prompt",
        action="store_true",
        help="score each candidate with its own copy of the prompt (slower; for checks)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="contexts per batch")
    p.add_argument(
        "--max-prompt-length", type=int, help="prompt token budget (drops oldest history)"
    )
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--generate", action="store_true", help="also generate a greedy answer")
    p.add_argument(
        "--constrained",
        action="store_true",
        help="constrain generation to the candidate titles (implies --generate)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="unconstrained answer length")
    p.add_argument(
        "--catalog", action="store_true", help="also rank the whole catalog (open template)"
    )
    p.add_argument("--chunk-size", type=int, default=256, help="catalog items per forward chunk")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sasrec-epochs",
        type=int,
        default=50,
        help="--model sasrec: most training epochs; early stopping on the valid split usually "
        "ends sooner (%(default)s)",
    )
    p.add_argument("--device", default="auto")
    _add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
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
    from setdpo.evaluation.evaluate import EvalConfig, evaluate
    from setdpo.evaluation.metrics import DEFAULT_METRICS
    from setdpo.evaluation.results import write_json_atomic

    _set_threads(args.threads)
    config = EvalConfig(
        model=args.model, data=args.data, split=args.split, limit=args.limit,
        metrics=args.metrics or list(DEFAULT_METRICS), average=args.average,
        share_prefix=not args.repeat_prompt, batch_size=args.batch_size,
        max_prompt_length=args.max_prompt_length, chat_template=args.chat_template,
        generate=args.generate, constrained=args.constrained,
        max_new_tokens=args.max_new_tokens, catalog=args.catalog, chunk_size=args.chunk_size,
        n_resamples=args.resamples, seed=args.seed, sasrec_epochs=args.sasrec_epochs,
        device=args.device,
        progress=not args.no_progress,
    )  # fmt: skip
    results = evaluate(config)
    write_json_atomic(results, args.out)
    p, t = results["protocol"], results["timing"]
    print(f"{p['model']} on {p['split']} ({p['n_contexts']} contexts): {t['total_s']:.1f} s")
    for name, iv in results["metrics"].items():
        print(f"  {name:<16} {iv['value']:.4f}  [{iv['low']:.4f}, {iv['high']:.4f}]")
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
    p = subparsers.add_parser(
        "recommend",
        help="rank candidate titles (or a whole catalog) for a viewing history",
        description="Render the prompt for a history and print the candidates ranked by the "
        "model's log-probability of each title.",
    )
    p.add_argument("--model", default="embedded:smollm2-135m", help="run dir or model")
    p.add_argument("--history", nargs="+", required=True, help="titles, oldest first")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--candidates", nargs="+", help="candidate titles (listing prompt)")
    source.add_argument(
        "--catalog", help="prepared data directory: rank its items.json (open prompt)"
    )
    p.add_argument(
        "--domain",
        help="prompt domain: movie, music, book, generic (default: the catalog's, else movie)",
    )
    p.add_argument("--top", type=int, default=10, help="how many to print")
    p.add_argument("--average", action="store_true", help="length-average the log-probs")
    p.add_argument(
        "--chat-template", action="store_true", help="wrap the prompt in the chat template"
    )
    p.add_argument("--chunk-size", type=int, default=256, help="titles per forward chunk")
    p.add_argument("--device", default="auto")
    _add_threads(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_recommend)


def run_recommend(args: argparse.Namespace) -> int:
    from setdpo.evaluation.recommend import RecommendConfig, recommend

    _set_threads(args.threads)
    config = RecommendConfig(
        model=args.model, history=args.history, candidates=args.candidates,
        catalog=args.catalog, domain=args.domain, top=args.top, average=args.average,
        chat_template=args.chat_template, chunk_size=args.chunk_size, device=args.device,
    )  # fmt: skip
    ranked = recommend(config)
    if args.json:
        print(json.dumps(ranked, indent=1))
        return 0
    for entry in ranked:
        print(f"{entry['rank']:>4}  {entry['score']:>10.3f}  {entry['title']}")
    return 0
