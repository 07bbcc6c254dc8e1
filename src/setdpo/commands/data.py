"""`setdpo data prepare|inspect|audit|import|export|download`: parse, build a config, call
the library.

`prepare` and `import` have one option per field of `PrepareConfig` / `ImportConfig` (same
name, dashes or underscores, help from the field's metadata; `setdpo.commands.options`);
`--config FILE` (YAML or JSON, e.g. a previous `config.json`, or a protocol file's
`prepare` / `import` section) sets fields first and explicit options override it.
"""

from __future__ import annotations

import argparse
import json

from setdpo.commands.options import build_config, config_command


def add_parser(subparsers) -> None:
    """Register `setdpo data` and its six subcommands."""
    parser = subparsers.add_parser(
        "data", help="prepare, inspect, audit, import, export, download data"
    )
    commands = parser.add_subparsers(dest="data_command", required=True)

    prep = config_command(
        commands,
        "prepare",
        "setdpo.data.config:PrepareConfig",
        "prepare",
        help="interactions -> train/valid/test examples",
    )
    prep.set_defaults(func=run_prepare)

    inspect = commands.add_parser("inspect", help="print stats and a few rendered examples")
    inspect.add_argument("dir")
    inspect.add_argument("--split", default="train", choices=["train", "valid", "test"])
    inspect.add_argument("-n", type=int, default=3, help="examples to print")
    inspect.set_defaults(func=run_inspect)

    audit = commands.add_parser(
        "audit", help="check a prepared directory for leaks and broken examples (exit 1 if any)"
    )
    audit.add_argument("dir")
    audit.set_defaults(func=run_audit)

    imp = config_command(
        commands,
        "import",
        "setdpo.data.formats:ImportConfig",
        "import",
        help="LLaRA/S-DPO JSON, TRL or LlamaFactory preference rows, or exported jsonl -> prepared dir",
    )
    for split in ("train", "valid", "test"):
        imp.add_argument(f"--{split}", help=f"{split} file (= --files {split}=FILE)")
    imp.set_defaults(func=run_import)

    exp = commands.add_parser(
        "export", help="a prepared split -> TRL rows, example JSON lines or LLaRA / S-DPO JSON"
    )
    exp.add_argument("dir")
    exp.add_argument("--split", default="train", choices=["train", "valid", "test"])
    exp.add_argument("--out", required=True, help="output file (.jsonl; .json for llara)")
    exp.add_argument(
        "--format",
        default="trl",
        choices=["trl", "jsonl", "llara"],
        help="trl: TRL preference rows; jsonl: one example a line (`data import --format "
        "jsonl`); llara: the JSON list S-DPO's and LLaRA's code reads (historyList, itemList, "
        "trueSelection; `next` mode data)",
    )
    exp.add_argument("--pairs", action="store_true", help="trl: one row per preferred pair")
    exp.set_defaults(func=run_export)

    down = commands.add_parser(
        "download",
        help="fetch a registered source (MovieLens, Amazon, Goodreads, Steam, Last.fm) into "
        "the cache: resumable, checked, atomic",
    )
    down.add_argument(
        "name",
        nargs="?",
        help="ml-10m | ml-20m | ml-32m | amazon2018:CATEGORY | amazon2023:CATEGORY | "
        "goodreads:GENRE | steam | lastfm (--list shows every one)",
    )
    down.add_argument("--list", action="store_true", help="list the registered sources")
    down.add_argument("--url", help="another address for the file (sources of one file)")
    down.add_argument(
        "--mirror",
        help="a base URL serving the files under their official paths (default $SETDPO_MIRROR)",
    )
    down.add_argument(
        "--sha256",
        action="append",
        metavar="[FILE=]HEX",
        help="expected SHA-256 of a file (FILE= may be left out for a source of one file); "
        "overrides the registry's; repeat for several files",
    )
    down.add_argument(
        "--no-checksum", action="store_true", help="accept files without a known SHA-256"
    )
    down.add_argument("--force", action="store_true", help="download again if cached")
    down.set_defaults(func=run_download)


def run_prepare(args: argparse.Namespace) -> int:
    """Options (over `--config`) -> `PrepareConfig` -> `setdpo.data.prepare`."""
    from setdpo.data import prepare
    from setdpo.data.io import load_json

    out = prepare(build_config(args))
    stats = load_json(out, "stats.json")
    print(f"prepared {out}; dropped contexts: {json.dumps(stats['dropped_contexts'])}")
    if "filtered" in stats:  # the source's conversion, --min-rating, --kcore
        print(f"left out before building contexts: {json.dumps(stats['filtered'])}")
    audit, measured = stats["audit"], stats["audit_measured"]
    line = f"audit: {len(audit)} checks, {sum(audit.values())} findings"
    if measured:  # what the split protocol does not guarantee (leave-last-out: a global cut)
        counts = ", ".join(f"{name} {count}" for name, count in measured.items())
        split = load_json(out, "config.json")["split"]
        line += f"; not guaranteed by split {split}, measured: {counts}"
    print(f"{line} (setdpo data audit {out})")
    print(
        f"peak memory {stats['run']['peak_rss_mb']} MiB; seconds: {stats['run']['stage_seconds']}"
    )
    return 0


def run_audit(args: argparse.Namespace) -> int:
    """Print the audit table of a prepared directory; exit status 1 on any finding."""
    from setdpo.data.audit import audit, describe_protocol, findings, format_table

    checks = audit(args.dir)
    print("\n".join(describe_protocol(args.dir)))
    print(format_table(checks))
    found, skipped = findings(checks), sum(c.checked is None for c in checks)
    verdict = f"{found} finding(s)" if found else "no findings"
    print(verdict + (f"; {skipped} checks not run" if skipped else ""))
    return 1 if found else 0


def run_inspect(args: argparse.Namespace) -> int:
    """Print stats.json and the first examples of a split with their levels."""
    from setdpo.data.io import load_json
    from setdpo.data.store import open_split

    print(json.dumps(load_json(args.dir, "stats.json"), indent=2, sort_keys=True))
    examples = open_split(args.dir, args.split)
    for example in examples.take(range(min(args.n, len(examples)))):
        print(f"\n--- {args.split} {example.context_id} (user {example.user})")
        print(example.prompt)
        for title, level in zip(example.candidates, example.levels, strict=True):
            print(f"  [{level}] {title}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Options -> `ImportConfig` -> `formats.import_examples`; prints each split's counts."""
    from setdpo.data.formats import describe_read, import_examples
    from setdpo.data.io import load_json

    files = {s: getattr(args, s) for s in ("train", "valid", "test") if getattr(args, s)}
    config = build_config(args, {"files": files or None})
    out = import_examples(config)
    for split, stats in load_json(out, "stats.json")["splits"].items():
        if "read" in stats:
            print(f"{split}: {describe_read(stats['read'])}")
    print(f"imported {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """A prepared split -> a file of the chosen format (`formats.export`)."""
    from setdpo.data.formats import export

    rows = export(args.dir, args.split, args.out, args.format, pairs=args.pairs)
    print(f"wrote {rows} rows to {args.out}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    """Name -> `registry.resolve` -> `download.fetch_source` -> `convert.ready` (the tables
    `prepare --source NAME` reads), or `--list`."""
    from setdpo.data import registry
    from setdpo.data.convert import is_ready, ready, ready_folder
    from setdpo.data.download import fetch_source
    from setdpo.errors import InputError

    if args.list:
        print(registry.listing())
        return 0
    if not args.name:
        raise InputError(f"name a source to download: {', '.join(registry.names())} (--list)")
    source = registry.resolve(args.name)
    digests = None
    if args.force or not is_ready(source):
        pins = _digests(source, args.sha256)
        digests = fetch_source(source, pins, args.no_checksum, args.force, args.url, args.mirror)
    else:
        print(f"{source.name}: already in the cache (--force fetches it again)")
    tables = ready(source, digests, refresh=args.force)
    left_out = f"; left out: {json.dumps(tables.dropped)}" if tables.dropped else ""
    print(f"{source.name} in {ready_folder(source)}{left_out}")
    usual = ", ".join(f"--{k} {v}" for k, v in source.usual) or "nothing"
    print(f"next: setdpo data prepare --source {source.name} (--preprocess usual sets {usual})")
    return 0


def _digests(source, values: list[str] | None) -> dict[str, str]:
    """``--sha256 [FILE=]HEX`` options -> {file name: digest}."""
    from setdpo.errors import InputError

    digests = {}
    for value in values or []:
        name, _, digest = value.rpartition("=")
        if not name:
            if len(source.files) != 1:
                raise InputError(
                    f"{source.name} has {len(source.files)} files: name the one the digest is "
                    f"of, --sha256 FILE=HEX ({', '.join(f.name for f in source.files)})"
                )
            name = source.files[0].name
        digests[name] = digest.strip().lower()
    return digests
