"""benchmarks/make_synthetic.py: a small ML-10M-shaped release, deterministic, read by `ml-10m`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from setdpo.cli import main
from setdpo.data.store import open_split

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_synthetic.py"


@pytest.fixture(scope="module")
def synthetic():
    spec = importlib.util.spec_from_file_location("make_synthetic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    rows = [line.split("::") for line in path.read_text("utf-8").splitlines()]
    return pd.DataFrame(rows, columns=names)


def test_small_release_is_deterministic_and_shaped_like_ml10m(synthetic, tmp_path):
    stats = synthetic.make(tmp_path / "a", 20_000, 200, 400, seed=0)
    synthetic.main(["--out", str(tmp_path / "b"), "--size", "small"])
    synthetic.make(tmp_path / "c", 20_000, 200, 400, seed=1)
    for name in ("ratings.dat", "movies.dat"):
        same = (tmp_path / "a" / name).read_bytes()
        assert same == (tmp_path / "b" / name).read_bytes()
        assert same != (tmp_path / "c" / name).read_bytes()
    assert stats["ratings"] == 20_000 and stats["users"] == 200
    ratings = read_dat(tmp_path / "a" / "ratings.dat", ["user", "item", "rating", "time"])
    movies = read_dat(tmp_path / "a" / "movies.dat", ["item", "title", "genres"])
    assert len(ratings) == 20_000 and not ratings.duplicated(["user", "item"]).any()
    assert set(ratings["item"]) <= set(movies["item"]) and movies["title"].is_unique
    assert ratings.groupby("user").size().min() >= 20
    assert set(ratings["rating"]) == {"0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4", "4.5", "5"}
    assert ratings["rating"].value_counts().idxmax() == "4"  # ML-10M's most common rating
    times = ratings["time"].astype(np.int64)
    assert (times.groupby(ratings["user"]).diff().dropna() > 0).all()  # sorted by user, then time
    assert synthetic.START <= times.min() and times.max() <= synthetic.END
    # Zipf-like popularity: the most rated tenth of the items holds far more than a tenth.
    counts = ratings["item"].value_counts().to_numpy()
    assert counts[: len(counts) // 10].sum() > 0.3 * len(ratings)
    assert movies["title"].str.match(r"^[A-Za-z ,0-9]+ \(\d{4}\)$").all()


def test_ml10m_source_prepares_the_synthetic_release(synthetic, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    synthetic.main(["--out", str(cache / "grouplens" / "ml-10m"), "--size", "small"])
    monkeypatch.setenv("SETDPO_CACHE", str(cache))
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "--source", "ml-10m", "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["source"] == "ml-10m" and stats["interactions"] == 20_000
    assert stats["splits"]["test"]["examples"] > 0
    first = open_split(out, "test")[0]
    assert first.meta["source"] == "ml-10m" and len(first.candidates) == 20


def test_amazon_small_is_deterministic_and_amazon_shaped(synthetic, tmp_path):
    for folder in ("a", "b"):
        synthetic.main(
            ["--out", str(tmp_path / folder), "--shape", "amazon", "--size", "amazon-small"]
        )
    stats = synthetic.make_amazon(tmp_path / "c", 50_000, 8_000, 5_000, seed=1)
    for name in ("ratings.csv", "items.csv"):
        same = (tmp_path / "a" / name).read_bytes()
        assert same == (tmp_path / "b" / name).read_bytes()
        assert same != (tmp_path / "c" / name).read_bytes()
    assert stats["ratings"] == 50_000 and stats["users"] == 8_000
    ratings = pd.read_csv(tmp_path / "a" / "ratings.csv", dtype={"user_id": str, "item_id": str})
    items = pd.read_csv(tmp_path / "a" / "items.csv", dtype=str, keep_default_na=False)
    assert list(ratings.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert len(ratings) == 50_000 and not ratings.duplicated(["user_id", "item_id"]).any()
    assert ratings["user_id"].str.fullmatch(r"A[0-9A-X]{12}").all()
    assert items["item_id"].str.fullmatch(r"B0[0-9A-X]{8}").all() and items["item_id"].is_unique
    assert len(items) == 5_000 and items["title"].is_unique
    assert items["title"].str.contains(",").any() and items["title"].str.contains('"').any()
    assert set(ratings["item_id"]) <= set(items["item_id"])
    shares = ratings["rating"].value_counts(normalize=True)
    assert set(shares.index) == {1, 2, 3, 4, 5} and shares[5] > 0.5 and shares.idxmin() == 2
    times = ratings["timestamp"]
    assert synthetic.AMAZON_START <= times.min() and times.max() <= synthetic.AMAZON_END
    assert (times.groupby(ratings["user_id"], sort=False).diff().dropna() > 0).all()
    # Many users with short histories: median 3, over half below 4, a few long ones.
    per_user = ratings.groupby("user_id").size()
    assert per_user.nunique() > 20 and per_user.median() == 3 and (per_user < 4).mean() > 0.5
    assert per_user.min() == 1 and per_user.max() > 50
    # Long tail: the top tenth of the rated items hold far more than a tenth of the rows,
    # and many items are rated once or twice.
    counts = ratings["item_id"].value_counts().to_numpy()
    assert counts[: len(counts) // 10].sum() > 0.3 * len(ratings)
    assert (counts <= 2).mean() > 0.2


def test_file_source_prepares_the_amazon_shape(synthetic, tmp_path):
    data = tmp_path / "amazon"
    synthetic.make_amazon(data, 50_000, 8_000, 5_000)
    out = tmp_path / "prepared"
    argv = ["data", "prepare", "--source", "file", "--out", str(out)]
    argv += ["--interactions", str(data / "ratings.csv"), "--items", str(data / "items.csv")]
    argv += ["--rating-col", "rating", "--domain", "generic", "--max-examples", "200"]
    assert main(argv) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["source"] == "file" and stats["interactions"] == 50_000
    first = open_split(out, "test")[0]
    assert len(first.candidates) == 20 and first.meta["source"] == "file"
