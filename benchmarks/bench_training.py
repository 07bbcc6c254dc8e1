"""Preference-training throughput: shared prefix on/off x reference up front or when needed.

`precompute_ref` on scores every candidate's reference log-prob before the first step; off,
each step scores its own candidates when it first needs them. Each setting starts from its own
copy of the SFT run, so none finds the reference memoised by an earlier one.

Trains Mult-DPO from a one-step SFT run of the embedded SmolLM2-135M on ML-100K `next`
contexts (listing prompt, 1 positive + `--negatives` sampled negatives per step), on the CPU,
float32, LoRA r=8 on q/k/v/o. For each setting it runs `--steps` optimisation steps of
`--batch` contexts with the real `PreferenceTrainer` and reports contexts/s and tokens/s
(tokens the policy pass reads: the prompt once per context when shared, once per candidate
when repeated), averaged over the steps after the first; the one-off reference pass of the
precomputed settings is timed apart. Writes `## Training (bench_training.py)` of RESULTS.md.
``--checkpointing`` adds the shared and repeated settings with gradient checkpointing;
``--device cuda --bf16`` runs on a GPU with bf16 weights' autocast (the Trainer's ``bf16``),
``--json`` writes the rows with peak memory and MFU (`device_stats`).

    .venv/bin/python benchmarks/bench_training.py --steps 5 --batch 2 --negatives 3

``--items-as titles,tokens`` compares item representations (`setdpo.items`) instead: the
same contexts prepared once per representation (same seed: the same candidates, checked),
each with its own one-step SFT run of the same base model (with ``tokens`` it gains one
token per catalog item), then the shared, precomputed-reference setting; contexts/s,
tokens/s, tokens per context and their ratios to the first representation, in one run.
Writes `## Item representations (bench_training.py --items-as)`.

    .venv/bin/python benchmarks/bench_training.py --items-as titles,tokens --steps 5 --batch 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from device_stats import PeakMemory, describe, mfu
from results_md import write_section

from setdpo.atomic import atomic_write_json
from setdpo.data import PrepareConfig, load_split, prepare
from setdpo.training import PrefConfig, SFTConfig, load_config, train_sft
from setdpo.training.preference import build_pref_trainer

SECTION = "## Training (bench_training.py)"
ITEMS_SECTION = "## Item representations (bench_training.py --items-as)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="optimisation steps per setting")
    parser.add_argument("--batch", type=int, default=2, help="contexts per step")
    parser.add_argument("--negatives", type=int, default=3, help="negatives per context")
    parser.add_argument("--candidates", type=int, default=20, help="candidates per prompt")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--checkpointing", action="store_true", help="also shared/repeated with checkpointing"
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (CUDA)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument(
        "--items-as", help="comma-separated item representations (e.g. titles,tokens) compared"
    )
    return parser.parse_args()


def settings(args: argparse.Namespace) -> list[tuple[bool, bool, bool]]:
    """(share_prefix, precompute_ref, gradient checkpointing) to run."""
    rows = [(share, pre, False) for share in (True, False) for pre in (True, False)]
    if args.checkpointing:
        rows += [(True, True, True), (False, True, True)]
    return rows


def device_flags(args: argparse.Namespace) -> dict:
    """TrainingArguments for ``--device`` / ``--bf16``."""
    flags = {"use_cpu": args.device == "cpu"}
    if args.bf16:
        flags["bf16"] = True
    return flags


def prepared_data(folder: Path, args: argparse.Namespace, items_as: str = "titles") -> Path:
    """The ML-100K `next` contexts the steps train on (same seed: same candidates)."""
    sizes = {"train": args.steps * args.batch, "valid": 1, "test": 1}
    config = PrepareConfig(
        source="ml-100k",
        mode="next",
        candidates=args.candidates,
        seed=0,
        out=str(folder),
        items_as=items_as,
        max_examples_per_split=sizes,
    )
    return prepare(config)


def sft_init(data: Path, root: Path, args: argparse.Namespace) -> Path:
    """A one-step SFT run: a valid init run directory for the preference stage."""
    values = {"data": str(data), "output_dir": str(root / "sft"), "max_steps": 1}
    values |= device_flags(args)
    values |= {"per_device_train_batch_size": 1, "save_strategy": "no", "disable_tqdm": True}
    return train_sft(load_config(SFTConfig, None, values))


def run_setting(data: Path, init: Path, out: Path, args: argparse.Namespace, **flags) -> dict:
    # A fresh copy of the SFT run: no setting finds the reference memoised by an earlier one.
    init = Path(shutil.copytree(init, out.with_name(f"{out.name}-init")))
    values = {
        "data": str(data),
        "init": str(init),
        "output_dir": str(out),
        "loss": "mult",
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "per_device_eval_batch_size": args.batch,
        "max_train_examples": args.steps * args.batch,
        "max_eval_examples": 1,
        "eval_on_start": False,
        "num_negatives": args.negatives,
        "save_strategy": "no",
        "disable_tqdm": True,
        "logging_steps": 1,
        **device_flags(args),
        **flags,
    }
    start = time.perf_counter()
    trainer = build_pref_trainer(load_config(PrefConfig, None, values))
    build = time.perf_counter() - start
    memory = PeakMemory(trainer.args.device)
    memory.reset()
    trainer.train()
    peak = memory.read_mb()
    steps = [e for e in trainer.state.log_history if "tokens_per_second" in e][1:]
    tokens_per_s = statistics.mean(e["tokens_per_second"] for e in steps)
    params = sum(p.numel() for p in trainer.model.parameters())
    return {
        "build_s": build,
        "contexts_per_s": statistics.mean(e["contexts_per_second"] for e in steps),
        "tokens_per_s": tokens_per_s,
        "peak_mb": peak,
        "mfu": mfu(params, tokens_per_s, trainer.args.device, training=True),
    }


def command(args: argparse.Namespace) -> str:
    items = f" --items-as {args.items_as}" if args.items_as else ""
    return (
        f"Command: `.venv/bin/python benchmarks/bench_training.py{items} --steps {args.steps} "
        f"--batch {args.batch} --negatives {args.negatives} --candidates {args.candidates} "
        f"--threads {args.threads} --device {args.device}"
        f"{' --bf16' if args.bf16 else ''}{' --checkpointing' if args.checkpointing else ''}`"
    )


def heading(section: str, args: argparse.Namespace, setup: str, columns: list[str]) -> list[str]:
    """A section's first lines: heading, command, setup, then its table's header."""
    header, rule = "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"
    return [section, "", command(args), "", setup, "", header, rule]


def run_settings(root: Path, args: argparse.Namespace) -> list[dict]:
    """One SFT run, then every setting of `settings` from a copy of it."""
    data = prepared_data(root / "data", args)
    init = sft_init(data, root, args)
    rows = []
    for share, pre, ckpt in settings(args):
        out = root / f"pref-{share}-{pre}-{ckpt}"
        flags = {"share_prefix": share, "precompute_ref": pre}
        if ckpt:
            flags |= {
                "activation_checkpointing": True,
                "activation_checkpointing_kwargs": {"use_reentrant": False},
            }
        rows.append({"share_prefix": share, "precompute_ref": pre, "checkpointing": ckpt})
        rows[-1] |= run_setting(data, init, out, args, **flags)
        print(rows[-1], flush=True)
    return rows


def run_items(root: Path, args: argparse.Namespace) -> list[dict]:
    """Per representation: its data, its one-step SFT run, then the shared setting's steps."""
    rows, first = [], None
    for kind in args.items_as.split(","):
        (root / kind).mkdir()
        data = prepared_data(root / kind / "data", args, kind)
        candidates = [(e.meta["candidate_ids"], e.levels) for e in load_split(data, "train")]
        first = first or candidates
        init = sft_init(data, root / kind, args)
        flags = {"share_prefix": True, "precompute_ref": True}
        rows.append({"items_as": kind, "same": candidates == first})
        rows[-1] |= run_setting(data, init, root / kind / "pref", args, **flags)
        print(rows[-1], flush=True)
    return rows


def items_table(rows: list[dict], args: argparse.Namespace, elapsed: float) -> str:
    setup = (
        f"SmolLM2-135M (embedded; with `tokens` one new token per catalog item), "
        f"{describe(torch.device(args.device), args.threads)} (at the end), "
        f"{'bf16 autocast' if args.bf16 else 'float32'}, LoRA r=8 q/k/v/o, Mult-DPO, shared "
        f"prompts, reference precomputed, ML-100K `next` listing prompts over {args.candidates} "
        f"candidates, {1 + args.negatives} scored per context and step, batch {args.batch}, "
        f"mean over steps 2..{args.steps}. Tokens: what the policy pass reads, as the trainer "
        f"counts them (prompt + candidate tokens). Ratios: over the first row, same run. "
        f"Total {elapsed:.0f} s. The machine is shared with other jobs: timings are noisy."
    )
    columns = ["items as", "contexts/s", "tokens/s", "tokens / context", "speed ratio"]
    columns += ["tokens ratio", "setup s", "peak MB", "same candidates"]
    lines = heading(ITEMS_SECTION, args, setup, columns)
    base = rows[0]
    for r in rows:
        per_context = r["tokens_per_s"] / r["contexts_per_s"]
        ratio = per_context / (base["tokens_per_s"] / base["contexts_per_s"])
        lines.append(
            f"| {r['items_as']} | {r['contexts_per_s']:.3g} | {r['tokens_per_s']:.0f} "
            f"| {per_context:.0f} "
            f"| {r['contexts_per_s'] / base['contexts_per_s']:.2f}x | {ratio:.2f}x "
            f"| {r['build_s']:.1f} | {r['peak_mb']:.0f} | {'yes' if r['same'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def table(rows: list[dict], args: argparse.Namespace, elapsed: float) -> str:
    setup = (
        f"SmolLM2-135M (embedded), {describe(torch.device(args.device), args.threads)} (at the "
        f"end), {'bf16 autocast' if args.bf16 else 'float32'}, LoRA r=8 q/k/v/o, Mult-DPO, "
        "ML-100K `next` listing "
        f"prompts listing {args.candidates} titles, {1 + args.negatives} of them scored per "
        f"context and step, batch {args.batch}, mean over "
        f"steps 2..{args.steps}. Setup = model load + reference pass over all "
        f"{args.candidates} candidates of the {args.steps * args.batch} training contexts and "
        f"1 valid context (when precomputed). Total {elapsed:.0f} s. "
        "The machine is shared with other jobs: timings are noisy.\n\n"
        "Peak MB: above the resident set (CPU) or allocated memory (CUDA) before training."
    )
    columns = ["share_prefix", "precompute_ref", "checkpointing", "contexts/s", "tokens/s"]
    lines = heading(SECTION, args, setup, columns + ["setup s", "peak MB", "MFU"])
    for r in rows:
        util = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['share_prefix']} | {r['precompute_ref']} | {r['checkpointing']} "
            f"| {r['contexts_per_s']:.2f} | {r['tokens_per_s']:.0f} "
            f"| {r['build_s']:.1f} | {r['peak_mb']:.0f} | {util} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = (run_items if args.items_as else run_settings)(Path(tmp), args)
    section, render = (ITEMS_SECTION, items_table) if args.items_as else (SECTION, table)
    text = render(rows, args, time.perf_counter() - start)
    print(text)
    if args.json:
        atomic_write_json(args.json, {"setup": text.splitlines()[4], "rows": rows})
    if not args.no_write:
        write_section(section, text)


if __name__ == "__main__":
    main()
