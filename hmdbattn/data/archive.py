"""Safe, resumable extraction of the HMDB51 RAR archives through libarchive.

Safety: members with absolute paths, ``..`` components, links or special types are refused
with a UserError before anything of theirs is written, so nothing lands outside the
destination. Each file is written to ``<name>.part`` and renamed when complete.

Resumability: a finished extraction leaves a marker under ``<root>/.extract/`` (written last)
and is skipped next time; an interrupted one starts again but keeps every file already there,
because a file under its final name is complete by construction.

Layout produced::

    hmdb51_org.rar         (51 x <class>.rar, each <class>/*.avi)  ->  <root>/videos/<class>/*.avi
    test_train_splits.rar  (testTrainMulti_7030_splits/*.txt)      ->  <root>/splits/*.txt
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from hmdbattn.data.download import byte_progress
from hmdbattn.data.hmdb51 import splits_dir, videos_dir
from hmdbattn.errors import UserError

STATE_DIR = ".extract"
INSTALL_HINT = (
    "install libarchive: `apt-get install libarchive13` (Debian/Ubuntu), "
    "`brew install libarchive` (macOS) or `conda install libarchive`"
)
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class ExtractResult:
    """What one extraction did: files written now, files kept from an earlier run."""

    archive: Path
    dest: Path
    written: int = 0
    kept: int = 0
    skipped: bool = False  # finished earlier: nothing was read


def load_libarchive() -> ModuleType:
    """Import the libarchive binding; a missing system library is a UserError saying what to do."""
    try:
        import libarchive
    except (ImportError, OSError, AttributeError, TypeError) as exc:
        # libarchive-c loads libarchive.so at import: a missing library shows up as any of these.
        raise UserError(f"cannot load libarchive ({exc}); {INSTALL_HINT}") from None
    return libarchive


def member_path(archive: Path, name: str) -> PurePosixPath:
    """The relative path member `name` extracts to; absolute or ``..`` names are UserErrors."""
    text = name.replace("\\", "/")
    parts = text.split("/")
    if text.startswith("/") or _DRIVE.match(text) or ".." in parts:
        raise UserError(
            f"{archive}: refusing member {name!r}: an absolute path or '..' would place it "
            "outside the destination"
        )
    clean = [p for p in parts if p not in ("", ".")]
    if not clean:
        raise UserError(f"{archive}: refusing member {name!r}: empty path")
    return PurePosixPath(*clean)


def _entry_path(archive: Path, entry: Any) -> PurePosixPath:
    """The checked relative path of an entry (names libarchive could not decode are kept)."""
    name = entry.pathname
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="replace")
    return member_path(archive, name or "")


def _check_type(archive: Path, entry: Any) -> None:
    """Only regular files and directories are extracted; links could point anywhere."""
    kind = None
    if entry.issym:
        kind = f"symbolic link to {entry.linkpath!r}"
    elif entry.islnk:
        kind = f"hard link to {entry.linkpath!r}"
    elif not (entry.isreg or entry.isdir):
        kind = "special file"
    if kind is not None:
        raise UserError(f"{archive}: refusing member {entry.pathname!r}: {kind}")


@contextmanager
def _entries(archive: Path) -> Iterator[Any]:
    """Iterate over `archive`'s entries; read errors become UserErrors naming the archive."""
    la = load_libarchive()
    if not archive.is_file():
        raise UserError(f"{archive}: archive not found")
    try:
        with la.file_reader(str(archive)) as reader:
            yield reader
    except la.ArchiveError as exc:
        raise UserError(f"{archive}: cannot read archive ({exc.msg or exc})") from None


def _save(entry: Any, target: Path) -> bool:
    """Write an entry's data to `target` via ``<target>.part``; False if already complete."""
    if target.is_file() and target.stat().st_size == entry.size:
        return False
    part = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as out:
            for block in entry.get_blocks():
                out.write(block)
        os.replace(part, target)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
    return True


def _marker(state_dir: Path, archive_name: str) -> Path:
    return state_dir / f"{archive_name}.done"


def _is_done(marker: Path, size: int, dest: Path) -> bool:
    """A marker counts only for the same archive size and while the destination exists."""
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("size") == size and dest.is_dir()


def _write_marker(marker: Path, archive: Path, size: int, files: int) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    part = marker.with_name(marker.name + ".part")
    part.write_text(json.dumps({"archive": str(archive), "size": size, "files": files}))
    os.replace(part, marker)


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    flatten: bool = False,
    state_dir: Path | None = None,
    force: bool = False,
) -> ExtractResult:
    """Extract every regular file of `archive` under `dest`, safely and idempotently.

    `flatten` drops the folders of member paths (each file lands as ``dest/<basename>``).
    The completion marker lives in `state_dir` (default ``<dest's parent>/.extract/<dest>``);
    `force` ignores it (complete files are still kept).
    """
    state_dir = state_dir or dest.parent / STATE_DIR / dest.name
    marker, size = _marker(state_dir, archive.name), _archive_size(archive)
    result = ExtractResult(archive, dest)
    if not force and _is_done(marker, size, dest):
        result.skipped = True
        return result
    dest.mkdir(parents=True, exist_ok=True)
    with _entries(archive) as entries:
        for entry in entries:
            _check_type(archive, entry)
            rel = _entry_path(archive, entry)
            if entry.isdir:
                if not flatten:
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                continue
            target = dest / (rel.name if flatten else rel)
            if _save(entry, target):
                result.written += 1
            else:
                result.kept += 1
    _write_marker(marker, archive, size, result.written + result.kept)
    return result


def _archive_size(archive: Path) -> int:
    try:
        return archive.stat().st_size
    except OSError as exc:
        raise UserError(f"{archive}: archive not found ({exc.strerror or exc})") from None


def extract_videos(archive: Path, root: Path, *, force: bool = False) -> ExtractResult:
    """Extract ``hmdb51_org.rar`` (one RAR per class) into ``<root>/videos/<class>/*.avi``.

    Each inner RAR is saved under ``<root>/.extract/tmp/``, extracted and removed; inner RARs
    finished by an interrupted earlier run are not extracted again unless `force` is set.
    """
    dest, state = videos_dir(root), root / STATE_DIR / "videos"
    tmp = root / STATE_DIR / "tmp"
    marker, size = _marker(state, archive.name), _archive_size(archive)
    result = ExtractResult(archive, dest)
    if not force and _is_done(marker, size, dest):
        result.skipped = True
        return result
    with byte_progress() as bar, _entries(archive) as entries:
        task = bar.add_task(f"extracting {archive.name}", total=size) if bar else None
        for entry in entries:
            _check_type(archive, entry)
            rel = _entry_path(archive, entry)
            if entry.isreg and rel.suffix.lower() == ".rar":
                _extract_inner(entry, rel.name, dest, state, tmp, result, force)
            if bar is not None and task is not None:
                bar.update(task, completed=min(size, entries.bytes_read))
    _write_marker(marker, archive, size, result.written + result.kept)
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _extract_inner(
    entry: Any, name: str, dest: Path, state: Path, tmp: Path, result: ExtractResult, force: bool
) -> None:
    """Extract one per-class RAR held by the outer archive, unless an earlier run did."""
    if not force and _is_done(_marker(state, name), entry.size, dest):
        return
    inner = tmp / name
    _save(entry, inner)
    done = extract_archive(inner, dest, state_dir=state, force=force)
    result.written += done.written
    result.kept += done.kept
    inner.unlink(missing_ok=True)


def extract_splits(archive: Path, root: Path, *, force: bool = False) -> ExtractResult:
    """Extract ``test_train_splits.rar`` into ``<root>/splits/*.txt`` (its folder flattened)."""
    state = root / STATE_DIR / "splits"
    return extract_archive(archive, splits_dir(root), flatten=True, state_dir=state, force=force)
