"""Atomic writes: all or nothing, and files readable as the user's umask allows."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hmdbattn.fileio import atomic_write_text, atomic_writer


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write(b"half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_new_files_follow_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "a" / "b.txt", "x")  # parents are created
    mode = stat.S_IMODE((tmp_path / "a" / "b.txt").stat().st_mode)
    assert mode == 0o666 & ~umask
