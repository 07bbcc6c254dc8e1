"""SASRec (Kang and McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) as a baseline.

Every LLM-recommender paper reports it beside its model, so setdpo trains one on the
prepared directory's **training split** and scores the same candidate sets.

- **Sequences.** Each training example gives one item sequence: its history followed by its
  positives (in candidate order; one positive in `next` mode), titles mapped to item
  indices through ``items.json``. These are the windows the language model is trained on
  (history <= ``history_window``), so SASRec learns from exactly the interactions it
  learns from: nothing of the valid or test targets. Sequences are right-aligned and
  left-padded to ``maxlen`` (default: the longest training sequence).
- **Model** (the paper's Section III): item embeddings (shared with the output layer),
  learned positional embeddings, ``blocks`` pre-layer-norm blocks of causal self-attention
  and a point-wise two-layer ReLU feed-forward network, each with a residual connection
  and dropout, then a final layer norm. As in the authors' code the query is the
  normalised input, the embeddings are scaled by sqrt(d), and padded positions are zeroed.
- **Loss** (the paper's Eq. 7): at every position, binary cross-entropy of the next item
  against one sampled negative (uniform over the catalog, not in the sequence).
  Adam (lr 1e-3, betas 0.9/0.98), batch 128, hidden size 50, 2 blocks, 1 head,
  dropout 0.2: the paper's ML-1M settings except ``maxlen``. At most ``epochs`` epochs,
  early-stopped on the MRR of a seeded sample of the valid split (patience 3 epochs; the
  best epoch's weights are kept).
- **Scoring.** A context's score for a candidate is the dot product of the final hidden
  state after the context's own history (the history the prompt shows) with the
  candidate's item embedding.

Training is seeded (initialisation, dropout, shuffling and negatives) and deterministic
for a given seed and thread count. The trained model is cached in
``$SETDPO_CACHE/sasrec/<fingerprint>/`` (else ``~/.cache/setdpo``), the fingerprint
hashing the training sequences, the valid sample, the catalog size and the settings, so a
second evaluation
of the same data reuses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from setdpo.atomic import atomic_write_json, atomic_write_with
from setdpo.data import load_items
from setdpo.data.download import cache_dir
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import open_split, title_columns
from setdpo.errors import InputError
from setdpo.evaluation.metrics import positive_ranks
from setdpo.items import item_row


@dataclass(frozen=True)
class SASRecSettings:
    """Hyperparameters (defaults: the paper's ML-1M settings; ``maxlen`` from the data)."""

    hidden: int = 50
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    maxlen: int | None = None  # None: the longest training sequence
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 50  # at most; early stopping on the valid split usually ends sooner
    patience: int = 3  # epochs without a better valid MRR before stopping
    valid_contexts: int = 1000  # seeded sample of the valid split used for early stopping
    seed: int = 0

    def __post_init__(self) -> None:
        for name in "hidden blocks heads batch_size epochs patience valid_contexts".split():
            if getattr(self, name) < 1:
                raise InputError(f"SASRec {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise InputError(f"SASRec hidden {self.hidden} is not divisible by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"SASRec dropout must be in [0, 1), got {self.dropout}")
        if self.maxlen is not None and self.maxlen < 2:
            raise InputError(f"SASRec maxlen must be >= 2, got {self.maxlen}")


class ItemIndex:
    """Titles of ``items.json`` -> indices 1..n (0 is padding)."""

    def __init__(self, items: Sequence[dict]):
        self.titles = pd.Index([str(it["title"]) for it in items])
        if not self.titles.is_unique:
            dupes = self.titles[self.titles.duplicated()].unique()[:3].tolist()
            raise InputError(f"items.json: titles must be unique for SASRec; repeated: {dupes}")

    def __len__(self) -> int:
        return len(self.titles)

    def lookup(self, titles: Sequence[str], where: str) -> np.ndarray:
        """Indices (1-based) of ``titles`` (or of items written with their token,
        `setdpo.items`); an unknown title is an error naming ``where``."""
        found = self.titles.get_indexer(list(titles))
        for i in np.flatnonzero(found < 0):
            row = item_row(titles[i])
            found[i] = row if row is not None and row < len(self.titles) else -1
        if (found < 0).any():
            missing = list(titles)[int(np.argmax(found < 0))]
            raise InputError(f"{where}: title {missing!r} is not in items.json")
        return found.astype(np.int64) + 1


def training_sequences(data_dir: str | Path, index: ItemIndex) -> np.ndarray:
    """The training split's sequences (history + positives), right-aligned: int64 [N, L].

    Read column-wise from the directory's training split (`store.title_columns`), so that
    millions of examples load in seconds.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    folder = Path(data_dir) / "hf" / "train"
    table = title_columns(data_dir, "train")
    if table.num_rows == 0:
        raise InputError(f"{data_dir}: the training split is empty; SASRec needs training data")

    def flat(name: str) -> tuple[np.ndarray, pa.Array]:
        column = table.column(name).combine_chunks()
        return np.diff(column.offsets.to_numpy()), column.flatten()

    hist_len, hist_titles = flat("history")
    _, cand_titles = flat("candidates")
    cand_len, levels = flat("levels")
    positive = levels.to_numpy() == 1
    hist_items = index.lookup(hist_titles.to_pylist(), f"{folder} (history)")
    pos_items = index.lookup(pc.filter(cand_titles, pa.array(positive)).to_pylist(), f"{folder}")
    n_pos = np.add.reduceat(positive.astype(np.int64), np.r_[0, np.cumsum(cand_len)[:-1]])
    lengths = hist_len + n_pos
    width = int(lengths.max())
    # Row r's items go to columns width - lengths[r] ... width - 1: history, then positives.
    rows = np.r_[
        np.repeat(np.arange(len(lengths)), hist_len), np.repeat(np.arange(len(lengths)), n_pos)
    ]
    within = np.r_[_ranks(hist_len), np.repeat(hist_len, n_pos) + _ranks(n_pos)]
    out = np.zeros((len(lengths), width), dtype=np.int64)
    out[rows, width - lengths[rows] + within] = np.r_[hist_items, pos_items]
    return out


def crop(sequences: np.ndarray, settings: SASRecSettings) -> np.ndarray:
    """The last ``maxlen + 1`` columns (inputs and their next-item targets), when set."""
    return sequences[:, -settings.maxlen - 1 :] if settings.maxlen else sequences


def _ranks(lengths: np.ndarray) -> np.ndarray:
    """0..len-1 within each run of a ragged array given its run lengths."""
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(int(lengths.sum())) - starts


class SASRec(nn.Module):
    """The self-attentive sequential recommender: ``features(seqs)`` [B, L, d]."""

    def __init__(self, n_items: int, maxlen: int, settings: SASRecSettings):
        super().__init__()
        d = settings.hidden
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(maxlen + 1, d, padding_idx=0)
        self.dropout = nn.Dropout(settings.dropout)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(settings.blocks))
        self.attns = nn.ModuleList(
            nn.MultiheadAttention(d, settings.heads, dropout=settings.dropout, batch_first=True)
            for _ in range(settings.blocks)
        )
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(settings.blocks))
        self.ffns = nn.ModuleList(
            nn.Sequential(
                nn.Linear(d, d),
                nn.ReLU(),
                nn.Dropout(settings.dropout),
                nn.Linear(d, d),
                nn.Dropout(settings.dropout),
            )  # fmt: skip
            for _ in range(settings.blocks)
        )
        self.last_norm = nn.LayerNorm(d, eps=1e-8)
        self.maxlen = maxlen
        for name, param in self.named_parameters():  # the authors' initialisation
            if param.dim() > 1 and "norm" not in name:
                nn.init.xavier_normal_(param)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.pos_emb.weight[0].zero_()

    def features(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] of right-aligned item sequences [B, L] (0 = padding)."""
        length = seqs.shape[1]
        real = (seqs != 0).unsqueeze(-1)  # [B, L, 1]
        positions = torch.arange(1, length + 1, device=seqs.device) * (seqs != 0)
        x = self.item_emb(seqs) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(positions)
        x = self.dropout(x) * real
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=seqs.device), 1)
        for attn_norm, attn, ffn_norm, ffn in zip(
            self.attn_norms, self.attns, self.ffn_norms, self.ffns, strict=True
        ):
            q = attn_norm(x)
            x = q + attn(q, x, x, attn_mask=causal, need_weights=False)[0]
            x = ffn_norm(x)
            x = (x + ffn(x)) * real
        return self.last_norm(x)


def fit(
    sequences: np.ndarray,
    n_items: int,
    settings: SASRecSettings,
    progress: bool = True,
    validate: Callable[[SASRec], float] | None = None,
) -> tuple[SASRec, dict]:
    """Train a SASRec on right-aligned sequences [N, maxlen + 1] (`crop`).

    With ``validate`` (higher = better, called after each epoch in eval mode), training stops
    after ``patience`` epochs without improvement and the best epoch's weights are kept.
    Returns the model and ``{"loss": [per epoch], "valid": [per epoch], "best_epoch"}``.
    """
    maxlen = sequences.shape[1] - 1
    if maxlen < 1 or not (sequences[:, -2] != 0).any():  # right-aligned: -2 = second-to-last
        raise InputError("SASRec needs training sequences of at least two items (history + target)")
    rng = np.random.default_rng(settings.seed)
    history: dict = {"loss": [], "valid": [], "best_epoch": settings.epochs}
    with torch.random.fork_rng(devices=[]):  # seeded init and dropout; global RNG untouched
        torch.manual_seed(settings.seed)
        model = SASRec(n_items, maxlen, settings)
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.98))
        starts = range(0, len(sequences), settings.batch_size)
        bar = tqdm(
            total=settings.epochs * len(starts),
            desc="training SASRec (stops early)" if validate else "training SASRec",
            disable=not progress,
        )
        best = None
        for epoch in range(1, settings.epochs + 1):
            model.train()
            order = rng.permutation(len(sequences))
            total, count = 0.0, 0
            for start in starts:
                batch = sequences[order[start : start + settings.batch_size]]
                loss, n = _step(model, opt, batch, _negatives(batch, n_items, rng))
                total, count = total + loss * n, count + n
                bar.update()
            history["loss"].append(total / count)
            bar.set_postfix(epoch=epoch, loss=f"{history['loss'][-1]:.4f}")
            if validate is None:
                continue
            model.eval()
            history["valid"].append(validate(model))
            if best is None or history["valid"][-1] > max(history["valid"][:-1]):
                best, history["best_epoch"] = copy.deepcopy(model.state_dict()), epoch
            elif epoch - history["best_epoch"] >= settings.patience:
                break
        bar.close()
        if best is not None:
            model.load_state_dict(best)
    model.eval()
    return model, history


def _negatives(batch: np.ndarray, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One uniform negative per next-item target [B, L-1], never an item of its own sequence."""
    neg = rng.integers(1, n_items + 1, size=(len(batch), batch.shape[1] - 1))
    for _ in range(100):  # a few redraws suffice: a sequence holds few of the catalog's items
        clash = (neg[:, :, None] == batch[:, None, :]).any(-1)
        if not clash.any():
            break
        neg[clash] = rng.integers(1, n_items + 1, size=int(clash.sum()))
    return neg


def _step(model: SASRec, opt: torch.optim.Optimizer, batch: np.ndarray, neg: np.ndarray):
    seqs = torch.from_numpy(batch)
    inputs, targets, negatives = seqs[:, :-1], seqs[:, 1:], torch.from_numpy(neg)
    mask = (inputs != 0) & (targets != 0)  # a target needs at least one item before it
    if not mask.any():  # a batch of one-item sequences: nothing to predict
        return 0.0, 0
    feats = model.features(inputs)
    pos_logits = (feats * model.item_emb(targets)).sum(-1)[mask]
    neg_logits = (feats * model.item_emb(negatives)).sum(-1)[mask]
    bce = nn.functional.binary_cross_entropy_with_logits
    loss = bce(pos_logits, torch.ones_like(pos_logits)) + bce(
        neg_logits, torch.zeros_like(neg_logits)
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item(), int(mask.sum())


@torch.no_grad()
def score_examples(
    model: SASRec, index: ItemIndex, examples: Sequence[PreferenceExample], batch_size: int = 512
) -> list[np.ndarray]:
    """Per example, its candidates' scores [n]: the state after its history . item embeddings."""
    maxlen = model.maxlen
    out: list[np.ndarray] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        seqs = np.zeros((len(chunk), maxlen), dtype=np.int64)
        for row, ex in enumerate(chunk):
            hist = index.lookup(ex.history, f"example {ex.context_id!r} history")[-maxlen:]
            seqs[row, maxlen - len(hist) :] = hist
        state = model.features(torch.from_numpy(seqs))[:, -1]  # [B, d]
        for row, ex in enumerate(chunk):
            cands = index.lookup(ex.candidates, f"example {ex.context_id!r} candidates")
            emb = model.item_emb(torch.from_numpy(cands))  # [n, d]
            out.append((emb @ state[row]).double().numpy())
    return out


class SASRecScorer:
    """Scores candidates with a trained SASRec (`score_examples`); ``info`` goes to the protocol."""

    name = "sasrec"

    def __init__(self, model: SASRec, index: ItemIndex, info: dict):
        self.model, self.index, self.info = model, index, info
        self.scoring = (
            "baseline sasrec: dot product of the SASRec state after the context's history with "
            "each candidate's item embedding; trained on the training split's history + positives "
            "(BCE, one sampled negative per position, as in Kang and McAuley 2018), early "
            "stopping on the valid split's MRR; settings in 'sasrec'"
        )

    def score(self, examples: Sequence[PreferenceExample]) -> list[np.ndarray]:
        return score_examples(self.model, self.index, examples)


def valid_sample(data_dir: str | Path, n: int, seed: int) -> list[PreferenceExample]:
    """A seeded sample of at most ``n`` valid-split examples (only those are read)."""
    if not (Path(data_dir) / "hf" / "valid").is_dir():
        return []
    examples = open_split(data_dir, "valid")
    keep = np.random.default_rng(seed).choice(len(examples), min(n, len(examples)), replace=False)
    return list(examples.take(np.sort(keep)))


def mean_reciprocal_rank(index: ItemIndex, examples: list[PreferenceExample]):
    """``validate(model)`` for `fit`: the mean reciprocal rank of the first positive."""

    def validate(model: SASRec) -> float:
        scores = score_examples(model, index, examples)
        ranks = [positive_ranks(s, ex.levels)[0] for s, ex in zip(scores, examples, strict=True)]
        return float(np.mean(1.0 / np.array(ranks)))

    return validate


def load_or_train(
    data_dir: str | Path, settings: SASRecSettings, progress: bool = True
) -> SASRecScorer:
    """The SASRec of ``data_dir``'s training split (early-stopped on a valid sample): from the
    cache, else trained and cached."""
    index = ItemIndex(load_items(data_dir))
    sequences = crop(training_sequences(data_dir, index), settings)
    valid = valid_sample(data_dir, settings.valid_contexts, settings.seed)
    digest = hashlib.sha256(sequences.tobytes())
    # the valid sample as item rows, not text: data written as titles or as item tokens
    # (`setdpo.items`) trains the same SASRec, and shares it
    valid_rows = [
        [ex.context_id, *(index.lookup(items, f"valid {ex.context_id}").tolist()
                          for items in (ex.history, ex.candidates)), list(ex.levels)]
        for ex in valid
    ]  # fmt: skip
    key = [sequences.shape, len(index), asdict(settings), valid_rows]
    digest.update(json.dumps(key, sort_keys=True).encode())
    folder = cache_dir() / "sasrec" / digest.hexdigest()[:20]
    if (folder / "sasrec.json").is_file():
        model = SASRec(len(index), sequences.shape[1] - 1, settings)
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        model.eval()
        info = json.loads((folder / "sasrec.json").read_text("utf-8"))
        info["cached"] = True
    else:
        start = time.perf_counter()
        validate = mean_reciprocal_rank(index, valid) if valid else None
        model, history = fit(sequences, len(index), settings, progress, validate)
        info = {
            "settings": asdict(settings) | {"maxlen": model.maxlen},
            "loss": "BCE, one uniform negative per position (not in the sequence)",
            "training_sequences": int(len(sequences)),
            "n_items": len(index),
            "valid_contexts": len(valid),
            "epoch_losses": history["loss"],
            "epoch_valid_mrr": history["valid"],
            "best_epoch": history["best_epoch"],
            "train_s": time.perf_counter() - start,
            "torch_threads": torch.get_num_threads(),
        }
        _save(folder, model, info)
        info["cached"] = False
    info["cache"] = str(folder)
    return SASRecScorer(model, index, info)


def _save(folder: Path, model: SASRec, info: dict) -> None:
    """The weights, then the json that marks the folder complete (both written atomically)."""
    atomic_write_with(folder / "model.pt", lambda tmp: torch.save(model.state_dict(), tmp))
    atomic_write_json(folder / "sasrec.json", info)
