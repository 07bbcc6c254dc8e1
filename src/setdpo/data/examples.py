"""Built splits -> canonical JSON lines and Arrow tables, with Arrow kernels.

ML-1M gives about a million examples of ~2.5 kB each, so no example is built as a
Python object: each chunk of rows becomes Arrow arrays (ragged lists from offsets, titles
taken from the catalog), prompts are rendered with `prompts.render_arrow`, and each JSON
line is concatenated from pre-encoded pieces. Every line equals
`io.dumps(example.to_dict())` (sorted keys, default separators); a test checks it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from setdpo.data.builders import Built
from setdpo.data.config import PrepareConfig
from setdpo.data.prompts import SEPARATOR, load_template, render_arrow

LARGE = pa.large_string()
CHUNK_ROWS = 131072


def _strings(values: list[str]) -> pa.Array:
    return pa.array(values, LARGE)


def _escaped(text: str) -> str:
    """JSON string escaping without the quotes (escaping commutes with concatenation)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _repeated(text: str, n: int) -> pa.Array:
    """A large_string array of `n` copies of `text`, built from raw buffers."""
    data = text.encode("utf-8")
    offsets = np.arange(n + 1, dtype=np.int64) * len(data)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data * n))


def _concat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation of string arrays [n] and literal text.

    Literals become full arrays: Arrow's `binary_join_element_wise` is slow with scalars.
    """
    n = next(len(p) for p in parts if not isinstance(p, str))
    arrays = [_repeated(p, n) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*arrays, pa.scalar("", LARGE))


def _ragged(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)


def _joined(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pc.binary_join(_ragged(offsets, values), pa.scalar(SEPARATOR, LARGE))


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@dataclass
class Catalog:
    """Per-item strings as Arrow arrays: raw, JSON-quoted and JSON-escaped (no quotes)."""

    title: pa.Array
    title_json: pa.Array
    title_escaped: pa.Array
    item_id: pa.Array
    item_id_json: pa.Array
    user: pa.Array
    user_escaped: pa.Array

    @classmethod
    def of(cls, built: Built) -> Catalog:
        titles = built.data.items["title"].tolist()
        ids = built.data.items["item_id"].tolist()
        users = [str(u) for u in built.seq.user_ids.tolist()]
        return cls(
            title=_strings(titles),
            title_json=_strings([json.dumps(t, ensure_ascii=False) for t in titles]),
            title_escaped=_strings([_escaped(t) for t in titles]),
            item_id=_strings(ids),
            item_id_json=_strings([json.dumps(i, ensure_ascii=False) for i in ids]),
            user=_strings(users),
            user_escaped=_strings([_escaped(u) for u in users]),
        )


@dataclass
class Chunk:
    """Rows of one split as flat arrays: candidates / history as (offsets [n+1], flat)."""

    user: np.ndarray
    position: np.ndarray
    target_time: np.ndarray
    hist_offsets: np.ndarray
    hist_items: pa.Array
    cand_offsets: np.ndarray
    cand_items: pa.Array
    levels: np.ndarray
    ratings: np.ndarray | None  # None outside the rated/levels modes


def chunks(built: Built, split: str) -> Iterator[Chunk]:
    """The rows of `split` in chunks of at most `CHUNK_ROWS`."""
    part = built.bounds[split]
    for lo in range(part.start, part.stop, CHUNK_ROWS):
        rows = np.arange(lo, min(lo + CHUNK_ROWS, part.stop))
        ctx, items = built.ctx.take(rows), built.items[rows]
        real = items >= 0  # padding sits at the end of each row
        hist_len = ctx.start - ctx.hist_start
        hist_offsets = _offsets(hist_len)
        hist_pos = np.repeat(ctx.hist_start - hist_offsets[:-1], hist_len) + np.arange(
            hist_offsets[-1]
        )
        yield Chunk(
            user=ctx.user,
            position=ctx.start - built.seq.offsets[ctx.user],
            target_time=ctx.target_time,
            hist_offsets=hist_offsets,
            hist_items=pa.array(built.seq.item[hist_pos]),
            cand_offsets=_offsets(real.sum(axis=1)),
            cand_items=pa.array(items[real]),
            levels=built.levels[rows][real],
            ratings=None if built.ratings is None else built.ratings[rows][real],
        )


def _render(chunk: Chunk, titles: pa.Array, config: PrepareConfig, escape: bool) -> pa.Array:
    fields = {
        "history": _joined(chunk.hist_offsets, titles.take(chunk.hist_items)),
        "candidates": _joined(chunk.cand_offsets, titles.take(chunk.cand_items)),
        "n_history": pc.cast(pa.array(np.diff(chunk.hist_offsets)), LARGE),
        "n_candidates": pc.cast(pa.array(np.diff(chunk.cand_offsets)), LARGE),
    }
    return render_arrow(config.template, config.domain, fields, _escaped if escape else str)


def prompts(chunk: Chunk, cat: Catalog, config: PrepareConfig) -> tuple[pa.Array, pa.Array]:
    """The prompts of a chunk, as text and JSON-escaped (the same array when no title and
    no template text needs escaping, as in MovieLens)."""
    text = _render(chunk, cat.title, config, escape=False)
    template = load_template(config.template, config.domain)
    if cat.title_escaped.equals(cat.title) and _escaped(template) == template:
        return text, text
    return text, _render(chunk, cat.title_escaped, config, escape=True)


def _floats_json(values: np.ndarray) -> pa.Array:
    """JSON text of floats (`repr`, as `json.dumps` writes them); NaN becomes null."""
    missing = np.isnan(values)
    unique = np.unique(values[~missing])
    codes = np.where(missing, len(unique), np.searchsorted(unique, np.where(missing, 0, values)))
    return _strings([repr(float(u)) for u in unique] + ["null"]).take(pa.array(codes))


def json_lines(chunk: Chunk, cat: Catalog, config: PrepareConfig, escaped: pa.Array) -> pa.Array:
    """One canonical JSON line (with its newline) per row, as a large_string array;
    `escaped`: the JSON-escaped prompts (`prompts`)."""
    co, ho = chunk.cand_offsets, chunk.hist_offsets
    rated = []
    if config.mode in ("rated", "levels"):
        rated = ['"candidate_ratings": [', _joined(co, _floats_json(chunk.ratings)), "], "]
    tail = json.dumps(
        {
            "domain": config.domain,
            "mode": config.mode,
            "source": config.source,
            "template": config.template,
        },
        sort_keys=True,
        ensure_ascii=False,
    )[1:]
    user = cat.user_escaped.take(pa.array(chunk.user))
    return _concat(
        '{"candidates": [', _joined(co, cat.title_json.take(chunk.cand_items)),
        '], "context_id": "', user, ":", pc.cast(pa.array(chunk.position), LARGE),
        '", "history": [', _joined(ho, cat.title_json.take(chunk.hist_items)),
        '], "levels": [', _joined(co, pc.cast(pa.array(chunk.levels), LARGE)),
        '], "meta": {"candidate_ids": [', _joined(co, cat.item_id_json.take(chunk.cand_items)),
        "], ", *rated, tail,
        ', "prompt": "', escaped,
        '", "target_time": ', _floats_json(chunk.target_time),
        ', "user": "', user, '"}\n',
    )  # fmt: skip


def arrow_table(chunk: Chunk, cat: Catalog, config: PrepareConfig, text: pa.Array) -> pa.Table:
    """The same rows as an Arrow table (columns and meta fields in sorted order); `text`:
    the prompts (`prompts`)."""
    co, n = chunk.cand_offsets, len(chunk.user)
    small = pa.list_(pa.string())
    meta = {"candidate_ids": pc.cast(_ragged(co, cat.item_id.take(chunk.cand_items)), small)}
    if config.mode in ("rated", "levels"):
        ratings = pa.array(chunk.ratings, pa.float64(), from_pandas=True)  # NaN -> null
        meta["candidate_ratings"] = pc.cast(_ragged(co, ratings), pa.list_(pa.float64()))
    for key in ("domain", "mode", "source", "template"):
        meta[key] = pa.array([getattr(config, key)] * n, pa.string())
    user = cat.user.take(pa.array(chunk.user))
    columns = {
        "candidates": pc.cast(_ragged(co, cat.title.take(chunk.cand_items)), small),
        "context_id": _concat(user, ":", pc.cast(pa.array(chunk.position), LARGE)),
        "history": pc.cast(_ragged(chunk.hist_offsets, cat.title.take(chunk.hist_items)), small),
        "levels": pc.cast(_ragged(co, pa.array(chunk.levels, pa.int64())), pa.list_(pa.int64())),
        "meta": pa.StructArray.from_arrays(list(meta.values()), list(meta)),
        "prompt": text,
        "target_time": pa.array(chunk.target_time, pa.float64()),
        "user": user,
    }
    for name in ("context_id", "prompt", "user"):
        columns[name] = pc.cast(columns[name], pa.string())
    return pa.table(columns)


def write_lines(handle, lines: pa.Array) -> None:
    """Write a large_string array's bytes as they lie in its data buffer."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[
        lines.offset : lines.offset + len(lines) + 1
    ]
    handle.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])
