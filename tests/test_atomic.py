"""Atomic writes: the old file or the new one, never half of one, and no temporary left."""

from __future__ import annotations

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
