"""Catalog ranking (the Mult-DPO protocol): rank every catalog item for an `open` prompt.

For each context the whole catalog, minus the user's history, becomes the candidate set
of one large example that keeps the prompt; the scorer runs the prompt once and scores
the items in chunks (``candidate_logps(..., chunk_size=...)``). The context's own
candidates keep their levels (positives, graded levels); every other catalog item,
including the context's sampled negatives, gets the worst level: it is unobserved.
"""

from __future__ import annotations

from collections.abc import Sequence

from setdpo.data.schema import PreferenceExample
from setdpo.errors import InputError


def catalog_example(
    example: PreferenceExample, catalog: Sequence[dict], max_level: int
) -> PreferenceExample:
    """``example`` with the catalog (minus its history) as candidates.

    Args:
        catalog: items as in ``items.json``: dicts with ``item_id`` and ``title``.
        max_level: the level given to catalog items that are not graded candidates.
    """
    if example.meta.get("template", "open") != "open":
        raise InputError(
            f"example {example.context_id!r}: catalog ranking needs prompts built with the "
            f"'open' template (no candidate list), found {example.meta.get('template')!r}"
        )
    graded = {
        t: g for t, g in zip(example.candidates, example.levels, strict=True) if g < max_level
    }
    seen = set(example.history) - set(graded)  # a re-consumed positive still counts
    titles, ids = [], []
    for item in catalog:
        title = str(item["title"])
        if title not in seen:
            seen.add(title)
            titles.append(title)
            ids.append(item["item_id"])
    kept = set(titles)
    missing = [t for t in graded if t not in kept]
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
