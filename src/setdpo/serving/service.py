"""The ranking service behind `setdpo serve`: a run or an export, its prompt and catalog, and
the requests it scores, through `setdpo.scoring.score_all` (the one scoring loop).

A ranking request renders the prompt training used (the run's template and domain, the
history, the candidates), exactly as `setdpo evaluate` renders a context, so its log-probs
are the ones `evaluate` computes; a recommendation request renders the ``open`` prompt and
ranks the catalog minus the history, as `setdpo recommend --catalog` does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from setdpo.data import prompts
from setdpo.errors import InputError
from setdpo.evaluation.metrics import rank_order
from setdpo.evaluation.recommend import catalog_titles
from setdpo.items import ItemRepresentation, write_titles
from setdpo.paths import portable_name
from setdpo.scoring import ScoringOptions, score_all
from setdpo.serving.info import ModelInfo, load_served, read_info
from setdpo.tokenization import TokenizedExample, tokenize_candidates, tokenize_prompt

API_KEY_ENV = "SETDPO_API_KEY"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class ServeConfig:
    """`setdpo serve`: the model, the address and the limits; validated on construction."""

    model: str = _help("run directory or `setdpo export` folder", "")
    host: str = _help("address to bind (127.0.0.1: this machine only)", "127.0.0.1")
    port: int = _help("TCP port", 8000)
    api_key: str | None = _help(
        f"require `Authorization: Bearer KEY` on every route but /health (default: ${API_KEY_ENV})"
    )
    max_batch: int = _help("most requests scored in one batch (1 = no batching)", 16)
    batch_window_ms: float = _help("how long the first request of a batch waits for others", 5.0)
    max_queue: int = _help("requests waiting beyond this answer 503 with Retry-After", 256)
    timeout_s: float = _help(
        "a request not answered within this answers 504; one estimated on arrival to take "
        "over half of it answers 503 with Retry-After at once",
        30.0,
    )
    max_candidates: int = _help("most candidates in one /v1/rank request", 100)
    max_prompt_tokens: int | None = _help(
        "longest prompt in tokens (default: the run's max_prompt_length, else the model's "
        "positions minus 64)"
    )
    max_body_bytes: int = _help("largest request body", 65536)
    body_timeout_s: float = _help(
        "a request body not received whole within this answers 408 (a slow or stalled client "
        "does not hold its connection)",
        10.0,
    )
    chunk_size: int = _help(
        "catalog titles per forward chunk (/v1/recommend); an abandoned request stops between "
        "chunks",
        256,
    )
    device: str = _help("device for the model: auto, cpu, cuda", "auto")

    def __post_init__(self) -> None:
        if not self.model:
            raise InputError("serve needs a model: a run directory or an export folder")
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        for name in ("max_batch", "max_queue", "max_candidates", "max_body_bytes", "chunk_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_window_ms < 0 or self.timeout_s <= 0 or self.body_timeout_s <= 0:
            raise InputError("batch_window_ms must be >= 0, timeout_s and body_timeout_s > 0")
        if not 0 <= self.port < 65536:
            raise InputError(f"port must be in 0..65535, got {self.port}")


class RequestError(Exception):
    """A bad request: ``field`` names what is wrong (``history[2].item_id``), HTTP ``status``."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


@dataclass(frozen=True)
class Job:
    """One context to score: its token ids, the titles (and catalog ids) in candidate order,
    and whether it is a catalog ranking (scored alone, in chunks)."""

    tokenized: TokenizedExample
    titles: list[str]
    item_ids: list[str | None]
    catalog: bool


class RankingService:
    """A loaded model with its `ModelInfo` and catalog; builds and scores `Job`s."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.info: ModelInfo = read_info(config.model)
        self.model, self.tokenizer = load_served(config.model, config.device)
        self.catalog: list[dict] = _read_catalog(self.info.catalog)
        self.by_id = {str(item["item_id"]): str(item["title"]) for item in self.catalog}
        self.items = ItemRepresentation(self.info.items_as)
        self.catalog_titles = [str(item["title"]) for item in self.catalog]
        self.id_of = {str(item["title"]): str(item["item_id"]) for item in self.catalog}
        positions = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_prompt_tokens = (
            config.max_prompt_tokens or self.info.max_prompt_length or max(positions - 64, 1)
        )
        self.pad_token_id = self.tokenizer.pad_token_id
        self.rank_options = ScoringOptions(average=self.info.average)
        self.catalog_options = ScoringOptions(
            average=self.info.average, chunk_size=config.chunk_size
        )

    def describe(self) -> dict[str, Any]:
        """The `/v1/model` answer (no local path: `ModelInfo.portable`)."""
        info = self.info.portable()
        return {
            "model": portable_name(os.path.abspath(self.config.model)),
            "base_model": info.base_model,
            "objective": info.objective,
            "data": info.data,
            "mode": info.mode,
            "source": info.source,
            "template": {
                "name": info.template,
                "domain": info.domain,
                "text": prompts.load_template(info.template, info.domain),
                "chat_template": info.chat_template,
            },  # fmt: skip
            "scoring": "length-averaged" if info.average else "summed candidate log-probability",
            "catalog_items": len(self.catalog),
            "limits": {
                "max_candidates": self.config.max_candidates,
                "max_prompt_tokens": self.max_prompt_tokens,
                "max_body_bytes": self.config.max_body_bytes,
                "body_timeout_s": self.config.body_timeout_s,
                "max_batch": self.config.max_batch,
                "batch_window_ms": self.config.batch_window_ms,
                "max_queue": self.config.max_queue,
                "timeout_s": self.config.timeout_s,
            },
        }

    def titles_of(self, name: str, entries: Sequence[Any]) -> list[str]:
        """Titles of ``entries``: a title, or an object with an ``item_id`` (a mapping or the
        request model) resolved in the catalog."""
        titles = []
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                titles.append(entry)
                continue
            raw = entry["item_id"] if isinstance(entry, dict) else entry.item_id
            item_id = str(raw)
            if item_id not in self.by_id:
                where = f"{name}[{i}].item_id"
                detail = "this model has no catalog" if not self.catalog else "not in the catalog"
                raise RequestError(where, f"unknown item id {item_id!r}: {detail}")
            titles.append(self.by_id[item_id])
        return titles

    def check_candidates(self, candidates: list[str]) -> None:
        """A RequestError (422) for too many or repeated candidates; cheap, so the server
        checks before admission (an invalid request is refused as invalid, not as busy)."""
        if len(candidates) > self.config.max_candidates:
            raise RequestError(
                "candidates",
                f"{len(candidates)} candidates; the limit is {self.config.max_candidates}",
            )
        seen: dict[str, int] = {}
        for i, title in enumerate(candidates):
            if title in seen:
                raise RequestError(f"candidates[{i}]", f"repeats candidates[{seen[title]}]")
            seen[title] = i

    def rank_job(self, history: list[str], candidates: list[str]) -> Job:
        self.check_candidates(candidates)
        written = self.write("candidates", candidates)
        prompt = prompts.render(
            self.info.template, self.info.domain, self.write("history", history), written
        )
        return self._job(prompt, written, candidates, catalog=False)

    def recommend_job(self, history: list[str]) -> Job:
        if not self.catalog:
            raise RequestError("history", "this model has no catalog to recommend from", 409)
        titles = catalog_titles(self.catalog, history)
        if not titles:
            raise RequestError("history", "every catalog title is in the history")
        written = self.write("candidates", titles)
        prompt = prompts.render("open", self.info.domain, self.write("history", history), written)
        return self._job(prompt, written, titles, catalog=True)

    def warm_up_job(self) -> Job:
        """A small ranking the server scores at start-up, to time it (`Batcher.calibrate`):
        one history title and two candidates, from the catalog (item tokens need its titles)
        or made up."""
        titles = self.catalog_titles[:2] or ["Warm-up item A", "Warm-up item B"]
        return self.rank_job(titles[:1], titles[: self.config.max_candidates])

    def write(self, name: str, titles: list[str]) -> list[str]:
        """``titles`` as the model's prompts write items (`setdpo.items`)."""
        try:
            return write_titles(self.items, titles, self.catalog_titles)
        except ValueError as error:
            raise RequestError(name + str(error).split(":")[0], str(error)) from error

    def _job(self, prompt: str, written: list[str], titles: list[str], catalog: bool) -> Job:
        chat = self.info.chat_template
        prompt_ids = tokenize_prompt(self.tokenizer, prompt, chat)
        if len(prompt_ids) > self.max_prompt_tokens:
            raise RequestError(
                "history",
                f"the prompt is {len(prompt_ids)} tokens; the limit is {self.max_prompt_tokens}: "
                "send fewer history items",
            )
        try:
            candidate_ids = tokenize_candidates(
                self.tokenizer, prompt, written, chat, self.items.candidate_eos
            )
        except ValueError as error:
            raise RequestError("candidates", str(error)) from error
        tokenized = TokenizedExample(prompt_ids, candidate_ids, [1] * len(titles))
        return Job(tokenized, titles, [self.id_of.get(t) for t in titles], catalog)

    def score(
        self, jobs: Sequence[Job], alive: Callable[[int], bool] = lambda i: True
    ) -> list[list[float] | None]:
        """Each job's candidate log-probs, None for a job dropped because ``alive(i)`` turned
        False (its client left or its deadline passed): ranking jobs in one `score_all` batch
        of those still alive, catalog jobs one at a time, ``chunk_size`` candidates per
        `score_all` call, stopping between calls once abandoned."""
        out: list[list[float] | None] = [None] * len(jobs)
        ranked = [i for i, job in enumerate(jobs) if not job.catalog and alive(i)]
        if ranked:
            rows = [jobs[i].tokenized for i in ranked]
            scores = score_all(self.model, rows, self.rank_options, self.pad_token_id, len(rows))
            for i, row in zip(ranked, scores, strict=True):
                out[i] = row.tolist()
        for i, job in enumerate(jobs):
            if job.catalog:
                out[i] = self._score_catalog(job.tokenized, lambda i=i: alive(i))
        return out

    def _score_catalog(
        self, tokenized: TokenizedExample, alive: Callable[[], bool]
    ) -> list[float] | None:
        """A catalog's scores chunk by chunk (each candidate is scored given the prompt alone,
        so the chunks' scores are the whole ranking's); None once ``alive()`` is False."""
        scores: list[float] = []
        size = self.config.chunk_size
        for start in range(0, len(tokenized.candidate_ids), size):
            if not alive():
                return None
            chunk = TokenizedExample(tokenized.prompt_ids,
                                     tokenized.candidate_ids[start : start + size],
                                     tokenized.levels[start : start + size])  # fmt: skip
            (row,) = score_all(self.model, [chunk], self.catalog_options, self.pad_token_id, 1)
            scores += row.tolist()
        return scores


def ranking(job: Job, scores: list[float], top: int | None) -> list[dict[str, Any]]:
    """``[{"rank", "title", "item_id", "score"}]`` best first (ties: earlier first)."""
    order = rank_order(scores, [1] * len(scores))[:top]
    return [
        {"rank": r + 1, "title": job.titles[i], "item_id": job.item_ids[i], "score": scores[i]}
        for r, i in enumerate(order)
    ]


def _read_catalog(path: str | None) -> list[dict]:
    if path is None:
        return []
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read the catalog {path}: {error}") from error
    return [item for item in items if "title" in item and "item_id" in item]
