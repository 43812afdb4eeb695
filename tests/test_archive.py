"""Safe, resumable RAR extraction (archives written by tests/rar4.py) and dataset verification."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from rar4 import directory, file, mini_hmdb51, rar4_bytes, symlink, write_rar4

from hmdbattn.data import archive
from hmdbattn.data.archive import ExtractResult, extract_archive, extract_splits, extract_videos
from hmdbattn.data.verify import HMDB51_EXPECTED, Expected, verify_dataset
from hmdbattn.errors import UserError
from hmdbattn.report import quiet


def files_under(path: Path) -> dict[str, bytes]:
    """Every regular file under `path`, relative path -> content."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.fixture
def mini(tmp_path: Path) -> tuple[Path, Expected]:
    """A small HMDB51-shaped pair of archives in tmp_path/src and its expected counts."""
    return tmp_path / "src", Expected(**mini_hmdb51(tmp_path / "src"))


def quiet_extract_videos(archive: Path, root: Path) -> ExtractResult:
    """`extract_videos` without its progress bar."""
    with quiet():
        return extract_videos(archive, root)


def extract_mini(src: Path, root: Path) -> None:
    extract_splits(src / "test_train_splits.rar", root)
    quiet_extract_videos(src / "hmdb51_org.rar", root)


def test_rar4_writer_is_read_by_libarchive(tmp_path: Path) -> None:
    rar = write_rar4(
        tmp_path / "a.rar",
        [directory("d"), file("d/x (1)&!.avi", b"abc" * 999), file("é.txt", b"e"), ("e", b"")],
    )
    libarchive = archive.load_libarchive()
    with libarchive.file_reader(str(rar)) as reader:
        seen = {e.pathname: (e.isdir, b"".join(e.get_blocks())) for e in reader}
    assert seen == {
        "d": (True, b""),
        "d/x (1)&!.avi": (False, b"abc" * 999),
        "é.txt": (False, b"e"),
        "e": (False, b""),
    }


def test_extract_archive_writes_files_atomically(tmp_path: Path) -> None:
    rar = write_rar4(tmp_path / "a.rar", [directory("d"), ("d/x (1)&!.avi", b"abc"), ("y", b"")])
    result = extract_archive(rar, tmp_path / "out")
    assert files_under(tmp_path / "out") == {"d/x (1)&!.avi": b"abc", "y": b""}
    assert (result.written, result.kept, result.skipped) == (2, 0, False)
    assert not list((tmp_path / "out").rglob("*.part"))


def test_hmdb51_layout(tmp_path: Path, mini: tuple[Path, Expected]) -> None:
    src, _ = mini
    root = tmp_path / "root"
    splits = extract_splits(src / "test_train_splits.rar", root)
    videos = quiet_extract_videos(src / "hmdb51_org.rar", root)
    assert (splits.written, videos.written) == (6, 10)
    assert sorted(p.name for p in (root / "splits").iterdir()) == sorted(
        f"{c}_test_split{k}.txt" for c in ("brush_hair", "cartwheel") for k in (1, 2, 3)
    )
    avis = sorted(str(p.relative_to(root / "videos")) for p in (root / "videos").rglob("*.avi"))
    classes = ("brush_hair", "cartwheel")
    names = [f"{c}/{c}_Hamlet_(1996)_&_it's!-{i}.avi" for c in classes for i in range(5)]
    assert avis == sorted(names)
    third = root / "videos" / "cartwheel" / "cartwheel_Hamlet_(1996)_&_it's!-3.avi"
    assert third.read_bytes() == b"cartwheel3" * 50
    # The inner per-class RARs were temporary.
    assert not list(root.rglob("*.rar"))


ABSOLUTE = f"/tmp/hmdbattn-abs-{uuid.uuid4().hex}.txt"
HOSTILE = {
    "dotdot": [file("ok.txt", b"ok"), file("../evil.txt", b"evil")],
    "nested-dotdot": [file("a/../../evil.txt", b"evil")],
    "absolute": [file(ABSOLUTE, b"evil")],
    "drive": [file("C:/evil.txt", b"evil")],
    "symlink": [symlink("link", "../outside"), file("link/evil.txt", b"evil")],
    "symlink-abs": [symlink("passwd", "/etc/passwd")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused(tmp_path: Path, case: str) -> None:
    members = HOSTILE[case]
    rar = write_rar4(tmp_path / "archives" / "hostile.rar", members)
    dest = tmp_path / "a" / "dest"
    before = files_under(tmp_path)
    with pytest.raises(UserError) as info:
        extract_archive(rar, dest)
    message = str(info.value)
    assert str(rar) in message and "refusing member" in message
    bad = next(m for m in members if m.data == b"evil" or m.kind == "symlink")
    assert repr(bad.name) in message
    if bad.kind == "symlink":
        assert f"symbolic link to {bad.target!r}" in message
    # Nothing outside the destination, no link anywhere, no completion marker.
    after = files_under(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("a/dest/")} == before
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))
    assert not Path(ABSOLUTE).exists()
    assert not (tmp_path / "a" / ".extract").exists()


def test_hostile_member_inside_a_class_rar(tmp_path: Path) -> None:
    inner = [directory("kiss"), file("kiss/a.avi", b"a"), file("../../evil.avi", b"evil")]
    outer = write_rar4(tmp_path / "src" / "hmdb51_org.rar", [file("kiss.rar", rar4_bytes(inner))])
    with pytest.raises(UserError, match=r"kiss\.rar: refusing member '\.\./\.\./evil\.avi'"):
        quiet_extract_videos(outer, tmp_path / "r" / "root")
    assert not list(tmp_path.rglob("evil.avi"))


def test_second_run_skips(tmp_path: Path, mini: tuple[Path, Expected]) -> None:
    src, _ = mini
    root = tmp_path / "root"
    extract_mini(src, root)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert quiet_extract_videos(src / "hmdb51_org.rar", root).skipped
    assert extract_splits(src / "test_train_splits.rar", root).skipped
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps


def test_changed_archive_is_extracted_again(tmp_path: Path) -> None:
    rar = write_rar4(tmp_path / "a.rar", [("x", b"1")])
    extract_archive(rar, tmp_path / "out")
    write_rar4(rar, [("x", b"1"), ("y", b"22")])
    result = extract_archive(rar, tmp_path / "out")
    assert (result.skipped, result.written, result.kept) == (False, 1, 1)


def test_interrupted_extraction_completes(
    tmp_path: Path, mini: tuple[Path, Expected], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, expected = mini
    root = tmp_path / "root"
    save, calls = archive._save, []

    def crashing_save(entry, target):  # type: ignore[no-untyped-def]
        calls.append(target)
        if len(calls) == 9:  # class 1: rar + 5 videos; class 2: rar + 1 video, then crash
            raise KeyboardInterrupt
        return save(entry, target)

    monkeypatch.setattr(archive, "_save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        quiet_extract_videos(src / "hmdb51_org.rar", root)
    monkeypatch.setattr(archive, "_save", save)
    survivors = {p: p.stat().st_ino for p in (root / "videos").rglob("*.avi")}
    assert len(survivors) == 6

    result = quiet_extract_videos(src / "hmdb51_org.rar", root)
    # Class 1 is skipped whole; in class 2 the finished video is kept and 4 are written.
    assert (result.written, result.kept, result.skipped) == (4, 1, False)
    assert {p: p.stat().st_ino for p in survivors} == survivors
    assert not list(root.rglob("*.part")) and not (root / ".extract" / "tmp").exists()
    extract_splits(src / "test_train_splits.rar", root)
    assert verify_dataset(root, expected).ok


def test_missing_libarchive_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "libarchive", None)  # makes `import libarchive` fail
    with pytest.raises(UserError, match="apt-get install libarchive13") as info:
        archive.load_libarchive()
    assert "brew install libarchive" in str(info.value)
    assert "conda install libarchive" in str(info.value)


def test_corrupt_archive_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rar"
    bad.write_bytes(b"Rar!\x1a\x07\x00" + b"\x00" * 64)
    with pytest.raises(UserError, match=r"bad\.rar: cannot read archive"):
        extract_archive(bad, tmp_path / "out")
    with pytest.raises(UserError, match=r"nope\.rar: archive not found"):
        extract_archive(tmp_path / "nope.rar", tmp_path / "out")


# --------------------------------------------------------------------------- verify


def test_verify_complete_fixture(tmp_path: Path, mini: tuple[Path, Expected]) -> None:
    src, expected = mini
    extract_mini(src, tmp_path / "root")
    result = verify_dataset(tmp_path / "root", expected)
    assert result.ok, result.rows()
    assert len(result.checks) == 13 and result.missing == []
    assert result.to_dict()["ok"] is True


def test_verify_reports_differences(tmp_path: Path, mini: tuple[Path, Expected]) -> None:
    src, expected = mini
    root = tmp_path / "root"
    extract_mini(src, root)
    gone = "cartwheel/cartwheel_Hamlet_(1996)_&_it's!-2.avi"
    (root / "videos" / gone).unlink()
    (root / "splits" / "brush_hair_test_split3.txt").unlink()
    result = verify_dataset(root, expected)
    assert not result.ok
    found = {c.name: (c.expected, c.found) for c in result.checks}
    assert found["videos (.avi files)"] == (10, 9)
    assert found["split files"] == (6, 5)
    assert found["split 3 train"] == (4, 2)
    assert found["split 1 train"] == (4, 4)
    assert found["split entries on disk"] == (10, 9)
    assert result.missing == [gone]
    assert ("split files", 6, 5, "DIFFERS") in result.rows()
    assert result.to_dict()["missing"] == [gone]


def test_verify_defaults_are_hmdb51(tmp_path: Path, mini: tuple[Path, Expected]) -> None:
    hmdb51 = Expected(classes=51, videos=6766, split_files=153, train=3570, test=1530, unused=1666)
    assert hmdb51 == HMDB51_EXPECTED
    src, _ = mini
    extract_mini(src, tmp_path / "root")
    result = verify_dataset(tmp_path / "root")
    assert not result.ok
    assert {c.name: c.found for c in result.checks}["classes (videos/ folders)"] == 2


def test_verify_empty_root(tmp_path: Path) -> None:
    result = verify_dataset(tmp_path, Expected(1, 1, 1, 1, 1, 1))
    assert not result.ok and all(c.found == 0 for c in result.checks)
