"""Build the frame cache: decode every video once, resized, into ``<cache_dir>`` (see cache.py).

The run is resumable. The manifest is written (atomically) before the first video, every few
seconds or videos, and at the end. Between two manifest writes each finished video is recorded
in the journal (``.preprocess.journal``, one JSON entry a line, appended before the cache file
is renamed into place), so a killed run loses only the videos that were being decoded. A rerun
skips every video whose entry (manifest or journal) is "ok" and whose cache file is still there
and whole (its header and size are checked); a damaged one is reported and cached again.

One run at a time: a run holds a lock on the cache folder (``.preprocess.lock``, with its pid),
and a second one is refused. The lock is the kernel's (``flock``), released however the holder
dies, so every temporary file found once the lock is held is a dead run's and is removed.

Videos that cannot be used are recorded as "failed" with the reason and the run goes on:
unreadable, empty, not a video, no decodable frame, or fewer than `min_frames` frames. A video
that decodes only partly (truncated or with corrupt packets) is kept: its entry is "ok" with
the decoder's note in ``error``. Split-file entries without a file are recorded as "missing".

A cache made with another data.resize or data.jpeg_quality is refused (a UserError). The
dataset root recorded in the manifest is updated on each run: entries are relative paths, and a
changed video file under the same name is not detected (delete its cache file to redo it).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmdbattn.config import Config
from hmdbattn.data.cache import (
    JOURNAL_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    cache_damage,
    cache_file,
    cached_videos_dir,
    encode_video_cache,
    holds_only_cache,
    load_manifest,
    write_chunks,
)
from hmdbattn.data.decode import DecodeError, decode_video
from hmdbattn.data.formats import index_dataset
from hmdbattn.data.hmdb51 import DatasetIndex, Video, splits_dir, videos_dir
from hmdbattn.errors import UserError
from hmdbattn.fileio import folder_lock
from hmdbattn.report import progress

# The manifest is rewritten after this many finished videos or seconds, whichever comes first:
# the most work a kill can cost (HMDB51's manifest is ~2 MB, written in milliseconds).
SAVE_EVERY_VIDEOS = 50
SAVE_EVERY_SECONDS = 5.0
MISSING_REASON = "listed in the split (or list) files but not on disk"


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
    rebuilt: list[Problem] = field(default_factory=list)  # damaged cache files made again

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
            "rebuilt": problems(self.rebuilt),
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
    journal: Path


def cache_one(task: _Task) -> ManifestEntry:
    """Decode one video, record it in the journal and write its cache file.

    Decoding problems give a "failed" entry. Errors writing the cache (a full disk, no
    permission) are not the video's fault: they propagate and stop the run.
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
    chunks = encode_video_cache(decoded.frames, decoded.fps, task.quality)
    entry.bytes = sum(len(chunk) for chunk in chunks)
    entry.duration = count / decoded.fps
    entry.status, entry.error = "ok", decoded.warning
    # Recorded before the file takes its name, so a cache file is never without a record; a
    # record whose file never came (a kill in between) fails the size check and is redone.
    append_journal(task.journal, entry)
    write_chunks(task.target, chunks)
    return entry


def _failed(entry: ManifestEntry, task: _Task, reason: str) -> ManifestEntry:
    # A cache file left by an earlier run of a file that has since changed is no longer true.
    task.target.unlink(missing_ok=True)
    entry.status, entry.error = "failed", reason
    append_journal(task.journal, entry)
    return entry


def append_journal(journal: Path, entry: ManifestEntry) -> None:
    """Append `entry` to the journal as one line, in one write (workers append side by side)."""
    line = json.dumps(entry.to_json(), separators=(",", ":")) + "\n"
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read_journal(journal: Path) -> list[ManifestEntry]:
    """The entries of the journal, in order; a line a kill cut short is skipped."""
    try:
        text = journal.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entries.append(ManifestEntry.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return entries


class _Recorder:
    """The manifest being built, saved now and then so that a killed run loses little."""

    def __init__(self, manifest: Manifest, cache_dir: Path) -> None:
        self.manifest, self.cache_dir = manifest, cache_dir
        self.journal = cache_dir / JOURNAL_NAME
        self.entries: dict[str, ManifestEntry] = {}
        self.rebuilt: list[Problem] = []  # damaged cache files found (their videos redone)
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

    def finish(self) -> None:
        """Take in what only the journal holds, save, and drop the journal (no worker is left).

        A worker that finished its video while an interrupted run was stopping recorded it in
        the journal only; its entry counts if its cache file is whole.
        """
        for entry in read_journal(self.journal):
            if self.entries.get(entry.path) != entry and _usable(entry, self.cache_dir):
                self.entries[entry.path] = entry
        self.save()
        self.journal.unlink(missing_ok=True)


def preprocess(
    config: Config,
    workers: int | None = None,
    min_frames: int = 1,
) -> PreprocessSummary:
    """Decode every video of ``config.data.root`` once into the cache at data.cache_path.

    `workers` processes decode in parallel (default `default_workers`: one per usable core,
    fewer for a few videos; 0 decodes in this process). Raises UserError when the existing
    cache was made with another resize or JPEG quality, when another run holds the cache, or
    when the cache cannot be written.
    """
    started = time.perf_counter()
    data = config.data
    cache_dir = data.cache_path
    index = index_dataset(data)
    check_cache_location(data.root, cache_dir, index.protected_dirs)
    existing_manifest(cache_dir)  # a folder that is not a cache is refused before the lock file
    try:
        with cache_lock(cache_dir):
            _remove_leftovers(cache_dir)  # holding the lock: every temp file is a dead run's
            recorder = _Recorder(_start_manifest(config, index), cache_dir)
            skipped = _cache_all(recorder, index, config, workers, min_frames)
    except OSError as exc:
        raise _unwritable(cache_dir, exc) from None
    except BrokenProcessPool as exc:
        raise UserError(
            f"a decoding process died ({exc}: killed, or out of memory?); the videos cached "
            f"so far in {cache_dir} are kept: rerun `hmdbattn preprocess` to resume, with "
            "fewer --workers if memory is short"
        ) from None
    return _summary(recorder, skipped, time.perf_counter() - started)


# Videos a decoding worker must have to cache to pay for its start-up (1-4 s on 2 cores, most
# of it importing torch; a 4 s HMDB51-like video decodes and caches in about 60 ms).
VIDEOS_PER_WORKER = 32


def default_workers(videos: int | None = None) -> int:
    """Decoding processes when none are asked for: one per core this process may use.

    Not data.num_workers, the loader's count (often 0 in small configs): decoding every video
    is the one step that keeps every core busy. With `videos` to cache, at most one worker per
    `VIDEOS_PER_WORKER` of them: a worker's start-up (a fresh interpreter importing torch) costs
    about what decoding that many short videos does. 0 (decode in this process) when that
    leaves fewer than 2, or on a single core.
    """
    if hasattr(os, "sched_getaffinity"):  # the cores a container or taskset leaves us
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    if videos is not None:
        cores = min(cores, videos // VIDEOS_PER_WORKER)
    return cores if cores > 1 else 0


def _cache_all(
    recorder: _Recorder,
    index: DatasetIndex,
    config: Config,
    workers: int | None,
    min_frames: int,
) -> int:
    """Cache every video not cached yet, recording as it goes; the number already cached."""
    done, tasks, recorder.rebuilt = _plan(recorder.manifest, index, config, min_frames)
    workers = default_workers(len(tasks)) if workers is None else workers
    for entry in [*done, *(_missing_entry(v) for v in index.missing)]:
        recorder.entries[entry.path] = entry
    recorder.save()  # before any cache file: every cache file has a manifest beside it
    recorder.journal.unlink(missing_ok=True)  # what it held is in the manifest (or redone)
    with progress("videos") as bar:
        task_id = bar.add_task("preprocess", total=len(index.videos), completed=len(done))
        try:
            for entry in _run(tasks, workers):
                recorder.add(entry)
                bar.advance(task_id)
        finally:
            recorder.finish()
    return len(done)


def _unwritable(cache_dir: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write the cache in {cache_dir} ({exc}); set data.cache_dir")


def check_cache_location(root: Path, cache_dir: Path, protected: list[Path] | None = None) -> None:
    """Refuse a cache folder that is the dataset root or inside the dataset's own folders
    (`protected`: by default HMDB51's videos/ and splits/; a class folder of "folders")."""
    root, where = root.resolve(), cache_dir.resolve()
    dirs = [videos_dir(root), splits_dir(root)] if protected is None else protected
    inside = [d for d in dirs if where.is_relative_to(d.resolve())]
    if where == root or inside:
        what = "the dataset root" if where == root else f"inside the dataset's {inside[0]}"
        raise UserError(
            f"data.cache_dir = {cache_dir} is {what}: the cache needs a folder of its own; "
            f"set data.cache_dir to another folder (unset, it is {root / 'cache'})"
        )


@contextmanager
def cache_lock(cache_dir: Path) -> Iterator[None]:
    """Hold the cache folder's lock for the block (`fileio.folder_lock`)."""
    with folder_lock(cache_dir, LOCK_NAME, f"cache {cache_dir} is busy: preprocess"):
        yield


def _start_manifest(config: Config, index: DatasetIndex) -> Manifest:
    """The manifest to continue: the existing one (with the journal's entries) or a new one.

    A manifest.json that cannot be read as a cache's is refused, never replaced: it may be
    another program's.
    """
    data = config.data
    cache_dir = data.cache_path
    manifest = existing_manifest(cache_dir)
    if manifest is None:
        manifest = Manifest(resize=data.resize, jpeg_quality=data.jpeg_quality, root="")
    manifest.check_compatible(data.resize, data.jpeg_quality)
    entries = manifest.by_path()
    for entry in read_journal(cache_dir / JOURNAL_NAME):  # checked against its file in _plan
        entries[entry.path] = entry
    manifest.videos = [entries[k] for k in sorted(entries)]
    manifest.root = str(data.root.resolve())
    manifest.classes = list(index.classes)
    return manifest


def existing_manifest(cache_dir: Path) -> Manifest | None:
    """The manifest of the cache at `cache_dir`, None for a new cache; a UserError for a folder
    that is not a cache (a manifest.json of another kind, or files without a manifest)."""
    if (cache_dir / MANIFEST_NAME).exists():
        return load_manifest(cache_dir)
    if any(cached_videos_dir(cache_dir).glob("*/*")):
        raise _no_manifest(cache_dir)
    return None


def _no_manifest(cache_dir: Path) -> UserError:
    """Files under videos/ but no manifest: advise deleting the folder only if all are ours."""
    if holds_only_cache(cache_dir):
        return UserError(
            f"{cache_dir}: cache files without a manifest.json; delete {cache_dir} or set "
            "data.cache_dir to a new folder, then rerun"
        )
    return UserError(
        f"{cache_dir}: holds files that are not a frame cache's (its videos/ folder is not the "
        "cache's): set data.cache_dir to a new, empty folder"
    )


def _remove_leftovers(cache_dir: Path) -> None:
    """Delete temporary files of writes that a kill interrupted (never whole cache files)."""
    for tmp in [*cached_videos_dir(cache_dir).glob("*/.*.tmp"), *cache_dir.glob(".*.tmp")]:
        tmp.unlink(missing_ok=True)


def _plan(
    manifest: Manifest, index: DatasetIndex, config: Config, min_frames: int
) -> tuple[list[ManifestEntry], list[_Task], list[Problem]]:
    """Entries already done (kept as they are), tasks for every other video, and the cache
    files found damaged (their videos are among the tasks)."""
    previous = manifest.by_path()
    cache_dir = config.data.cache_path
    done: list[ManifestEntry] = []
    tasks: list[_Task] = []
    rebuilt: list[Problem] = []
    for video in index.videos:
        target = cache_file(cache_dir, video.path)
        entry = previous.get(video.path)
        damage = cache_damage(entry, target) if entry is not None else "not cached"
        if damage is None and entry is not None:
            entry.label, entry.split_ids = video.label, dict(video.split_ids)
            done.append(entry)
            continue
        if damage is not None and target.is_file():
            rebuilt.append(Problem(video.path, f"damaged cache file, cached again: {damage}"))
        tasks.append(_task(video, target, index, config, min_frames))
    return done, tasks, rebuilt


def _task(
    video: Video, target: Path, index: DatasetIndex, config: Config, min_frames: int
) -> _Task:
    data = config.data
    return _Task(
        source=index.videos_dir / video.path,
        target=target,
        rel_path=video.path,
        label=video.label,
        split_ids=dict(video.split_ids),
        size=data.resize,
        quality=data.jpeg_quality,
        min_frames=min_frames,
        journal=data.cache_path / JOURNAL_NAME,
    )


def _usable(entry: ManifestEntry, cache_dir: Path) -> bool:
    """Whether a journal entry may go into the manifest: failed, or "ok" with its file whole."""
    if entry.status != "ok":
        return True
    return cache_damage(entry, cache_file(cache_dir, entry.path)) is None


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
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=context,
        initializer=_worker_start,
        initargs=(os.getpid(),),
    )
    try:
        yield from _completed(pool, cache_one, tasks)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _worker_start(parent: int) -> None:
    """Set up a decoding process: its parent's death ends it.

    A parent killed with -9 cannot stop its workers: on Linux the kernel does
    (PR_SET_PDEATHSIG), so none goes on writing into a cache that a rerun has taken over.
    (Ctrl-C is the parent's alone: the workers start with SIGINT ignored, see _ctrl_c_ignored;
    the parent stops handing out videos and waits for those in progress, which each worker
    records in the journal.)
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _completed(
    pool: Executor, fn: Callable[[_Task], ManifestEntry], tasks: list[_Task]
) -> Iterable[ManifestEntry]:
    with _ctrl_c_ignored():  # the workers start here (on submit)
        futures = [pool.submit(fn, task) for task in tasks]
    for future in as_completed(futures):
        yield future.result()


@contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Ignore SIGINT for the block, so that processes started in it ignore it from birth.

    An ignored signal stays ignored across exec, and Python then installs no handler: a worker
    still importing when Ctrl-C comes would otherwise die with a traceback. A Ctrl-C during
    the block (a fraction of a second) is lost; one outside it is the parent's to handle.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal.signal works in the main thread only; no Ctrl-C lands elsewhere
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _summary(recorder: _Recorder, skipped: int, seconds: float) -> PreprocessSummary:
    entries = recorder.manifest.videos
    ok = [e for e in entries if e.status == "ok"]
    failed = [Problem(e.path, e.error or "failed") for e in entries if e.status == "failed"]
    missing = [Problem(e.path, e.error or MISSING_REASON) for e in entries if e.status == "missing"]
    return PreprocessSummary(
        rebuilt=recorder.rebuilt,
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
