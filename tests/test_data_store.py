"""The compact prepared format (`setdpo.data.store`): same examples as the jsonl format it
replaces, rendered on read, read lazily, exported and imported back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_split, prepare
from setdpo.data.io import dumps
from setdpo.data.prompts import render
from setdpo.data.schema import PreferenceExample
from setdpo.data.store import Renderer, open_split, read_table, split_columns
from setdpo.errors import InputError
from setdpo.evaluation.evaluate import EvalConfig, load_contexts
from setdpo.model import build_tiny
from setdpo.training.data import LazyTokenized, SFTDataset

SPLITS = ("train", "valid", "test")
# sha256 of each split's `train.jsonl`-style lines (`io.dumps(example.to_dict())` + "\n") as
# the jsonl format wrote them (commit a13d705, `setdpo data prepare --source ml-100k --mode M`,
# every default: seed 0, history 10, 20 candidates, chrono split), with their line counts.
JSONL_FORMAT = {
    "next": {
        "train": (77737, "b35986f33cb63a896534d29361be2e9cd0f9b86fe147ce5b658c4fb35a33dd7a"),
        "valid": (9717, "c309d5aadc673fa1fadd0024dabda4d36951c0a82e7dde5aa7485eba4a035020"),
        "test": (9717, "eaa4a573931466815faa25b21055f9767904c52ed1ce1a7e9fbf1e5d829fda6f"),
    },
    "levels": {
        "train": (73215, "ae4b89ed31aadb1907bce242a4b7d3e041d2799a624143f587ad711f2fffdd59"),
        "valid": (9070, "62f2e96438fee65488199124338f79cff5867ae992e5ac920ba70b8718be6764"),
        "test": (9178, "9f7fd26879355fa6424a5ddcb47d270575c4d823c28a2918d790ad7937aebcce"),
    },
}


@pytest.mark.parametrize("mode", ["next", "levels"])
def test_every_example_equals_the_jsonl_format(mode, tmp_path):
    """Prompts, titles, levels, times and meta (ratings in `levels` mode) of all of ML-100K,
    byte for byte as the jsonl format stored them; about 18 MB instead of 399 MB."""
    out = prepare(PrepareConfig(source="ml-100k", mode=mode, out=str(tmp_path / mode)))
    for split in SPLITS:
        digest, examples = hashlib.sha256(), open_split(out, split)
        for example in examples:
            digest.update((dumps(example.to_dict()) + "\n").encode())
        assert (len(examples), digest.hexdigest()) == JSONL_FORMAT[mode][split], split
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 40e6


def test_random_access_views_and_levels(ml100k_next_dir):
    examples = open_split(ml100k_next_dir, "train")
    everything = load_split(ml100k_next_dir, "train")
    assert len(examples) == len(everything) == 200
    assert examples[7] == everything[7] and examples[-1] == everything[-1]
    view = examples.take([5, 0, 199])
    assert list(view) == [everything[5], everything[0], everything[199]]
    assert view[1] == everything[0] and examples[2:4] == everything[2:4]
    assert list(view.levels) == [everything[i].levels for i in (5, 0, 199)]
    assert list(pickle.loads(pickle.dumps(view))) == list(view)  # reopened from its directory
    with pytest.raises(IndexError):
        examples[200]


def test_a_template_change_needs_no_preparation(ml100k_next_dir, tmp_path):
    """Prompts are rendered from config.json's template when read, never stored."""
    import shutil

    copy = Path(shutil.copytree(ml100k_next_dir, tmp_path / "open"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"template": "open"}))
    (ex,) = open_split(copy, "test").take([3])
    assert ex.prompt == render("open", "movie", ex.history, ex.candidates)
    assert ex.prompt != open_split(ml100k_next_dir, "test")[3].prompt
    assert ex.meta["template"] == "open"


def test_evaluate_with_a_limit_reads_only_those_examples(ml100k_next_dir, monkeypatch):
    rendered = []
    real = Renderer.example
    monkeypatch.setattr(
        Renderer, "example", lambda self, row: rendered.append(1) or real(self, row)
    )
    config = EvalConfig(model="popularity", data=str(ml100k_next_dir), split="train", limit=7)
    examples = list(load_contexts(config))
    assert len(examples) == len(rendered) == 7
    chosen = np.sort(np.random.default_rng(0).choice(200, 7, replace=False))
    assert examples == [load_split(ml100k_next_dir, "train")[i] for i in chosen]


def test_jsonl_export_round_trips_through_import(ml100k_next_dir, tmp_path, capsys):
    for split in ("train", "test"):
        path = tmp_path / f"{split}.jsonl"
        args = ["data", "export", str(ml100k_next_dir), "--split", split, "--out", str(path)]
        assert main([*args, "--format", "jsonl"]) == 0
    out = tmp_path / "back"
    files = ["--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl")]
    assert main(["data", "import", "--format", "jsonl", *files, "--out", str(out)]) == 0
    for split in ("train", "test"):
        assert load_split(out, split) == load_split(ml100k_next_dir, split)
    assert load_split(out, "valid") == []
    for folder in (ml100k_next_dir, out):  # prepared, imported (meta), an empty split
        for split in ("train", "valid", "test"):
            assert split_columns(folder, split) == read_table(folder, split).column_names
    assert "meta" in split_columns(out, "train")
    trl = tmp_path / "trl.jsonl"
    assert main(["data", "export", str(out), "--split", "test", "--out", str(trl)]) == 0
    assert len(trl.read_text().splitlines()) == 50
    assert "wrote 50 rows" in capsys.readouterr().out


def test_split_files_hold_large_record_batches(tmp_path):
    """Opening a split walks its batch headers and readahead pages in around each: with
    1,000-row batches that was the whole file (the 100M file's train split: 5.4 GiB of RSS)."""
    import pyarrow as pa

    from setdpo.data.store import WRITER_BATCH_ROWS, save_split, split_path

    rows = 3 * 1000 + 7
    table = pa.table({"context_id": [f"u:{i}" for i in range(rows)], "n": list(range(rows))})
    save_split(tmp_path, "train", table, "test")
    data = split_path(tmp_path, "train") / "data-00000-of-00001.arrow"
    with pa.memory_map(str(data)) as source:
        sizes = [batch.num_rows for batch in pa.ipc.open_stream(source)]
    assert sizes == [rows] and rows < WRITER_BATCH_ROWS
    assert read_table(tmp_path, "train").equals(table)


def test_lazy_tokenization_keeps_a_bounded_cache(ml100k_next_dir):
    examples = open_split(ml100k_next_dir, "valid")
    _, tokenizer = build_tiny()
    lazy = LazyTokenized(examples, tokenizer, max_prompt_length=60, cache_size=8)
    for i in [*range(len(lazy)), 0, 1]:
        assert lazy[i].levels == examples.levels[i]
    assert len(lazy._done) == 8
    assert lazy.report().examples == 50  # each example counted once, evictions or not
    assert lazy.report().history_truncated == 50


def test_sft_rows_come_from_the_levels_alone(ml100k_next_dir):
    """Rows (example, positive) as a loop over the levels gives them, with no example of a
    split read or tokenized."""
    _, tokenizer = build_tiny()
    examples = open_split(ml100k_next_dir, "train")
    lazy = LazyTokenized(examples, tokenizer)
    expected = [[i, levels.index(1)] for i, levels in enumerate(examples.levels)]
    assert SFTDataset(lazy, 0, "each").rows.tolist() == expected
    assert not lazy._done

    def example(levels: list[int]) -> PreferenceExample:
        titles = [f"t{i}" for i in range(len(levels))]
        return PreferenceExample("c", "u", ["h"], "p", titles, levels)

    lazy = LazyTokenized([example([2, 1, 2, 1]), example([1, 1]), example([3, 2, 1])], tokenizer)
    assert SFTDataset(lazy, 0, "each").rows.tolist() == [[0, 1], [0, 3], [1, 0], [1, 1], [2, 2]]
    assert SFTDataset(lazy, 0, "one").rows.tolist() == [[0, 1], [1, 0], [2, 2]]
    assert lazy.levels.take(np.array([2, 0])).values.tolist() == [3, 2, 1, 2, 1, 2, 1]


def test_a_directory_of_the_jsonl_format_is_named_as_such(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "p", "candidates": ["a"]}]).save_to_disk(
        str(tmp_path / "hf" / "train")
    )
    (tmp_path / "items.json").write_text("[]")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="earlier jsonl format.*import --format jsonl"):
        open_split(tmp_path, "train")


def test_a_re_prepared_directory_is_refused_by_a_reopened_reader(tmp_path):
    # A DataLoader worker started by spawn (or forkserver) gets the reader pickled and reopens
    # the directory by name, while the dataset around it keeps the levels read before: a
    # directory prepared again meanwhile would give it other examples under the old levels.
    sizes = {"train": 40, "valid": 4, "test": 4}
    config = PrepareConfig(source="ml-100k", out=str(tmp_path / "d"), max_examples_per_split=sizes)
    reader = open_split(prepare(config), "train")
    old = list(reader)
    assert list(pickle.loads(pickle.dumps(reader))) == old  # unchanged: reopens as it was
    pickled = pickle.dumps(reader.take(np.arange(10)))
    prepare(dataclasses.replace(config, seed=1, overwrite=True))
    assert [ex.levels for ex in open_split(config.out, "train")] != [ex.levels for ex in old]
    assert list(reader) == old  # the reader open before the change still reads what it read
    with pytest.raises(InputError, match="changed since"):
        list(pickle.loads(pickled))
    loader = DataLoader(reader, batch_size=8, collate_fn=list, num_workers=1)
    loader.multiprocessing_context = "spawn"  # the start method that pickles the dataset
    with pytest.raises(InputError, match="prepared again"):
        next(iter(loader))
