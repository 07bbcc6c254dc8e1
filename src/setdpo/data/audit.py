"""`setdpo data audit DIR`: what can be wrong with a prepared directory, checked from its files.

Each check counts the contexts (examples) with the problem:

- ``window_crosses_split``: a target window (the user's interactions from the position in
  the context id on, as many as the mode's window holds) has a time outside its split's
  cuts (`stats.json` ``split_cuts``), or reaches the first target of a later split's
  context of the same user: at or past its position, or later in time (both split kinds);
- ``eval_positive_in_train``: a valid or test positive is a training positive of the same
  user (items the user consumed more than once are left out when the timelines say so:
  two interactions, not one leaked; examples without a user are not compared);
- ``candidate_in_history``: a candidate title is also in the example's history;
- ``duplicate_candidates``: a title or an item id appears twice among one example's
  candidates;
- ``positive_outside_timeline``: a positive is not one of the user's interactions in the
  target window (or the window lies outside the user's timeline);
- ``history_not_before_target``: the history is not the user's interactions right before
  the target window (those positions of the timeline, oldest first);
- ``global_time_cut``: a training window reaches the time of the earliest valid or test
  target of any user.

What a directory's split protocol (`config.json` ``split``, `setdpo.data.protocols`)
guarantees is checked and a finding is a bug; what it does not guarantee is counted and
reported as measured (``Check.measured``): ``global_time_cut`` under ``leave-last-out``,
which has no global time cut (Ji et al. 2023). `describe_protocol` states both.

The window, history and global checks need `timelines.parquet` and the mode and split of
`config.json`, which `setdpo data prepare` writes; imported example sets have none and get
them "not checked". Rows are read from the split tables (`setdpo.data.store`), only the
columns needed, as item rows and integer codes, so ten million examples take a minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from setdpo.data.config import MODES
from setdpo.data.io import TIMELINES, load_items, load_json, read_timelines
from setdpo.data.protocols import SplitProtocol, split_protocol
from setdpo.data.store import SPLITS, split_columns, table_blocks
from setdpo.errors import InputError

CHECKS = {
    "window_crosses_split": "a target window lies past its split's cut or in a later split",
    "eval_positive_in_train": "a valid/test positive is a training positive of the same user",
    "candidate_in_history": "a candidate is also in the prompt's history",
    "duplicate_candidates": "a title or item id appears twice among the candidates",
    "positive_outside_timeline": "a positive is not in the user's timeline in its window",
    "history_not_before_target": "a history is not the user's interactions right before it",
    "global_time_cut": "a training window reaches the earliest valid/test target (any user)",
}
WINDOW_CHECKS = (
    "window_crosses_split",
    "positive_outside_timeline",
    "history_not_before_target",
    "global_time_cut",
)
EXAMPLES_SHOWN = 3
BLOCK_ROWS = 262144  # rows checked at once: memory is bounded by this, not by the split


class AuditError(RuntimeError):
    """`setdpo data prepare` produced data with audit findings: a bug in setdpo."""


@dataclass
class Check:
    """One check's outcome: contexts examined (None: not checked), those with the problem;
    ``measured``: what the split protocol does not guarantee, counted but not a finding."""

    name: str
    checked: int | None
    found: int = 0
    examples: list[str] = field(default_factory=list)
    note: str = ""
    measured: bool = False


@dataclass
class Rows:
    """A block of one split's rows, with strings as integer codes.

    Per row [n]: ``split`` (0, 1, 2), ``context_id`` (Arrow strings), ``user`` (code; -1
    without a user), ``position`` (from the context id; -1 without one). Candidates [n, C]
    and history [n, H] are padded on the right: titles and ids -1 (history -2, so that
    padding never matches), levels 0. Ids are the timelines' item codes.
    """

    split: np.ndarray
    context_id: pa.ChunkedArray
    user: np.ndarray
    position: np.ndarray
    cand_title: np.ndarray
    cand_id: np.ndarray
    cand_level: np.ndarray
    hist_title: np.ndarray
    hist_id: np.ndarray
    n_ids: int


@dataclass
class Timelines:
    """Each user's time-ordered items (codes) and times; ``offsets`` [users + 1] by user code;
    ``items`` and ``times`` end with one sentinel slot (item -1, time NaN)."""

    offsets: np.ndarray
    items: np.ndarray
    times: np.ndarray


@dataclass
class Codes:
    """The integer codes shared by the splits and the timelines: users, and item ids when
    the examples carry their own (imported sets, from ``meta``; else item rows). Each
    vocabulary's hash table is built once (`pd.Index`), not per block: 15M users would
    otherwise be hashed again for every block."""

    users: pa.Array
    ids: pa.Array | None
    n_ids: int
    titles: pa.Array
    item_ids: pa.Array

    def __post_init__(self) -> None:
        self._users = pd.Index(self.users.to_numpy(zero_copy_only=False))
        self._ids = None if self.ids is None else pd.Index(self.ids.to_numpy(zero_copy_only=False))

    def user_codes(self, names: pa.Array) -> np.ndarray:
        values = names.to_numpy(zero_copy_only=False)
        codes = self._users.get_indexer(values).astype(np.int64)
        codes[values == ""] = -1
        return codes

    def id_codes(self, ids: pa.Array) -> np.ndarray:
        return self._ids.get_indexer(ids.to_numpy(zero_copy_only=False)).astype(np.int32)


def audit(folder: str | Path) -> list[Check]:
    """Run every check on the prepared directory `folder`, reading its splits a block of
    `BLOCK_ROWS` rows at a time (twice: what other rows decide, then the checks)."""
    folder = Path(folder)
    table = read_timelines(folder)
    codes = _codes_of(folder, table)
    timelines = None if table is None else _timelines(table, codes)
    del table
    reconsumed = None if timelines is None else _reconsumed(timelines, codes.n_ids)
    width, protocol = _settings(folder)
    windows = timelines is not None and width is not None
    across = _across_rows(folder, codes, reconsumed, timelines if windows else None)
    cuts = load_json(folder, "stats.json").get("split_cuts") if windows else None
    names = ["eval_positive_in_train", "candidate_in_history", "duplicate_candidates"]
    names += list(WINDOW_CHECKS) if windows else []
    if protocol is None and "global_time_cut" in names:
        names.remove("global_time_cut")
    checked = dict.fromkeys(names, 0)
    found = {name: Check(name, 0) for name in names}
    for rows in _blocks(folder, codes):
        sizes = {  # the rows each check looks at (the others: every row)
            "eval_positive_in_train": int(((rows.split > 0) & (rows.user >= 0)).sum()),
            "global_time_cut": int((rows.split == 0).sum()),
        }
        hits = {
            "eval_positive_in_train": _eval_in_train(rows, across.train),
            "candidate_in_history": _in_history(rows),
            "duplicate_candidates": _duplicates(rows),
        }
        if windows:
            hits |= _window_hits(rows, timelines, width, cuts, across)
        for name in names:
            checked[name] += sizes.get(name, len(rows.split))
            _count(found[name], rows, hits[name])
    for name in names:
        found[name].checked = checked[name]
        if protocol is not None and name in protocol.measured:
            found[name].measured = True
            found[name].note = f"measured: split {protocol.name} does not guarantee it"
    return [found[name] if name in found else _unchecked(name, timelines, width) for name in CHECKS]


def _unchecked(name: str, timelines: Timelines | None, width: int | None) -> Check:
    if timelines is None:
        why = f"no {TIMELINES}"
    else:
        why = "config.json names no mode" if width is None else "config.json names no split"
    return Check(name, None, note=f"not checked: {why}")


def describe_protocol(folder: str | Path) -> list[str]:
    """What the split protocol of the prepared directory `folder` does and guarantees, as
    lines to print above the audit table (`setdpo.data.protocols`)."""
    protocol = _settings(Path(folder))[1]
    if protocol is None:
        return ["split: none named in config.json (an imported example set): no split protocol"]
    lines = [f"split {protocol.name}: {protocol.summary}"]
    lines += [f"  guaranteed (checked): {text}" for text in protocol.guarantees]
    return lines + [f"  not guaranteed: {protocol.not_guaranteed}"]


def _count(check: Check, rows: Rows, found: np.ndarray) -> None:
    check.found += int(len(found))
    names = np.asarray(SPLITS)
    for r in found[: EXAMPLES_SHOWN - len(check.examples)]:
        check.examples.append(f"{names[rows.split[r]]} {rows.context_id[int(r)].as_py()}")


def findings(checks: list[Check]) -> int:
    """Contexts found by all checks together (a context found twice counts twice), less
    those the split protocol does not guarantee (``measured``)."""
    return sum(check.found for check in checks if not check.measured)


def format_table(checks: list[Check]) -> str:
    """The checks as a plain-text table, one line each."""
    lines = [f"{'check':<26} {'contexts':>9} {'found':>6}  first found / note"]
    for check in checks:
        checked = "-" if check.checked is None else str(check.checked)
        detail = ", ".join(check.examples) if check.examples else check.note
        if check.measured and check.examples:
            detail = f"{check.note} (first: {detail})"
        lines.append(f"{check.name:<26} {checked:>9} {check.found:>6}  {detail}".rstrip())
    return "\n".join(lines)


def _settings(folder: Path) -> tuple[int | None, SplitProtocol | None]:
    """The target window's width and the split protocol `config.json` names (None when it
    names none: an imported set)."""
    config = load_json(folder, "config.json")
    width = None
    if config.get("mode") in MODES:
        width = 1 if config["mode"] == "next" else int(config["k"])
    split = config.get("split")
    return width, None if split is None else split_protocol(split)


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


def _padded(lengths: np.ndarray, values: np.ndarray, fill: int, dtype) -> np.ndarray:
    """A ragged list column, each row's length and the entries in row order, as one matrix
    [rows, longest] padded on the right."""
    width = int(lengths.max(initial=0))
    out = np.full((len(lengths), width), fill, dtype=dtype)
    out[np.arange(width) < lengths[:, None]] = values
    return out


def _split_blocks(folder: Path, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
    for code, split in enumerate(SPLITS):
        for block in table_blocks(folder, split, BLOCK_ROWS, columns):
            yield code, block


def _codes_of(folder: Path, timelines: pa.Table | None) -> Codes:
    """Users of the splits and the timelines; item ids of imported sets (from ``meta``)."""
    items = load_items(folder)
    titles = pa.array([str(item["title"]) for item in items], pa.string())
    item_ids = pa.array([str(item["item_id"]) for item in items], pa.string())
    names = [pc.unique(b["user"]) for _, b in _split_blocks(folder, ["user"])]
    users = pc.unique(pa.chunked_array(names, pa.string()).combine_chunks())
    if timelines is not None:  # the timelines' users first, in row order: code = row
        listed = timelines["user"].combine_chunks()
        if pc.count_distinct(listed).as_py() != len(listed):
            raise InputError(f"{folder / TIMELINES}: a user has more than one row")
        users = pa.concat_arrays([listed, users.filter(pc.invert(pc.is_in(users, listed)))])
    if not any("meta" in split_columns(folder, split) for split in SPLITS):
        return Codes(users, None, len(items), titles, item_ids)
    ids = [pc.unique(_meta_ids(b, titles)) for _, b in _split_blocks(folder)]
    if timelines is not None:
        ids.append(item_ids.take(pc.list_flatten(timelines["items"])))
    ids = pc.unique(pa.chunked_array(ids, pa.string()).combine_chunks())
    return Codes(users, ids, len(ids), titles, item_ids)


def _blocks(folder: Path, codes: Codes, history: bool = True) -> Iterator[Rows]:
    """Every split's rows as `Rows`, a block at a time, train first (without `history`:
    empty history matrices, for the pass that does not look at it)."""
    for code, table in _split_blocks(folder):
        cand_lengths, cand_items = _flat(table, "candidate_items")
        cand_title = _padded(cand_lengths, cand_items, -1, np.int32)
        cand_id = cand_title
        if codes.ids is not None:
            cand_id = _padded(
                cand_lengths, codes.id_codes(_meta_ids(table, codes.titles)), -1, np.int32
            )
        context_id = table["context_id"]
        position = pc.struct_field(pc.extract_regex(context_id, r":(?P<p>\d+)$"), "p")
        hist_title = hist_id = np.empty((table.num_rows, 0), np.int32)
        if history:
            hist_lengths, hist_items = _flat(table, "history_items")
            hist_title = hist_id = _padded(hist_lengths, hist_items, -2, np.int32)
            if codes.ids is not None and len(hist_items):  # rows -> the timelines' ids
                ids = codes.id_codes(codes.item_ids.take(pa.array(hist_items)))
                hist_id = _padded(hist_lengths, ids, -2, np.int32)
        yield Rows(
            split=np.full(table.num_rows, code, dtype=np.int8),
            context_id=context_id,
            user=codes.user_codes(table["user"].combine_chunks()),
            position=pc.fill_null(pc.cast(position, pa.int64()), -1).to_numpy(),
            cand_title=cand_title,
            cand_id=cand_id,
            cand_level=_padded(cand_lengths, _flat(table, "levels")[1], 0, np.int8),
            hist_title=hist_title,
            hist_id=hist_id,
            n_ids=codes.n_ids,
        )


@dataclass
class Across:
    """What the checks of one row need from all rows: ``train``, the keys (user * n_ids +
    item, sorted) of every training positive, less the items a timeline holds twice;
    ``first_later``, per split 0 and 1, each user's first context position in a later split
    (int64 max: none); ``earliest_eval``, the time of the earliest valid or test target of
    any user (inf: none, or no timelines)."""

    train: np.ndarray
    first_later: dict[int, np.ndarray]
    earliest_eval: float


def _across_rows(
    folder: Path, codes: Codes, reconsumed: np.ndarray | None, timelines: Timelines | None
) -> Across:
    """`Across` from one pass over every split's rows."""
    train: list[np.ndarray] = []
    n_users = len(codes.users)
    first_later = {s: np.full(n_users, np.iinfo(np.int64).max) for s in (0, 1)}
    earliest = np.inf
    for rows in _blocks(folder, codes, history=False):
        if rows.split[0] == 0:
            row, slot = np.nonzero((rows.cand_level == 1) & (rows.user >= 0)[:, None])
            train.append(rows.user[row] * rows.n_ids + rows.cand_id[row, slot])
        later = (rows.user >= 0) & (rows.position >= 0)
        for split in (0, 1):
            if rows.split[0] > split:
                np.minimum.at(first_later[split], rows.user[later], rows.position[later])
        if rows.split[0] > 0 and timelines is not None:
            inside, slots = _slots(rows, timelines, 1)
            if inside.any():
                earliest = min(earliest, float(timelines.times[slots[inside, 0]].min()))
    keys = _sorted_unique(np.concatenate([np.empty(0, np.int64), *train]))
    if reconsumed is not None:
        keys = keys[~np.isin(keys, reconsumed)]
    return Across(keys, first_later, earliest)


def _timelines(table: pa.Table, codes: Codes) -> Timelines:
    """The timelines as flat arrays: the user of row r has code r (`_codes_of`), so they
    are in user order already; users without a row (in no timeline) get empty ranges."""
    lengths = pc.list_value_length(table["items"]).to_numpy()
    offsets = np.zeros(len(codes.users) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1 : len(lengths) + 1])
    offsets[len(lengths) + 1 :] = offsets[len(lengths)]
    n = int(offsets[-1])
    items = pc.list_flatten(table["items"]).to_numpy()
    if codes.ids is not None:
        items = codes.id_codes(codes.item_ids.take(pa.array(items)))
    # one sentinel slot (item -1) past the end: rows whose window is not in the timeline
    flat_items, flat_times = np.empty(n + 1, dtype=np.int64), np.empty(n + 1)
    flat_items[:n], flat_items[n] = items, -1
    flat_times[:n], flat_times[n] = pc.list_flatten(table["times"]).to_numpy(), np.nan
    return Timelines(offsets, flat_items, flat_times)


def _reconsumed(timelines: Timelines, n_ids: int) -> np.ndarray:
    """Keys (user * n_ids + item) the user's timeline holds more than once."""
    users = len(timelines.offsets) - 1
    keys = np.repeat(np.arange(users, dtype=np.int64) * n_ids, np.diff(timelines.offsets))
    keys += timelines.items[:-1]
    keys.sort()
    return _sorted_unique(keys[1:][keys[1:] == keys[:-1]])


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy's hash-based unique is many times slower at 10M keys)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _eval_in_train(rows: Rows, train: np.ndarray) -> np.ndarray:
    if rows.split[0] == 0:
        return np.zeros(0, dtype=np.int64)
    row, slot = np.nonzero((rows.cand_level == 1) & (rows.user >= 0)[:, None])
    key = rows.user[row] * rows.n_ids + rows.cand_id[row, slot]  # one per positive
    at = np.minimum(np.searchsorted(train, key), max(len(train) - 1, 0))
    found = train[at] == key if len(train) else np.zeros(len(key), dtype=bool)
    return np.unique(row[found])


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


def _slots(rows: Rows, timelines: Timelines, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(inside [n], slots [n, width]): whether each row's window lies in its user's
    timeline, and the timeline slots of the window (the sentinel slot where it does not)."""
    known = rows.user >= 0
    user = np.where(known, rows.user, 0)
    length = np.where(known, np.diff(timelines.offsets)[user], 0)
    inside = known & (rows.position >= 0) & (rows.position + width <= length)
    last = len(timelines.items) - 1
    start = np.where(inside, timelines.offsets[user] + rows.position, last)
    return inside, np.minimum(start[:, None] + np.arange(width), last)


def _window_hits(
    rows: Rows, timelines: Timelines, width: int, cuts: dict | None, across: Across
) -> dict[str, np.ndarray]:
    """The rows found by each of `WINDOW_CHECKS`."""
    inside, slots = _slots(rows, timelines, width)
    window, times = timelines.items[slots], timelines.times[slots]  # [n, width]
    matched = np.zeros(rows.cand_id.shape, dtype=bool)
    for column in window.T:
        matched |= rows.cand_id == column[:, None]
    outside = ~inside | ((rows.cand_level == 1) & ~matched).any(axis=1)
    crossing = inside & (
        _past_cut(rows.split, times, cuts)
        | _reaches_later_split(rows, width, times, timelines, across.first_later)
    )
    late = inside & (rows.split == 0) & (times.max(axis=1, initial=-np.inf) >= across.earliest_eval)
    return {
        "window_crosses_split": np.flatnonzero(crossing),
        "positive_outside_timeline": np.flatnonzero(outside),
        "history_not_before_target": _history_not_before(rows, timelines),
        "global_time_cut": np.flatnonzero(late),
    }


def _history_not_before(rows: Rows, timelines: Timelines) -> np.ndarray:
    """Rows whose history [n, H] is not the timeline's h items right before the position
    (h: the history's length), oldest first."""
    width = rows.hist_id.shape[1]
    h = (rows.hist_id != -2).sum(axis=1)
    known = (rows.user >= 0) & (rows.position >= 0)
    user = np.where(known, rows.user, 0)
    ok = known & (h <= rows.position) & (rows.position <= np.diff(timelines.offsets)[user])
    filled = np.arange(width) < h[:, None]  # [n, H]
    slots = (timelines.offsets[user] + rows.position - h)[:, None] + np.arange(width)
    slots = np.where(ok[:, None] & filled, slots, len(timelines.items) - 1)
    expected = np.where(filled, timelines.items[slots], -2)
    return np.flatnonzero(~ok | (expected != rows.hist_id).any(axis=1))


def _past_cut(split: np.ndarray, times: np.ndarray, cuts: dict | None) -> np.ndarray:
    """[n] bool: a window time [n, w] below its split's cut or at/after the next one."""
    if not cuts:
        return np.zeros(len(split), dtype=bool)
    valid, test = (np.inf if cuts.get(k) is None else float(cuts[k]) for k in ("valid", "test"))
    lower = np.array([-np.inf, valid, test])[split]
    upper = np.array([valid, test, np.inf])[split]
    return (times.min(axis=1) < lower) | (times.max(axis=1) >= upper)


def _reaches_later_split(
    rows: Rows,
    width: int,
    times: np.ndarray,
    timelines: Timelines,
    first_later: dict[int, np.ndarray],
) -> np.ndarray:
    """[n] bool: the window (its times [n, w]) reaches the first target of a context of the
    same user in a later split: its last position at or past that target's, or a time later
    than that target's (equal times may share the boundary: positions order them)."""
    split = int(rows.split[0])
    if split == 2:
        return np.zeros(len(rows.split), dtype=bool)
    known = (rows.user >= 0) & (rows.position >= 0)
    user = np.where(known, rows.user, 0)
    later = first_later[split][user]  # int64 max: none
    has = known & (later < np.diff(timelines.offsets)[user])  # in the user's timeline
    at = np.minimum(timelines.offsets[user] + np.where(has, later, 0), len(timelines.times) - 1)
    later_time = np.where(has, timelines.times[at], np.inf)
    end = rows.position + width - 1
    return has & ((end >= later) | (times.max(axis=1, initial=-np.inf) > later_time))
