"""Every registered source (`setdpo.data.registry`), offline: files written here in the
source's exact format and compression (`source_samples`: zips, gzip, headerless CSV, JSON
lines, Python dict literals), served by a local HTTP server under their official paths,
run through `data download` -> `data prepare` -> `data audit`."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import socket
import urllib.parse
import zipfile

import pytest
from source_samples import LEFT_OUT, TITLES, lastfm, sample_files, steam

from setdpo.cli import main
from setdpo.data import PrepareConfig, load_items
from setdpo.data.registry import FAMILIES, every_source, family_of, resolve
from setdpo.errors import InputError

# One source of each family (two Amazon categories: a generic one and a book one).
SOURCES = ["ml-10m", "ml-20m", "ml-32m", "amazon2018:Video_Games", "amazon2023:Books",
           "goodreads:poetry", "steam", "lastfm"]  # fmt: skip


def test_every_family_is_tested_here() -> None:
    assert {family_of(name).name for name in SOURCES} == set(FAMILIES)


@pytest.mark.parametrize("name", SOURCES)
def test_download_prepare_audit(name: str, source_server, tmp_path, capsys) -> None:
    source = resolve(name)
    files = sample_files(source)
    pins = _downloaded(source_server, name, files)  # not the real files: pinned
    paths = {urllib.parse.urlsplit(f.url).path: len(files[f.name]) // 2 for f in source.files}
    source_server.cut.update(paths)  # every transfer stops halfway, then resumes
    assert main(["data", "download", name, *pins]) == 0
    resumed = [[(path, None), (path, f"bytes={cut}-")] for path, cut in paths.items()]
    assert source_server.requests == sum(resumed, [])  # file after file, in registry order
    printed = capsys.readouterr().out
    assert printed.index(source.license) < printed.index("sha256")  # before downloading
    out = tmp_path / "prepared"
    argv = ["data", "prepare", "--source", name, "--candidates", "4", "--out", str(out)]
    assert main(argv) == 0
    assert "converting" not in capsys.readouterr().out  # made once, by the download
    assert main(["data", "audit", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("no findings")
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 10, 48)
    assert stats.get("filtered", {}).get("source") == LEFT_OUT.get(family_of(name).name)
    assert sorted(row["title"] for row in load_items(out)) == sorted(TITLES.values())
    assert json.loads((out / "config.json").read_text())["domain"] == source.domain


@pytest.mark.parametrize("name", SOURCES)
def test_a_wrong_checksum_or_no_network_exits_2(name: str, source_server, tmp_path, capsys):
    source = resolve(name)
    files = sample_files(source)
    pins = _downloaded(source_server, name, files)
    first = source.files[0]
    wrong = pins + ["--sha256", f"{first.name}={'0' * 64}"]  # the last option wins
    assert main(["data", "download", name, *wrong]) == 2
    assert "checksum mismatch: expected sha256 0000" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() or not any(
        p.is_file() for p in (tmp_path / "cache").rglob("*")
    )  # nothing in place, no part left
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        mirror = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert main(["data", "download", name, *pins, "--mirror", mirror]) == 2
    err = capsys.readouterr().err
    url = mirror + urllib.parse.urlsplit(first.url).path
    assert err.startswith(f"setdpo: error: {url}: download failed") and err.count("\n") == 1
    assert err.rstrip().endswith(
        f"put the file at {tmp_path / 'cache' / source.folder / first.name}"
    )


def test_every_entry_is_well_formed() -> None:
    sources = every_source()
    assert len(sources) == 3 + 29 + 34 + 8 + 2
    for source in sources:
        assert source.license and source.domain in ("movie", "music", "book", "generic")
        for file in source.files:
            assert file.url.startswith("https://"), file.url
            assert file.sha256 is None or re.fullmatch("[0-9a-f]{64}", file.sha256), file
        assert {source.interactions.layout.file, source.titles.layout.file} <= {
            f.name for f in source.files
        }
    known = {f.name for s in sources for f in s.files if f.sha256}
    assert "ml-20m.zip" in known and "ml-10m.zip" not in known and len(known) == 1 + 29 + 34 + 8 + 2


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("amazon2023:Vinyl", "category 'Vinyl' is not one of amazon2023's categories"),
        ("goodreads", "no genre: one of goodreads's genres (children, comics_graphic"),
        ("steam:games", "source 'steam' takes no category"),
    ],
)
def test_a_wrong_category_names_the_known_ones(name: str, message: str, tmp_path, capsys) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        resolve(name)
    assert main(["data", "prepare", "--source", name, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_config_takes_the_source_domain_and_usual_preprocessing() -> None:
    assert PrepareConfig(source="goodreads:poetry").domain == "book"
    assert PrepareConfig(source="lastfm", domain="generic").domain == "generic"
    assert PrepareConfig(source="ml-100k").domain == "movie"
    usual = PrepareConfig(source="amazon2023:Books", preprocess="usual")
    assert (usual.kcore, usual.min_rating) == (5, None)
    assert PrepareConfig(source="steam", preprocess="usual", kcore=10).kcore == 10
    with pytest.raises(InputError, match="preprocess 'usual' is a downloaded source's"):
        PrepareConfig(source="ml-100k", preprocess="usual")


def test_unknown_source_lists_the_registry(tmp_path, capsys) -> None:
    assert main(["data", "prepare", "--source", "netflix", "--out", str(tmp_path / "o")]) == 2
    assert "amazon2023:CATEGORY" in capsys.readouterr().err
    assert main(["data", "download", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(family in listing for family in FAMILIES)


def _downloaded(server, name: str, files: dict[str, bytes]) -> list[str]:
    """Serve `files` as source `name`'s; the `--sha256` options that pin them."""
    source = resolve(name)
    server.serve(source, files)
    return [a for f in source.files for a in ("--sha256", f"{f.name}={_sha(files[f.name])}")]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_latin1_artists_file_is_read_as_latin1(source_server, tmp_path) -> None:
    data = lastfm()["hetrec2011-lastfm-2k.zip"]
    members = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            members[name] = zf.read(name)
    members["artists.dat"] = members["artists.dat"].replace(
        b"Item 1,", "Motörhead 1,".encode("latin-1")
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    pins = _downloaded(source_server, "lastfm", {"hetrec2011-lastfm-2k.zip": buffer.getvalue()})
    assert main(["data", "download", "lastfm", *pins]) == 0
    out = tmp_path / "p"
    assert (
        main(["data", "prepare", "--source", "lastfm", "--candidates", "4", "--out", str(out)]) == 0
    )
    assert "Motörhead 1, part 1 (2001)" in [row["title"] for row in load_items(out)]


def test_a_line_that_is_not_a_python_literal_is_named(source_server, capsys) -> None:
    files = steam()
    lines = gzip.decompress(files["steam_reviews.json.gz"]).decode().splitlines(keepends=True)
    lines[2] = "{'username': __import__('os').getcwd()}\n"  # code, never run
    files["steam_reviews.json.gz"] = gzip.compress("".join(lines).encode())
    pins = _downloaded(source_server, "steam", files)
    assert main(["data", "download", "steam", *pins]) == 2
    assert "steam_reviews.json.gz, line 3: not a Python dict literal" in capsys.readouterr().err
