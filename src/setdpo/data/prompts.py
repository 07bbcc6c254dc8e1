"""Prompt rendering from template files (`templates/<domain>/<template>.txt`).

The templates are data: Python `str.format` text with the fields `{history}` (titles,
oldest first, joined by ", "), `{n_history}`, and, for the `listing` template,
`{candidates}` and `{n_candidates}`. Titles are substituted verbatim (braces inside a
title are never re-parsed). A tokenizer's chat template is applied later, by the
tokenizing step, never here.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from setdpo.data.config import DOMAINS, TEMPLATES

SEPARATOR = ", "


@cache
def load_template(template: str, domain: str) -> str:
    """The text of `templates/<domain>/<template>.txt` (without its final newline)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {list(TEMPLATES)}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose from {list(DOMAINS)}")
    path = resources.files("setdpo.data") / "templates" / domain / f"{template}.txt"
    return path.read_text(encoding="utf-8").rstrip("\n")


def render(template: str, domain: str, history: list[str], candidates: list[str]) -> str:
    """The prompt for one context; `candidates` is ignored by the `open` template."""
    return load_template(template, domain).format(
        history=SEPARATOR.join(history),
        n_history=len(history),
        candidates=SEPARATOR.join(candidates),
        n_candidates=len(candidates),
    )
