"""The evaluation runner: score a split's candidates, rank them, summarise with intervals.

`evaluate(config)` is a thin loop: a scorer (a model, ``random``, ``popularity`` or ``sasrec``)
gives per-candidate scores, `metrics.compute_metrics` turns each context into metric
values, `results.summarize` adds bootstrap intervals, and the protocol is written next
to the numbers. Generation (``generate``/``constrained``) and catalog ranking
(``catalog``) add their own per-context values to the same contexts. Launched on several
processes (torchrun), each rank evaluates a shard of the contexts and the ranks' results are
gathered before the summary (`setdpo.evaluation.sharding`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import setdpo
from setdpo.data import load_items
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import SplitReader, item_representation, open_split, token_catalog
from setdpo.errors import InputError
from setdpo.evaluation.catalog import ConsumedItems, catalog_example, catalog_exclusion
from setdpo.evaluation.generation import generate_answers
from setdpo.evaluation.matching import match_answer
from setdpo.evaluation.metrics import (
    CATALOG_METRICS,
    DEFAULT_METRICS,
    GENERATION_METRICS,
    answer_values,
    compute_metrics,
    parse_metric_name,
    positive_ranks,
    protocol_notes,
)
from setdpo.evaluation.results import ContextResult, Results, summarize
from setdpo.evaluation.sasrec import SASRecSettings
from setdpo.evaluation.scorers import BASELINES, ModelScorer, Scorer, build_scorer
from setdpo.evaluation.sharding import Shard
from setdpo.items import as_titles
from setdpo.scoring import ScoringOptions
from setdpo.tokenization import candidate_eos

SPLITS = ("train", "valid", "test")
CATALOG_PREFIX = "catalog/"


def _help(text: str, default=None):
    return field(default=default, metadata={"help": text})


@dataclass
class EvalConfig:
    """What to evaluate and how; validated on construction."""

    model: str = _help(
        "run directory, model folder, hub id, 'embedded:smollm2-135m', 'tiny', "
        "'random', 'popularity' or 'sasrec' (trained on the data's training split, cached in "
        "$SETDPO_CACHE/sasrec)",
        "embedded:smollm2-135m",
    )
    data: str = _help("prepared data directory (setdpo data prepare --out DIR)", "")
    split: str = _help("split to evaluate: train, valid or test", "test")
    limit: int | None = _help("evaluate a seeded random subset of this many contexts", None)
    metrics: list[str] = field(
        default_factory=lambda: list(DEFAULT_METRICS), metadata={"help": "ranking metrics"}
    )
    average: bool = _help("length-average candidate log-probs instead of summing", False)
    share_prefix: bool = _help("run each prompt once for all its candidates", True)
    batch_size: int = _help("contexts per forward batch", 4)
    max_prompt_length: int | None = _help("drop oldest history items beyond this many tokens")
    chat_template: bool = _help("wrap prompts in the tokenizer's chat template", False)
    generate: bool = _help("also generate a greedy answer per context", False)
    constrained: bool = _help(
        "constrain generation to the candidate titles (implies generate)", False
    )
    max_new_tokens: int = _help("longest unconstrained answer, in tokens", 64)
    catalog: bool = _help("also rank the whole catalog (open-template examples)", False)
    chunk_size: int = _help("catalog items scored per forward chunk", 256)
    n_resamples: int = _help("bootstrap resamples", 1000)
    seed: int = _help("seed of the subset, the baselines and the bootstrap", 0)
    sasrec_epochs: int = _help(
        "most epochs of the SASRec baseline (early-stopped on the valid split; other settings: "
        "SASRecSettings defaults)",
        SASRecSettings.epochs,
    )
    device: str = _help("device for the model: auto, cpu, cuda", "auto")
    progress: bool = _help("show progress bars", True)
    shard_timeout_s: int = _help(
        "launched on several processes (torchrun): seconds a rank waits for the others before "
        "failing (a rank that raises stops them at once)",
        1800,
    )

    def __post_init__(self) -> None:
        if not self.data:
            raise InputError("evaluation needs the prepared data directory (--data DIR)")
        for name in self.metrics:
            try:
                parse_metric_name(name)
            except ValueError as err:
                raise InputError(f"metrics: {err}") from err
        self.generate = self.generate or self.constrained
        if self.model in BASELINES and self.generate:
            raise InputError(f"--model {self.model} scores candidates but cannot generate")
        for name in (
            "batch_size",
            "chunk_size",
            "n_resamples",
            "max_new_tokens",
            "sasrec_epochs",
            "shard_timeout_s",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be >= 1, got {self.limit}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise InputError(f"max_prompt_length must be >= 1, got {self.max_prompt_length}")
        if self.split not in SPLITS:
            raise InputError(f"split must be one of {list(SPLITS)}, got {self.split!r}")

    def scoring_options(self) -> ScoringOptions:
        """How the candidates are scored (the catalog adds ``chunk_size``, `_catalog_scorer`)."""
        return ScoringOptions(share_prefix=self.share_prefix, average=self.average)


def context_max_level(levels: list[int]) -> int:
    """The level graded as relevance 0 in a context: its own lowest (largest-numbered) level.

    Per context, not per split: prepared data numbers levels densely in each example, so
    level 2 is "unobserved" in one context and "rated 4" in another.
    """
    return max(max(levels), 2)


def load_contexts(config: EvalConfig) -> SplitReader:
    """The split's examples (a seeded subset under ``limit``, in file order), read and
    rendered only when indexed or iterated (`open_split`): ``limit`` 1000 of ten million
    reads 1000, and a rank of a sharded evaluation reads only its shard."""
    examples = open_split(config.data, config.split)
    if not len(examples):
        raise InputError(f"{config.data}: split {config.split!r} has no examples")
    if config.limit is not None and config.limit < len(examples):
        keep = np.random.default_rng(config.seed).choice(len(examples), config.limit, replace=False)
        examples = examples.take(np.sort(keep))
    return examples


def rank_contexts(
    examples: list[PreferenceExample], scores: list[np.ndarray], names: list[str]
) -> list[ContextResult]:
    """Per context: scores, levels, ranks of the positives and the metric values."""
    return [
        ContextResult(
            context_id=ex.context_id,
            scores=[float(v) for v in s],
            levels=list(ex.levels),
            positive_ranks=positive_ranks(s, ex.levels),
            values=compute_metrics(s, ex.levels, names, context_max_level(ex.levels)),
        )
        for ex, s in zip(examples, scores, strict=True)
    ]


def generation_values(
    scorer: ModelScorer, examples: list[PreferenceExample], config: EvalConfig
) -> list[dict]:
    """Per context: the greedy answer, the candidate it names (or None), and its values."""
    tok = scorer.tokenizer
    tokenized = scorer.tokenize(examples)
    cands = [[list(c) for c in t.candidate_ids] for t in tokenized]
    # a lone item token is a whole answer (no EOS follows it: setdpo.items)
    eos = not examples or candidate_eos(examples[0])
    titles = token_catalog(config.data)
    answers = generate_answers(
        scorer.model,
        [list(t.prompt_ids) for t in tokenized],
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        candidates=cands if config.constrained else None,
        max_new_tokens=config.max_new_tokens if eos else 1,
        batch_size=config.batch_size,
        progress=config.progress,
    )
    out = []
    for ex, ids, seqs in zip(examples, answers, cands, strict=True):
        # candidates follow the prompt after a space (setdpo.tokenization); the answer is the title
        text = tok.decode(ids, skip_special_tokens=True).strip()
        if config.constrained:  # the answer is one whole candidate sequence by construction
            matched = seqs.index(ids + [tok.eos_token_id] * eos)
        else:
            matched = match_answer(text, ex.candidates)
        level = None if matched is None else ex.levels[matched]
        # an answer in item tokens is reported with their titles (setdpo.items)
        answer = as_titles(text, titles) if titles else text
        out.append({"answer": answer, "matched": matched, "values": answer_values(level)})
    return out


def catalog_values(
    scorer: Scorer, examples: list[PreferenceExample], config: EvalConfig
) -> list[dict]:
    """Per context: the catalog ranks of its positives and the catalog metric values."""
    items, consumed = load_items(config.data), ConsumedItems.of(config.data)
    titles = [str(item["title"]) for item in items]
    written = item_representation(config.data).write_all(range(len(items)), titles)
    out: list[dict] = [{}] * len(examples)
    order = consumed.read_order(examples)  # results stay in the examples' order
    for i in tqdm(order, desc="catalog ranking", disable=not config.progress):
        ex = examples[i]
        max_level = context_max_level(ex.levels)
        big = catalog_example(ex, items, max_level, consumed.before(ex), written)
        (scores,) = scorer.score([big])
        values = compute_metrics(scores, big.levels, CATALOG_METRICS, max_level)
        out[i] = {
            "n_items": len(big.candidates),
            "positive_ranks": positive_ranks(scores, big.levels),
            "values": {CATALOG_PREFIX + k: v for k, v in values.items()},
        }
    return out


def _spread(values: list[int]) -> dict[str, float]:
    return {"min": int(min(values)), "max": int(max(values)), "mean": float(np.mean(values))}


def describe_prompts(examples: list[PreferenceExample]) -> dict:
    """What the protocol says of some examples' prompts: their templates, the first's mode and
    source (None for no examples); `merge_prompts` joins those of several shards."""
    first = examples[0].meta if examples else {}
    return {
        "template": sorted({str(ex.meta.get("template")) for ex in examples}),
        "mode": first.get("mode"),
        "source": first.get("source"),
    }


def merge_prompts(parts: list[dict]) -> dict:
    """`describe_prompts` of the concatenated examples, from that of each part (in order)."""
    filled = [part for part in parts if part["template"]]
    return {
        "template": sorted({t for part in filled for t in part["template"]}),
        "mode": filled[0]["mode"],
        "source": filled[0]["source"],
    }


def protocol(
    config: EvalConfig, contexts: list[ContextResult], prompts: dict, scorer: Scorer
) -> dict:
    """Everything a reader needs to know to interpret (and reproduce) the numbers, from the
    evaluated contexts and the `describe_prompts` of their examples."""
    prepare_config = Path(config.data) / "config.json"
    return {
        "model": config.model,
        "data": str(config.data),
        "split": config.split,
        "n_contexts": len(contexts),
        "subset": "all contexts"
        if config.limit is None
        else f"seeded random subset (seed {config.seed}) of {config.limit}, in file order",
        # Every candidate of an example is a context's level (padding is never stored).
        "candidates_per_context": _spread([len(c.levels) for c in contexts]),
        "positives_per_context": _spread([c.levels.count(1) for c in contexts]),
        "levels_per_context": _spread([context_max_level(c.levels) for c in contexts]),
        **prompts,
        # A baseline describes its own scores (popularity: its random tie-break).
        "scoring": getattr(scorer, "scoring", None)
        or ("length-averaged" if config.average else "summed") + " candidate log-probability",
        "share_prefix": config.share_prefix,
        "chat_template": config.chat_template,
        "max_prompt_length": config.max_prompt_length,
        "metrics": list(config.metrics),
        **protocol_notes(),
        "hr_at_1": "ranking HR@1: a positive is ranked first among the candidates. Generation: "
        "GenHR@1 = hits/all contexts (S-DPO), GenHR@1/valid = hits/valid answers (LLaRA); "
        "valid = the answer names exactly one candidate",
        "generation": {"constrained": config.constrained, "max_new_tokens": config.max_new_tokens}
        if config.generate
        else None,
        # A trained baseline's settings, training time and cache folder.
        "sasrec": getattr(scorer, "info", None),
        "catalog": {"excluded": catalog_exclusion(config.data), "chunk_size": config.chunk_size}
        if config.catalog
        else None,
        "bootstrap": {"n_resamples": config.n_resamples, "confidence": 0.95, "seed": config.seed},
        "prepare_config": json.loads(prepare_config.read_text())
        if prepare_config.is_file()
        else None,
        "setdpo_version": setdpo.__version__,
    }


def evaluate(config: EvalConfig, scorer: Scorer | None = None) -> Results:
    """Evaluate ``config.model`` (or the given ``scorer``) on ``config.split``.

    Under a launcher (an initialised process group, `setdpo.evaluation.sharding`) each rank
    scores its shard of the contexts and every rank returns the `Results` of all of them,
    equal to one process's. See `setdpo.evaluation.results` for the layout.
    """
    start = time.perf_counter()
    shard = Shard.current()
    if not shard.is_main:  # one progress bar, rank 0's
        config = replace(config, progress=False)
    selected = load_contexts(config)
    if scorer is None:
        scorer = shard.main_first(lambda: _build_scorer(config, shard))
    if config.generate and not isinstance(scorer, ModelScorer):
        raise InputError(f"{scorer.name} cannot generate answers")
    rows = shard.span(len(selected), unit=config.batch_size)
    part = shard.together(lambda: _evaluate_shard(config, selected[rows.start : rows.stop], scorer))
    contexts, timing, prompts = [], {}, []
    for shard_contexts, shard_timing, shard_prompts in shard.gather(part):
        contexts += shard_contexts
        prompts.append(shard_prompts)
        for key, seconds in shard_timing.items():  # a phase ends when its slowest rank does
            timing[key] = max(timing.get(key, 0.0), seconds)
    summary = summarize(
        contexts, _metric_names(config), n_resamples=config.n_resamples, seed=config.seed
    )
    timing["total_s"] = time.perf_counter() - start
    timing["contexts_per_s"] = len(contexts) / timing["ranking_s"] if timing["ranking_s"] else None
    timing["processes"] = shard.world
    return Results(
        protocol(config, contexts, merge_prompts(prompts), scorer), summary, contexts, timing
    )


def _build_scorer(config: EvalConfig, shard: Shard) -> Scorer:
    scorer, _ = build_scorer(
        config.model,
        config.data,
        seed=config.seed,
        device=shard.device(config.device),
        options=config.scoring_options(),
        batch_size=config.batch_size,
        max_prompt_length=config.max_prompt_length,
        chat_template=config.chat_template,
        progress=config.progress,
        sasrec=SASRecSettings(epochs=config.sasrec_epochs, seed=config.seed),
    )
    return scorer


def _evaluate_shard(
    config: EvalConfig, examples: list[PreferenceExample], scorer: Scorer
) -> tuple[list[ContextResult], dict[str, float], dict]:
    """The contexts of one shard, ranked (and answered, and catalog-ranked when asked), the
    seconds each phase took and `describe_prompts` of its examples."""
    timing = {"ranking_s": 0.0}
    if not examples:  # more ranks than batches
        return [], timing, describe_prompts(examples)
    t0 = time.perf_counter()
    contexts = rank_contexts(examples, scorer.score(examples), config.metrics)
    timing["ranking_s"] = time.perf_counter() - t0
    if config.generate:
        t0 = time.perf_counter()
        _merge(contexts, generation_values(scorer, examples, config), "generation")
        timing["generation_s"] = time.perf_counter() - t0
    if config.catalog:
        t0 = time.perf_counter()
        catalog_scorer = _catalog_scorer(scorer, config)
        _merge(contexts, catalog_values(catalog_scorer, examples, config), "catalog")
        timing["catalog_s"] = time.perf_counter() - t0
    return contexts, timing, describe_prompts(examples)


def _metric_names(config: EvalConfig) -> list[str]:
    """The summarised metrics: the ranking ones, then generation's and the catalog's."""
    names = list(config.metrics)
    if config.generate:
        names += list(GENERATION_METRICS)
    if config.catalog:
        names += [CATALOG_PREFIX + m for m in CATALOG_METRICS]
    return names


def _merge(contexts: list[ContextResult], extra: list[dict], key: str) -> None:
    """Move each extra entry's values into its context's values; keep the rest under ``key``
    (``generation`` or ``catalog``)."""
    for ctx, entry in zip(contexts, extra, strict=True):
        ctx.values.update(entry.pop("values"))
        setattr(ctx, key, entry)


def _catalog_scorer(scorer: Scorer, config: EvalConfig) -> Scorer:
    """One context at a time, its catalog scored in chunks of ``config.chunk_size`` items."""
    if isinstance(scorer, ModelScorer):
        options = replace(scorer.options, chunk_size=config.chunk_size)
        return replace(scorer, batch_size=1, options=options, progress=False)
    return scorer
