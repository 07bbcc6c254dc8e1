"""The SASRec baseline: its training data, causality, determinism, cache, and that it works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_items, load_split, prepare
from setdpo.errors import InputError
from setdpo.evaluation.compare import compare
from setdpo.evaluation.evaluate import EvalConfig, evaluate
from setdpo.evaluation.sasrec import (
    ItemIndex,
    SASRec,
    SASRecSettings,
    fit,
    training_sequences,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Trained models go to this test's own cache, never the user's."""
    monkeypatch.setenv("SETDPO_CACHE", str(tmp_path / "cache"))


def test_training_sequences_are_the_training_examples_history_then_positive(ml100k_next_dir):
    index = ItemIndex(load_items(ml100k_next_dir))
    seqs = training_sequences(ml100k_next_dir, index)
    train = load_split(ml100k_next_dir, "train")
    assert seqs.shape == (len(train), 11)  # history <= 10, one positive
    for row, ex in zip(seqs, train, strict=True):
        expected = index.lookup(ex.history + ex.positives, "test")
        assert row[row > 0].tolist() == expected.tolist()
        assert (row[: len(row) - len(expected)] == 0).all()  # right-aligned, left-padded


def test_next_k_sequences_end_with_every_positive(tmp_path):
    config = PrepareConfig(mode="next-k", k=3, out=str(tmp_path / "d"), max_examples=40)
    data = prepare(config)
    index = ItemIndex(load_items(data))
    seqs = training_sequences(data, index)
    for row, ex in zip(seqs, load_split(data, "train"), strict=True):
        assert len(ex.positives) == 3
        assert row[row > 0].tolist() == index.lookup(ex.history + ex.positives, "test").tolist()


def test_attention_is_causal_and_padding_is_ignored():
    torch.manual_seed(0)
    model = SASRec(n_items=30, maxlen=6, settings=SASRecSettings(hidden=16, heads=2)).eval()
    seqs = torch.tensor([[0, 0, 3, 7, 9, 4], [0, 0, 3, 7, 9, 12]])
    with torch.no_grad():
        out = model.features(seqs)
    # Changing the last item changes nothing before it.
    torch.testing.assert_close(out[0, :5], out[1, :5])
    assert not torch.allclose(out[0, 5], out[1, 5])


def test_training_is_deterministic_by_seed():
    # Runs of consecutive items: a pattern to learn.
    starts = np.random.default_rng(0).integers(0, 40, size=(64, 1))
    seqs = (starts + np.arange(6)) % 40 + 1
    seqs[::3, :2] = 0  # some shorter, left-padded sequences
    settings = SASRecSettings(hidden=8, epochs=10, batch_size=16, lr=1e-2)
    (a, hist_a), (b, hist_b) = (fit(seqs, 40, settings, progress=False) for _ in range(2))
    c, hist_c = fit(
        seqs, 40, SASRecSettings(hidden=8, epochs=10, batch_size=16, lr=1e-2, seed=1), False
    )
    assert hist_a == hist_b and hist_a["loss"] != hist_c["loss"]
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0)
    assert hist_a["loss"][-1] < hist_a["loss"][0]
    with pytest.raises(InputError, match="at least two items"):
        fit(np.array([[0, 5], [0, 7]]), 40, settings, progress=False)


def test_early_stopping_keeps_the_best_epoch():
    seqs = (np.arange(32)[:, None] + np.arange(5)) % 20 + 1
    scripted, states = iter([0.1, 0.5, 0.3, 0.2, 0.9]), []

    def validate(model):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    settings = SASRecSettings(hidden=8, epochs=5, patience=2, batch_size=8)
    model, hist = fit(seqs, 20, settings, progress=False, validate=validate)
    assert hist["valid"] == [0.1, 0.5, 0.3, 0.2] and hist["best_epoch"] == 2  # 0.9 never seen
    assert len(hist["loss"]) == 4
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, states[1][key], rtol=0, atol=0)


def test_cli_trains_once_then_reuses_the_cached_model(ml100k_next_dir, tmp_path, capsys):
    outs = [tmp_path / "first.json", tmp_path / "second.json"]
    for out in outs:
        assert main(["evaluate", "--model", "sasrec", "--data", str(ml100k_next_dir),
                     "--sasrec-epochs", "2", "--out", str(out), "--no-progress",
                     "--resamples", "50"]) == 0  # fmt: skip
    first, second = (json.loads(p.read_text()) for p in outs)
    info = first["protocol"]["sasrec"]
    assert info["cached"] is False and second["protocol"]["sasrec"]["cached"] is True
    assert info["settings"]["epochs"] == 2 and info["settings"]["maxlen"] == 10
    assert len(info["epoch_valid_mrr"]) == 2 and info["best_epoch"] in (1, 2)
    assert info["valid_contexts"] == 50  # the fixture's whole valid split
    assert info["training_sequences"] == 200 and (tmp_path / "cache" / "sasrec").is_dir()
    assert "sampled negative" in first["protocol"]["scoring"]
    assert [c["scores"] for c in first["contexts"]] == [c["scores"] for c in second["contexts"]]


@pytest.mark.usefixtures("one_torch_thread")
def test_sasrec_beats_popularity_on_ml100k(tmp_path):
    """Every sequence comes from the training split, so nothing else is needed to show
    that only training data is used: the rows above are exactly the training examples.

    The whole ML-100K `next` training split (77,737 sequences), one epoch (about 15 s on
    one thread), 1,000 test contexts: SASRec ranks the positive first far more often."""
    data = prepare(PrepareConfig(source="ml-100k", mode="next", seed=0, out=str(tmp_path / "d")))
    files = []
    for model in ("popularity", "sasrec"):
        config = EvalConfig(
            model=model, data=str(data), limit=1000, sasrec_epochs=1, progress=False
        )
        files.append(tmp_path / f"{model}.json")
        evaluate(config).write(files[-1])
    table = compare(files, n_resamples=200)
    for metric in ("HR@1", "NDCG@5", "MRR"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {metric} "))
        assert "| +0." in row and row.rstrip(" |").endswith("*"), row
