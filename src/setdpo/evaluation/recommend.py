"""Recommend: rank candidate titles, or a whole catalog, for one viewing history.

With candidates, the prompt lists them (the ``listing`` template); with a catalog (a
prepared data directory's ``items.json``), the prompt is the ``open`` template and
every catalog item not in the history is scored, in chunks. Titles are ranked by the
model's log-probability of the title after the prompt, as in evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from setdpo.data import load_items, prompts
from setdpo.data.io import load_json
from setdpo.data.store import item_representation
from setdpo.errors import InputError
from setdpo.evaluation.metrics import rank_order
from setdpo.items import ItemRepresentation, write_titles
from setdpo.model import load
from setdpo.scoring import ScoringOptions, score_texts


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class RecommendConfig:
    """One recommendation request; validated on construction."""

    model: str = _help("run directory or model", "embedded:smollm2-135m")
    history: list[str] = field(
        default_factory=list, metadata={"help": "titles watched, oldest first"}
    )
    candidates: list[str] | None = _help("candidate titles (listing prompt)", None)
    catalog: str | None = _help("prepared data directory: rank its items.json (open prompt)")
    domain: str | None = _help(
        "prompt domain: movie, music, book, generic (default: the catalog's, else movie)"
    )
    top: int = _help("how many to print", 10)
    average: bool = _help("length-average the log-probs", False)
    chat_template: bool = _help("wrap the prompt in the chat template", False)
    chunk_size: int = _help("titles per forward chunk", 256)
    device: str = _help("device for the model: auto, cpu, cuda", "auto")

    def __post_init__(self) -> None:
        self.history = [h.strip() for h in self.history if h.strip()]
        if not self.history:
            raise InputError("recommend needs at least one history title (--history)")
        if (self.candidates is None) == (self.catalog is None):
            raise InputError("give either candidate titles (--candidates) or --catalog DIR")
        if self.candidates is not None and not [c for c in self.candidates if c.strip()]:
            raise InputError("--candidates needs at least one non-empty title")
        if self.top < 1 or self.chunk_size < 1:
            raise InputError(f"top ({self.top}) and chunk_size ({self.chunk_size}) must be >= 1")

    def scoring_options(self) -> ScoringOptions:
        return ScoringOptions(average=self.average, chunk_size=self.chunk_size)


def _candidate_titles(config: RecommendConfig) -> tuple[list[str], str, str]:
    """The titles to rank, the template and the domain."""
    if config.candidates is not None:
        titles = list(dict.fromkeys(c.strip() for c in config.candidates if c.strip()))
        return titles, "listing", config.domain or "movie"
    if not Path(config.catalog, "items.json").is_file():
        raise InputError(f"{config.catalog}: no items.json (a `setdpo data prepare` directory)")
    titles = catalog_titles(load_items(config.catalog), config.history)
    domain = config.domain
    if domain is None and Path(config.catalog, "config.json").is_file():
        domain = load_json(config.catalog, "config.json").get("domain")
    return titles, "open", domain or "movie"


def catalog_titles(items: Sequence[dict], history: Sequence[str]) -> list[str]:
    """The catalog's titles (``items.json`` rows) minus the history, once each, in order."""
    seen = set(history)
    return list(dict.fromkeys(str(it["title"]) for it in items if it["title"] not in seen))


def rank_titles(
    model,
    tokenizer,
    prompt: str,
    titles: Sequence[str],
    config: RecommendConfig,
    eos: bool = True,
) -> list[dict]:
    """``[{"rank", "title", "score"}]`` best first (ties: earlier title first), top ``config.top``;
    ``eos``: whether a candidate ends with EOS (not a lone item token: `setdpo.items`)."""
    (scores,) = score_texts(
        model,
        tokenizer,
        [prompt],
        [list(titles)],
        config.scoring_options(),
        chat_template=config.chat_template,
        batch_size=1,
        eos=eos,
    )
    order = rank_order(scores, [1] * len(titles))[: config.top]
    return [
        {"rank": r + 1, "title": titles[i], "score": float(scores[i])} for r, i in enumerate(order)
    ]


def recommend(config: RecommendConfig) -> list[dict]:
    """Load the model, render the prompt for the history, rank the titles."""
    titles, template, domain = _candidate_titles(config)
    if not titles:
        raise InputError("nothing to rank: every catalog title is in the history")
    items, catalog = ItemRepresentation(), []
    if config.catalog is not None:  # the catalog's data says how its items are written
        items = item_representation(config.catalog)
        catalog = [str(item["title"]) for item in load_items(config.catalog)]
    try:
        written = write_titles(items, titles, catalog)
        history = write_titles(items, config.history, catalog)
        prompt = prompts.render(template, domain, history, written)
    except ValueError as err:
        raise InputError(str(err)) from err
    model, tokenizer = load(config.model, device=config.device)
    ranked = rank_titles(model, tokenizer, prompt, written, config, items.candidate_eos)
    by_text = dict(zip(written, titles, strict=True))
    return [{**row, "title": by_text[row["title"]]} for row in ranked]
