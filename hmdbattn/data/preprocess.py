"""Build the frame cache: decode every video once, resized, into ``<cache_dir>`` (see cache.py).

The run is resumable. The manifest is written (atomically) before the first video, every few
seconds or videos, and at the end; a rerun skips every video whose manifest entry is "ok" and
whose cache file is still there and whole (its header is read to check). A video cached by a
killed run after its last manifest write is decoded again (a few seconds of work at most) so
that the rerun records exactly what an uninterrupted run would have, damage notes included.

Videos that cannot be used are recorded as "failed" with the reason and the run goes on:
unreadable, empty, not a video, no decodable frame, or fewer than `min_frames` frames. A video
that decodes only partly (truncated or with corrupt packets) is kept: its entry is "ok" with
the decoder's note in ``error``. Split-file entries without a file are recorded as "missing".

A cache made with another data.resize or data.jpeg_quality is refused (a UserError). The
dataset root recorded in the manifest is updated on each run: entries are relative paths, and a
changed video file under the same name is not detected (delete its cache file to redo it).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmdbattn.config import Config
from hmdbattn.data.cache import (
    CachedVideo,
    Manifest,
    ManifestEntry,
    cache_file,
    cached_videos_dir,
    load_manifest,
    write_video_cache,
)
from hmdbattn.data.decode import DecodeError, decode_video
from hmdbattn.data.hmdb51 import DatasetIndex, Video, scan_dataset
from hmdbattn.errors import UserError
from hmdbattn.report import progress

# The manifest is rewritten after this many finished videos or seconds, whichever comes first:
# the most work a kill can cost (HMDB51's manifest is ~2 MB, written in milliseconds).
SAVE_EVERY_VIDEOS = 50
SAVE_EVERY_SECONDS = 5.0
MISSING_REASON = "listed in the split files but not in videos/"


@dataclass
class Problem:
    """A video that was not cached (or was, with a note) and why."""

    path: str
    reason: str


@dataclass
class PreprocessSummary:
    """What a preprocess run did. ``ok`` counts every cached video, ``skipped`` included."""

    cache_dir: Path
    total: int  # videos listed in the split files: ok + failed + missing
    ok: int
    skipped: int  # already cached by an earlier run
    failed: int
    missing: int
    bytes: int  # size of the cache files of all ok videos
    seconds: float
    failed_files: list[Problem] = field(default_factory=list)
    missing_files: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # ok videos with a damage note

    @property
    def cached(self) -> int:
        """Videos decoded and cached by this run."""
        return self.ok - self.skipped

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""

        def problems(items: list[Problem]) -> list[dict[str, str]]:
            return [{"path": p.path, "reason": p.reason} for p in items]

        return {
            "cache_dir": str(self.cache_dir),
            "total": self.total,
            "ok": self.ok,
            "cached": self.cached,
            "skipped": self.skipped,
            "failed": self.failed,
            "missing": self.missing,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "failed_files": problems(self.failed_files),
            "missing_files": problems(self.missing_files),
            "warnings": problems(self.warnings),
        }


@dataclass(frozen=True)
class _Task:
    """Everything a worker process needs to cache one video (picklable)."""

    source: Path
    target: Path
    rel_path: str
    label: str
    split_ids: dict[int, int]
    size: tuple[int, int]
    quality: int
    min_frames: int


def cache_one(task: _Task) -> ManifestEntry:
    """Decode one video and write its cache file; decoding problems give a "failed" entry.

    Errors writing the cache (a full disk, no permission) are not the video's fault: they
    propagate and stop the run.
    """
    entry = ManifestEntry(task.rel_path, task.label, split_ids=dict(task.split_ids))
    try:
        decoded = decode_video(task.source, size=task.size)
    except DecodeError as exc:
        return _failed(entry, task, str(exc))
    count = len(decoded.frames)
    entry.frames, entry.fps = count, decoded.fps
    if count < task.min_frames:
        return _failed(entry, task, f"too short: {count} frame(s), at least {task.min_frames}")
    entry.bytes = write_video_cache(task.target, decoded.frames, decoded.fps, task.quality)
    entry.duration = count / decoded.fps
    entry.status, entry.error = "ok", decoded.warning
    return entry


def _failed(entry: ManifestEntry, task: _Task, reason: str) -> ManifestEntry:
    # A cache file left by an earlier run of a file that has since changed is no longer true.
    task.target.unlink(missing_ok=True)
    entry.status, entry.error = "failed", reason
    return entry


class _Recorder:
    """The manifest being built, saved now and then so that a killed run loses little."""

    def __init__(self, manifest: Manifest, cache_dir: Path) -> None:
        self.manifest, self.cache_dir = manifest, cache_dir
        self.entries: dict[str, ManifestEntry] = {}
        self._unsaved = 0
        self._saved_at = time.monotonic()

    def add(self, entry: ManifestEntry) -> None:
        self.entries[entry.path] = entry
        self._unsaved += 1
        late = time.monotonic() - self._saved_at >= SAVE_EVERY_SECONDS
        if self._unsaved >= SAVE_EVERY_VIDEOS or late:
            self.save()

    def save(self) -> None:
        self.manifest.videos = [self.entries[k] for k in sorted(self.entries)]
        self.manifest.save(self.cache_dir)
        self._unsaved, self._saved_at = 0, time.monotonic()


def preprocess(
    config: Config,
    workers: int | None = None,
    min_frames: int = 1,
) -> PreprocessSummary:
    """Decode every video of ``config.data.root`` once into the cache at data.cache_path.

    `workers` processes decode in parallel (default data.num_workers; 0 decodes in this
    process). Raises UserError when the existing cache was made with another resize or JPEG
    quality, or when the cache cannot be written.
    """
    started = time.perf_counter()
    data = config.data
    cache_dir = data.cache_path
    index = scan_dataset(data.root)
    recorder = _Recorder(_start_manifest(config, index), cache_dir)
    _remove_leftovers(cache_dir)
    done, tasks = _plan(recorder.manifest, index, config, min_frames)
    for entry in [*done, *(_missing_entry(v) for v in index.missing)]:
        recorder.entries[entry.path] = entry
    try:
        recorder.save()  # before any cache file: every cache file has a manifest beside it
    except OSError as exc:
        raise _unwritable(cache_dir, exc) from None
    workers = data.num_workers if workers is None else workers
    with progress("videos") as bar:
        task_id = bar.add_task("preprocess", total=len(index.videos), completed=len(done))
        try:
            for entry in _run(tasks, workers):
                recorder.add(entry)
                bar.advance(task_id)
        except OSError as exc:
            raise _unwritable(cache_dir, exc) from None
        finally:
            recorder.save()
    return _summary(recorder, len(done), time.perf_counter() - started)


def _unwritable(cache_dir: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write the cache in {cache_dir} ({exc}); set data.cache_dir")


def _start_manifest(config: Config, index: DatasetIndex) -> Manifest:
    """The manifest to continue: the existing one if its settings match, else a new one."""
    data = config.data
    cache_dir = data.cache_path
    try:
        manifest = load_manifest(cache_dir)
    except UserError:
        if any(cached_videos_dir(cache_dir).glob("*/*")):
            raise UserError(
                f"{cache_dir}: cache files without a readable manifest.json; delete "
                f"{cache_dir} or set data.cache_dir to a new folder, then rerun"
            ) from None
        manifest = Manifest(resize=data.resize, jpeg_quality=data.jpeg_quality, root="")
    manifest.check_compatible(data.resize, data.jpeg_quality)
    manifest.root = str(data.root.resolve())
    manifest.classes = list(index.classes)
    return manifest


def _remove_leftovers(cache_dir: Path) -> None:
    """Delete temporary files of writes that a kill interrupted (never whole cache files)."""
    for tmp in cached_videos_dir(cache_dir).glob("*/.*.tmp"):
        tmp.unlink(missing_ok=True)


def _plan(
    manifest: Manifest, index: DatasetIndex, config: Config, min_frames: int
) -> tuple[list[ManifestEntry], list[_Task]]:
    """Entries already done (kept as they are) and tasks for every other video."""
    previous = manifest.by_path()
    cache_dir, data = config.data.cache_path, config.data
    done: list[ManifestEntry] = []
    tasks: list[_Task] = []
    for video in index.videos:
        target = cache_file(cache_dir, video.path)
        entry = previous.get(video.path)
        if entry is not None and _still_cached(entry, target):
            entry.label, entry.split_ids = video.label, dict(video.split_ids)
            done.append(entry)
            continue
        source = index.videos_dir / video.path
        tasks.append(
            _Task(
                source,
                target,
                video.path,
                video.label,
                dict(video.split_ids),
                data.resize,
                data.jpeg_quality,
                min_frames,
            )
        )
    return done, tasks


def _still_cached(entry: ManifestEntry, target: Path) -> bool:
    """Whether an "ok" entry's cache file is there and whole (reads its header only)."""
    if entry.status != "ok" or not target.is_file():
        return False
    try:
        return CachedVideo(target).num_frames == entry.frames
    except UserError:
        return False


def _missing_entry(video: Video) -> ManifestEntry:
    return ManifestEntry(
        video.path,
        video.label,
        split_ids=dict(video.split_ids),
        status="missing",
        error=MISSING_REASON,
    )


def _run(tasks: list[_Task], workers: int) -> Iterable[ManifestEntry]:
    """Cache each task, yielding entries as they finish (in any order)."""
    if workers <= 0 or len(tasks) <= 1:
        yield from map(cache_one, tasks)
        return
    # "spawn": forking a parent that holds torch's thread pools is unsafe on some platforms.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
    try:
        yield from _completed(pool, cache_one, tasks)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _completed(
    pool: Executor, fn: Callable[[_Task], ManifestEntry], tasks: list[_Task]
) -> Iterable[ManifestEntry]:
    futures = [pool.submit(fn, task) for task in tasks]
    for future in as_completed(futures):
        yield future.result()


def _summary(recorder: _Recorder, skipped: int, seconds: float) -> PreprocessSummary:
    entries = recorder.manifest.videos
    ok = [e for e in entries if e.status == "ok"]
    failed = [Problem(e.path, e.error or "failed") for e in entries if e.status == "failed"]
    missing = [Problem(e.path, e.error or MISSING_REASON) for e in entries if e.status == "missing"]
    return PreprocessSummary(
        cache_dir=recorder.cache_dir,
        total=len(entries),
        ok=len(ok),
        skipped=skipped,
        failed=len(failed),
        missing=len(missing),
        bytes=sum(e.bytes for e in ok),
        seconds=seconds,
        failed_files=failed,
        missing_files=missing,
        warnings=[Problem(e.path, e.error) for e in ok if e.error],
    )
