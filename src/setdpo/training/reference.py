"""Log-probs of every candidate of every example: the cached reference and hard-negative scores.

The reference of preference training never changes during a run, so its log-probs are computed
once (adapter disabled = the SFT model) and cached in the SFT run directory under a fingerprint
of everything they depend on: the data files, the SFT run's model files and the tokenization and
scoring settings. A resumed run, or any other preference run from the same SFT run on the same
data, reads them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from setdpo.atomic import atomic_write_text
from setdpo.scoring import candidate_logps
from setdpo.tokenization import CandidateCollator

CACHE_PREFIX = "ref_logps-"


@torch.no_grad()
def all_candidate_logps(
    model: torch.nn.Module,
    tokenized: Sequence[Any],
    pad_token_id: int,
    *,
    batch_size: int = 8,
    share_prefix: bool = True,
    average: bool = False,
    chunk_size: int | None = None,
    reference: bool = False,
    desc: str = "scoring",
) -> list[list[float]]:
    """Log-prob of each candidate of each tokenized example, `[example][candidate]`.

    `reference=True` scores with the peft adapter disabled (the model the stage started from).
    The model is put in eval mode for the pass and restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = CandidateCollator(pad_token_id)
    out: list[list[float]] = []
    adapter_off = model.disable_adapter() if reference else contextlib.nullcontext()
    try:
        with adapter_off:
            for start in tqdm(range(0, len(tokenized), batch_size), desc=desc, leave=False):
                chunk = tokenized[start : start + batch_size]
                batch = {k: v.to(device) for k, v in collate(chunk).items()}
                scores = candidate_logps(
                    model, batch, share_prefix=share_prefix, average=average, chunk_size=chunk_size
                )
                for row, tok in zip(scores.logps.float().cpu(), chunk, strict=True):
                    out.append(row[: len(tok.levels)].tolist())
    finally:
        model.train(was_training)
    return out


def fingerprint(files: Sequence[Path], settings: dict[str, Any]) -> str:
    """SHA-256 over the bytes of `files` (in order) and the JSON of `settings`."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.name).encode())
        digest.update(Path(path).read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def model_files(run_dir: str | Path) -> list[Path]:
    """The files that define a run's model: its run file, adapters and saved base weights."""
    run_dir = Path(run_dir)
    patterns = ("setdpo_model.json", "**/adapter_model.safetensors", "**/adapter_config.json")
    found = {
        p for pattern in patterns for p in run_dir.glob(pattern) if "checkpoint-" not in str(p)
    }
    base = run_dir / "base"
    if base.is_dir():
        found.update(p for p in base.glob("*") if p.is_file())
    return sorted(found)


def cached_reference(run_dir: str | Path, key: str, compute: Any) -> dict[str, list[list[float]]]:
    """Reference log-probs for `key` from `run_dir`, else `compute()` and store them atomically."""
    path = Path(run_dir) / f"{CACHE_PREFIX}{key[:16]}.json"
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("fingerprint") == key:
            return stored["logps"]
    logps = compute()
    atomic_write_text(path, json.dumps({"fingerprint": key, "logps": logps}))
    return logps
