"""Item representations (`setdpo.items`): titles, one token per item, or both, through data,
tokenizer, model, scoring, training, evaluation, export and serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from setdpo import cli
from setdpo.data import PrepareConfig, load_items, load_split, prepare
from setdpo.data.store import item_representation, read_table, token_catalog
from setdpo.errors import InputError
from setdpo.evaluation.catalog import catalog_example
from setdpo.evaluation.sasrec import SASRecSettings, load_or_train
from setdpo.items import (
    ItemRepresentation,
    as_titles,
    extend_model,
    item_token,
    item_tokens,
    set_item_rows,
    write_titles,
)
from setdpo.model import build_lab_model, build_tiny, load
from setdpo.model.lab import lab_texts
from setdpo.scoring import ScoringOptions, score_all
from setdpo.tokenization import CandidateCollator, tokenize_example
from setdpo.training import SFTConfig
from setdpo.training.data import SFTCollator
from setdpo.training.sft import build_sft_trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = ["--disable-tqdm", "true", "--seed", "0", "--max-eval-examples", "4"]


def _prepare(out: Path, items_as: str) -> Path:
    return prepare(
        PrepareConfig(
            source="ml-100k",
            mode="next-k",
            k=3,
            template="open",
            candidates=20,
            seed=0,
            items_as=items_as,
            out=str(out),
            max_examples_per_split={"train": 120, "valid": 16, "test": 16},
        )
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ML-100K next-k (k=3) with the same seed, written in each representation."""
    root = tmp_path_factory.mktemp("items")
    return {kind: _prepare(root / kind, kind) for kind in ("titles", "tokens", "hybrid")}


def test_each_representation_writes_an_item_its_own_way() -> None:
    titles = ["Heat (1995)", "Babe (1995)"]
    assert ItemRepresentation("titles").write_all([1, 0], titles) == ["Babe (1995)", "Heat (1995)"]
    assert ItemRepresentation("tokens").write_all([1, 0], titles) == ["<item_1>", "<item_0>"]
    assert ItemRepresentation("hybrid").write(1, "Babe (1995)") == "Babe (1995) <item_1>"
    assert not ItemRepresentation("tokens").candidate_eos
    assert ItemRepresentation("hybrid").candidate_eos and ItemRepresentation().candidate_eos
    with pytest.raises(ValueError, match="not one of"):
        ItemRepresentation("ids")


def test_text_with_item_tokens_reads_back_as_titles() -> None:
    titles = ["Heat (1995)", "Babe (1995)"]
    assert as_titles("<item_1>", titles) == "Babe (1995)"
    assert as_titles("watched <item_0>, <item_1>.", titles) == "watched Heat (1995), Babe (1995)."
    assert as_titles("Babe (1995) <item_1>", titles) == "Babe (1995)"  # hybrid: the title stays
    assert as_titles("no tokens here", titles) == "no tokens here"


def test_titles_are_written_only_when_the_catalog_has_them() -> None:
    catalog = ["Heat (1995)", "Babe (1995)"]
    tokens = ItemRepresentation("tokens")
    assert write_titles(tokens, ["Babe (1995)"], catalog) == ["<item_1>"]
    assert write_titles(ItemRepresentation(), ["Anything"], catalog) == ["Anything"]
    with pytest.raises(ValueError, match=r"\[1\]: 'Casino \(1995\)' is not in the catalog"):
        write_titles(tokens, ["Heat (1995)", "Casino (1995)"], catalog)


def test_representations_share_the_split_and_differ_only_in_the_text(
    data: dict[str, Path],
) -> None:
    tables = {kind: read_table(folder, "train") for kind, folder in data.items()}
    assert tables["tokens"].equals(tables["titles"]) and tables["hybrid"].equals(tables["titles"])
    titles = [item["title"] for item in load_items(data["titles"])]
    plain, tokens, hybrid = (
        load_split(data[k], "train")[0] for k in ("titles", "tokens", "hybrid")
    )
    rows = read_table(data["titles"], "train").slice(0, 1).to_pylist()[0]
    assert tokens.candidates == [item_token(r) for r in rows["candidate_items"]]
    assert tokens.history == [item_token(r) for r in rows["history_items"]]
    assert hybrid.candidates == [f"{titles[r]} {item_token(r)}" for r in rows["candidate_items"]]
    assert plain.candidates == [titles[r] for r in rows["candidate_items"]]
    assert tokens.levels == plain.levels
    assert ", ".join(tokens.history) in tokens.prompt and "Heat" not in tokens.prompt
    assert as_titles(tokens.prompt, titles) == plain.prompt
    assert tokens.meta["items_as"] == "tokens" and "items_as" not in plain.meta
    assert item_representation(data["hybrid"]).kind == "hybrid"
    assert token_catalog(data["titles"]) is None and token_catalog(data["tokens"]) == titles


def test_an_item_token_is_one_token_and_starts_as_its_titles_mean(data: dict[str, Path]) -> None:
    example = load_split(data["tokens"], "train")[0]
    titles = token_catalog(data["tokens"])
    model, tokenizer = build_tiny([example.prompt.replace("<item_", "")] + titles)
    old = model.get_input_embeddings().weight.detach().clone()
    ids = extend_model(model, tokenizer, titles)
    assert len(ids) == len(titles) and min(ids) == old.shape[0]
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    pieces = tokenizer(" " + titles[7], add_special_tokens=False)["input_ids"]
    for table in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        expected = table[pieces].mean(0) if table.shape[1] else None
        torch.testing.assert_close(table[ids[7]], expected)
    tok = tokenize_example(example, tokenizer)
    rows = read_table(data["tokens"], "train").slice(0, 1).to_pylist()[0]
    assert tok.candidate_ids == [[ids[r]] for r in rows["candidate_items"]]  # no EOS
    assert [t for t in tok.prompt_ids if t >= old.shape[0]] == [
        ids[r] for r in rows["history_items"]
    ]
    assert extend_model(model, tokenizer, titles) == ids  # a second call adds nothing
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_the_lab_holds_item_tokens_from_the_start_and_merges_their_separator(
    data: dict[str, Path],
) -> None:
    """The lab's item rows start at random like every row (no title means), its BPE is
    fitted to the text between item tokens (no titles), and ", " between two items is one
    token."""
    model, tokenizer = build_lab_model(data["tokens"])
    titles = token_catalog(data["tokens"])
    ids = item_tokens(tokenizer)
    assert len(ids) == len(titles) and model.get_input_embeddings().weight.shape[0] == len(
        tokenizer
    )
    assert extend_model(model, tokenizer, titles) == ids  # nothing left to add
    rows = model.get_input_embeddings().weight[ids].detach()
    assert 0.015 < float(rows.std()) < 0.025  # the model's own init (std 0.02), not means
    assert not any(title in text for text in lab_texts(data["tokens"]) for title in titles[:50])
    example = load_split(data["tokens"], "train")[0]
    pieces = tokenizer.convert_ids_to_tokens(tokenize_example(example, tokenizer).prompt_ids)
    history = [i for i, piece in enumerate(pieces) if piece in example.history]
    assert len(history) == len(example.history)
    assert all(np.diff(history) == 2)  # item, separator, item
    _, titled = build_lab_model(data["titles"])
    assert item_tokens(titled) == [] and len(lab_texts(data["titles"])) > len(titles)


def test_one_token_candidates_are_read_from_the_prompt_pass(data: dict[str, Path]) -> None:
    """Shared scoring of one-token candidates equals the naive repeated computation and the
    log-softmax at each prompt's last position."""
    examples = load_split(data["tokens"], "test")[:3]
    model, tokenizer = build_tiny([ex.prompt for ex in examples])
    extend_model(model, tokenizer, token_catalog(data["tokens"]))
    tokenized = [tokenize_example(ex, tokenizer) for ex in examples]
    shared = score_all(model, tokenized, ScoringOptions(), tokenizer.pad_token_id, 2)
    naive = score_all(model, tokenized, ScoringOptions(False), tokenizer.pad_token_id, 2)
    for tok, a, b in zip(tokenized, shared, naive, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        with torch.no_grad():
            last = model(torch.tensor([tok.prompt_ids])).logits[0, -1].log_softmax(-1)
        expected = last[[c[0] for c in tok.candidate_ids]]
        torch.testing.assert_close(a, expected, atol=1e-4, rtol=0)
    batch = CandidateCollator(tokenizer.pad_token_id)(tokenized)
    assert batch["candidate_ids"].shape[-1] == 1


def test_sequence_targets_label_the_prompt_too() -> None:
    rows = [{"prompt_ids": [1, 5, 6], "answer_ids": [8]}, {"prompt_ids": [1, 7], "answer_ids": [9]}]
    answer = SFTCollator(0)(rows)["labels"].tolist()
    sequence = SFTCollator(0, prompt_loss=True)(rows)["labels"].tolist()
    assert answer == [[-100, -100, -100, 8], [-100, -100, 9, -100]]
    assert sequence == [[1, 5, 6, 8], [1, 7, 9, -100]]


def test_collaborative_rows_keep_the_vectors_geometry_at_the_models_scale() -> None:
    """`set_item_rows`: the rows' inner products are the vectors' up to one scale (a random
    projection to a much wider table keeps them to a few percent), at the table's own norm."""
    model, _ = build_tiny(["a b c"])
    ids = list(range(10, 40))
    vectors = torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    table = model.get_input_embeddings().weight
    before = table[ids].norm(dim=1).mean().item()
    set_item_rows(model, ids, vectors, seed=0)
    rows = table[ids].detach()
    assert rows.norm(dim=1).mean().item() == pytest.approx(before, rel=1e-5)
    cosine = (
        torch.nn.functional.normalize(rows, dim=1) @ torch.nn.functional.normalize(rows, dim=1).T
    )
    wanted = (
        torch.nn.functional.normalize(vectors, dim=1)
        @ torch.nn.functional.normalize(vectors, dim=1).T
    )
    assert torch.corrcoef(torch.stack([cosine.flatten(), wanted.flatten()]))[0, 1] > 0.9
    with pytest.raises(ValueError, match="29 vectors for 30"):
        set_item_rows(model, ids, vectors[:29], seed=0)


def test_sft_starts_item_tokens_from_the_datas_sasrec(data: dict[str, Path], tmp_path, monkeypatch):
    """`item_init: sasrec`: the lab's item rows are the SASRec baseline's table (the one
    `evaluate --baselines sasrec` trains and caches for the same data and seed), projected;
    titles-only data is refused."""
    monkeypatch.setenv("SETDPO_CACHE", str(tmp_path / "cache"))
    settings = {"model": "lab", "peft": "none", "max_steps": 1, "seed": 3, "disable_tqdm": True}
    trainer = build_sft_trainer(
        SFTConfig(
            data=str(data["tokens"]), item_init="sasrec", output_dir=str(tmp_path / "a"), **settings
        )
    )
    model, tokenizer = build_lab_model(data["tokens"])
    sasrec = load_or_train(data["tokens"], SASRecSettings(seed=3), progress=False)
    assert sasrec.info["cached"]  # trained once, by the SFT
    ids = item_tokens(tokenizer)
    set_item_rows(model, ids, sasrec.model.item_emb.weight[1:], seed=3)
    for name in ("get_input_embeddings", "get_output_embeddings"):
        torch.testing.assert_close(
            getattr(trainer.model, name)().weight[ids], getattr(model, name)().weight[ids]
        )
    with pytest.raises(InputError, match="writes items as titles"):
        build_sft_trainer(
            SFTConfig(
                data=str(data["titles"]),
                item_init="sasrec",
                output_dir=str(tmp_path / "b"),
                **settings,
            )
        )


def test_titles_and_tokens_of_one_split_share_their_sasrec(
    data: dict[str, Path], tmp_path, monkeypatch
):
    """SASRec's cache key reads the valid sample as item rows, not text: the same split
    written as titles or as tokens trains one SASRec (the lab's item_init and the baselines
    of both tiers of the demo reuse it), and it scores both the same."""
    monkeypatch.setenv("SETDPO_CACHE", str(tmp_path / "cache"))
    settings = SASRecSettings(seed=5, epochs=2)
    titles = load_or_train(data["titles"], settings, progress=False)
    tokens = load_or_train(data["tokens"], settings, progress=False)
    assert not titles.info["cached"] and tokens.info["cached"]
    assert titles.info["cache"] == tokens.info["cache"]
    examples = {kind: load_split(data[kind], "test")[:4] for kind in ("titles", "tokens")}
    for a, b in zip(
        titles.score(examples["titles"]), tokens.score(examples["tokens"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def token_runs(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """On the tokens directory: a tiny LoRA SFT run with sequence targets (item tokens train as
    peft trainable tokens) and a Mult-DPO run from it; a lab SFT run (full fine-tuning)."""
    root, folder = tmp_path_factory.mktemp("token-runs"), str(data["tokens"])
    steps = ["--max-steps", "3", "--learning-rate", "0.05"]
    out = {name: root / name for name in ("sft", "mult", "lab")}
    sft = ["train", "sft", "--data", folder, "--targets", "sequence", *steps, *QUIET]
    assert cli.main([*sft, "--model", "tiny", "--out", str(out["sft"])]) == 0
    assert cli.main([*sft, "--model", "lab", "--peft", "none", "--out", str(out["lab"])]) == 0
    pref = ["train", "pref", "--data", folder, "--init", str(out["sft"]), "--loss", "mult"]
    assert cli.main([*pref, "--out", str(out["mult"]), *steps, *QUIET]) == 0
    return out


@pytest.mark.slow
def test_item_tokens_train_under_lora_and_the_reference_starts_equal(
    token_runs: dict[str, Path], data: dict[str, Path]
) -> None:
    from transformers import AutoModelForCausalLM

    titles = token_catalog(data["tokens"])
    model, tokenizer = load(token_runs["sft"], device="cpu", merge_all=True)
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0]
    ids = tokenizer.convert_tokens_to_ids([item_token(r) for r in range(len(titles))])
    assert ids == list(range(len(tokenizer) - len(titles), len(tokenizer)))
    base = AutoModelForCausalLM.from_pretrained(token_runs["sft"] / "base")  # before training
    moved = model.get_input_embeddings().weight[ids] - base.get_input_embeddings().weight[ids]
    assert moved.abs().sum(-1).gt(0).sum() > 0  # item rows trained beside the LoRA adapter
    log = json.loads((token_runs["mult"] / "trainer_state.json").read_text())["log_history"]
    first = next(row for row in log if "rewards/positive" in row or "reward_positive" in row)
    reward = first.get("rewards/positive", first.get("reward_positive"))
    assert reward == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mult", "lab"])
def test_token_runs_evaluate_generate_rank_the_catalog_and_export(
    token_runs: dict[str, Path], data: dict[str, Path], tmp_path: Path, name: str
) -> None:
    from setdpo.evaluation.evaluate import EvalConfig, evaluate

    config = EvalConfig(model=str(token_runs[name]), data=str(data["tokens"]), limit=4,
                        n_resamples=10, progress=False, constrained=True, catalog=True)  # fmt: skip
    results = evaluate(config)
    assert results.metrics["ValidRatio"].value == 1.0  # constrained: one whole item token
    titles = token_catalog(data["tokens"])
    assert all(c.generation["answer"] in titles for c in results.contexts)  # shown as titles
    assert results.contexts[0].catalog["n_items"] > 1000
    assert 0 <= results.contexts[0].values["catalog/NDCG@5"] <= 1
    # the exported folder scores the candidates with transformers alone, within 1e-4
    out = tmp_path / "export"
    assert cli.main(["export", str(token_runs[name]), "--out", str(out)]) == 0
    assert json.loads((out / "setdpo.json").read_text())["items_as"] == "tokens"
    examples = {ex.context_id: ex for ex in load_split(data["tokens"], "test")}
    contexts = [{"prompt": examples[c.context_id].prompt,
                 "candidates": examples[c.context_id].candidates} for c in results.contexts]  # fmt: skip
    path = tmp_path / "contexts.json"
    path.write_text(json.dumps(contexts))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PLAIN_TOKEN_SCORER, str(out), str(path)],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plain = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(plain, [c.scores for c in results.contexts], atol=1e-4, rtol=0)


# transformers alone: each candidate is one token read at the prompt's last position
PLAIN_TOKEN_SCORER = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, contexts_file = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
out = []
for ctx in json.load(open(contexts_file)):
    prompt = tok(ctx["prompt"]).input_ids
    with torch.no_grad():
        last = model(torch.tensor([prompt])).logits[0, -1].float().log_softmax(-1)
    scores = []
    for item in ctx["candidates"]:
        ids = tok(ctx["prompt"] + " " + item).input_ids
        assert ids[: len(prompt)] == prompt and len(ids) == len(prompt) + 1
        scores.append(last[ids[-1]].item())
    out.append(scores)
assert not [m for m in sys.modules if m.split(".")[0] == "setdpo"], "setdpo was imported"
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_token_run_serves_titles_and_ids(token_runs: dict[str, Path]) -> None:
    from setdpo.serving.service import RankingService, RequestError, ServeConfig, ranking

    service = RankingService(ServeConfig(model=str(token_runs["lab"])))
    catalog = service.catalog
    history = [catalog[0]["title"], catalog[1]["title"]]
    candidates = [catalog[5]["title"], catalog[9]["title"], catalog[20]["title"]]
    job = service.rank_job(history, candidates)
    assert [len(ids) for ids in job.tokenized.candidate_ids] == [1, 1, 1]
    (scores,) = service.score([job])
    ranked = ranking(job, scores, None)
    assert {row["title"] for row in ranked} == set(candidates)
    assert {row["item_id"] for row in ranked} == {str(catalog[i]["item_id"]) for i in (5, 9, 20)}
    with pytest.raises(RequestError) as refused:
        service.rank_job(history, ["Not A Movie (2099)"])
    assert refused.value.field == "candidates[0]"
    top = ranking(*_recommend(service, history), 5)
    assert len(top) == 5 and not {row["title"] for row in top} & set(history)


def _recommend(service, history):
    job = service.recommend_job(history)
    (scores,) = service.score([job])
    return job, scores


@pytest.mark.slow
def test_llara_json_imports_trains_and_evaluates_with_item_tokens(tmp_path: Path) -> None:
    from setdpo.evaluation.evaluate import EvalConfig, evaluate

    titles = [f"Song {i}" for i in range(12)]
    records = [
        {"historyList": "::".join(titles[i : i + 3]), "itemList": titles[i + 3 : i + 7],
         "trueSelection": titles[i + 4]}
        for i in range(6)
    ]  # fmt: skip
    train = tmp_path / "lastfm-train.json"
    train.write_text(json.dumps(records))
    out = tmp_path / "lastfm"
    args = ["data", "import", "--format", "llara", "--train", str(train), "--test", str(train)]
    assert cli.main([*args, "--items-as", "tokens", "--out", str(out)]) == 0
    example = load_split(out, "train")[0]
    assert example.candidates[0].startswith("<item_") and example.meta["items_as"] == "tokens"
    run = tmp_path / "run"
    sft = ["train", "sft", "--data", str(out), "--model", "tiny", "--out", str(run)]
    assert cli.main([*sft, "--max-steps", "2", *QUIET]) == 0
    results = evaluate(EvalConfig(model=str(run), data=str(out), n_resamples=10, progress=False))
    assert len(results.contexts) == 6 and 0 <= results.metrics["HR@1"].value <= 1
    assert (
        cli.main([*args, "--format", "trl", "--items-as", "tokens", "--out", str(tmp_path / "x")])
        == 2
    )


def test_catalog_ranking_writes_the_catalog_as_the_data_does(data: dict[str, Path]) -> None:
    example = load_split(data["tokens"], "test")[0]
    items = load_items(data["tokens"])
    written = ItemRepresentation("tokens").write_all(range(len(items)), [i["title"] for i in items])
    big = catalog_example(example, items, 2, (), written)
    assert set(example.positives) <= set(big.candidates)
    assert all(c.startswith("<item_") for c in big.candidates)
    assert not set(example.history) & set(big.candidates)
