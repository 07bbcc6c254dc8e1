"""`setdpo data audit DIR`: what can be wrong with a prepared directory, checked from its files.

Each check counts the contexts (examples) with the problem:

- ``window_crosses_split``: a target window (the user's interactions from the position in
  the context id on, as many as the mode's window holds) has a time outside its split's
  cuts (`stats.json` ``split_cuts``), or reaches the first target of a later split's
  context of the same user (both split kinds);
- ``eval_positive_in_train``: a valid or test positive is a training positive of the same
  user (items the user consumed more than once are left out when the timelines say so:
  two interactions, not one leaked; examples without a user are not compared);
- ``candidate_in_history``: a candidate title is also in the example's history;
- ``duplicate_candidates``: a title or an item id appears twice among one example's
  candidates;
- ``positive_outside_timeline``: a positive is not one of the user's interactions in the
  target window (or the window lies outside the user's timeline).

The first and the last need `timelines.parquet` and the mode of `config.json`, which
`setdpo data prepare` writes; imported example sets have neither and get them "not
checked". Rows are read from the split tables (`setdpo.data.store`), only the columns
needed, as item rows and integer codes, so ten million examples take a minute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from setdpo.data.config import MODES
from setdpo.data.io import TIMELINES, load_items, load_json, read_timelines
from setdpo.data.store import SPLITS, read_table

CHECKS = {
    "window_crosses_split": "a target window lies past its split's cut or in a later split",
    "eval_positive_in_train": "a valid/test positive is a training positive of the same user",
    "candidate_in_history": "a candidate is also in the prompt's history",
    "duplicate_candidates": "a title or item id appears twice among the candidates",
    "positive_outside_timeline": "a positive is not in the user's timeline in its window",
}
EXAMPLES_SHOWN = 3


class AuditError(RuntimeError):
    """`setdpo data prepare` produced data with audit findings: a bug in setdpo."""


@dataclass
class Check:
    """One check's outcome: contexts examined (None: not checked), those with the problem."""

    name: str
    checked: int | None
    found: int = 0
    examples: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Rows:
    """Every split's rows, concatenated train, valid, test, with strings as integer codes.

    Per row [n]: ``split`` (0, 1, 2), ``context_id`` (Arrow strings), ``user`` (code; -1
    without a user),
    ``position`` (from the context id; -1 without one). Candidates [n, C] and history
    [n, H] are padded on the right: titles and ids -1 (history -2, so that padding never
    matches), levels 0.
    """

    split: np.ndarray
    context_id: pa.ChunkedArray
    user: np.ndarray
    position: np.ndarray
    cand_title: np.ndarray
    cand_id: np.ndarray
    cand_level: np.ndarray
    hist_title: np.ndarray
    n_ids: int


@dataclass
class Timelines:
    """Each user's time-ordered items (codes) and times; ``offsets`` [users + 1] by user code."""

    offsets: np.ndarray
    items: np.ndarray
    times: np.ndarray


def audit(folder: str | Path) -> list[Check]:
    """Run every check on the prepared directory `folder`."""
    folder = Path(folder)
    tables = {split: _read_split(folder, split) for split in SPLITS}
    rows, timelines = _encode(folder, tables, read_timelines(folder))
    evaluated = int(((rows.split > 0) & (rows.user >= 0)).sum())
    reconsumed = None if timelines is None else _reconsumed(timelines, rows.n_ids)
    found = {  # name -> (contexts checked, rows found)
        "eval_positive_in_train": (evaluated, _eval_in_train(rows, reconsumed)),
        "candidate_in_history": (len(rows.split), _in_history(rows)),
        "duplicate_candidates": (len(rows.split), _duplicates(rows)),
    }
    width = _window_width(folder)
    why = f"no {TIMELINES}" if timelines is None else "config.json names no mode"
    if timelines is not None and width is not None:
        cuts = load_json(folder, "stats.json").get("split_cuts")
        crossing, outside = _windows(rows, timelines, width, cuts)
        found["window_crosses_split"] = (len(rows.split), crossing)
        found["positive_outside_timeline"] = (len(rows.split), outside)
    return [
        _check(rows, name, *found[name])
        if name in found
        else Check(name, None, note=f"not checked: {why}")
        for name in CHECKS
    ]


def findings(checks: list[Check]) -> int:
    """Contexts found by all checks together (a context found twice counts twice)."""
    return sum(check.found for check in checks)


def format_table(checks: list[Check]) -> str:
    """The checks as a plain-text table, one line each."""
    lines = [f"{'check':<26} {'contexts':>9} {'found':>6}  first found / note"]
    for check in checks:
        checked = "-" if check.checked is None else str(check.checked)
        detail = ", ".join(check.examples) if check.examples else check.note
        lines.append(f"{check.name:<26} {checked:>9} {check.found:>6}  {detail}".rstrip())
    return "\n".join(lines)


def _check(rows: Rows, name: str, checked: int, found: np.ndarray) -> Check:
    names = np.asarray(SPLITS)
    shown = [
        f"{names[rows.split[r]]} {rows.context_id[int(r)].as_py()}" for r in found[:EXAMPLES_SHOWN]
    ]
    return Check(name, checked, int(len(found)), shown)


def _read_split(folder: Path, split: str) -> pa.Table | None:
    """The split's table (None: the split is empty)."""
    table = read_table(folder, split)
    return table if table.num_rows else None


def _window_width(folder: Path) -> int | None:
    config = load_json(folder, "config.json")
    if config.get("mode") not in MODES:
        return None
    return 1 if config["mode"] == "next" else int(config["k"])


def _flat(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (each row's length, the entries in row order)."""
    return (
        pc.list_value_length(table[column]).to_numpy(),
        pc.list_flatten(table[column]).to_numpy(),
    )


def _meta_ids(table: pa.Table, titles: pa.Array) -> pa.Array:
    """Candidate ids of an imported table, from each row's meta (titles when it has none)."""
    ids = []
    for meta, items in zip(
        table["meta"].to_pylist(), table["candidate_items"].to_pylist(), strict=True
    ):
        named = json.loads(meta).get("candidate_ids") if meta else None
        ids += [str(i) for i in named] if named else titles.take(pa.array(items)).to_pylist()
    return pa.array(ids, pa.string())


def _codes(parts: list[pa.Array]) -> tuple[list[np.ndarray], int]:
    """Integer codes (int32) of strings, shared across `parts`; and how many distinct strings."""
    parts = [pc.cast(p, pa.string()) for p in parts]
    vocab = pc.unique(pa.chunked_array(parts, pa.string()))
    codes = [pc.index_in(p, value_set=vocab).to_numpy(zero_copy_only=False) for p in parts]
    return [c.astype(np.int32) for c in codes], len(vocab)


def _padded(lengths: list[np.ndarray], values: list[np.ndarray], fill: int, dtype) -> np.ndarray:
    """Ragged lists, per split each row's length and the entries in row order, as one
    matrix [rows, longest] padded on the right (filled in place: ML-10M's 10M rows of 20
    candidates need no index arrays of that size)."""
    width = max([int(n.max(initial=0)) for n in lengths], default=0)
    out = np.full((sum(map(len, lengths)), width), fill, dtype=dtype)
    at = 0
    for length, value in zip(lengths, values, strict=True):
        block = out[at : at + len(length)]
        block[np.arange(width) < length[:, None]] = value
        at += len(length)
    return out


def _encode(
    folder: Path, tables: dict[str, pa.Table | None], timelines: pa.Table | None
) -> tuple[Rows, Timelines | None]:
    """All splits' columns as codes: titles are item rows (unique titles); item ids are
    item rows too, unless the examples carry their own (imported sets: codes of the id
    strings, shared with the timelines); users are codes shared with the timelines."""
    parts = [(i, t) for i, t in enumerate(tables.values()) if t is not None]
    cand_lengths = [_flat(t, "candidate_items")[0] for _, t in parts]
    cand_title = _padded(
        cand_lengths, [_flat(t, "candidate_items")[1] for _, t in parts], -1, np.int32
    )
    timeline_items = (
        np.empty(0, np.int32)
        if timelines is None
        else pc.list_flatten(timelines["items"]).to_numpy()
    )
    cand_id, n_ids = cand_title, len(load_items(folder))
    if any("meta" in t.column_names for _, t in parts):
        items = load_items(folder)
        titles = pa.array([str(it["title"]) for it in items], pa.string())
        item_ids = pa.array([str(it["item_id"]) for it in items], pa.string())
        ids, n_ids = _codes(
            [_meta_ids(t, titles) for _, t in parts] + [item_ids.take(timeline_items)]
        )
        cand_id, timeline_items = _padded(cand_lengths, ids[:-1], -1, np.int32), ids[-1]
    names = [t["user"].combine_chunks() for _, t in parts]
    timeline_users = pa.array([], pa.string()) if timelines is None else timelines["user"]
    users, n_users = _codes([*names, timeline_users])
    context_id = pa.chunked_array([t["context_id"].combine_chunks() for _, t in parts], pa.string())
    position = pc.struct_field(pc.extract_regex(context_id, r":(?P<p>\d+)$"), "p")
    user = np.concatenate([np.empty(0, np.int64), *users[:-1]]).astype(np.int64)
    user[pc.equal(pa.chunked_array(names, pa.string()), "").to_numpy()] = -1
    hist = [_flat(t, "history_items") for _, t in parts]
    rows = Rows(
        split=np.repeat([i for i, _ in parts], [t.num_rows for _, t in parts]).astype(np.int8),
        context_id=context_id,
        user=user,
        position=pc.fill_null(pc.cast(position, pa.int64()), -1).to_numpy(),
        cand_title=cand_title,
        cand_id=cand_id,
        cand_level=_padded(cand_lengths, [_flat(t, "levels")[1] for _, t in parts], 0, np.int8),
        hist_title=_padded([n for n, _ in hist], [v for _, v in hist], -2, np.int32),
        n_ids=n_ids,
    )
    if timelines is None:
        return rows, None
    return rows, _timelines(timelines, users[-1], timeline_items, n_users)


def _timelines(table: pa.Table, users: np.ndarray, items: np.ndarray, n_users: int) -> Timelines:
    lengths = pc.list_value_length(table["items"]).to_numpy()
    owner = np.repeat(users, lengths)
    order = np.argsort(owner, kind="stable")  # by user code, each user's items in time order
    times = pc.list_flatten(table["times"]).to_numpy()
    offsets = np.searchsorted(owner[order], np.arange(n_users + 1))
    return Timelines(offsets, items[order], times[order])


def _reconsumed(timelines: Timelines, n_ids: int) -> np.ndarray:
    """Keys (user * n_ids + item) the user's timeline holds more than once."""
    user = np.repeat(np.arange(len(timelines.offsets) - 1), np.diff(timelines.offsets))
    keys, counts = np.unique(user * n_ids + timelines.items, return_counts=True)
    return keys[counts > 1]


def _eval_in_train(rows: Rows, reconsumed: np.ndarray | None) -> np.ndarray:
    row, slot = np.nonzero((rows.cand_level == 1) & (rows.user >= 0)[:, None])
    key = rows.user[row] * rows.n_ids + rows.cand_id[row, slot]  # one per positive
    train = key[rows.split[row] == 0]
    if reconsumed is not None:
        train = train[~np.isin(train, reconsumed)]
    evaluated = rows.split[row] > 0
    return np.unique(row[evaluated][np.isin(key[evaluated], train)])


def _in_history(rows: Rows) -> np.ndarray:
    hit = np.zeros(len(rows.split), dtype=bool)
    for column in rows.hist_title.T:  # at most history_window columns
        hit |= (rows.cand_title == column[:, None]).any(axis=1)
    return np.flatnonzero(hit)


def _duplicates(rows: Rows) -> np.ndarray:
    hit = np.zeros(len(rows.split), dtype=bool)
    same = rows.cand_id is rows.cand_title  # prepared sets: an item's row is both
    for codes in (rows.cand_title,) if same else (rows.cand_title, rows.cand_id):
        ordered = np.sort(codes, axis=1)
        hit |= ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1)
    return np.flatnonzero(hit)


def _windows(
    rows: Rows, timelines: Timelines, width: int, cuts: dict | None
) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose window crosses a split boundary, rows with a positive outside it)."""
    known = rows.user >= 0
    user = np.where(known, rows.user, 0)
    length = np.where(known, np.diff(timelines.offsets)[user], 0)
    inside = known & (rows.position >= 0) & (rows.position + width <= length)
    # Rows whose window is not inside the timeline read a sentinel slot (item -1).
    items, times = np.append(timelines.items, -1), np.append(timelines.times, np.nan)
    start = np.where(inside, timelines.offsets[user] + rows.position, len(items) - 1)
    slots = np.minimum(start[:, None] + np.arange(width), len(items) - 1)  # [n, width]
    window = items[slots]  # [n, width]
    matched = np.zeros(rows.cand_id.shape, dtype=bool)
    for column in window.T:
        matched |= rows.cand_id == column[:, None]
    outside = ~inside | ((rows.cand_level == 1) & ~matched).any(axis=1)
    crossing = inside & (
        _past_cut(rows.split, times[slots], cuts) | _reaches_later_split(rows, width)
    )
    return np.flatnonzero(crossing), np.flatnonzero(outside)


def _past_cut(split: np.ndarray, times: np.ndarray, cuts: dict | None) -> np.ndarray:
    """[n] bool: a window time [n, w] below its split's cut or at/after the next one."""
    if not cuts:
        return np.zeros(len(split), dtype=bool)
    valid, test = (np.inf if cuts.get(k) is None else float(cuts[k]) for k in ("valid", "test"))
    lower = np.array([-np.inf, valid, test])[split]
    upper = np.array([valid, test, np.inf])[split]
    return (times.min(axis=1) < lower) | (times.max(axis=1) >= upper)


def _reaches_later_split(rows: Rows, width: int) -> np.ndarray:
    """[n] bool: the window's last position reaches the first target of a context of the
    same user in a later split."""
    n_users = int(rows.user.max(initial=-1)) + 1
    bad = np.zeros(len(rows.split), dtype=bool)
    known = rows.user >= 0
    for split in (0, 1):
        first_later = np.full(n_users, np.iinfo(np.int64).max)
        later = known & (rows.split > split) & (rows.position >= 0)
        np.minimum.at(first_later, rows.user[later], rows.position[later])
        mine = known & (rows.split == split)
        end = rows.position + width - 1
        bad[mine] = end[mine] >= first_later[rows.user[mine]]
    return bad
