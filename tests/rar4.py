"""Write small RAR 4 archives for tests: stored method (no compression), Unix host.

Layout (RAR 1.5-4.x "technote"): marker block, archive header, then per member a file header
followed by its data, then an end-of-archive block. Every block starts with
``HEAD_CRC (2) HEAD_TYPE (1) HEAD_FLAGS (2) HEAD_SIZE (2)``; HEAD_CRC is the low 16 bits of
the CRC32 of the header from HEAD_TYPE on. Names are taken verbatim, so hostile names such as
``../evil.txt`` or ``/abs.txt`` can be written on purpose.
"""

from __future__ import annotations

import stat
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MARKER = b"Rar!\x1a\x07\x00"
MAIN_HEAD, FILE_HEAD, END_HEAD = 0x73, 0x74, 0x7B
LONG_BLOCK = 0x8000  # ADD_SIZE (here PACK_SIZE) follows the header: set on every file header
DIRECTORY = 0x00E0  # "dictionary size" bits all set means a directory
UNICODE = 0x0200  # name is UTF-8 (libarchive accepts it when no NUL splits the name)
HOST_UNIX = 3
METHOD_STORE = 0x30
DOS_TIME = (2013 - 1980) << 25 | 10 << 21 | 1 << 16 | 12 << 11  # 2013-10-01 12:00:00


@dataclass(frozen=True)
class Member:
    """One archive member: a regular file, a directory or a symbolic link."""

    name: str
    data: bytes = b""
    kind: str = "file"  # "file", "dir" or "symlink"
    target: str = ""  # the link target of a symlink


def file(name: str, data: bytes) -> Member:
    """A regular file member."""
    return Member(name, data)


def directory(name: str) -> Member:
    """A directory member."""
    return Member(name, kind="dir")


def symlink(name: str, target: str) -> Member:
    """A symbolic link member (stored the Unix way: S_IFLNK attributes, target as data)."""
    return Member(name, kind="symlink", target=target)


def _block(head_type: int, flags: int, body: bytes) -> bytes:
    header = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header


def _file_block(member: Member) -> bytes:
    name = member.name.encode("utf-8")
    flags = LONG_BLOCK | (UNICODE if not member.name.isascii() else 0)
    if member.kind == "dir":
        flags |= DIRECTORY
        data, attr = b"", stat.S_IFDIR | 0o755
    elif member.kind == "symlink":
        data, attr = member.target.encode("utf-8"), stat.S_IFLNK | 0o777
    else:
        data, attr = member.data, stat.S_IFREG | 0o644
    body = struct.pack(
        "<IIBIIBBHI",
        len(data),  # PACK_SIZE (stored: equal to the unpacked size)
        len(data),  # UNP_SIZE
        HOST_UNIX,
        zlib.crc32(data),
        DOS_TIME,
        20,  # version needed to extract: 2.0 is enough for stored members
        METHOD_STORE,
        len(name),
        attr,
    )
    return _block(FILE_HEAD, flags, body + name) + data


def rar4_bytes(members: Iterable[Member | tuple[str, bytes]]) -> bytes:
    """A whole RAR 4 archive; ``(name, data)`` tuples are regular files."""
    parts = [MARKER, _block(MAIN_HEAD, 0, bytes(6))]
    for m in members:
        parts.append(_file_block(m if isinstance(m, Member) else file(*m)))
    parts.append(_block(END_HEAD, 0x4000, b""))
    return b"".join(parts)


def write_rar4(path: Path, members: Iterable[Member | tuple[str, bytes]]) -> Path:
    """Write a RAR 4 archive to `path` (parents created) and return `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rar4_bytes(members))
    return path


def mini_hmdb51(
    out_dir: Path, labels: tuple[str, ...] = ("brush_hair", "cartwheel"), per_class: int = 5
) -> dict[str, int]:
    """Write ``hmdb51_org.rar`` and ``test_train_splits.rar`` shaped like HMDB51's, in small.

    The outer RAR holds ``<class>.rar`` per class (each ``<class>/*.avi``, fake bytes); the
    splits RAR holds ``testTrainMulti_7030_splits/<class>_test_split<k>.txt``. Returns the
    counts to expect after extraction (the fields of ``hmdbattn.data.verify.Expected``).
    """
    inner, splits = [], [directory("testTrainMulti_7030_splits")]
    base = [(i + 1) % 3 for i in range(per_class)]  # 1 train, 2 test, 0 unused
    # Each split is a rotation of the same ids: other videos, same counts per split.
    ids = {split: base[split:] + base[:split] for split in (1, 2, 3)}
    for label in labels:
        # Names with the punctuation real HMDB51 names carry (never passed through a shell).
        names = [f"{label}_Hamlet_(1996)_&_it's!-{i}.avi" for i in range(per_class)]
        members = [directory(label)] + [
            file(f"{label}/{n}", f"{label}{i}".encode() * 50) for i, n in enumerate(names)
        ]
        inner.append(file(f"{label}.rar", rar4_bytes(members)))
        for split, split_ids in ids.items():
            text = "".join(f"{n} {sid} \n" for n, sid in zip(names, split_ids, strict=True))
            name = f"testTrainMulti_7030_splits/{label}_test_split{split}.txt"
            splits.append(file(name, text.encode()))
    write_rar4(out_dir / "hmdb51_org.rar", inner)
    write_rar4(out_dir / "test_train_splits.rar", splits)
    per_split = {sid: base.count(sid) * len(labels) for sid in (0, 1, 2)}
    return {
        "classes": len(labels),
        "videos": len(labels) * per_class,
        "split_files": 3 * len(labels),
        "train": per_split[1],
        "test": per_split[2],
        "unused": per_split[0],
    }
