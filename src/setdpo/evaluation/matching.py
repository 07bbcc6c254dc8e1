"""Match a generated answer to candidate titles, after normalising case, spaces and punctuation.

An answer is *valid* when exactly one candidate title appears in it (as whole words).
When one matched title is contained in another matched title (``"Heat 1995"`` inside
``"Heat 1995 Director's Cut"``), only the longer one counts: the answer named it, and
the shorter match is a by-product of it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_title(text: str) -> str:
    """Lower case, accents stripped, punctuation to spaces, spaces collapsed.

    >>> normalize_title("  Toy Story (1995) ")
    'toy story 1995'
    >>> normalize_title("Amélie,  the MOVIE!")
    'amelie the movie'
    """
    decomposed = unicodedata.normalize("NFKD", text)
    no_accents = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_WORD.sub(" ", no_accents.casefold()).strip()


def matched_candidates(answer: str, candidates: Sequence[str]) -> list[int]:
    """Indices of the candidates named in ``answer`` (whole-word, normalised), longest wins."""
    padded = f" {normalize_title(answer)} "
    titles = [normalize_title(c) for c in candidates]
    hits = [i for i, t in enumerate(titles) if t and f" {t} " in padded]
    return [i for i in hits if not any(_inside(titles[i], titles[j]) for j in hits)]


def _inside(short: str, long: str) -> bool:
    """Whether normalised title ``short`` is a proper whole-word part of ``long``."""
    return short != long and f" {short} " in f" {long} "


def match_answer(answer: str, candidates: Sequence[str]) -> int | None:
    """The index of the one candidate ``answer`` names, or None when it names none or several."""
    hits = matched_candidates(answer, candidates)
    return hits[0] if len(hits) == 1 else None
