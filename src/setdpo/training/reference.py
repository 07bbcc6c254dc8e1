"""Reference log-probs of preference training: computed when a batch first needs them, memoised.

The reference (pi_ref = pi_SFT, docs/training.md) never changes, and every objective aligned
from one SFT run shares it. So a candidate's reference log-prob is computed the first time a
batch holds it and kept on disk, in the SFT run directory:

    RUN_SFT/ref_logps/<key>/part-*.json    {"fingerprint": key, "logps": {example: [lp|null]}}

`key` is a fingerprint of what defines the SFT model (its base and adapters, file contents
named relative to the run directory, `model_fingerprint`) and of the scoring settings; inside,
entries are keyed by a hash of the example's token ids (`training.data.example_key`), so a
changed model, changed data or changed tokenization misses. Each process writes only new
shard files, atomically and under names of its own, so DDP ranks and concurrent runs from one
SFT run never write the same file; readers merge every shard. A shard that cannot be read
(cut short by a crash, or not a shard) is set aside as `*.json.damaged` with a warning and
its entries are computed again: it never stops a run. `precompute_ref` fills the memo
for every candidate of the train and valid splits before the first step (an up-front pass);
otherwise only what training and evaluation reach is ever scored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from setdpo import faults
from setdpo.atomic import atomic_write_text
from setdpo.model import is_run_dir, read_run_model
from setdpo.scoring import ScoringOptions
from setdpo.training.data import PreferenceCollator, PreferenceDataset

logger = logging.getLogger(__name__)

MEMO_DIR = "ref_logps"
# Keys an adapter config records that do not change the adapter (where its base was on disk).
_PLACE_KEYS = ("base_model_name_or_path", "revision")
_FLUSH_EVERY = 2048  # pending candidates that trigger a shard write during training


def _digest_folder(digest: Any, folder: Path, label: str) -> None:
    """Feed the files directly inside `folder` to `digest`, named `label/<file name>`."""
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(f"{label}/{path.name}\0".encode())
        if path.name == "adapter_config.json":
            config = json.loads(path.read_text(encoding="utf-8"))
            for key in _PLACE_KEYS:
                config.pop(key, None)
            digest.update(json.dumps(config, sort_keys=True).encode())
            continue
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)


def model_fingerprint(name: str | os.PathLike) -> str:
    """SHA-256 of what defines the model `name` (a run directory, a model folder or a name).

    For a run directory: its base (the files of a base folder, else the name such as a hub
    id) and each adapter's files, in order. Files are named by their role (`base`,
    `adapter0`, ...), not by their absolute path, so the fingerprint survives moving the run
    and ignores what else lies in it (checkpoints, memos).
    """
    digest = hashlib.sha256()
    parts: list[tuple[str, str]] = [("base", os.fspath(name))]
    if is_run_dir(name):
        spec = read_run_model(name)
        parts = [("base", spec.base_model)]
        parts += [(f"adapter{i}", str(path)) for i, path in enumerate(spec.adapters)]
    for label, target in parts:
        if Path(target).is_dir():
            _digest_folder(digest, Path(target), label)
        else:
            digest.update(f"{label}={target}\0".encode())
    return digest.hexdigest()


def _is_shard(stored: Any) -> bool:
    """Whether `stored` has a shard's shape: a fingerprint and rows of numbers or nulls."""
    if not isinstance(stored, dict) or not isinstance(stored.get("fingerprint"), str):
        return False
    logps = stored.get("logps")
    return isinstance(logps, dict) and all(
        isinstance(row, list) and all(v is None or isinstance(v, (int, float)) for v in row)
        for row in logps.values()
    )


def _set_aside(path: Path, why: str) -> dict[str, list[float | None]]:
    """Rename a damaged shard to `*.json.damaged` (no reader lists it again) with a warning;
    its entries count as missing, so they are computed again and written in a new shard."""
    aside = path.with_name(path.name + ".damaged")
    with contextlib.suppress(OSError):  # another reader may have set it aside first
        os.replace(path, aside)
    logger.warning(
        "reference memo shard %s is damaged (%s): set aside as %s; its log-probs are "
        "computed again",
        path,
        why,
        aside.name,
    )
    return {}


class ReferenceMemo:
    """Reference log-probs by example key and candidate index, backed by shard files.

    `get` and `put` work in memory; `flush` writes what was `put` since the last flush as a
    new shard; `reload` merges every shard on disk (others' included); `merge_shards` folds
    the shards it reads into one file.
    """

    def __init__(self, folder: str | Path, key: str) -> None:
        self.folder, self.key = Path(folder), key
        self.values: dict[str, list[float | None]] = {}
        self.pending: dict[str, list[float | None]] = {}
        self.reload()

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []

    def _read(self, path: Path) -> dict[str, list[float | None]]:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:  # merged away by another process meanwhile: recomputed
            return {}
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return _set_aside(path, str(err))
        if not _is_shard(stored):
            return _set_aside(path, "not a memo shard")
        return stored["logps"] if stored["fingerprint"] == self.key else {}

    def reload(self) -> None:
        for path in self._shards():
            for example, row in self._read(path).items():
                self._merge(self.values, example, row)

    @staticmethod
    def _merge(into: dict[str, list[float | None]], example: str, row: list[float | None]) -> None:
        have = into.setdefault(example, [None] * len(row))
        for j, value in enumerate(row):
            if value is not None:
                have[j] = value

    def get(self, example: str, candidate: int) -> float | None:
        row = self.values.get(example)
        return None if row is None else row[candidate]

    def complete(self, example: str) -> bool:
        """Whether every candidate of `example` is known."""
        row = self.values.get(example)
        return row is not None and all(value is not None for value in row)

    def put(self, example: str, size: int, candidate: int, value: float) -> None:
        """Record the log-prob of candidate `candidate` of an example of `size` candidates."""
        for store in (self.values, self.pending):
            store.setdefault(example, [None] * size)[candidate] = value

    def pending_count(self) -> int:
        return sum(v is not None for row in self.pending.values() for v in row)

    def flush(self) -> Path | None:
        """Write the entries put since the last flush as a new shard (atomically)."""
        if not self.pending:
            return None
        path = self.folder / f"part-{uuid.uuid4().hex}.json"
        atomic_write_text(path, json.dumps({"fingerprint": self.key, "logps": self.pending}))
        self.pending = {}
        return path

    def merge_shards(self) -> None:
        """Fold every shard into one file, then delete the shards read (flush first).

        A shard written meanwhile is not deleted; a reader that misses a deleted shard only
        recomputes its entries.
        """
        shards = self._shards()
        if len(shards) < 2:
            return
        merged: dict[str, list[float | None]] = {}
        for path in shards:
            for example, row in self._read(path).items():
                self._merge(merged, example, row)
        path = self.folder / f"part-{uuid.uuid4().hex}.json"
        atomic_write_text(path, json.dumps({"fingerprint": self.key, "logps": merged}))
        faults.reached("memo.merge")
        for shard in shards:
            shard.unlink(missing_ok=True)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode (dropout off) inside the block, its former mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class ReferenceModel:
    """The network that gives reference log-probs (no gradients, eval mode).

    With LoRA (`policy` is a peft model): the policy with its adapter disabled, i.e. the SFT
    model. With full fine-tuning: a frozen copy of `init` from `load_copy()`, loaded on the
    first call (never, when the memo already holds everything) and held until `release`.

    `autocast` (bf16 / fp16 training: the dtype the Trainer autocasts the policy's forward
    to) runs every reference pass under that same autocast, whichever network gives it and
    whenever it runs: before the Trainer wraps the policy (`precompute_ref`), inside its
    wrapped forward (LoRA, nested: the same autocast), or on the frozen copy, which the
    Trainer never wraps. So policy and reference are the same computation at the first step.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        scoring: ScoringOptions,
        load_copy: Callable[[], torch.nn.Module] | None = None,
        autocast: torch.dtype | None = None,
    ) -> None:
        self.policy, self.scoring, self.load_copy = policy, scoring, load_copy
        self.autocast = autocast
        self.copy: torch.nn.Module | None = None

    def _precision(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        device = model.get_input_embeddings().weight.device
        return torch.autocast(device_type=device.type, dtype=self.autocast)

    def logps(self, batch: dict[str, Any]) -> torch.Tensor:
        """Reference log-probs [B, n] (float32, on the CPU) of a `PreferenceCollator` batch."""
        if self.load_copy is None:
            model, off = self.policy, self.policy.disable_adapter()
        else:
            if self.copy is None:
                self.copy = self.load_copy()
            model, off = self.copy, contextlib.nullcontext()
        with torch.no_grad(), off, eval_mode(model), self._precision(model):
            scores = self.scoring.score(model, batch)
        return scores.logps.float().cpu()

    def release(self) -> None:
        self.copy = None


class Reference:
    """Reference log-probs of a batch: from the memo, else computed (and memoised)."""

    def __init__(self, model: ReferenceModel, memo: ReferenceMemo) -> None:
        self.model, self.memo = model, memo

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, n] float32 on the CPU, 0 at padding candidates."""
        keys, index = batch["example_keys"], batch["candidate_index"].cpu()
        sizes = batch["example_sizes"].tolist()
        out = torch.zeros(index.shape, dtype=torch.float32)
        missing = []
        for b, key in enumerate(keys):
            found = [self.memo.get(key, int(j)) for j in index[b] if j >= 0]
            if any(value is None for value in found):
                missing.append(b)
            else:
                out[b, : len(found)] = torch.tensor(found, dtype=torch.float32)
        if missing:
            rows = torch.tensor(missing)
            sub = {k: v[rows] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            computed = self.model.logps(sub)
            for r, b in enumerate(missing):
                for c, j in enumerate(index[b].tolist()):
                    if j >= 0:
                        self.memo.put(keys[b], sizes[b], j, float(computed[r, c]))
                out[b] = computed[r]
        return out

    def fill(
        self,
        dataset: PreferenceDataset,
        pad_token_id: int,
        batch_size: int,
        desc: str,
        progress: bool = True,
    ) -> int:
        """Compute every candidate of `dataset` (all candidates) missing from the memo, in
        batches, with a progress bar; returns the examples scored."""
        todo = [i for i in range(len(dataset)) if not self.memo.complete(dataset.example_key(i))]
        collate = PreferenceCollator(pad_token_id)
        starts = range(0, len(todo), batch_size)
        for start in tqdm(starts, desc=desc, leave=False, disable=not progress):
            chunk = todo[start : start + batch_size]
            self(collate([dataset.item(i, range(len(dataset.levels[i]))) for i in chunk]))
        return len(todo)


class MemoFlush(TrainerCallback):
    """Writes the memo's new entries: at checkpoints, after evaluations, at the end of
    training, and whenever `_FLUSH_EVERY` candidates are pending (bounds what a kill loses)."""

    def __init__(self, memo: ReferenceMemo) -> None:
        self.memo = memo

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.memo.pending_count() >= _FLUSH_EVERY:
            self.memo.flush()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.memo.flush()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.memo.flush()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.memo.flush()


def memo_key(init: str | os.PathLike, settings: dict[str, Any]) -> str:
    """The memo's key: the init model's fingerprint and the scoring settings."""
    text = json.dumps({"model": model_fingerprint(init), **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
