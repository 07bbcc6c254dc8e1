"""`setdpo export` and `setdpo serve`: parse, call `setdpo.serving`, print."""

from __future__ import annotations

import argparse

from setdpo.commands.options import build_config, config_command


def add_parser(subparsers) -> None:
    _add_export(subparsers)
    _add_serve(subparsers)


def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run as a Hugging Face model folder (merged weights, tokenizer, card)",
        description="Write the run directory RUN as a self-contained model folder that "
        "AutoModelForCausalLM / AutoTokenizer load without setdpo: adapters merged into "
        "safetensors weights, tokenizer, config.json, generation_config.json, a model card "
        "(README.md), the training catalog (items.json) and setdpo.json (prompt template and "
        "domain, read by `setdpo serve`).",
    )
    p.add_argument("run", help="run directory (holds setdpo_model.json)")
    p.add_argument("--out", required=True, help="folder to write (must not exist)")
    p.add_argument(
        "--adapter-only",
        action="store_true",
        help="write the run's LoRA adapters as one adapter over its base model (for vLLM "
        "--enable-lora) instead of merged weights",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--dtype",
        default="float32",
        help="merged weights: float32 (matches the run within 1e-4), bfloat16 or float16",
    )
    p.add_argument(
        "--results",
        action="append",
        default=[],
        help="a `setdpo evaluate` results file of this run for the model card (repeatable)",
    )
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from setdpo.serving.export import export_run

    out = export_run(
        args.run,
        args.out,
        adapter_only=args.adapter_only,
        overwrite=args.overwrite,
        results=args.results,
        dtype=args.dtype,
    )
    print(f"wrote {out}")
    return 0


def _add_serve(subparsers) -> None:
    p = config_command(
        subparsers,
        "serve",
        "setdpo.serving.service:ServeConfig",
        "serve",
        named=("model",),
        help="an HTTP ranking service (FastAPI) over a run or an export",
        description="Serve MODEL (a run directory or a `setdpo export` folder) over HTTP: "
        "POST /v1/rank, POST /v1/recommend, GET /v1/model, GET /health, OpenAPI at /docs. "
        "Concurrent requests are scored in batches. Every ServeConfig field is an option "
        "(listed below).",
    )
    p.add_argument("model", nargs="?", help="run directory or export folder (= --model)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from setdpo.serving.app import serve

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    serve(build_config(args))
    return 0
