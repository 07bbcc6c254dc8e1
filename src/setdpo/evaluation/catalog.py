"""Catalog ranking (the Mult-DPO protocol): rank every catalog item for an `open` prompt.

For each context the whole catalog, minus every item the user consumed before the
context's first target, becomes the candidate set of one large example that keeps the
prompt; the scorer runs the prompt once and scores the items in chunks
(``candidate_logps(..., chunk_size=...)``). Consumed items come from the prepared
directory's `timelines.parquet` (all of the user's past, not only the <= 10 items shown in
the prompt); a directory without one (imported example sets) excludes the history only,
and the protocol says so. The context's own candidates keep their levels (positives,
graded levels), so a re-consumed positive stays ranked; every other catalog item,
including the context's sampled negatives, gets the worst level: it is unobserved.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from setdpo.data.io import TIMELINES, has_timelines, load_items
from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError

EXCLUDED_CONSUMED = (
    "every item the user consumed before the target (timelines.parquet), except the "
    "context's graded candidates: a re-consumed positive stays ranked"
)
EXCLUDED_HISTORY = (
    "only the prompt's history (the data directory has no timelines.parquet): earlier items "
    "the user consumed stay ranked as unobserved"
)


def catalog_exclusion(folder: str | Path) -> str:
    """What catalog ranking on the prepared directory `folder` leaves out (for the protocol)."""
    return EXCLUDED_CONSUMED if has_timelines(folder) else EXCLUDED_HISTORY


class ConsumedItems:
    """Each user's time-ordered item ids and times, from `timelines.parquet`, read one row
    group at a time when a user is asked for (the ML-10M-shaped file's 10M interactions are
    never all in memory; a few row groups are kept, and `read_order` reads each once); none
    without the file."""

    CACHED_GROUPS = 8  # of 2^20 interactions each at most: about 100 MB

    def __init__(self, folder: str | Path | None) -> None:
        self.file = None
        if folder is None or not has_timelines(folder):
            return
        self.file = pq.ParquetFile(Path(folder) / TIMELINES)
        self.ids = np.asarray([str(item["item_id"]) for item in load_items(folder)], dtype=object)
        users = self.file.read(columns=["user"])["user"].to_numpy(zero_copy_only=False)
        self.order = None if bool(np.all(users[1:] > users[:-1])) else np.argsort(users)
        self.users = users if self.order is None else users[self.order]
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.group_starts = np.cumsum([0, *sizes])
        self.groups: OrderedDict[int, pa.Table] = OrderedDict()

    @classmethod
    def of(cls, folder: str | Path) -> ConsumedItems:
        return cls(folder)

    def _timeline(self, user: str) -> tuple[list[str], list[float]] | None:
        at = int(np.searchsorted(self.users, user))
        if at >= len(self.users) or self.users[at] != user:
            return None
        row = at if self.order is None else int(self.order[at])
        group = int(np.searchsorted(self.group_starts, row, side="right")) - 1
        if group not in self.groups:
            self.groups[group] = self.file.read_row_group(group, columns=["items", "times"])
            if len(self.groups) > self.CACHED_GROUPS:
                self.groups.popitem(last=False)
        self.groups.move_to_end(group)
        table = self.groups[group]
        index = row - int(self.group_starts[group])
        items = table["items"][index].values.to_numpy()
        return self.ids[items].tolist(), table["times"][index].values.to_numpy().tolist()

    def read_order(self, examples: Sequence[PreferenceExample]) -> list[int]:
        """Positions of `examples` ordered by the row group holding their user's timeline
        (stable): taken in this order, each row group is read once, however the examples'
        users are spread over the file (contexts come in time order, users at random)."""
        if self.file is None or not examples or not len(self.users):
            return list(range(len(examples)))
        users = np.asarray([ex.user for ex in examples], dtype=object)
        at = np.minimum(np.searchsorted(self.users, users), len(self.users) - 1)
        rows = at if self.order is None else self.order[at]
        groups = np.searchsorted(self.group_starts, rows, side="right")  # unknown users: any
        return np.argsort(groups, kind="stable").tolist()

    def before(self, example: PreferenceExample) -> list[str]:
        """Ids of the items the user consumed before the example's first target: the
        positions before the one its context id names ("<user>:<position>")."""
        if self.file is None:
            return []
        where = f"example {example.context_id!r}"
        user, _, position = example.context_id.rpartition(":")
        if user != example.user or not position.isdigit():
            raise InputError(f"{where}: the context id is not '<user>:<position>'")
        timeline = self._timeline(user)
        if timeline is None:
            raise InputError(f"{where}: user {user!r} has no timeline in timelines.parquet")
        items, times = timeline
        at = int(position)
        if at >= len(items) or (
            example.target_time is not None and times[at] != example.target_time
        ):
            raise InputError(
                f"{where}: position {at} of user {user!r} in timelines.parquet is not its target"
            )
        return items[:at]


def catalog_example(
    example: PreferenceExample,
    catalog: Sequence[dict],
    max_level: int,
    consumed: Collection[str] = (),
    written: Sequence[str] | None = None,
) -> PreferenceExample:
    """``example`` with the catalog (minus its history and consumed items) as candidates.

    Args:
        catalog: items as in ``items.json``: dicts with ``item_id`` and ``title``.
        max_level: the level given to catalog items that are not graded candidates.
        consumed: ids of the items the user consumed before the target
            (`ConsumedItems.before`); the history titles are excluded in any case.
        written: each catalog item as the data writes it (`setdpo.items`; None: titles).
    """
    if example.meta.get("template", "open") != "open":
        raise InputError(
            f"example {example.context_id!r}: catalog ranking needs prompts built with the "
            f"'open' template (no candidate list), found {example.meta.get('template')!r}"
        )
    graded = {
        t: g for t, g in zip(example.candidates, example.levels, strict=True) if g < max_level
    }
    history, consumed = set(example.history), set(consumed)
    titles, ids, listed = [], [], set()
    for row, item in enumerate(catalog):
        title = str(item["title"]) if written is None else written[row]
        earlier = title in history or str(item["item_id"]) in consumed
        if title not in listed and (title in graded or not earlier):
            listed.add(title)
            titles.append(title)
            ids.append(item["item_id"])
    missing = [t for t in graded if t not in listed]
    if missing:
        raise InputError(
            f"example {example.context_id!r}: positive(s) {missing[:3]} are not in the catalog"
        )
    return PreferenceExample(
        context_id=example.context_id,
        user=example.user,
        history=list(example.history),
        prompt=example.prompt,
        candidates=titles,
        levels=[graded.get(t, max_level) for t in titles],
        target_time=example.target_time,
        meta={**example.meta, "candidate_ids": ids},
    )
