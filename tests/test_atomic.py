"""Atomic writes: the old file or the new one, never half of one, and no temporary left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from setdpo.atomic import atomic_write_text, atomic_write_with


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "state.json", "old")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_writer_sees_a_temporary_with_the_suffix_it_asks_for(tmp_path: Path) -> None:
    names: list[str] = []

    def write(tmp: str) -> None:
        names.append(Path(tmp).name)
        Path(tmp).write_bytes(b"\x89PNG")

    path = atomic_write_with(tmp_path / "plots" / "m.png", write, suffix=".png")
    assert path.read_bytes() == b"\x89PNG" and names[0].endswith(".png")
    assert names[0] != "m.png" and sorted(p.name for p in path.parent.iterdir()) == ["m.png"]


def test_the_data_reaches_the_disk_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without an fsync a crash can leave the renamed file empty or cut short (issue 19).
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = atomic_write_text(tmp_path / "shard.json", "{}")
    inode = path.stat().st_ino
    assert ("replace", inode) in events
    assert ("fsync", inode) in events[: events.index(("replace", inode))]
