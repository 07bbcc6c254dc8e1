"""`setdpo data download` against a local HTTP server serving a zip made here."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_split, prepare

RATINGS = "".join(
    f"{u}::{m}::{1 + (u + m) % 5}::{100 * u + m}\n" for u in (1, 2) for m in range(1, 9)
)
MOVIES = "".join(f"{m}::Film {m} (199{m})::Drama\n" for m in range(1, 13))


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """Serve tmp_path/www on 127.0.0.1 with a GroupLens-shaped ml-10m zip; cache in tmp_path."""
    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "ml-10m.zip", "w") as zf:  # one top folder, as GroupLens ships
        zf.writestr("ml-10M100K/ratings.dat", RATINGS)
        zf.writestr("ml-10M100K/movies.dat", MOVIES)
    (www / "broken.zip").write_bytes(b"not a zip at all")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SETDPO_CACHE", str(tmp_path / "cache"))
    digest = hashlib.sha256((www / "ml-10m.zip").read_bytes()).hexdigest()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", digest, tmp_path / "cache"
    httpd.shutdown()
    httpd.server_close()


def test_download_checks_extracts_and_feeds_prepare(server, tmp_path):
    url, digest, cache = server
    assert (
        main(["data", "download", "ml-10m", "--url", f"{url}/ml-10m.zip", "--sha256", digest]) == 0
    )
    folder = cache / "grouplens" / "ml-10m"
    assert sorted(p.name for p in folder.iterdir()) == ["movies.dat", "ratings.dat"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left
    out = prepare(PrepareConfig(source="ml-10m", candidates=4, out=str(tmp_path / "prep")))
    # 2 users x (8 - 3) contexts = 10; 8:1:1 of 10 -> 8 / 1 / 1
    assert [len(load_split(out, s)) for s in ("train", "valid", "test")] == [8, 1, 1]
    assert load_split(out, "test")[0].history[0].startswith("Film ")


def test_checksum_mismatch_is_refused_and_leaves_nothing(server, capsys):
    url, _, cache = server
    args = ["data", "download", "ml-10m", "--url", f"{url}/ml-10m.zip", "--sha256", "0" * 64]
    assert main(args) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert list((cache / "grouplens").iterdir()) == []


def test_unverified_download_needs_an_explicit_flag(server, capsys):
    url, _, cache = server
    assert main(["data", "download", "ml-10m", "--url", f"{url}/ml-10m.zip"]) == 2
    assert "--no-checksum" in capsys.readouterr().err
    assert main(["data", "download", "ml-10m", "--url", f"{url}/ml-10m.zip", "--no-checksum"]) == 0
    assert (cache / "grouplens" / "ml-10m" / "ratings.dat").is_file()


def test_broken_zip_and_missing_file(server, capsys):
    url, _, cache = server
    assert main(["data", "download", "ml-10m", "--url", f"{url}/broken.zip", "--no-checksum"]) == 2
    assert "not a zip file" in capsys.readouterr().err
    assert main(["data", "download", "ml-10m", "--url", f"{url}/absent.zip", "--no-checksum"]) == 2
    assert "download failed" in capsys.readouterr().err
    assert list((cache / "grouplens").iterdir()) == []


def test_prepare_without_download_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SETDPO_CACHE", str(tmp_path))
    assert main(["data", "prepare", "--source", "ml-10m", "--out", str(tmp_path / "o")]) == 2
    assert "setdpo data download ml-10m" in capsys.readouterr().err
