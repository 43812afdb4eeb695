"""Safe, resumable extraction of the HMDB51 and UCF101 archives (RAR, zip) through libarchive.

Safety: members with absolute paths, ``..`` components, links or special types are refused
with a UserError before anything of theirs is written, so nothing lands outside the
destination. Each file is written to ``<name>.part`` and renamed when complete.

Resumability: a finished extraction leaves a marker under ``<root>/.extract/`` (written last)
holding a manifest (each file's path and size); it is skipped next time while every file of
the manifest is there with its size. An interrupted or repeated extraction keeps each file
whose content equals its member's (compared byte for byte while the member is read) and
rewrites the others. A ``.part`` file is removed when its write fails (a full disk, ...).
Two members that would land on one file are refused, naming both.

Layout produced::

    hmdb51_org.rar         (51 x <class>.rar, each <class>/*.avi)  ->  <root>/videos/<class>/*.avi
    test_train_splits.rar  (testTrainMulti_7030_splits/*.txt)      ->  <root>/splits/*.txt
    UCF101.rar             (UCF-101/<Class>/*.avi)                 ->  <root>/videos/<Class>/*.avi
    UCF101TrainTestSplits-RecognitionTask.zip (ucfTrainTestlist/*.txt) -> <root>/splits/*.txt
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import IO, Any

from hmdbattn.data.download import CHUNK, byte_progress
from hmdbattn.data.hmdb51 import splits_dir, videos_dir
from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_write_text, os_errors

STATE_DIR = ".extract"
INSTALL_HINT = (
    "install libarchive: `apt-get install libarchive13` (Debian/Ubuntu), "
    "`brew install libarchive` (macOS) or `conda install libarchive`"
)
_DRIVE = re.compile(r"^[A-Za-z]:")
# Which member each destination file comes from (relative path -> "member 'x' of a.rar").
Claims = dict[str, str]
RERUN_HINT = (
    "; fix that (disk space, permissions, a file in the way) and run again: finished files are kept"
)


@dataclass
class ExtractResult:
    """What one extraction did: files written now, files kept from an earlier run."""

    archive: Path
    dest: Path
    written: int = 0
    kept: int = 0
    skipped: bool = False  # finished earlier: nothing was read
    # The manifest: each file's path (relative to `dest`) and size.
    files: dict[str, int] = field(default_factory=dict)


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
    """Put an entry's data at `target` via ``<target>.part``; False if it was there already.

    A file already at `target` is kept only when its content equals the entry's (compared as
    the entry is read); a ``.part`` whose write fails is removed.
    """
    if target.is_dir():
        raise UserError(
            f"{target}: is a folder, but an archive member belongs there; move it, then run again"
        )
    blocks: Iterator[bytes] = iter(entry.get_blocks())
    with os_errors(target, "read"):
        if target.is_file() and target.stat().st_size == entry.size:
            blocks = _unless_equal(target, blocks)
            first = next(blocks, None)
            if first is None:
                return False
            blocks = itertools.chain([first], blocks)
    part = target.with_name(target.name + ".part")
    try:
        with os_errors(part, "write", RERUN_HINT):
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as out:
                _write_blocks(blocks, out)
            os.replace(part, target)
    except BaseException:
        # A half-written file helps nobody: the next run redoes it. (A folder that could not
        # be made leaves nothing to remove; that error is the one to report.)
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)
        raise
    return True


def _unless_equal(target: Path, blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Nothing if `target` holds exactly the data in `blocks`; else all of that data.

    Reads `target` alongside; at the first difference, the equal bytes read so far are
    yielded again from `target`, then the rest of `blocks`.
    """
    with open(target, "rb") as f:
        done = 0
        for block in blocks:
            if f.read(len(block)) != block:
                yield from _read_range(target, done)
                yield block
                yield from blocks
                return
            done += len(block)
        if f.read(1):  # longer than the entry (sizes can be wrong in headers)
            yield from _read_range(target, done)


def _read_range(path: Path, size: int) -> Iterator[bytes]:
    """The first `size` bytes of `path`, in chunks."""
    with open(path, "rb") as f:
        while size > 0:
            block = f.read(min(CHUNK, size))
            if not block:
                return
            size -= len(block)
            yield block


def _write_blocks(blocks: Iterable[bytes], out: IO[bytes]) -> None:
    """Write the data blocks to `out` (one place, so tests can make the disk full here)."""
    for block in blocks:
        out.write(block)


def _marker(state_dir: Path, archive_name: str) -> Path:
    return state_dir / f"{archive_name}.done"


def _done_files(marker: Path, size: int, dest: Path) -> dict[str, int] | None:
    """The manifest of a finished extraction, None unless it still holds.

    A marker counts only for the same archive size, while the destination exists and every
    file of its manifest is there with its recorded size.
    """
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(recorded, dict) and recorded.get("size") == size and dest.is_dir()):
        return None
    files = recorded.get("files")
    if not isinstance(files, dict) or not all(_has_size(dest / rel, n) for rel, n in files.items()):
        return None
    return files


def _has_size(path: Path, size: object) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _write_marker(marker: Path, archive: Path, size: int, files: dict[str, int]) -> None:
    """Record a finished extraction and its manifest (written last, atomically)."""
    record = {"archive": str(archive), "size": size, "files": files}
    with os_errors(marker, "write", RERUN_HINT):
        atomic_write_text(marker, json.dumps(record))


def _skipped(archive: Path, dest: Path, files: dict[str, int], claims: Claims) -> ExtractResult:
    """The result of an extraction that finished earlier: nothing read, its manifest known."""
    for rel in files:
        claims.setdefault(rel, f"a file of {archive} (extracted earlier)")
    return ExtractResult(archive, dest, skipped=True, files=dict(files))


def _claim(claims: Claims, rel: str, origin: str, target: Path) -> None:
    """Reserve `target` (`rel` under the destination) for `origin`; a second claim is refused."""
    if rel in claims:
        raise UserError(
            f"refusing {origin}: it extracts to {target}, as {claims[rel]} does; "
            "one would silently replace the other"
        )
    claims[rel] = origin


def _make_dirs(folder: Path) -> None:
    with os_errors(folder, "create the folder", RERUN_HINT):
        folder.mkdir(parents=True, exist_ok=True)


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    flatten: bool = False,
    state_dir: Path | None = None,
    force: bool = False,
    claims: Claims | None = None,
    label: str | None = None,
    strip_top: bool = False,
) -> ExtractResult:
    """Extract every regular file of `archive` under `dest`, safely and idempotently.

    `flatten` drops the folders of member paths (each file lands as ``dest/<basename>``).
    The completion marker lives in `state_dir` (default ``<dest's parent>/.extract/<dest>``);
    `force` ignores it (files whose content matches are still kept). `claims` carries the
    files other archives put in `dest` this run, so that no archive replaces another's file;
    `label` names the archive in such a refusal (default: its path). `strip_top` drops the
    first folder of every member path (``UCF-101/<Class>/x.avi`` -> ``<Class>/x.avi``).
    """
    state_dir = state_dir or dest.parent / STATE_DIR / dest.name
    marker, size = _marker(state_dir, archive.name), _archive_size(archive)
    claims = {} if claims is None else claims
    done = None if force else _done_files(marker, size, dest)
    if done is not None:
        return _skipped(archive, dest, done, claims)
    _make_dirs(dest)
    result = ExtractResult(archive, dest)
    with _entries(archive) as entries:
        for entry in entries:
            origin = f"member {entry.pathname!r} of {label or archive}"
            _extract_entry(archive, entry, dest, flatten, result, claims, origin, strip_top)
    _write_marker(marker, archive, size, result.files)
    return result


def _extract_entry(
    archive: Path,
    entry: Any,
    dest: Path,
    flatten: bool,
    result: ExtractResult,
    claims: Claims,
    origin: str,
    strip_top: bool = False,
) -> None:
    """Check one entry and put it under `dest` (directories are created, files saved)."""
    _check_type(archive, entry)
    rel = _entry_path(archive, entry)
    if strip_top and len(rel.parts) > 1:
        rel = PurePosixPath(*rel.parts[1:])
    elif strip_top and entry.isdir:
        return  # the top folder itself (UCF-101/): its content goes straight into dest
    if entry.isdir:
        if not flatten:
            _make_dirs(dest / rel)
        return
    key = rel.name if flatten else str(rel)
    target = dest / key
    _claim(claims, key, origin, target)
    if _save(entry, target):
        result.written += 1
    else:
        result.kept += 1
    result.files[key] = target.stat().st_size


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
    claims: Claims = {}
    done = None if force else _done_files(marker, size, dest)
    if done is not None:
        return _skipped(archive, dest, done, claims)
    result = ExtractResult(archive, dest)
    with byte_progress() as bar, _entries(archive) as entries:
        task = bar.add_task(f"extracting {archive.name}", total=size) if bar else None
        for entry in entries:
            _check_type(archive, entry)
            rel = _entry_path(archive, entry)
            if entry.isreg and rel.suffix.lower() == ".rar":
                inner = _extract_inner(entry, rel.name, dest, state, tmp, force, claims, archive)
                result.written += inner.written
                result.kept += inner.kept
                result.files.update(inner.files)
            if bar is not None and task is not None:
                bar.update(task, completed=min(size, entries.bytes_read))
    _write_marker(marker, archive, size, result.files)
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _extract_inner(
    entry: Any,
    name: str,
    dest: Path,
    state: Path,
    tmp: Path,
    force: bool,
    claims: Claims,
    outer: Path,
) -> ExtractResult:
    """Extract one per-class RAR held by the outer archive, unless an earlier run did."""
    marker = _marker(state, name)
    done = None if force else _done_files(marker, entry.size, dest)
    if done is not None:
        return _skipped(Path(f"{name} in {outer}"), dest, done, claims)
    inner = tmp / name
    try:
        _save(entry, inner)
        return extract_archive(
            inner, dest, state_dir=state, force=force, claims=claims, label=f"{name} in {outer}"
        )
    finally:
        inner.unlink(missing_ok=True)  # the inner RAR is only a step: never left behind


def extract_splits(archive: Path, root: Path, *, force: bool = False) -> ExtractResult:
    """Extract ``test_train_splits.rar`` into ``<root>/splits/*.txt`` (its folder flattened)."""
    state = root / STATE_DIR / "splits"
    return extract_archive(archive, splits_dir(root), flatten=True, state_dir=state, force=force)


def extract_ucf101_videos(archive: Path, root: Path, *, force: bool = False) -> ExtractResult:
    """Extract ``UCF101.rar`` (``UCF-101/<Class>/*.avi``) into ``<root>/videos/<Class>/*.avi``."""
    state = root / STATE_DIR / "videos"
    return extract_archive(archive, videos_dir(root), state_dir=state, force=force, strip_top=True)


def extract_ucf101_splits(archive: Path, root: Path, *, force: bool = False) -> ExtractResult:
    """Extract the UCF101 splits zip (``ucfTrainTestlist/*.txt``) into ``<root>/splits/*.txt``."""
    return extract_splits(archive, root, force=force)
