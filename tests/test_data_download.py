"""`setdpo data download` against a local HTTP server (`source_samples.FileServer`, standing
in for the official hosts through ``SETDPO_MIRROR``): checksums, resuming, the manual route,
no network."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from source_samples import lastfm, movielens

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_split, prepare
from setdpo.data.download import BLOCK, partial_path, raw_path
from setdpo.data.registry import resolve

ML10M, LASTFM = resolve("ml-10m"), resolve("lastfm")
ML10M_PATH = "/datasets/movielens/ml-10m.zip"
LASTFM_PATH = "/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_download_checks_extracts_and_feeds_prepare(source_server, tmp_path) -> None:
    zip_bytes = movielens("ml-10m")["ml-10m.zip"]
    source_server.files[ML10M_PATH] = zip_bytes
    assert main(["data", "download", "ml-10m", "--sha256", digest(zip_bytes)]) == 0
    folder = tmp_path / "cache" / "grouplens" / "ml-10m"
    assert sorted(p.name for p in folder.iterdir()) == ["movies.dat", "ratings.dat"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ml-10m", "ml-10m.zip"]
    out = prepare(PrepareConfig(source="ml-10m", candidates=4, out=str(tmp_path / "prep")))
    # 6 users x (8 - 3) contexts = 30; 8:1:1 -> 24 / 3 / 3
    assert [len(load_split(out, s)) for s in ("train", "valid", "test")] == [24, 3, 3]
    assert load_split(out, "test")[0].history[0].startswith("Item ")


def test_a_wrong_checksum_is_refused_and_leaves_nothing(source_server, tmp_path, capsys) -> None:
    source_server.files[ML10M_PATH] = movielens("ml-10m")["ml-10m.zip"]
    assert main(["data", "download", "ml-10m", "--sha256", "0" * 64]) == 2
    assert "checksum mismatch: expected sha256 0000" in capsys.readouterr().err
    source_server.files["/datasets/movielens/ml-20m.zip"] = movielens("ml-20m")["ml-20m.zip"]
    assert main(["data", "download", "ml-20m"]) == 2  # the registry's digest of the real zip
    err = capsys.readouterr().err
    assert f"expected sha256 {resolve('ml-20m').files[0].sha256}" in err
    assert err.count("\n") == 1 and "the download was removed" in err
    assert cache_files(tmp_path / "cache") == ["grouplens"]


def test_unverified_download_needs_an_explicit_flag(source_server, tmp_path, capsys) -> None:
    source_server.files[ML10M_PATH] = movielens("ml-10m")["ml-10m.zip"]
    assert main(["data", "download", "ml-10m"]) == 2
    assert "--no-checksum" in capsys.readouterr().err
    assert source_server.requests == []  # refused before any request
    assert main(["data", "download", "ml-10m", "--no-checksum"]) == 0
    assert (tmp_path / "cache" / "grouplens" / "ml-10m" / "ratings.dat").is_file()
    url = f"{source_server.url}{ML10M_PATH}"  # --url: another address, file:// too
    local = tmp_path / "copy.zip"
    local.write_bytes(source_server.files[ML10M_PATH])
    for address in (url, local.as_uri()):
        assert main(["data", "download", "ml-10m", "--url", address, "--force",
                     "--no-checksum"]) == 0  # fmt: skip


def test_force_keeps_the_old_file_until_the_new_one_is_checked(source_server, tmp_path) -> None:
    zip_bytes = movielens("ml-10m")["ml-10m.zip"]
    source_server.files[ML10M_PATH] = zip_bytes
    assert main(["data", "download", "ml-10m", "--sha256", digest(zip_bytes)]) == 0
    assert main(["data", "download", "ml-10m", "--force"]) == 2  # no digest, no flag
    source_server.files[ML10M_PATH] = b"another file"
    assert main(["data", "download", "ml-10m", "--force", "--sha256", digest(zip_bytes)]) == 2
    assert raw_path(ML10M, ML10M.files[0]).read_bytes() == zip_bytes
    assert (tmp_path / "cache" / "grouplens" / "ml-10m" / "ratings.dat").is_file()


def test_broken_zip_and_missing_file(source_server, tmp_path, capsys) -> None:
    source_server.files[ML10M_PATH] = b"not a zip at all"
    assert main(["data", "download", "ml-10m", "--no-checksum"]) == 2
    assert "not a zip file" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "grouplens" / "ml-10m").exists()
    assert main(["data", "download", "steam", "--no-checksum", "--sha256",
                 f"steam_reviews.json.gz={'0' * 64}"]) == 2  # fmt: skip
    assert "HTTP 404" in capsys.readouterr().err


def test_a_cut_connection_resumes_with_a_range_request(source_server, tmp_path) -> None:
    data = lastfm()["hetrec2011-lastfm-2k.zip"]
    source_server.files[LASTFM_PATH] = data
    source_server.cut[LASTFM_PATH] = 600  # the first response stops after 600 bytes
    assert main(["data", "download", "lastfm", "--sha256", digest(data)]) == 0
    assert source_server.requests == [(LASTFM_PATH, None), (LASTFM_PATH, "bytes=600-")]
    assert raw_path(LASTFM, LASTFM.files[0]).read_bytes() == data


def test_a_killed_download_resumes(source_server, tmp_path) -> None:
    data = lastfm(friends=300_000)["hetrec2011-lastfm-2k.zip"]  # three blocks and more
    assert len(data) > 2 * BLOCK
    source_server.files[LASTFM_PATH] = data
    argv = ["data", "download", "lastfm", "--sha256", digest(data)]
    env = os.environ | {"SETDPO_KILL_AT": "download.block:2",
                        "PYTHONPATH": str(Path(__file__).parents[1] / "src")}  # fmt: skip
    killed = subprocess.run([sys.executable, "-m", "setdpo", *argv], env=env,
                            capture_output=True, timeout=120)  # fmt: skip
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    dest = raw_path(LASTFM, LASTFM.files[0])
    assert partial_path(dest).stat().st_size == 2 * BLOCK and not dest.exists()
    assert main(argv) == 0
    assert source_server.requests[-1] == (LASTFM_PATH, f"bytes={2 * BLOCK}-")
    assert dest.read_bytes() == data and not partial_path(dest).exists()


def test_a_server_ignoring_ranges_sends_the_file_again(source_server) -> None:
    data = lastfm()["hetrec2011-lastfm-2k.zip"]
    source_server.files[LASTFM_PATH] = data
    source_server.ignore_range = True
    dest = raw_path(LASTFM, LASTFM.files[0])
    dest.parent.mkdir(parents=True)
    partial_path(dest).write_bytes(data[:500])  # left by an earlier run
    assert main(["data", "download", "lastfm", "--sha256", digest(data)]) == 0
    assert source_server.requests == [(LASTFM_PATH, "bytes=500-")]  # answered with 200
    assert dest.read_bytes() == data


def test_a_part_that_is_not_the_file_is_removed(source_server, capsys) -> None:
    data = lastfm()["hetrec2011-lastfm-2k.zip"]
    source_server.files[LASTFM_PATH] = data
    dest = raw_path(LASTFM, LASTFM.files[0])
    dest.parent.mkdir(parents=True)
    partial_path(dest).write_bytes(b"x" * 500)
    assert main(["data", "download", "lastfm", "--sha256", digest(data)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert not partial_path(dest).exists() and not dest.exists()
    assert main(["data", "download", "lastfm", "--sha256", digest(data)]) == 0


def test_without_network_exit_2_names_the_url_and_the_manual_path(
    tmp_path, monkeypatch, capsys
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SETDPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SETDPO_MIRROR", f"http://127.0.0.1:{port}")
    assert main(["data", "download", "lastfm"]) == 2
    err = capsys.readouterr().err
    url = f"http://127.0.0.1:{port}{LASTFM_PATH}"
    dest = tmp_path / "cache" / "lastfm" / "hetrec2011-lastfm-2k.zip"
    assert err.startswith(f"setdpo: error: {url}: download failed (") and err.count("\n") == 1
    assert err.rstrip().endswith(f"put the file at {dest}")


def test_a_file_put_in_place_by_hand_is_used(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SETDPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SETDPO_MIRROR", "http://127.0.0.1:9")  # never asked
    out = tmp_path / "prep"
    assert main(["data", "prepare", "--source", "ml-10m", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    dest = tmp_path / "cache" / "grouplens" / "ml-10m.zip"
    assert "setdpo data download ml-10m" in err and f"at {dest}" in err
    dest.parent.mkdir(parents=True)
    dest.write_bytes(movielens("ml-10m")["ml-10m.zip"])  # no published digest: taken as is
    assert main(["data", "prepare", "--source", "ml-10m", "--candidates", "4", "--out",
                 str(out)]) == 0  # fmt: skip
    lastfm_dest = tmp_path / "cache" / "lastfm" / "hetrec2011-lastfm-2k.zip"
    lastfm_dest.parent.mkdir(parents=True)
    lastfm_dest.write_bytes(lastfm()["hetrec2011-lastfm-2k.zip"])  # not the published file
    assert main(["data", "download", "lastfm"]) == 2
    assert f"{lastfm_dest}: checksum mismatch" in capsys.readouterr().err
    assert main(["data", "prepare", "--source", "lastfm", "--out", str(tmp_path / "l")]) == 2
    assert f"{lastfm_dest}: checksum mismatch" in capsys.readouterr().err


def test_converted_tables_follow_their_files(source_server, tmp_path, capsys) -> None:
    """Replacing a downloaded file (by hand) makes the tables again on the next read."""
    data = lastfm()["hetrec2011-lastfm-2k.zip"]
    source_server.files[LASTFM_PATH] = data
    assert main(["data", "download", "lastfm", "--sha256", digest(data)]) == 0
    assert "converting" in capsys.readouterr().out
    assert main(["data", "download", "lastfm", "--sha256", digest(data)]) == 0
    assert "converting" not in capsys.readouterr().out  # found, checked, not made again
    os.utime(raw_path(LASTFM, LASTFM.files[0]), ns=(0, 0))  # touched: converted again
    assert main(["data", "download", "lastfm", "--sha256", digest(data)]) == 0
    assert "converting" in capsys.readouterr().out


@pytest.mark.parametrize("option", [["--url", "http://x/y.zip"], ["--sha256", "abc"]])
def test_options_for_one_file_need_a_source_of_one_file(option, source_server, capsys) -> None:
    assert main(["data", "download", "steam", *option]) == 2
    assert "has 2 files" in capsys.readouterr().err
