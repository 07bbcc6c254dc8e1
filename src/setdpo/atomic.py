"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The temporary file is flushed to disk (`fsync`) before it is renamed over the target, and
the folder after: without it a crash (power loss, a killed VM) can leave the renamed file
empty or cut short, since the file system may commit the rename before the data.

Temporaries (files and folders beside their target) are named for their owner:
``.<target name>.<host>-<pid>-<random><suffix>``, `host` a hash of the machine's name. A
killed process cannot remove its own, so each new temporary first removes, in its folder,
those whose owner is a process of this machine that is no longer running
(`remove_stale`); a running process's temporaries, or another machine's, are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setdpo import faults

HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# A temporary's name; tempfile's random part is 8 of [a-z0-9_], the suffix says what it is:
# written (.tmp, or the format's, as .png), set aside (.old), scratch (.work), downloaded (.zip).
_TEMPORARY = re.compile(r"\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[a-z0-9_]{8}\.[a-z0-9]+")


def temporary_prefix(target: Path) -> str:
    """``.<target name>.<host>-<pid>-``: the start of this process's temporaries for `target`."""
    return f".{target.name}.{HOST}-{os.getpid()}-"


def temporary_file(target: str | Path, suffix: str = ".tmp") -> Path:
    """A new empty file beside `target`, owned by this process (after `remove_stale`)."""
    target = Path(target)
    remove_stale(target.parent)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temporary_prefix(target), suffix=suffix)
    os.close(fd)
    return Path(tmp)


def temporary_folder(target: str | Path, suffix: str = ".tmp") -> Path:
    """A new empty folder beside `target`, owned by this process (after `remove_stale`)."""
    target = Path(target)
    remove_stale(target.parent)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=temporary_prefix(target), suffix=suffix))


@contextmanager
def scratch_folder(target: str | Path, suffix: str = ".work") -> Iterator[Path]:
    """`temporary_folder`, removed with its contents when the block ends."""
    folder = temporary_folder(target, suffix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one of setdpo's temporaries (any owner)."""
    return _TEMPORARY.fullmatch(name) is not None


def _running(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: assume it runs
        return True
    try:
        os.kill(pid, 0)  # PermissionError (another user's process) means it runs too
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale(folder: str | Path) -> list[Path]:
    """Remove the temporaries in `folder` left by processes of this machine that have ended
    (killed before they could remove them); returns what it removed. A pid that a new
    process has taken since keeps its temporaries until that process ends."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        found = _TEMPORARY.fullmatch(entry.name)
        if not found or found["host"] != HOST or _running(int(found["pid"])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def atomic_write_with(
    path: str | Path, write: Callable[[str], object], suffix: str = ".tmp"
) -> Path:
    """`write(tmp)` fills a temporary file beside `path` (named ``*<suffix>``, for writers
    that read the format from the name), which is then renamed over `path`; on any error
    the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_file(path, suffix)
    try:
        write(str(tmp))
        fsync(tmp)
        faults.reached("atomic.replace")
        os.replace(tmp, path)
        fsync(path.parent, directory=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def fsync(path: str | Path, directory: bool = False) -> None:
    """Flush `path` (a file, or a folder's entries) to disk; folders where the platform
    cannot open them (Windows) are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    return atomic_write_with(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, value: Any, indent: int = 1) -> Path:
    """`value` as JSON (one trailing newline), written atomically."""
    return atomic_write_text(path, json.dumps(value, indent=indent) + "\n")
