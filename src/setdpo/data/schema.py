"""The one data type every stage consumes: a context with its candidates and their levels."""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PreferenceExample:
    """One context: a prompt, candidate item titles and a preference level per candidate.

    Levels: 1 = most preferred (the positives), larger = less preferred. In the binary
    case level 2 marks the negatives. Validated on construction.

    ``meta`` keeps what later stages may need: ``template`` and ``domain`` (so that the
    prompt can be re-rendered with fewer history items when it is too long), the source,
    item ids of the candidates (``candidate_ids``), and the mode that built the example.
    """

    context_id: str
    user: str
    history: list[str]
    prompt: str
    candidates: list[str]
    levels: list[int]
    target_time: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"example {self.context_id!r}"
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"{where}: empty prompt")
        if len(self.candidates) != len(self.levels):
            raise ValueError(
                f"{where}: {len(self.candidates)} candidates but {len(self.levels)} levels"
            )
        if not self.candidates:
            raise ValueError(f"{where}: no candidates")
        for i, title in enumerate(self.candidates):
            if not isinstance(title, str) or not title.strip():
                raise ValueError(f"{where}: candidate {i} has an empty title")
        if len(set(self.candidates)) != len(self.candidates):
            dupes = sorted({t for t in self.candidates if self.candidates.count(t) > 1})
            raise ValueError(f"{where}: duplicate candidate titles {dupes}")
        for i, level in enumerate(self.levels):
            if isinstance(level, bool) or not isinstance(level, int) or level < 1:
                raise ValueError(
                    f"{where}: candidate {i} has level {level!r}; levels are ints >= 1"
                )
        if 1 not in self.levels:
            raise ValueError(f"{where}: no level-1 (positive) candidate")
        if self.target_time is not None and (
            isinstance(self.target_time, bool) or not isinstance(self.target_time, numbers.Real)
        ):
            raise ValueError(f"{where}: target_time {self.target_time!r} is not a number")
        for i, title in enumerate(self.history):
            if not isinstance(title, str) or not title.strip():
                raise ValueError(f"{where}: history item {i} has an empty title")

    @property
    def positives(self) -> list[str]:
        return [c for c, g in zip(self.candidates, self.levels, strict=True) if g == 1]

    @property
    def negatives(self) -> list[str]:
        return [c for c, g in zip(self.candidates, self.levels, strict=True) if g > 1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> PreferenceExample:
        return cls(
            context_id=str(row["context_id"]),
            user=str(row["user"]),
            history=list(row["history"]),
            prompt=row["prompt"],
            candidates=list(row["candidates"]),
            levels=[int(g) for g in row["levels"]],
            target_time=row.get("target_time"),
            meta=dict(row.get("meta") or {}),
        )
