"""The reference memo: what its key fingerprints, shard files from several writers, merging."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from setdpo.model import LoraSettings, add_lora, build_tiny, save_run_model
from setdpo.training.reference import ReferenceMemo, model_fingerprint

TEXTS = ["Toy Story (1995)", "Heat (1995)", "Choose the next movie."]


def _lora_run(folder: Path, seed: int) -> Path:
    model, tokenizer = build_tiny(TEXTS)
    policy = add_lora(model, LoraSettings(r=2, dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    save_run_model(policy, tokenizer, folder, base_model="tiny")
    return folder


def test_fingerprint_is_the_model_not_its_place_nor_its_neighbours(tmp_path: Path) -> None:
    # Below a folder named like a checkpoint, as runs under `checkpoint-runs/` are.
    run = _lora_run(tmp_path / "checkpoint-runs" / "sft", seed=0)
    key = model_fingerprint(run)
    moved = Path(shutil.copytree(run, tmp_path / "elsewhere"))
    assert model_fingerprint(moved) == key  # named relative to the run, not by absolute path
    (run / "checkpoint-3").mkdir()  # checkpoints, memos, logs: not the model
    (run / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"old weights")
    (run / "ref_logps").mkdir()
    (run / "trainer_state.json").write_text("{}")
    assert model_fingerprint(run) == key
    assert model_fingerprint(_lora_run(run, seed=1)) != key  # retrained in place
    assert model_fingerprint("Qwen/Qwen2.5-0.5B") != model_fingerprint("Qwen/Qwen2.5-1.5B")


def test_shards_from_several_writers_merge(tmp_path: Path) -> None:
    folder = tmp_path / "memo"
    rank0, rank1 = ReferenceMemo(folder, "k"), ReferenceMemo(folder, "k")
    rank0.put("ex", 3, 0, -1.5)
    rank1.put("ex", 3, 2, -2.5)
    rank1.put("other", 1, 0, -0.25)
    assert rank0.pending_count() == 1 and rank1.pending_count() == 2
    assert rank0.flush() != rank1.flush()  # each writer its own file
    assert rank0.flush() is None  # nothing new
    reader = ReferenceMemo(folder, "k")
    assert reader.values == {"ex": [-1.5, None, -2.5], "other": [-0.25]}
    assert reader.complete("other") and not reader.complete("ex")
    assert ReferenceMemo(folder, "another key").values == {}  # another model's shards
    reader.merge_shards()
    (merged,) = folder.glob("*.json")
    assert ReferenceMemo(folder, "k").values == reader.values
    assert json.loads(merged.read_text())["fingerprint"] == "k"


def test_a_shard_merged_away_while_reading_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "memo"
    writer = ReferenceMemo(folder, "k")
    writer.put("a", 1, 0, -1.0)
    gone = writer.flush()
    writer.put("b", 1, 0, -2.0)
    writer.flush()
    listed = sorted(folder.glob("*.json"))
    gone.unlink()  # another process merged and deleted it after this one listed the folder
    monkeypatch.setattr(ReferenceMemo, "_shards", lambda self: listed)
    assert ReferenceMemo(folder, "k").values == {"b": [-2.0]}  # "a" is only recomputed


def test_a_damaged_shard_is_set_aside_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "memo"
    writer = ReferenceMemo(folder, "k")
    writer.put("a", 2, 0, -1.0)
    writer.flush()
    writer.put("b", 1, 0, -2.0)
    cut = writer.flush()
    text = cut.read_text()
    cut.write_text(text[: len(text) // 2])  # a write cut short (a crash before the data hit disk)
    shapeless = folder / "part-shapeless.json"
    shapeless.write_text('{"fingerprint": "k", "logps": [1, 2]}')  # valid JSON, not a memo
    with caplog.at_level("WARNING", logger="setdpo.training.reference"):
        memo = ReferenceMemo(folder, "k")
    assert memo.values == {"a": [-1.0, None]}  # "b" is only recomputed
    for damaged in (cut, shapeless):
        assert damaged.name in caplog.text
        assert not damaged.exists() and damaged.with_name(damaged.name + ".damaged").exists()
    memo.put("b", 1, 0, -2.0)
    memo.flush()
    memo.merge_shards()
    assert ReferenceMemo(folder, "k").values == {"a": [-1.0, None], "b": [-2.0]}
