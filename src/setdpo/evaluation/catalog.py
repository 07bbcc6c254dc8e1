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

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from setdpo.data.io import has_timelines, load_timelines
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


@dataclass
class ConsumedItems:
    """Each user's time-ordered item ids and times, from `timelines.parquet` (None: absent)."""

    timelines: dict[str, tuple[list[str], list[float]]] | None

    @classmethod
    def of(cls, folder: str | Path) -> ConsumedItems:
        rows = load_timelines(folder)
        if rows is None:
            return cls(None)
        return cls({str(r["user"]): (r["items"], r["times"]) for r in rows})

    def before(self, example: PreferenceExample) -> list[str]:
        """Ids of the items the user consumed before the example's first target: the
        positions before the one its context id names ("<user>:<position>")."""
        if self.timelines is None:
            return []
        where = f"example {example.context_id!r}"
        user, _, position = example.context_id.rpartition(":")
        if user != example.user or not position.isdigit():
            raise InputError(f"{where}: the context id is not '<user>:<position>'")
        if user not in self.timelines:
            raise InputError(f"{where}: user {user!r} has no timeline in timelines.parquet")
        items, times = self.timelines[user]
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
) -> PreferenceExample:
    """``example`` with the catalog (minus its history and consumed items) as candidates.

    Args:
        catalog: items as in ``items.json``: dicts with ``item_id`` and ``title``.
        max_level: the level given to catalog items that are not graded candidates.
        consumed: ids of the items the user consumed before the target
            (`ConsumedItems.before`); the history titles are excluded in any case.
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
    for item in catalog:
        title = str(item["title"])
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
