"""Fetch the files of a registered source (`setdpo.data.registry`) into the cache: resumable,
checked, atomic, with progress.

The cache is ``$SETDPO_CACHE`` if set, else ``~/.cache/setdpo``; a source's files land in
``<cache>/<Source.folder>/<file name>`` (`raw_path`), where a file fetched another way is
picked up too (the "manual route" every network error names).

`fetch_file` is the one downloader: bytes go to ``<file>.part`` beside the target, a run
that is cut off (a dropped connection, a killed process) leaves it, and the next run asks
the server for the rest (HTTP ``Range``; a server that answers 200 instead of 206 sends the
whole file again, which is written from the start). The SHA-256 is computed over the whole
file, and checked, before the file is renamed into place; a mismatch removes it. A file
without a known digest is fetched only when the caller accepts that (``--sha256`` /
``--no-checksum``); the digest of what was fetched is printed so it can be pinned.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from setdpo import faults
from setdpo.atomic import fsync
from setdpo.data.registry import RemoteFile, Source
from setdpo.errors import InputError

BLOCK = 1 << 20  # bytes read, written and hashed at a time
ATTEMPTS = 3  # transfers of one file in one run: a dropped connection resumes
TIMEOUT = 60  # seconds without a byte before a transfer is given up
MIRROR = "SETDPO_MIRROR"  # a base URL that replaces the official hosts (`mirrored`)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class _Interrupted(Exception):
    """A transfer cut off midway: what was received is kept, the next attempt resumes."""


def cache_dir() -> Path:
    """`$SETDPO_CACHE`, else `~/.cache/setdpo`."""
    return Path(os.environ.get("SETDPO_CACHE") or Path.home() / ".cache" / "setdpo")


def raw_path(source: Source, file: RemoteFile) -> Path:
    """Where `file` of `source` is kept, downloaded or put there by hand."""
    return cache_dir() / source.folder / file.name


def partial_path(dest: Path) -> Path:
    """The partial download of `dest` (kept when cut off; the next run resumes it)."""
    return dest.with_name(dest.name + ".part")


def mirrored(url: str, mirror: str | None) -> str:
    """`url` fetched from `mirror` (``http://host:port/base``: the URL's path under it), or
    as it is without one."""
    if not mirror:
        return url
    return mirror.rstrip("/") + urllib.parse.urlsplit(url).path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, sha256: str | None) -> str:
    """The digest of a file already in the cache, checked against `sha256` when known."""
    digest = sha256_file(path)
    if sha256 and digest != sha256.lower():
        raise InputError(
            f"{path}: checksum mismatch: expected sha256 {sha256}, got {digest}; remove it, "
            "or fetch it again with --force"
        )
    return digest


def fetch_source(
    source: Source,
    sha256: dict[str, str] | None = None,
    allow_unverified: bool = False,
    force: bool = False,
    url: str | None = None,
    mirror: str | None = None,
) -> dict[str, str]:
    """Every file of `source` in the cache, each checked; returns their SHA-256 by name.

    `sha256` (file name -> digest) overrides the registry; `url` replaces the address of a
    source of one file; `mirror` the official hosts (default ``$SETDPO_MIRROR``). Files
    already in the cache are checked, not fetched (`force` fetches them again). The license
    note is printed before anything is downloaded.
    """
    mirror = mirror if mirror is not None else os.environ.get(MIRROR)
    if url is not None and len(source.files) != 1:
        raise InputError(
            f"{source.name} has {len(source.files)} files; --url replaces the address of a "
            "source of one file (--mirror replaces the host of every file)"
        )
    overrides = sha256 or {}
    unknown = sorted(set(overrides) - {f.name for f in source.files})
    if unknown:
        files = [f.name for f in source.files]
        raise InputError(f"{source.name} has no file {unknown}; its files: {files}")
    expected = {f.name: overrides.get(f.name) or f.sha256 for f in source.files}
    to_fetch = [f for f in source.files if force or not raw_path(source, f).is_file()]
    blind = [f.name for f in to_fetch if expected[f.name] is None]
    if blind and not allow_unverified:
        raise InputError(
            f"no known SHA-256 for {', '.join(blind)} ({source.name}); pass the expected "
            "digest (--sha256 FILE=HEX) or accept an unverified download explicitly "
            "(--no-checksum)"
        )
    for file in to_fetch if force else ():  # what is there is replaced only once fetched
        partial_path(raw_path(source, file)).unlink(missing_ok=True)
    if to_fetch:
        print(f"{source.name}: {source.license}", flush=True)
    digests = {}
    for file in source.files:
        dest, want = raw_path(source, file), expected[file.name]
        if file in to_fetch:
            size = file.size if url is None and want == file.sha256 else None
            digests[file.name] = fetch_file(url or mirrored(file.url, mirror), dest, want, size)
            where = "fetched"
        else:
            digests[file.name] = check_file(dest, want)
            where = "in the cache"
        note = "verified" if want else "not verified: no published digest"
        print(f"{file.name}: sha256 {digests[file.name]} ({note}; {where})")
    return digests


def fetch_file(url: str, dest: Path, sha256: str | None = None, size: int | None = None) -> str:
    """Download `url` to `dest` through ``dest.part`` (resumed if there); returns the
    SHA-256 of the whole file, which must equal `sha256` (and its length `size`) when given,
    before the file is renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    reason: Exception | None = None
    for _ in range(ATTEMPTS):
        try:
            digest = _transfer(url, dest, size)
            break
        except _Interrupted as err:
            reason = err
    else:
        kept = part.stat().st_size if part.exists() else 0
        raise InputError(
            f"{url}: download interrupted ({reason}); {kept} bytes kept in {part}: run the "
            f"command again to resume, or {_by_hand(dest)}"
        )
    received = part.stat().st_size
    problem = None
    if sha256 and digest != sha256.lower():
        problem = f"checksum mismatch: expected sha256 {sha256}, got {digest}"
    elif size is not None and received != size:
        problem = f"size mismatch: expected {size} bytes, got {received}"
    if problem:
        part.unlink(missing_ok=True)
        raise InputError(f"{url}: {problem}; the download was removed")
    fsync(part)
    os.replace(part, dest)
    fsync(dest.parent, directory=True)
    return digest


def _transfer(url: str, dest: Path, size: int | None) -> str:
    """One request for the rest of `dest.part`; returns the digest of the whole file."""
    part = partial_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    if offset and size is not None and offset >= size:  # all there (or too much): no request
        if offset == size:
            return sha256_file(part)
        part.unlink()
        offset = 0
    headers = {"User-Agent": "setdpo"} | ({"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(  # noqa: S310 (the registry's http(s) URLs)
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT
        )
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the part is not a prefix the server knows
            part.unlink()
            raise _Interrupted("the server refused to resume; starting over") from err
        why = f"HTTP {err.code} {err.reason}"
        raise InputError(f"{url}: download failed ({why}); {_by_hand(dest)}") from err
    except (OSError, http.client.HTTPException) as err:
        why = getattr(err, "reason", None) or err
        raise InputError(f"{url}: download failed ({why}); {_by_hand(dest)}") from err
    with response:
        try:
            start = _resumed_at(response, offset)
        except _Interrupted:
            part.unlink()  # not the part's continuation: the next attempt starts over
            raise
        digest = hashlib.sha256()
        if start:  # the server sends the rest: hash what is there first
            with part.open("rb") as handle:
                while block := handle.read(BLOCK):
                    digest.update(block)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else size
        received = start
        with (
            part.open("ab" if start else "wb") as handle,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                file=sys.stderr,
                delay=1,
            ) as bar,
        ):
            try:
                while block := response.read(BLOCK):
                    handle.write(block)
                    handle.flush()  # what a killed process leaves is what it received
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
                    faults.reached("download.block")
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(f"{err} after {received} bytes") from err
        if total is not None and length and received < total:
            raise _Interrupted(f"connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def _by_hand(dest: Path) -> str:
    return f"without network, fetch it another way and put the file at {dest}"


def _resumed_at(response, offset: int) -> int:
    """Where the response's bytes start: `offset` for a 206 that continues the part, 0 when
    the server sends the whole file (200: it ignored the Range)."""
    if not offset or getattr(response, "status", None) != 206:
        return 0
    found = _CONTENT_RANGE.match(response.headers.get("Content-Range") or "")
    if not found or int(found[1]) != offset:
        raise _Interrupted(
            f"the server resumed at {response.headers.get('Content-Range')!r}, not byte {offset}"
        )
    return offset
