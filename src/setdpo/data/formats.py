"""Ready-made example sets: the LLaRA / S-DPO JSON layout, TRL preference rows and
`PreferenceExample` JSON lines; exports to TRL rows and to JSON lines.

LLaRA / S-DPO: a JSON list of records with ``historyList`` ("a::b::c" or a list),
``itemList`` (the candidate titles, a list or "a::b") and ``trueSelection`` (the
positive); the records do not say their domain, so the prompt's wording comes from the
option or from the file names (`infer_domain`). jsonl: one `PreferenceExample.to_dict` a
line (`export`'s ``jsonl``; imported as is). TRL: JSON lines with ``prompt``, ``chosen``
and ``rejected`` (each a string or a list) and optionally ``levels`` (one per title of chosen + rejected). Exported rows also
carry the remaining `PreferenceExample` fields (``context_id``, ``user``, ``history``,
``target_time``, ``meta``) and ``candidate_order`` so that an import restores them exactly.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from setdpo.data.builders import summary
from setdpo.data.config import DOMAINS, TEMPLATES
from setdpo.data.io import SPLITS, dumps, write_examples
from setdpo.data.prompts import render
from setdpo.data.records import decode_utf8
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import open_split
from setdpo.errors import InputError

FORMATS = ("llara", "trl", "jsonl")
EXPORTS = ("trl", "jsonl")
# Words in a LLaRA / S-DPO file's name or folder that name its domain (S-DPO ships
# lastfm-sft-cans20/lastfm-train.json, ml-train.json, goodread-train.json).
DOMAIN_WORDS = {
    "movie": re.compile(r"ml(\d+[km])?|movielens|movies?"),
    "music": re.compile(r"lastfm|music"),
    "book": re.compile(r"goodreads?|books?"),
}


@dataclass
class ImportConfig:
    """`setdpo data import`: which files, in which layout, rendered how (LLaRA only)."""

    format: str = field(default="llara", metadata={"help": "llara | trl | jsonl"})
    files: dict[str, str] = field(default_factory=dict, metadata={"help": "split -> file"})
    out: str = field(default="imported", metadata={"help": "output directory"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output"})
    template: str = field(default="listing", metadata={"help": "llara prompts: listing | open"})
    domain: str | None = field(
        default=None, metadata={"help": "llara prompts: wording (None: from the file names)"}
    )

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"format {self.format!r} is not one of {list(FORMATS)}")
        unknown = set(self.files) - set(SPLITS)
        if unknown or "train" not in self.files:
            raise InputError(f"files must name a train file and only splits {list(SPLITS)}")
        if self.format == "llara" and self.domain is None:
            self.domain = infer_domain(list(self.files.values()))
        if self.template not in TEMPLATES or self.domain not in (*DOMAINS, None):
            raise InputError(f"template/domain must be in {list(TEMPLATES)} / {list(DOMAINS)}")


def infer_domain(files: list[str]) -> str:
    """The prompt domain the files' names (or folders) say, e.g. lastfm-train.json -> music.

    Raises InputError, listing the choices, when they say none or several.
    """
    words = {
        word
        for path in map(Path, files)
        for word in re.split(r"[^a-z0-9]+", f"{path.parent.name}/{path.name}".lower())
    }
    said = {d for d, pattern in DOMAIN_WORDS.items() if any(map(pattern.fullmatch, words))}
    if len(said) == 1:
        return said.pop()
    what = "do not say" if not said else f"say several ({sorted(said)})"
    raise InputError(
        f"the names of {files} {what} which domain the items are from; pass --domain, one "
        f"of {list(DOMAINS)} (the prompt says: movie 'has watched', music 'has listened to', "
        "book 'has read', generic 'has interacted with')"
    )


def import_examples(config: ImportConfig) -> Path:
    """Read each split's file and write a prepared directory (docs/architecture.md)."""
    readers = {
        "llara": lambda path: read_llara(path, config.template, config.domain),
        "trl": read_trl,
        "jsonl": read_jsonl,
    }
    splits = {split: readers[config.format](path) for split, path in config.files.items()}
    return write_examples(
        config.out,
        splits,
        catalog_of(splits),
        examples_stats(splits, source=config.format),
        asdict(config),
        overwrite=config.overwrite,
        prompts=config.format != "llara",  # LLaRA prompts are the template's: rendered on read
    )


def _titles(value: Any, where: str, key: str) -> list[str]:
    """A "::"-joined string or a list of strings, as a list of stripped titles."""
    if isinstance(value, str):
        value = value.split("::")
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise InputError(f"{where}: {key!r} must be a '::'-joined string or a list of strings")
    titles = [t.strip() for t in value]
    if any(not t for t in titles):
        raise InputError(f"{where}: {key!r} has an empty title")
    return titles


def _load_json_records(path: Path) -> list[dict[str, Any]]:
    text = decode_utf8(path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of records, got a {type(records).__name__}")
    if not records:
        raise InputError(f"{path}: the list of records is empty")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"{path}, record {i}: expected an object, got {type(record).__name__}")
    return records


def read_llara(path: str | Path, template: str, domain: str) -> list[PreferenceExample]:
    """LLaRA / S-DPO records as examples: candidates in ``itemList`` order, the true one at level 1."""
    path = Path(path)
    examples = []
    for i, record in enumerate(_load_json_records(path)):
        where = f"{path}, record {i}"
        for key in ("historyList", "itemList", "trueSelection"):
            if key not in record:
                raise InputError(f"{where}: missing {key!r}")
        history = _titles(record["historyList"], where, "historyList")
        candidates = _titles(record["itemList"], where, "itemList")
        true = record["trueSelection"]
        if not isinstance(true, str) or true.strip() not in candidates:
            raise InputError(f"{where}: trueSelection {true!r} is not in its itemList")
        examples.append(
            _example(
                where,
                context_id=str(i),
                user=str(record.get("user", "")),
                history=history,
                prompt=render(template, domain, history, candidates),
                candidates=candidates,
                levels=[1 if c == true.strip() else 2 for c in candidates],
                meta={
                    "candidate_ids": candidates,
                    "domain": domain,
                    "mode": "next",
                    "source": "llara",
                    "template": template,
                },
            )
        )
    return examples


def _example(where: str, **fields: Any) -> PreferenceExample:
    try:
        return PreferenceExample(**fields)
    except ValueError as err:
        raise InputError(f"{where}: {err}") from err


def _trl_row(row: dict[str, Any], where: str, index: int) -> PreferenceExample:
    if not isinstance(row.get("prompt"), str):
        raise InputError(f"{where}: 'prompt' must be a string")
    if "chosen" not in row or "rejected" not in row:
        raise InputError(f"{where}: missing 'chosen' or 'rejected'")
    chosen = [row["chosen"]] if isinstance(row["chosen"], str) else row["chosen"]
    rejected = [row["rejected"]] if isinstance(row["rejected"], str) else row["rejected"]
    for key, titles in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
            raise InputError(f"{where}: {key!r} must be a string or a list of strings")
    combined = chosen + rejected
    levels = row.get("levels", [1] * len(chosen) + [2] * len(rejected))
    if not isinstance(levels, list) or len(levels) != len(combined):
        raise InputError(f"{where}: 'levels' must list one level per title of chosen + rejected")
    order = row.get("candidate_order", list(range(len(combined))))
    if (
        not isinstance(order, list)
        or not all(isinstance(i, int) for i in order)
        or (sorted(order) != list(range(len(combined))))
    ):
        raise InputError(
            f"{where}: 'candidate_order' is not a permutation of 0..{len(combined) - 1}"
        )
    history = row.get("history", [])
    if not isinstance(history, list) or not all(isinstance(t, str) for t in history):
        raise InputError(f"{where}: 'history' must be a list of titles")
    candidates, ranked = [""] * len(combined), [0] * len(combined)
    for source, target in enumerate(order):
        candidates[target], ranked[target] = combined[source], levels[source]
    return _example(
        where,
        context_id=str(row.get("context_id", index)),
        user=str(row.get("user", "")),
        history=history,
        prompt=row["prompt"],
        candidates=candidates,
        levels=ranked,
        target_time=row.get("target_time"),
        meta=dict(row.get("meta") or {"candidate_ids": candidates, "source": "trl"}),
    )


def _json_lines(path: str | Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Each non-blank line's object, with where it is ("FILE, line N")."""
    path = Path(path)
    for number, line in enumerate(decode_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: invalid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield row, where


def read_trl(path: str | Path) -> list[PreferenceExample]:
    """TRL-style preference rows (JSON lines) as examples."""
    examples: list[PreferenceExample] = []
    for row, where in _json_lines(path):
        examples.append(_trl_row(row, where, len(examples)))
    return examples


def read_jsonl(path: str | Path) -> list[PreferenceExample]:
    """`PreferenceExample` rows (JSON lines, as `export_jsonl` writes them) as examples."""
    examples = []
    for row, where in _json_lines(path):
        try:
            examples.append(PreferenceExample.from_dict(row))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{where}: {err!r}") from err
    return examples


def trl_rows(example: PreferenceExample, pairs: bool = False) -> list[dict[str, Any]]:
    """TRL rows of one example: one set-wise row (lossless), or one row per preferred pair
    (i, j) with level_i < level_j, with plain strings as TRL's DPOTrainer reads them."""
    order = sorted(range(len(example.levels)), key=lambda i: (example.levels[i] > 1, i))
    if pairs:
        return [
            {"prompt": example.prompt, "chosen": example.candidates[i],
             "rejected": example.candidates[j], "context_id": example.context_id}
            for i in order for j in order if example.levels[i] < example.levels[j]
        ]  # fmt: skip
    return [
        {
            "prompt": example.prompt,
            "chosen": [
                c for c, g in zip(example.candidates, example.levels, strict=True) if g == 1
            ],
            "rejected": [
                c for c, g in zip(example.candidates, example.levels, strict=True) if g > 1
            ],
            "levels": [example.levels[i] for i in order],
            "candidate_order": order,
            "context_id": example.context_id,
            "user": example.user,
            "history": example.history,
            "target_time": example.target_time,
            "meta": example.meta,
        }
    ]


def export(
    folder: str | Path, split: str, out: str | Path, fmt: str = "trl", pairs: bool = False
) -> int:
    """Write a prepared split as JSON lines (atomically), read one example at a time;
    returns the number of rows. ``trl``: `trl_rows`; ``jsonl``: one `PreferenceExample`
    a line (what `setdpo data import --format jsonl` reads back)."""
    if fmt not in EXPORTS:
        raise InputError(f"export format {fmt!r} is not one of {list(EXPORTS)}")
    out = Path(out)
    rows = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for example in open_split(folder, split):
                lines = trl_rows(example, pairs) if fmt == "trl" else [example.to_dict()]
                handle.writelines(dumps(row) + "\n" for row in lines)
                rows += len(lines)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rows


def catalog_of(splits: dict[str, list[PreferenceExample]]) -> list[dict[str, Any]]:
    """items.json of imported examples: one item per title (its id assigned at import: the
    first id a candidate with that title carries, else the title), candidates' and history
    items' alike, sorted by id; train_count counts how often the item is a level-1
    candidate in the training split."""
    ids: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for split, examples in splits.items():
        for ex in examples:
            named = ex.meta.get("candidate_ids") or ex.candidates
            for item_id, title, level in zip(named, ex.candidates, ex.levels, strict=True):
                ids.setdefault(title, str(item_id))
                counts[title] += int(split == "train" and level == 1)
    for examples in splits.values():
        for ex in examples:
            for title in ex.history:
                ids.setdefault(title, title)
    order = sorted(ids, key=lambda title: (ids[title], title))
    return [{"item_id": ids[t], "title": t, "train_count": counts[t]} for t in order]


def examples_stats(splits: dict[str, list[PreferenceExample]], source: str) -> dict[str, Any]:
    """stats.json of imported examples (the same per-split summaries as `prepare`)."""
    stats: dict[str, Any] = {"source": source, "splits": {}}
    for split in SPLITS:
        examples = splits.get(split, [])
        levels = Counter(g for ex in examples for g in ex.levels)
        stats["splits"][split] = {
            "examples": len(examples),
            "positives": summary([len(ex.positives) for ex in examples]),
            "candidates": summary([len(ex.candidates) for ex in examples]),
            "history_length": summary([len(ex.history) for ex in examples]),
            "levels": {str(g): levels[g] for g in sorted(levels)},
        }
    return stats
