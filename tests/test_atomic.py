"""Atomic writes: the old file or the new one, never half of one, and no temporary left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from setdpo.atomic import (
    HOST,
    atomic_write_text,
    atomic_write_with,
    remove_stale,
    temporary_file,
    temporary_folder,
)


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


def _ended_pid() -> int:
    """The pid of a process that has ended (and been waited for)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_the_next_write_removes_an_ended_process_temporaries_and_only_those(
    tmp_path: Path,
) -> None:
    """A killed process leaves its temporaries (it cannot remove them); the next temporary
    made in that folder removes them. A running process's, another machine's and files
    that only look alike stay."""
    ended, sleeper = _ended_pid(), subprocess.Popen(["sleep", "60"])
    try:
        left = {
            "file": tmp_path / f".results.json.{HOST}-{ended}-abcd_123.tmp",
            "folder": tmp_path / f".data.{HOST}-{ended}-x1y2z3w4.old",
            "plot": tmp_path / f".plot.png.{HOST}-{ended}-q1q2q3q4.png",
        }
        kept = {
            "this process": tmp_path / f".results.json.{HOST}-{os.getpid()}-abcd_123.tmp",
            "running": tmp_path / f".data.{HOST}-{sleeper.pid}-x1y2z3w4.work",
            "another machine": tmp_path / f".results.json.0123abcd-{ended}-abcd_123.tmp",
            "not setdpo's": tmp_path / f".results.json.{ended}.tmp",
            "visible": tmp_path / f"results.json.{HOST}-{ended}-abcd_123.tmp",
        }
        for path in [*left.values(), *kept.values()]:
            path.mkdir() if path.suffix in (".old", ".work") else path.write_text("x")
        (left["folder"] / "dir").mkdir()
        atomic_write_text(tmp_path / "results.json", "new")
        assert not any(path.exists() for path in left.values())
        assert all(path.exists() for path in kept.values())
        assert remove_stale(tmp_path) == []
        sleeper.kill()
        sleeper.wait()
        assert remove_stale(tmp_path) == [kept["running"]]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_temporaries_are_named_for_their_owner(tmp_path: Path) -> None:
    made = [temporary_file(tmp_path / "a.json"), temporary_folder(tmp_path / "b", ".old")]
    prefixes = [f".a.json.{HOST}-{os.getpid()}-", f".b.{HOST}-{os.getpid()}-"]
    assert all(p.name.startswith(prefix) for p, prefix in zip(made, prefixes, strict=True))
    assert made[0].is_file() and made[1].is_dir() and made[1].suffix == ".old"
    assert remove_stale(tmp_path) == []  # this process is running
