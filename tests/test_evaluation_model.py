"""Evaluation with a real (tiny) model: ranking, generation, catalog ranking, recommend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_split, prepare
from setdpo.data.io import write_examples
from setdpo.evaluation.catalog import catalog_example
from setdpo.evaluation.evaluate import EvalConfig, evaluate
from setdpo.evaluation.metrics import CATALOG_METRICS, compute_metrics, rank_order
from setdpo.evaluation.recommend import RecommendConfig, rank_titles
from setdpo.evaluation.scorers import ModelScorer
from setdpo.model import build_tiny
from setdpo.scoring import ScoringOptions, score_texts


@pytest.fixture(scope="module")
def ml100k_open_dir(tmp_path_factory):
    """ML-100K `next` mode with the `open` template (no candidate list in the prompt)."""
    out = tmp_path_factory.mktemp("data") / "ml100k-open"
    config = PrepareConfig(
        source="ml-100k",
        mode="next",
        template="open",
        candidates=20,
        seed=0,
        out=str(out),
        max_examples_per_split={"train": 20, "valid": 5, "test": 6},
    )
    return prepare(config)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()  # the same model `--model tiny` loads


def test_tiny_model_evaluation_shared_equals_repeated(ml100k_next_dir, tiny):
    model, tokenizer = tiny
    results = {}
    for share in (True, False):
        config = EvalConfig(model="tiny", data=str(ml100k_next_dir), limit=6, progress=False)
        scorer = ModelScorer(
            model, tokenizer, options=ScoringOptions(share_prefix=share), progress=False
        )
        results[share] = evaluate(config, scorer=scorer).to_dict()
    shared = np.array([c["scores"] for c in results[True]["contexts"]])
    repeated = np.array([c["scores"] for c in results[False]["contexts"]])
    np.testing.assert_allclose(shared, repeated, atol=1e-4)
    assert results[True]["metrics"]["HR@1"] == results[False]["metrics"]["HR@1"]
    # The stored scores are the summed log-probs of title + EOS after the prompt.
    ex = load_split(ml100k_next_dir, "test")
    first = next(e for e in ex if e.context_id == results[True]["contexts"][0]["context_id"])
    (direct,) = score_texts(model, tokenizer, [first.prompt], [first.candidates])
    np.testing.assert_allclose(shared[0], direct, atol=1e-4)
    assert np.all(shared < 0)


def test_cli_evaluate_tiny_with_constrained_generation(ml100k_next_dir, tmp_path):
    out = tmp_path / "tiny.json"
    code = main(["evaluate", "--model", "tiny", "--data", str(ml100k_next_dir), "--limit", "4",
                 "--constrained", "--out", str(out), "--no-progress", "--resamples", "100"])  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert data["metrics"]["ValidRatio"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert data["protocol"]["generation"]["constrained"] is True
    assert len(data["contexts"]) == 4
    for ctx in data["contexts"]:
        matched = ctx["generation"]["matched"]
        assert ctx["values"]["GenHR@1"] == float(ctx["levels"][matched] == 1)
        assert ctx["values"]["GenHR@1"] == ctx["values"]["GenHR@1/valid"]


def test_catalog_ranking_equals_candidate_ranking_on_the_candidate_set(ml100k_open_dir, tiny):
    model, tokenizer = tiny
    whole = ModelScorer(model, tokenizer, progress=False)
    chunked = ModelScorer(
        model, tokenizer, options=ScoringOptions(chunk_size=7), batch_size=1, progress=False
    )
    for ex in load_split(ml100k_open_dir, "test")[:3]:
        # The catalog is the candidate set (reversed, plus a history item that must go).
        items = [
            {"item_id": i, "title": t}
            for i, t in zip(ex.meta["candidate_ids"], ex.candidates, strict=True)
        ][::-1] + [{"item_id": "h", "title": ex.history[0]}]
        big = catalog_example(ex, items, max_level=2)
        assert sorted(big.candidates) == sorted(ex.candidates)
        (cand_scores,) = whole.score([ex])
        (cat_scores,) = chunked.score([big])
        by_title = dict(zip(big.candidates, cat_scores, strict=True))
        np.testing.assert_allclose([by_title[t] for t in ex.candidates], cand_scores, atol=1e-4)
        cand_order = [ex.candidates[i] for i in rank_order(cand_scores, ex.levels)]
        cat_order = [big.candidates[i] for i in rank_order(cat_scores, big.levels)]
        assert cand_order == cat_order
        assert compute_metrics(cand_scores, ex.levels, CATALOG_METRICS, 2) == pytest.approx(
            compute_metrics(cat_scores, big.levels, CATALOG_METRICS, 2)
        )


@pytest.fixture(scope="module")
def small_catalog_dir(ml100k_open_dir, tmp_path_factory):
    """Two open-template test contexts and a 90-item catalog: their candidates, their
    histories (to be excluded) and the first 50 items (to keep catalog tests fast)."""
    folder = tmp_path_factory.mktemp("data") / "small-catalog"
    examples = load_split(ml100k_open_dir, "test")[:2]
    wanted = {t for ex in examples for t in ex.candidates + ex.history}
    items = json.loads((ml100k_open_dir / "items.json").read_text())
    small = [it for i, it in enumerate(items) if i < 50 or it["title"] in wanted]
    return write_examples(folder, {"test": examples}, small, {}, {})


def test_evaluate_with_catalog_ranks_the_whole_catalog(small_catalog_dir):
    config = EvalConfig(model="tiny", data=str(small_catalog_dir), catalog=True,
                        chunk_size=64, n_resamples=100, progress=False)  # fmt: skip
    results = evaluate(config).to_dict()
    titles = {it["title"] for it in json.loads((small_catalog_dir / "items.json").read_text())}
    for ctx, ex in zip(results["contexts"], load_split(small_catalog_dir, "test"), strict=True):
        # Every catalog item but the user's history is ranked.
        assert ctx["catalog"]["n_items"] == len(titles - set(ex.history))
        assert 1 <= ctx["catalog"]["positive_ranks"][0] <= ctx["catalog"]["n_items"]
        rank = ctx["catalog"]["positive_ranks"][0]
        assert ctx["values"]["catalog/Recall@20"] == float(rank <= 20)
    assert set(CATALOG_METRICS) <= {m.removeprefix("catalog/") for m in results["metrics"]}
    # This directory has no timelines.parquet: only the history is excluded, and it says so.
    assert results["protocol"]["catalog"]["excluded"].startswith("only the prompt's history")


def test_recommend_ranks_candidates_by_log_prob(tiny):
    model, tokenizer = tiny
    config = RecommendConfig(
        model="tiny",
        history=["Toy Story (1995)", "Heat (1995)"],
        candidates=["Alien (1979)", "Babe (1995)", "Casino (1995)"],
        top=2,
    )
    prompt = "The user watched Toy Story (1995), Heat (1995)."
    ranked = rank_titles(model, tokenizer, prompt, config.candidates, config)
    (scores,) = score_texts(model, tokenizer, [prompt], [config.candidates])
    best_two = sorted(zip(scores, config.candidates, strict=True), reverse=True)[:2]
    assert [r["title"] for r in ranked] == [t for _, t in best_two]
    assert [r["rank"] for r in ranked] == [1, 2]
    assert ranked[0]["score"] == pytest.approx(best_two[0][0])


def test_cli_recommend_json_from_catalog(small_catalog_dir, capsys):
    history = load_split(small_catalog_dir, "test")[0].history
    code = main(["recommend", "--model", "tiny", "--history", *history,
                 "--catalog", str(small_catalog_dir), "--top", "5", "--json"])  # fmt: skip
    assert code == 0
    ranked = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5]
    assert not set(r["title"] for r in ranked) & set(history)
    assert all(a["score"] >= b["score"] for a, b in zip(ranked, ranked[1:], strict=False))
