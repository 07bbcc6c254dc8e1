"""Built contexts -> rows of the compact split tables (`setdpo.data.store`), with no text
but ids.

ML-10M gives about nine million contexts, so no example is built as a Python object and
no prompt is rendered: each chunk of rows becomes Arrow arrays of item rows (ragged lists
from offsets), levels and times; the only strings are the user and the context id.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from setdpo.data.builders import Built
from setdpo.data.store import split_schema

CHUNK_ROWS = 262144


def _offsets(lengths: np.ndarray) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))


def _list(lengths: np.ndarray, values: np.ndarray, kind: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(_offsets(lengths), pa.array(values, kind, from_pandas=True))


def split_batches(built: Built, split: str) -> Iterator[pa.RecordBatch]:
    """The rows of `split` as record batches of at most `CHUNK_ROWS` (`store.split_schema`)."""
    users = built.users
    part = built.bounds[split]
    schema = split_schema(ratings=built.ratings is not None)
    for lo in range(part.start, part.stop, CHUNK_ROWS):
        rows = np.arange(lo, min(lo + CHUNK_ROWS, part.stop))
        ctx, items = built.ctx.take(rows), built.items[rows]
        real = items >= 0  # padding sits at the end of each row
        n_real = real.sum(axis=1)
        hist_len = ctx.start - ctx.hist_start
        ends = np.cumsum(hist_len)
        hist_pos = np.repeat(ctx.hist_start - (ends - hist_len), hist_len) + np.arange(ends[-1])
        user = users.take(pa.array(ctx.user))
        position = pc.cast(pa.array(ctx.start - built.seq.offsets[ctx.user]), pa.string())
        columns = {
            "context_id": pc.binary_join_element_wise(user, position, ":"),
            "user": user,
            "history_items": _list(hist_len, built.seq.item[hist_pos], pa.int32()),
            "candidate_items": _list(n_real, items[real], pa.int32()),
            "levels": _list(n_real, built.levels[rows][real], pa.int8()),
            "target_time": pa.array(ctx.target_time, pa.float64()),
        }
        if built.ratings is not None:  # NaN (a sampled negative) -> null
            columns["candidate_ratings"] = _list(n_real, built.ratings[rows][real], pa.float64())
        yield pa.RecordBatch.from_arrays([columns[n] for n in schema.names], schema=schema)
