"""The LLaRA / S-DPO JSON layout, read and written field for field.

S-DPO ships LLaRA's data sets in this layout (chenyuxin1999/S-DPO,
``data/lastfm-sft-cans20/lastfm-{train,val,test}.json``, written by its
``data/prepare_sft_data.py`` with ``json.dump(records, f, indent=4)``): a JSON list of

    {"historyList": "Kylie Minogue::Avril Lavigne::Ke$ha",    # oldest first, "::"-joined
     "itemList": ["James Blunt", "Tinariwen", ..., "Glee Cast", ...],   # the candidates
     "trueSelection": "Glee Cast"}                             # the positive, in itemList

(its MovieLens and Steam files hold ``historyList`` as a list, which is read too). S-DPO's
code loads a file with `datasets`' JSON loader, splits a string ``historyList`` on "::",
renders its own prompt from ``historyList`` and ``itemList`` (its ``Prompt.py``) and takes
``trueSelection`` as the chosen answer and the rest of ``itemList`` as rejected ones.

setdpo writes the three fields as the LastFM files hold them (history "::"-joined, the
candidates a list, non-ASCII escaped, 4-space indent, no final newline), then two fields of
its own, each only where it says more than what a reader assumes without it: ``user``
(else "") and ``context_id`` (else the record's index). A file in S-DPO's layout is thus
written back byte for byte, and S-DPO's loaders, which drop other columns, read setdpo's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from setdpo.data.records import DECODER, NotFiniteError, decode_utf8
from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError

FIELDS = ("historyList", "itemList", "trueSelection")
SEPARATOR = "::"  # between the titles of a string historyList or itemList
INDENT = 4  # S-DPO's json.dump(..., indent=4)


@dataclass(frozen=True)
class Record:
    """One record of the layout: a context with one positive among its candidates."""

    history: list[str]
    candidates: list[str]
    true: str
    user: str = ""
    context_id: str | None = None  # None: the record's index

    def to_json(self, index: int) -> dict[str, Any]:
        """The record's fields, S-DPO's first; ``user`` and ``context_id`` only where they
        differ from "" and `index`."""
        value: dict[str, Any] = {
            "historyList": SEPARATOR.join(self.history),
            "itemList": list(self.candidates),
            "trueSelection": self.true,
        }
        if self.user:
            value["user"] = self.user
        if self.context_id is not None and self.context_id != str(index):
            value["context_id"] = self.context_id
        return value


def read_file(path: str | Path) -> Iterator[tuple[str, Record]]:
    """Each record of a file with where it is ("FILE, record N"); an error names the record
    and the field."""
    path = Path(path)
    for i, value in enumerate(_load(path)):
        where = f"{path}, record {i}"
        for key in FIELDS:
            if key not in value:
                raise InputError(f"{where}: missing {key!r}")
        history = _titles(value["historyList"], where, "historyList")
        candidates = _titles(value["itemList"], where, "itemList")
        true = value["trueSelection"]
        if not isinstance(true, str) or true.strip() not in candidates:
            raise InputError(f"{where}: trueSelection {true!r} is not in its itemList")
        context_id = value.get("context_id")
        if context_id is not None and (
            isinstance(context_id, bool) or not isinstance(context_id, str | int)
        ):
            raise InputError(f"{where}: context_id {context_id!r} must be a string or an integer")
        user = str(value.get("user", ""))
        ids = None if context_id is None else str(context_id)
        yield where, Record(history, candidates, true.strip(), user, ids)


def _load(path: Path) -> list[dict[str, Any]]:
    text = decode_utf8(path)
    try:
        records = DECODER.decode(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from err
    except NotFiniteError as err:
        raise InputError(f"{path}: {err}") from err
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of records, got a {type(records).__name__}")
    if not records:
        raise InputError(f"{path}: the list of records is empty")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"{path}, record {i}: expected an object, got {type(record).__name__}")
    return records


def _titles(value: Any, where: str, key: str) -> list[str]:
    """A "::"-joined string or a list of strings, as a list of stripped titles."""
    if isinstance(value, str):
        value = value.split(SEPARATOR)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise InputError(f"{where}: {key!r} must be a '::'-joined string or a list of strings")
    titles = [t.strip() for t in value]
    if any(not t for t in titles):
        raise InputError(f"{where}: {key!r} has an empty title")
    return titles


def record_of(example: PreferenceExample, where: str) -> Record:
    """The record of an example with one level-1 candidate, every other at level 2 (what
    ``next`` mode prepares); anything the layout cannot hold is an error naming `where`."""
    positives = example.levels.count(1)
    if positives != 1 or any(level != 1 and level != 2 for level in example.levels):
        raise InputError(
            f"{where}: context {example.context_id!r} has levels {sorted(set(example.levels))} "
            f"with {positives} at level 1; the LLaRA layout holds one trueSelection and "
            "negatives only (prepare with --mode next)"
        )
    if not example.history:
        raise InputError(
            f"{where}: context {example.context_id!r} has no history; the LLaRA layout's "
            "historyList needs one title (prepare with --min-history 1 or more)"
        )
    for title in example.history:
        if SEPARATOR in title or title != title.strip():
            raise InputError(
                f"{where}: context {example.context_id!r}: history title {title!r} cannot be "
                f"written in a {SEPARATOR!r}-joined historyList (it holds {SEPARATOR!r} or "
                "surrounding spaces)"
            )
    for title in example.candidates:
        if title != title.strip():
            raise InputError(
                f"{where}: context {example.context_id!r}: candidate {title!r} has surrounding "
                "spaces, which a reader strips"
            )
    return Record(
        history=list(example.history),
        candidates=list(example.candidates),
        true=example.positives[0],
        user=example.user,
        context_id=example.context_id,
    )


def write(records: Iterable[Record], handle: IO[str]) -> int:
    """Write `records` as ``json.dump([r.to_json(i) ...], handle, indent=4)`` would, one
    record at a time (a split need not fit in memory); returns their number."""
    count = 0
    for index, record in enumerate(records):
        text = json.dumps(record.to_json(index), indent=INDENT)
        pad = " " * INDENT
        handle.write(("[\n" if count == 0 else ",\n") + pad + text.replace("\n", "\n" + pad))
        count += 1
    handle.write("\n]" if count else "[]")
    return count
