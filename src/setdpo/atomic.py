"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The temporary file is flushed to disk (`fsync`) before it is renamed over the target, and
the folder after: without it a crash (power loss, a killed VM) can leave the renamed file
empty or cut short, since the file system may commit the rename before the data.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from setdpo import faults


def atomic_write_with(
    path: str | Path, write: Callable[[str], object], suffix: str = ".tmp"
) -> Path:
    """`write(tmp)` fills a temporary file beside `path` (named ``*<suffix>``, for writers
    that read the format from the name), which is then renamed over `path`; on any error
    the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        fsync(tmp)
        faults.reached("atomic.replace")
        os.replace(tmp, path)
        fsync(path.parent, directory=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
