"""`data prepare` out of core (`setdpo.data.engine`, the ranges of `setdpo.data.builders`):
the same prepared data as the in-memory pipeline it replaced, and the same protocol when
the users come in several ranges.

The digests below were taken with the in-memory pipeline (main at 1423789, before DuckDB):
per split a SHA-256 over every column's values in row order (list lengths and entries,
strings, numbers), the same over `timelines.parquet`, the bytes of `items.json` and
`stats.json` without its `run` timings (and without what the audit added since). They are computed here from the files, not
through the code under test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import setdpo.data.builders as builders
from setdpo.cli import main
from setdpo.data import PrepareConfig, prepare
from setdpo.data.store import SPLITS, read_table

IN_MEMORY = {
    "ml100k-next-k3": {
        "train": (76021, "16a64c6f48a1af8d4627a3d662a74110588366394b4cf8a609368305986dd0a5"),
        "valid": (9412, "7e3d7867216bf4488e183bf1cdd0264a77cb29a7aacbf0026d943eaffcb9ab8c"),
        "test": (9530, "79ace7ccd27bcf237d20ca107d57f9f164414d5a29efeabad15b3d00b127abce"),
        "timelines": "954531089abe101ef078e78e5f5638a5e4c321356c71cadb637d67a03bbdea90",
        "items": "554cc1f5b2d4c042b11b8b280ba17fcbce6ff7531c6e5777ef2c61d23993ef1d",
        "stats": "867f716166fded88f30d5e887bdca32aaa5ed3b7ad48d0aa5736048e0ac84270",
    },
    "ml100k-rated": {
        "train": (62610, "90743cba5d0b20b1a6607647a83941a2bfc98b0b663cf15914217806ef9eff64"),
        "valid": (7756, "dded26e06fe68dd9ca322abcc6adc26dce81460091f6c9da0344a15aa096b8e4"),
        "test": (7852, "ea3e7843c12b8fab116a3750a6ca6dd7afbd063754d7a23f69e7516c321ae250"),
        "timelines": "954531089abe101ef078e78e5f5638a5e4c321356c71cadb637d67a03bbdea90",
        "items": "5129d4017956e8c020181847a188e2c471e2402667d65fd3a590d6288464dab1",
        "stats": "04b4b4ff7245d799b73aa87b8db0e67b80ed3be61006360f3149a139045f8bf3",
    },
    "ml100k-loo": {
        "train": (95285, "ccb1599e4e56897629a48b14b57e2b5fec3b8e424376ce6286bf9c6852f7f455"),
        "valid": (943, "81edb352faa1ac64725c73935c55e891f8896abbd9c820371de5be68f5c40b6a"),
        "test": (943, "a7ab341e2667b2d7e6b945170f97f8e5f4550f3ec89582c69920b8aa2595dae5"),
        "timelines": "954531089abe101ef078e78e5f5638a5e4c321356c71cadb637d67a03bbdea90",
        "items": "c12d67c2cebb61d1506a1ff23964f3351c3a52ce61f660b40c41f57740252fc3",
        "stats": "c95b855fc3b881eb90781cae0eabe9a3c147e7e9e94b7402fbe03acaab5a2a3f",
    },
    "ml100k-pop-capped": {
        "train": (500, "8b4f349473b19ef660a1e8ae71924694d22b115b9558dc700d6fbf9cafcb9d93"),
        "valid": (100, "f80fc03c1708849913b1f81352bf2f9d8d5cafae0cd15192e063af7a99eac0ca"),
        "test": (9717, "779528df4044a2d9d361c8b12ca979619c73a2235fb482024af375c34f58cb5f"),
        "timelines": "954531089abe101ef078e78e5f5638a5e4c321356c71cadb637d67a03bbdea90",
        "items": "bc12608886aadd0978ca31e57efba8dbb521ae85fcb669b2edb21bb6cacd2962",
        "stats": "c7adb47327f447bfcfa4f159d20663fbada85e5e4f29ecd0fda5b4106a6065da",
    },
    "ml1m-next": {
        "train": (785667, "5e6e61a474d56b605917fdee85c75b2da34bd4ceb2cf7033610bcda5f177b70a"),
        "valid": (98212, "4c66785ae0a688eff9c900c7031f8f471c16c19ffdcc94fb479d3490024f3ca6"),
        "test": (98210, "e1110940da38769e9ec12b3ca144f6f63f2dcc8394614c8f776b9efe98a46fc1"),
        "timelines": "43855e2273275408a7e85af3767cf9419a651c36a3e98a17bd2843ceae1277da",
        "items": "d765bb89701db82e4589d28b044618a125bd1791fc4b680d5760bc64bead3278",
        "stats": "64154b7081ab94f99975216d126205a169d7ef7cfb8763d9efc4caeed0f748ac",
    },
    "ml1m-levels": {
        "train": (748451, "e0e46a64836c16d9366d7c9a4df9419efc652b0316e5b02ee66ca949c71f77cf"),
        "valid": (92794, "7f1c63500a7037f6baba356d9c71c9eb5fcf01c8fa4ae2e5a192f841b2ce020e"),
        "test": (93833, "988712966caf0984b0169dff3a42e8aa682a1e9426f6a20feb80b57d8a295b7b"),
        "timelines": "43855e2273275408a7e85af3767cf9419a651c36a3e98a17bd2843ceae1277da",
        "items": "161f3ca13ad74b767177201d70ec1179cb24fa18703118dc4bf921697126bc63",
        "stats": "fa67074a8c87fda95b83f92408e4448316851500c31f3bd6df56b8fa2ebfcd96",
    },
}
# The audit checks of the in-memory pipeline (stats.json ``audit``); those added later
# (history_not_before_target, global_time_cut and stats.json ``audit_measured``) are left out.
IN_MEMORY_CHECKS = (
    "window_crosses_split",
    "eval_positive_in_train",
    "candidate_in_history",
    "duplicate_candidates",
    "positive_outside_timeline",
)
CASES = {  # name -> `data prepare` options
    "ml100k-next-k3": ["--source", "ml-100k", "--mode", "next-k", "--k", "3"],
    "ml100k-rated": ["--source", "ml-100k", "--mode", "rated"],
    "ml100k-loo": ["--source", "ml-100k", "--split", "leave-last-out"],
    "ml100k-pop-capped": [
        "--source", "ml-100k", "--negatives", "popularity",
        "--max-examples-per-split", "train=500,valid=100",
    ],
    "ml1m-next": ["--source", "ml-1m", "--mode", "next"],
    "ml1m-levels": ["--source", "ml-1m", "--mode", "levels"],
}  # fmt: skip


def _column(digest, column) -> None:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        digest.update(pc.list_value_length(column).to_numpy().tobytes())
        digest.update(pc.list_flatten(column).to_numpy(zero_copy_only=False).tobytes())
    elif pa.types.is_string(column.type):
        digest.update("\n".join(column.to_pylist()).encode())
    else:
        digest.update(column.to_numpy(zero_copy_only=False).tobytes())


def _table(digest, table: pa.Table) -> str:
    for name in table.column_names:
        digest.update(name.encode())
        _column(digest, table[name])
    return digest.hexdigest()


def digests(folder: Path) -> dict:
    found = {}
    for split in SPLITS:
        table = read_table(folder, split)
        found[split] = (table.num_rows, _table(hashlib.sha256(), table))
    found["timelines"] = _table(hashlib.sha256(), pq.read_table(folder / "timelines.parquet"))
    found["items"] = hashlib.sha256((folder / "items.json").read_bytes()).hexdigest()
    stats = json.loads((folder / "stats.json").read_text())
    stats.pop("run")
    stats.pop("audit_measured")  # and the checks added since: the pipeline's own five
    stats["audit"] = {name: stats["audit"][name] for name in IN_MEMORY_CHECKS}
    found["stats"] = hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()
    return found


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if c.startswith("ml1m") else c for c in CASES],
)
def test_outputs_equal_the_in_memory_pipeline(case, tmp_path):
    """Every split table, the timelines, items.json and stats.json, value for value."""
    out = tmp_path / case
    assert main(["data", "prepare", *CASES[case], "--out", str(out)]) == 0
    assert digests(out) == IN_MEMORY[case]


def _positives(candidates: list[int], levels: list[int]) -> list[int]:
    return sorted(item for item, level in zip(candidates, levels, strict=True) if level == 1)


def _rows(folder: Path, split: str) -> dict:
    table = read_table(folder, split)
    return {name: table[name].to_pylist() for name in table.column_names}


@pytest.mark.parametrize("split_kind", ["chrono", "leave-last-out"])
def test_users_in_many_ranges_give_the_same_contexts(split_kind, tmp_path, monkeypatch):
    """ML-100K's users in 7 ranges of at most 15,000 interactions against one range: the
    same contexts in the same order (ids, histories, times, positives and their levels),
    the same catalog counts and timelines; only the sampled negatives and the candidate
    order differ (one seeded stream, drawn range after range), and each prepared
    directory passes its own audit."""
    config = dict(mode="next-k", k=3, split=split_kind, negatives="popularity")
    one = prepare(PrepareConfig(**config, out=str(tmp_path / "one")))
    monkeypatch.setattr(builders, "CHUNK_INTERACTIONS", 15_000)
    many = prepare(PrepareConfig(**config, out=str(tmp_path / "many")))
    assert digests(one)["timelines"] == digests(many)["timelines"]
    assert (one / "items.json").read_bytes() == (many / "items.json").read_bytes()
    differ = 0
    for split in SPLITS:
        a, b = _rows(one, split), _rows(many, split)
        for name in ("context_id", "user", "history_items", "target_time"):
            assert a[name] == b[name], (split, name)
        for cands_a, levels_a, cands_b, levels_b in zip(
            a["candidate_items"], a["levels"], b["candidate_items"], b["levels"], strict=True
        ):
            assert _positives(cands_a, levels_a) == _positives(cands_b, levels_b)
            assert sorted(levels_a) == sorted(levels_b)
            differ += cands_a != cands_b
    assert differ > 0  # the negatives were drawn anew, not copied
    stats = [json.loads((d / "stats.json").read_text()) for d in (one, many)]
    for s in stats:
        s.pop("run")
    assert stats[0] == stats[1]
    assert stats[1]["audit"] == dict.fromkeys(stats[1]["audit"], 0)


def test_memory_limit_is_checked_and_recorded(tmp_path):
    with pytest.raises(Exception, match="memory_limit_mb must be >= 64"):
        PrepareConfig(memory_limit_mb=10)
    out = prepare(PrepareConfig(out=str(tmp_path / "p"), memory_limit_mb=128, max_examples=50))
    assert json.loads((out / "config.json").read_text())["memory_limit_mb"] == 128
    assert np.isfinite(json.loads((out / "stats.json").read_text())["run"]["peak_rss_mb"])
