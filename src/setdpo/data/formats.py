"""Ready-made example sets: the LLaRA / S-DPO JSON layout, TRL and LlamaFactory preference
rows and `PreferenceExample` JSON lines; exports to TRL rows, to JSON lines and to the
LLaRA / S-DPO layout.

LLaRA / S-DPO: a JSON list of records with ``historyList`` ("a::b::c" or a list),
``itemList`` (the candidate titles, a list or "a::b") and ``trueSelection`` (the
positive), read and written by `setdpo.data.llara`; the records do not say their domain,
so the prompt's wording comes from the option or from the file names (`infer_domain`). jsonl: one `PreferenceExample.to_dict` a
line (`export`'s ``jsonl``; imported as is). TRL (JSON lines or a JSON list): ``prompt``,
``chosen`` and ``rejected`` (strings, messages, or lists of those: `pairwise.trl_fields`).
A row that carries any of setdpo's set-wise fields (`SETWISE_FIELDS`: ``levels``, one per
title of chosen + rejected, ``candidate_order``, ``user``, ``history``, ``target_time``,
``meta``, as `trl_rows` exports them) is one context as it is, restored exactly; the other
rows are pairwise and are merged by prompt (`pairwise.merge`), as are LlamaFactory's
(`pairwise.llamafactory_fields`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from setdpo.atomic import atomic_write_with
from setdpo.data import llara
from setdpo.data.builders import summary
from setdpo.data.config import DOMAINS, TEMPLATES
from setdpo.data.io import SPLITS, dumps, write_examples
from setdpo.data.pairwise import (
    Conflict,
    PairwiseRow,
    conflict_message,
    llamafactory_fields,
    merge,
    ranked_levels,
    shown_lines,
    trl_fields,
)
from setdpo.data.prompts import render
from setdpo.data.records import json_objects
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import open_split, split_path
from setdpo.errors import InputError
from setdpo.items import REPRESENTATIONS

FORMATS = ("llara", "trl", "llamafactory", "jsonl")
EXPORTS = ("trl", "jsonl", "llara")
CONFLICT_RULES = ("error", "drop")
# A TRL row with any of these is one set-wise context (setdpo's export); `context_id` alone
# is not one of them: `export --pairs` writes it on every pairwise row.
SETWISE_FIELDS = ("levels", "candidate_order", "user", "history", "target_time", "meta")
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

    format: str = field(default="llara", metadata={"help": "llara | trl | llamafactory | jsonl"})
    files: dict[str, str] = field(default_factory=dict, metadata={"help": "split -> file"})
    out: str = field(default="imported", metadata={"help": "output directory"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output"})
    template: str = field(default="listing", metadata={"help": "llara prompts: listing | open"})
    domain: str | None = field(
        default=None, metadata={"help": "llara prompts: wording (None: from the file names)"}
    )
    items_as: str = field(
        default="titles",
        metadata={
            "help": "llara: how items are written: titles | tokens | hybrid (setdpo.items); the "
            "other formats keep their own prompt text, hence titles"
        },
    )
    on_conflict: str = field(
        default="error",
        metadata={
            "help": "trl / llamafactory: a prompt whose rows contradict each other stops the "
            "import (error) or is left out (drop)"
        },
    )

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"format {self.format!r} is not one of {list(FORMATS)}")
        if self.on_conflict not in CONFLICT_RULES:
            raise InputError(
                f"on_conflict {self.on_conflict!r} is not one of {list(CONFLICT_RULES)}"
            )
        unknown = set(self.files) - set(SPLITS)
        if unknown or "train" not in self.files:
            raise InputError(f"files must name a train file and only splits {list(SPLITS)}")
        if self.format == "llara" and self.domain is None:
            self.domain = infer_domain(list(self.files.values()))
        if self.template not in TEMPLATES or self.domain not in (*DOMAINS, None):
            raise InputError(f"template/domain must be in {list(TEMPLATES)} / {list(DOMAINS)}")
        if self.items_as not in REPRESENTATIONS:
            raise InputError(f"items_as {self.items_as!r} is not one of {list(REPRESENTATIONS)}")
        if self.items_as != "titles" and self.format != "llara":
            raise InputError(
                f"items_as {self.items_as!r} needs prompts setdpo renders (format llara); "
                f"{self.format} rows bring their own prompt text, written with titles"
            )


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


@dataclass
class Read:
    """A file's examples, its number of rows (records), and the conflicting prompts left
    out with their rows (`--on-conflict drop`)."""

    examples: list[PreferenceExample]
    rows: int
    dropped: list[Conflict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """What `describe_read` prints (stats.json's ``read`` of a split)."""
        levels = [g for ex in self.examples for g in ex.levels]
        return {
            "rows": self.rows,
            "contexts": len(self.examples),
            "candidates": len(levels),
            "positive": levels.count(1),
            "negative": len(levels) - levels.count(1),
            "conflicts": len(self.dropped),
            "dropped_rows": sum(c.rows for c in self.dropped),
        }


def describe_read(counts: dict[str, int]) -> str:
    """One line: ``read 3 rows -> 1 contexts, 4 candidates (1 positive, 3 negative); 0
    conflicts`` (and what dropping them left out)."""
    line = (
        f"read {counts['rows']} rows -> {counts['contexts']} contexts, {counts['candidates']} "
        f"candidates ({counts['positive']} positive, {counts['negative']} negative); "
        f"{counts['conflicts']} conflicts"
    )
    if counts["conflicts"]:
        line += f" (dropped: {counts['conflicts']} prompts, {counts['dropped_rows']} rows)"
    return line


def import_examples(config: ImportConfig) -> Path:
    """Read each split's file and write a prepared directory (docs/architecture.md); the
    split's `Read.counts` go to stats.json (``splits.<split>.read``)."""
    readers = {
        "llara": lambda path: read_llara(path, config.template, config.domain),
        "trl": lambda path: read_trl(path, config.on_conflict),
        "llamafactory": lambda path: read_llamafactory(path, config.on_conflict),
        "jsonl": read_jsonl,
    }
    read = {split: readers[config.format](path) for split, path in config.files.items()}
    splits = {split: r.examples for split, r in read.items()}
    stats = examples_stats(splits, source=config.format)
    for split, r in read.items():
        stats["splits"][split]["read"] = r.counts()
    return write_examples(
        config.out,
        splits,
        catalog_of(splits),
        stats,
        asdict(config),
        overwrite=config.overwrite,
        prompts=config.format != "llara",  # LLaRA prompts are the template's: rendered on read
    )


def read_llara(path: str | Path, template: str, domain: str) -> Read:
    """LLaRA / S-DPO records (`llara.read_file`) as examples: candidates in ``itemList``
    order, the true one at level 1, the context id the record's index unless it names one."""
    examples = []
    for i, (where, record) in enumerate(llara.read_file(path)):
        examples.append(
            _example(
                where,
                context_id=str(i) if record.context_id is None else record.context_id,
                user=record.user,
                history=record.history,
                prompt=render(template, domain, record.history, record.candidates),
                candidates=record.candidates,
                levels=[1 if c == record.true else 2 for c in record.candidates],
                meta={
                    "candidate_ids": record.candidates,
                    "domain": domain,
                    "mode": "next",
                    "source": "llara",
                    "template": template,
                },
            )
        )
    return Read(examples, rows=len(examples))


def _example(where: str, **fields: Any) -> PreferenceExample:
    try:
        return PreferenceExample(**fields)
    except ValueError as err:
        raise InputError(f"{where}: {err}") from err


def _setwise_fields(
    row: dict[str, Any], where: str, prompt: str, chosen: list[str], rejected: list[str]
) -> dict[str, Any]:
    """A set-wise TRL row's `PreferenceExample` fields (its ``context_id`` when it has one)."""
    combined = chosen + rejected
    levels = row.get("levels", ranked_levels(len(chosen), len(rejected)))
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
    fields = {
        "user": str(row.get("user", "")),
        "history": history,
        "prompt": prompt,
        "candidates": candidates,
        "levels": ranked,
        "target_time": row.get("target_time"),
        "meta": row.get("meta") or {"candidate_ids": candidates, "source": "trl"},
    }
    if not isinstance(fields["meta"], dict):
        raise InputError(f"{where}: 'meta' must be an object")
    if "context_id" in row:
        fields["context_id"] = str(row["context_id"])
    return fields


def _json_rows(path: str | Path) -> Iterator[tuple[dict[str, Any], str, int]]:
    """`records.json_objects` with where each starts ("FILE, line N")."""
    for row, line in json_objects(Path(path)):
        yield row, f"{path}, line {line}", line


def read_trl(path: str | Path, on_conflict: str = "error") -> Read:
    """TRL preference rows as examples: set-wise rows as they are, pairwise rows merged by
    prompt (`pairwise.merge`); contexts in the order of their first row."""
    setwise: list[tuple[int, str, dict[str, Any]]] = []
    pairwise: list[PairwiseRow] = []
    for row, where, line in _json_rows(path):
        prompt, chosen, rejected = trl_fields(row, where)
        if any(key in row for key in SETWISE_FIELDS):
            setwise.append((line, where, _setwise_fields(row, where, prompt, chosen, rejected)))
        else:
            pairwise.append(_pairwise_row(row, line, prompt, chosen, rejected))
    return _merged(Path(path), setwise, pairwise, on_conflict, "trl")


def read_llamafactory(path: str | Path, on_conflict: str = "error") -> Read:
    """LlamaFactory preference records (a JSON list or JSON lines) merged by prompt."""
    rows = [
        _pairwise_row(record, line, *llamafactory_fields(record, where))
        for record, where, line in _json_rows(path)
    ]
    return _merged(Path(path), [], rows, on_conflict, "llamafactory")


def _pairwise_row(
    row: dict[str, Any], line: int, prompt: str, chosen: list[str], rejected: list[str]
) -> PairwiseRow:
    context_id = str(row["context_id"]) if "context_id" in row else None
    return PairwiseRow(prompt, tuple(chosen), tuple(rejected), line, context_id)


def _merged(
    path: Path,
    setwise: list[tuple[int, str, dict[str, Any]]],
    pairwise: list[PairwiseRow],
    on_conflict: str,
    source: str,
) -> Read:
    """Set-wise contexts and the merged pairwise ones, in the order of their first line;
    a context without ``context_id`` is named by its position."""
    contexts, conflicts = merge(pairwise)
    if conflicts and on_conflict == "error":
        raise InputError(conflict_message(path, conflicts))
    found = [*setwise]
    for c in contexts:
        fields = {
            "user": "",
            "history": [],
            "prompt": c.prompt,
            "candidates": c.candidates,
            "levels": c.levels,
            "meta": {"candidate_ids": c.candidates, "source": source},
        }
        if c.context_id is not None:
            fields["context_id"] = c.context_id
        found.append((c.lines[0], f"{path}, lines {shown_lines(c.lines)}", fields))
    found.sort(key=lambda entry: entry[0])
    examples = [
        _example(where, **({"context_id": str(i)} | fields))
        for i, (_, where, fields) in enumerate(found)
    ]
    if conflicts and not examples:
        raise InputError(f"{path}: every prompt's rows conflict ({len(conflicts)} prompts)")
    return Read(examples, rows=len(setwise) + len(pairwise), dropped=conflicts)


def read_jsonl(path: str | Path) -> Read:
    """`PreferenceExample` rows (JSON lines, as `export_jsonl` writes them) as examples."""
    examples = []
    for row, where, _ in _json_rows(path):
        try:
            examples.append(PreferenceExample.from_dict(row))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{where}: {err!r}") from err
    return Read(examples, rows=len(examples))


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
    """Write a prepared split to `out` (atomically), read one example at a time; returns
    the number of rows (records). ``trl``: `trl_rows`, JSON lines; ``jsonl``: one
    `PreferenceExample` a line (what `setdpo data import --format jsonl` reads back);
    ``llara``: the LLaRA / S-DPO JSON list (`llara`), items written as titles."""
    if fmt not in EXPORTS:
        raise InputError(f"export format {fmt!r} is not one of {list(EXPORTS)}")
    if pairs and fmt != "trl":
        raise InputError(f"pairs (one row per preferred pair) is a trl export; not {fmt}")
    rows = 0

    def write(tmp: str) -> None:
        nonlocal rows
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            if fmt == "llara":
                where = str(split_path(folder, split))
                examples = open_split(folder, split, items_as="titles")
                rows = llara.write((llara.record_of(ex, where) for ex in examples), handle)
                return
            for example in open_split(folder, split):
                lines = trl_rows(example, pairs) if fmt == "trl" else [example.to_dict()]
                handle.writelines(dumps(row) + "\n" for row in lines)
                rows += len(lines)

    atomic_write_with(out, write)
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
