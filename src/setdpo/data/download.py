"""Download a GroupLens MovieLens release into the cache, checked and extracted atomically.

The cache is ``$SETDPO_CACHE`` if set, else ``~/.cache/setdpo``; a release lands in
``<cache>/grouplens/<name>/`` (the zip's single top folder, flattened).

Checksums: this project was built on machines without internet access, so the SHA-256
digests of the official zips could not be verified here and the table below holds none.
A download therefore needs either an expected digest (`sha256=`, `--sha256`) or the
explicit `allow_unverified=True` (`--no-checksum`); the digest of what was fetched is
always printed so it can be pinned.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from setdpo.atomic import temporary_file, temporary_folder
from setdpo.errors import InputError

RELEASES: dict[str, tuple[str, str | None]] = {
    # name: (official URL, SHA-256 of the zip: None = not verified offline, see above)
    "ml-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip", None),
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip", None),
    "ml-10m": ("https://files.grouplens.org/datasets/movielens/ml-10m.zip", None),
}


def cache_dir() -> Path:
    """`$SETDPO_CACHE`, else `~/.cache/setdpo`."""
    return Path(os.environ.get("SETDPO_CACHE") or Path.home() / ".cache" / "setdpo")


def dataset_folder(name: str) -> Path:
    """The extracted release; an error says how to get it when it is missing."""
    folder = cache_dir() / "grouplens" / name
    if not folder.is_dir():
        raise InputError(f"{folder} not found; fetch it first with `setdpo data download {name}`")
    return folder


def fetch_dataset(
    name: str,
    url: str | None = None,
    sha256: str | None = None,
    allow_unverified: bool = False,
    force: bool = False,
) -> Path:
    """Download and extract release `name` (from `url`, default the official address)."""
    if name not in RELEASES and url is None:
        raise InputError(f"unknown release {name!r}; known: {sorted(RELEASES)} (or give a URL)")
    default_url, default_sha = RELEASES.get(name, (None, None))
    url, sha256 = url or default_url, sha256 or default_sha
    if sha256 is None and not allow_unverified:
        raise InputError(
            f"no known SHA-256 for {name}; pass the expected digest (--sha256) or accept an "
            "unverified download explicitly (--no-checksum)"
        )
    target = cache_dir() / "grouplens" / name
    if target.is_dir() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = temporary_file(target, ".zip")
    try:
        digest = download(url, archive)
        print(f"{name}: sha256 {digest}")
        if sha256 is not None and digest != sha256.lower():
            raise InputError(f"{url}: checksum mismatch: expected sha256 {sha256}, got {digest}")
        extract(archive, target)
    finally:
        archive.unlink(missing_ok=True)
    return target


def download(url: str, dest: Path, chunk: int = 1 << 20) -> str:
    """Stream `url` into `dest` with a progress bar; returns the SHA-256 of the bytes."""
    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 (http/https URL)
    except OSError as err:
        raise InputError(f"{url}: download failed ({err})") from err
    with response, dest.open("wb") as handle:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            while block := response.read(chunk):
                digest.update(block)
                handle.write(block)
                bar.update(len(block))
    return digest.hexdigest()


def extract(archive: Path, target: Path) -> None:
    """Unzip into a temporary folder beside `target`, then rename it into place."""
    tmp = temporary_folder(target)
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise InputError(f"{archive}: unsafe path {member!r} in the zip")
                zf.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise InputError(f"{archive}: not a zip file ({err})") from err
        entries = list(tmp.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(root, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
