"""The preprocessed frame cache that training reads (written by `hmdbattn preprocess`).

Layout::

    <cache_dir>/manifest.json                       what was cached, with which settings
    <cache_dir>/videos/<class>/<video stem>.jpgs    the frames of one video

A ``.jpgs`` file holds every decoded frame of one video, resized to ``data.resize``, each
encoded as a JPEG of quality ``data.jpeg_quality``. All integers are little-endian::

    8 bytes   magic b"HMDBJPG1"
    uint32    N, the number of frames
    uint32    height
    uint32    width
    float64   fps
    N+1 x uint64  byte offsets from the start of the file: frame i is bytes [off[i], off[i+1]);
                  off[0] is the end of this table and off[N] the size of the file
    the N JPEG images, back to back

Why JPEG: raw uint8 frames at 128x171 would take about 40 GB for HMDB51's 640k frames (raw
YUV 4:2:0 about 21 GB), and decoding the 16 small JPEGs of a clip (libjpeg-turbo, through
simplejpeg) takes about a millisecond. The offsets let a reader fetch only the frames a clip
needs.

A file is written to a temporary name in the same folder and renamed into place, so a file
under its final name is always complete; a leftover ``.*.tmp`` is never taken for a cache file.

While ``hmdbattn preprocess`` runs it holds a lock on ``<cache_dir>/.preprocess.lock`` (the
file keeps the pid of the last run) and records each finished video in
``<cache_dir>/.preprocess.journal`` until the manifest holds it.

``manifest.json`` (also replaced atomically) has the header keys ``format_version``,
``resize`` [height, width], ``jpeg_quality``, ``root`` (the dataset it was made from) and
``classes``, and ``videos``: one entry per video listed in the split files, with ``path``
(relative to ``<root>/videos``), ``label``, ``frames``, ``fps``, ``duration`` (frames / fps,
seconds), ``split_ids`` ({"1": id, ...}), ``status`` ("ok", "failed" or "missing"), ``error``
and ``bytes`` (of its cache file). ``status`` alone says whether a video is usable: ``error`` is
the reason for "failed" and "missing", and on an "ok" entry a note about damage that decoding
recovered from (e.g. "truncated: decoded 70 of the 96 frames the header announces").
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import simplejpeg
import torch

from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_writer

MAGIC = b"HMDBJPG1"
_HEADER = struct.Struct("<8sIIId")
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SUFFIX = ".jpgs"

Status = Literal["ok", "failed", "missing"]


def decode_jpeg_into(blob: bytes | memoryview, out: np.ndarray) -> None:
    """Decode one JPEG into `out`, an (H, W, 3) uint8 RGB array of the image's size.

    Straight into the caller's buffer (simplejpeg: libjpeg-turbo with its accurate DCT and
    upsampling, the same pixels as torchvision's decoder): no array per frame, no stacking
    copy. A ValueError for data that is not a whole JPEG of that size.
    """
    image = simplejpeg.decode_jpeg(blob, colorspace="RGB", buffer=out)
    if image.shape != out.shape:
        raise ValueError(
            f"a {image.shape[1]}x{image.shape[0]} image where {out.shape[1]}x"
            f"{out.shape[0]} was expected"
        )


def decode_jpegs(blobs: Sequence[bytes | memoryview], out: np.ndarray) -> np.ndarray:
    """Decode the JPEGs of `blobs` into the (len(blobs), H, W, 3) uint8 array `out`."""
    for blob, slot in zip(blobs, out, strict=True):
        decode_jpeg_into(blob, slot)
    return out


def cached_videos_dir(cache_dir: Path) -> Path:
    """``<cache_dir>/videos``: the cache's frame files, one folder per class."""
    return cache_dir / "videos"


def cache_file(cache_dir: Path, rel_path: str) -> Path:
    """Where the frames of video `rel_path` (``<class>/<name>.avi``) are cached."""
    rel = PurePosixPath(rel_path)
    if rel.is_absolute() or ".." in rel.parts or not rel.name:
        raise ValueError(f"{rel_path!r}: expected a path relative to the videos folder")
    return cached_videos_dir(cache_dir).joinpath(*rel.parent.parts, rel.stem + SUFFIX)


def _atomic_write(path: Path, data: Sequence[bytes | memoryview], sync: bool = False) -> int:
    """Write the chunks of `data` atomically; returns the bytes written."""
    with atomic_writer(path, sync) as out:
        for chunk in data:
            out.write(chunk)
    return sum(len(chunk) for chunk in data)


def _encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    # 4:2:0 like Pillow's default; simplejpeg encodes a 128x171 frame in about 0.06 ms against
    # Pillow's 0.18 ms (torchvision's encode_jpeg took about 20 ms).
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(frame), quality=quality, colorspace="RGB", colorsubsampling="420"
    )


def encode_video_cache(frames: np.ndarray, fps: float, quality: int) -> list[bytes]:
    """The bytes of a cache file of (N, H, W, 3) uint8 RGB `frames`, in chunks to write in order."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("no frames to cache")
    blobs = [_encode_jpeg(frame, quality) for frame in frames]
    num, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
    offsets = np.empty(num + 1, dtype="<u8")
    offsets[0] = _HEADER.size + 8 * (num + 1)
    offsets[1:] = offsets[0] + np.cumsum([len(b) for b in blobs])
    header = _HEADER.pack(MAGIC, num, height, width, float(fps))
    return [header, offsets.tobytes(), *blobs]


def write_chunks(path: Path, chunks: Sequence[bytes]) -> int:
    """Write `chunks` (from `encode_video_cache`) atomically to `path`; returns the bytes."""
    return _atomic_write(Path(path), chunks)


def write_video_cache(path: Path, frames: np.ndarray, fps: float, quality: int) -> int:
    """Encode (N, H, W, 3) uint8 RGB `frames` into a cache file at `path`; returns its bytes."""
    return write_chunks(path, encode_video_cache(frames, fps, quality))


class DamagedCacheFile(UserError):
    """A cache file that is not whole; `reason` says how (the message adds the file and a fix).

    Built from the message alone, like any exception: torch re-raises a DataLoader worker's
    exception by calling its type with one string.
    """

    reason = ""


class CachedVideo:
    """The frames of one video in the cache; reads only the frames asked for."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    raise self._error("truncated (incomplete header)")
                magic, num, self.height, self.width, self.fps = _HEADER.unpack(head)
                self._check_header(magic, num, size)
                table = f.read(8 * (num + 1))
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read cache file ({exc})") from None
        self.num_frames: int = num
        self.offsets = np.frombuffer(table, dtype="<u8").astype(np.int64)
        if self.offsets[0] != _HEADER.size + len(table) or np.any(np.diff(self.offsets) < 0):
            raise self._error("corrupt offset table")
        if size < self.offsets[-1]:
            raise self._error(f"truncated ({size} of {self.offsets[-1]} bytes)")
        if size > self.offsets[-1]:
            raise self._error(
                f"corrupt offset table (it ends at byte {self.offsets[-1]} of {size})"
            )

    def _check_header(self, magic: bytes, num: int, size: int) -> None:
        """Refuse a header that is not ours or that the file's size cannot back.

        Checked before the offset table is read: a damaged frame count (up to 2**32 - 1) would
        otherwise ask for a table of up to 32 GiB.
        """
        if magic != MAGIC:
            raise self._error("not a frame cache file (bad magic)")
        if num == 0 or self.height == 0 or self.width == 0 or not 0 < self.fps < math.inf:
            raise self._error(
                f"corrupt header ({num} frames of {self.height}x{self.width} at {self.fps} fps)"
            )
        table_end = _HEADER.size + 8 * (num + 1)
        if table_end > size:
            raise self._error(
                f"truncated or damaged header ({num} frames announced, an offset table of "
                f"{table_end} bytes, in a file of {size} bytes)"
            )

    def _error(
        self, what: str, fix: str = "rerun `hmdbattn preprocess` to rebuild it"
    ) -> DamagedCacheFile:
        error = DamagedCacheFile(f"{self.path}: {what}; {fix}")
        error.reason = what
        return error

    @property
    def duration(self) -> float:
        """Seconds covered by the frames (frames / fps)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def __len__(self) -> int:
        return self.num_frames

    def read(self, indices: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
        """Frames at `indices` (repeats allowed) as a (len(indices), H, W, 3) uint8 tensor.

        Each frame is decoded once, into `out` when given (a contiguous tensor of that shape,
        e.g. one clip's slot of a batch), else into a new tensor.
        """
        wanted = [int(i) for i in indices]
        bad = [i for i in wanted if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"{self.path}: frame {bad[0]} out of range 0..{self.num_frames - 1}")
        if out is None:
            out = torch.empty((len(wanted), self.height, self.width, 3), dtype=torch.uint8)
        frames = out.numpy()  # (T, H, W, 3), shares out's memory
        unique = sorted(set(wanted))
        first = {index: wanted.index(index) for index in unique}
        for index, blob in zip(unique, self.read_jpegs(unique), strict=True):
            try:
                decode_jpeg_into(blob, frames[first[index]])
            except ValueError as exc:
                # Its header and size are whole, so preprocess would keep it: it must go first.
                fix = "delete it, then rerun `hmdbattn preprocess` to rebuild it"
                raise self._error(f"corrupt JPEG data in frame {index} ({exc})", fix) from None
        for k, index in enumerate(wanted):
            if k != first[index]:
                frames[k] = frames[first[index]]
        return out

    def read_jpegs(self, unique: list[int]) -> list[memoryview]:
        """The JPEG bytes of sorted, distinct frame indices (`decode_jpeg_into` decodes them).

        Consecutive frames are read in one go.
        """
        runs: list[list[int]] = []
        for i in unique:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        blobs: list[memoryview] = []
        with open(self.path, "rb") as f:
            for run in runs:
                begin, stop = int(self.offsets[run[0]]), int(self.offsets[run[-1] + 1])
                f.seek(begin)
                data = memoryview(f.read(stop - begin))
                if len(data) != stop - begin:
                    raise self._error("truncated")
                for i in run:
                    blobs.append(
                        data[int(self.offsets[i]) - begin : int(self.offsets[i + 1]) - begin]
                    )
        return blobs


# --------------------------------------------------------------------------- manifest


@dataclass
class ManifestEntry:
    """One video listed in the split files and what preprocessing made of it."""

    path: str  # relative to <root>/videos
    label: str
    frames: int = 0
    fps: float = 0.0
    duration: float = 0.0
    split_ids: dict[int, int] = field(default_factory=dict)
    status: Status = "failed"
    error: str | None = None
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["split_ids"] = {str(k): v for k, v in sorted(self.split_ids.items())}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestEntry:
        entry = cls(**data)
        entry.split_ids = {int(k): int(v) for k, v in data["split_ids"].items()}
        if entry.status not in ("ok", "failed", "missing"):
            raise ValueError(f"unknown status {entry.status!r}")
        return entry


@dataclass
class Manifest:
    """What a cache holds and the settings it was made with."""

    resize: tuple[int, int]
    jpeg_quality: int
    root: str
    classes: list[str] = field(default_factory=list)
    videos: list[ManifestEntry] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    cache_dir: Path | None = field(default=None, compare=False, repr=False)  # where it was read

    def ok(self) -> list[ManifestEntry]:
        """The entries whose frames are in the cache."""
        return [v for v in self.videos if v.status == "ok"]

    def by_path(self) -> dict[str, ManifestEntry]:
        """Entries by their relative video path."""
        return {v.path: v for v in self.videos}

    def check_compatible(self, resize: tuple[int, int], quality: int) -> None:
        """Raise a UserError naming the first setting that differs from the cache's."""
        where = self.cache_dir if self.cache_dir is not None else "the cache"
        for key, made, wanted in (
            ("data.resize", list(self.resize), list(resize)),
            ("data.jpeg_quality", self.jpeg_quality, quality),
        ):
            if made != wanted:
                advice = "set data.cache_dir to a new folder and run `hmdbattn preprocess`"
                if self.cache_dir is not None and holds_only_cache(self.cache_dir):
                    advice += f", or delete {where} and rerun it"
                raise UserError(
                    f"{where} was made with {key} = {made}, the config has {wanted}: {advice}"
                )

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "resize": list(self.resize),
            "jpeg_quality": self.jpeg_quality,
            "root": self.root,
            "classes": list(self.classes),
            "videos": [v.to_json() for v in self.videos],
        }

    def save(self, cache_dir: Path) -> None:
        """Write ``<cache_dir>/manifest.json`` atomically (and durably: it is small)."""
        text = json.dumps(self.to_json(), indent=1) + "\n"
        _atomic_write(cache_dir / MANIFEST_NAME, [text.encode("utf-8")], sync=True)


def cache_damage(entry: ManifestEntry, target: Path) -> str | None:
    """Why an entry's cache file cannot be used as it is; None when it is "ok" and whole.

    Whole means: there, a readable header and offset table, and the frame count and size the
    entry recorded (only the header and table are read).
    """
    if entry.status != "ok":
        return f"status {entry.status}"
    if not target.is_file():
        return "no cache file"
    try:
        video = CachedVideo(target)
    except DamagedCacheFile as exc:
        return exc.reason
    except UserError as exc:  # unreadable (permissions): caching it again will say why
        return str(exc)
    size = int(video.offsets[-1])
    if (video.num_frames, size) != (entry.frames, entry.bytes):
        return (
            f"{video.num_frames} frames in {size} bytes, the manifest says {entry.frames} "
            f"frames in {entry.bytes} bytes"
        )
    return None


def load_manifest(cache_dir: Path) -> Manifest:
    """Read ``<cache_dir>/manifest.json``; a UserError when there is none or it is damaged."""
    path = cache_dir / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"no cache at {cache_dir}: run `hmdbattn preprocess --config FILE`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data["format_version"]
        if version != FORMAT_VERSION:
            raise UserError(
                f"{path}: cache format {version}, this hmdbattn reads {FORMAT_VERSION}: "
                "rerun `hmdbattn preprocess` with a new data.cache_dir"
            )
        height, width = data["resize"]
        manifest = Manifest(
            resize=(int(height), int(width)),
            jpeg_quality=int(data["jpeg_quality"]),
            root=str(data["root"]),
            classes=[str(c) for c in data.get("classes", [])],
            videos=[ManifestEntry.from_json(v) for v in data["videos"]],
            cache_dir=cache_dir,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Never replaced by preprocess either: it may be another program's manifest.json.
        raise UserError(
            f"{path}: damaged manifest or not a frame cache's ({type(exc).__name__}: {exc}); "
            "move it away or set data.cache_dir to another folder, then run `hmdbattn preprocess`"
        ) from None
    return manifest


# Files a cache folder holds besides manifest.json and the frames (see preprocess.py).
LOCK_NAME = ".preprocess.lock"
JOURNAL_NAME = ".preprocess.journal"


def holds_only_cache(cache_dir: Path) -> bool:
    """Whether every file under `cache_dir` is one the cache writes (frames, manifest, temps).

    Messages advise deleting a cache folder only then: never one that holds videos or anything
    else of the user's.
    """
    ours = {MANIFEST_NAME, LOCK_NAME, JOURNAL_NAME}
    for _, _, names in os.walk(cache_dir):
        for name in names:
            if name not in ours and not name.endswith((SUFFIX, ".tmp")):
                return False
    return True
