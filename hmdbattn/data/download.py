"""Fetch the HMDB51 or UCF101 archives (mirrors, resume, MD5) and the Kinetics-400 weights.

A download goes to ``<name>.part`` next to its final name and is renamed only once its MD5
matches, so a file under its final name is always complete. An interrupted download resumes
with an HTTP Range request, on the same mirror or the next one: the bytes already in the
``.part`` are kept until the final MD5 says otherwise. A server that ignores Range sends the
whole file again; its bytes are compared with the ``.part``'s, not written over them, so a
connection lost early costs nothing already there. No more bytes are accepted than the file
can have (the size the server states, or the size recorded for a known archive).

No MD5 of UCF101's archives is published that we know of: unless ``download.ucf101_*_md5`` is
set, the MD5 of the first complete download is recorded in ``<archive>.md5`` beside it, and
every later run checks the archive against that record (a complete download is one whose
transfer ended with every byte the server stated).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hmdbattn import __version__
from hmdbattn.config import DownloadConfig
from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_write_text, os_errors
from hmdbattn.report import err_console

VIDEOS_ARCHIVE = "hmdb51_org.rar"
SPLITS_ARCHIVE = "test_train_splits.rar"
UCF101_VIDEOS_ARCHIVE = "UCF101.rar"
UCF101_SPLITS_ARCHIVE = "UCF101TrainTestSplits-RecognitionTask.zip"
# Ceilings for archives without a known MD5 (UCF101.rar is about 6.5 GB, its splits ~100 KB).
UCF101_SIZE_LIMITS = {UCF101_VIDEOS_ARCHIVE: 8_000_000_000, UCF101_SPLITS_ARCHIVE: 10_000_000}
RECORD_SUFFIX = ".md5"
CHUNK = 1 << 20
# 408 and 429 say "try again later"; other 4xx mean this mirror will not serve the file.
RETRY_STATUS = {408, 429}
# The most bytes each known archive may have, by MD5. reference.md records only approximate
# sizes (about 2.1 GB and about 200 KB), so these are ceilings with room to spare, not exact
# sizes: they stop a server that sends without end long before the disk is full.
SIZE_LIMITS = {
    "517d6f1f19f215c45cdd4d25356be1fb": 2_500_000_000,  # hmdb51_org.rar
    "15e67781e70dcfbdce2d7dbb9b3344b5": 1_000_000,  # test_train_splits.rar
}
RESUME_HINT = (
    "; fix that (disk space, permissions, a file in the way) and run again: the download resumes"
)

Action = Literal["downloaded", "present", "linked", "copied"]


@dataclass
class FetchResult:
    """One archive in place: where it is, its MD5, where it came from and what was done."""

    name: str
    path: Path
    md5: str
    source: str
    action: Action


class _Transient(Exception):
    """A failure worth retrying on the same mirror (timeouts, resets, 5xx, short bodies)."""


class _Skip(Exception):
    """A failure that retrying this mirror will not fix (404, 403, ...): try the next one."""


class _StaleRange(_Transient):
    """HTTP 416: the .part reaches past the end of the file, so it cannot be resumed."""


class _TooBig(_Skip):
    """The server states or sends more bytes than the file can have."""


def _reason(exc: BaseException) -> str:
    """An exception as one line (some http.client messages end in a raw header line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def byte_progress() -> Iterator[Progress | None]:
    """A progress bar on stderr with bytes done, transfer rate and ETA (None inside `quiet`)."""
    if err_console.quiet:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,  # the outcome is printed as one line instead
    ) as bar:
        yield bar


def md5sum(path: Path, chunk: int = CHUNK) -> str:
    """The hex MD5 of a file, read in chunks; a read error is a UserError naming the file."""
    digest = hashlib.md5(usedforsecurity=False)
    with os_errors(path, "read"), open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- HTTP


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Open `url`, asking for the bytes from `offset` on; classify the failures."""
    request = urllib.request.Request(url, headers={"User-Agent": f"hmdbattn/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416:
            raise _StaleRange("HTTP 416, restarting from the beginning") from None
        if 400 <= exc.code < 500 and exc.code not in RETRY_STATUS:
            raise _Skip(f"HTTP {exc.code}") from None
        raise _Transient(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise _Transient(" ".join(str(exc.reason).split()) or "URL error") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(_reason(exc)) from None


def _start(response: http.client.HTTPResponse, offset: int) -> int:
    """Where the body starts in the file: `offset` for a matching 206, else 0."""
    if response.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if match is None or int(match[1]) != offset:
        raise _Transient(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
    return offset


def _body_length(response: http.client.HTTPResponse) -> int | None:
    """The body's length from Content-Length, None when the server does not say."""
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _total_size(response: http.client.HTTPResponse, start: int) -> int | None:
    """The file's whole size as the server states it: Content-Range's total, else the length."""
    match = re.search(r"/(\d+)\s*$", response.headers.get("Content-Range", ""))
    if response.status == 206 and match is not None:
        return int(match[1])
    length = _body_length(response)
    return start + length if length is not None else None


def _size_cap(total: int | None, limit: int | None) -> int | None:
    """The most bytes the file may reach: the server's stated size, within `limit` if known."""
    if total is not None and limit is not None and total > limit:
        raise _TooBig(f"serves {total:,} bytes, more than the {limit:,} expected")
    return total if total is not None else limit


class _PartWriter:
    """Writes a response body into the open ``.part`` file from byte `pos` on.

    The first `keep` bytes are an earlier attempt's prefix. Where the body repeats them (a
    server that ignored Range and sent the file from its start) they are compared, not
    rewritten, so a connection lost early leaves that prefix whole; the first differing byte
    ends it. Nothing is written past `cap`: a body that would is stopped with `_TooBig`.
    """

    def __init__(self, out: IO[bytes], pos: int, keep: int, cap: int | None) -> None:
        self.out, self.pos, self.keep, self.cap = out, pos, keep, cap

    def write(self, block: bytes) -> None:
        """Write (or confirm) `block` at the current position."""
        if self.cap is not None and self.pos + len(block) > self.cap:
            raise _TooBig(f"sent more than the {self.cap:,} bytes expected")
        if self.pos < self.keep:
            block = self._confirm(block)
        if block:
            self.out.seek(self.pos)
            self.out.write(block)
            self.pos += len(block)

    def _confirm(self, block: bytes) -> bytes:
        """Skip the part of `block` equal to the bytes on disk; return the rest to write."""
        n = min(len(block), self.keep - self.pos)
        self.out.seek(self.pos)
        old = self.out.read(n)
        same = n if old == block[:n] else _common_prefix(old, block)
        if same < n:
            # Another file's bytes: the prefix on disk ends here.
            self.keep = self.pos + same
            self.out.truncate(self.keep)
        self.pos += same
        return block[same:]

    def finish(self) -> None:
        """After a complete body: drop stale bytes an earlier, longer attempt left beyond it."""
        self.out.truncate(self.pos)


def _common_prefix(a: bytes, b: bytes) -> int:
    """How many leading bytes `a` and `b` share."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _copy_body(
    response: http.client.HTTPResponse,
    writer: _PartWriter,
    part: Path,
    progress: Callable[[int], None],
) -> int:
    """Copy the body through `writer`; write errors are the user's (disk full), not the net's."""
    received = 0
    while True:
        try:
            # read1: one recv at most, so a timeout loses nothing already received.
            block = response.read1(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(_reason(exc)) from None
        if not block:
            return received
        with os_errors(part, "write", RESUME_HINT):
            writer.write(block)
        received += len(block)
        progress(len(block))


@contextmanager
def _open_part(part: Path) -> Iterator[IO[bytes]]:
    """The ``.part`` file opened for reading and writing, created empty if absent."""
    with os_errors(part, "write", RESUME_HINT):
        part.touch()
        out = open(part, "r+b")  # noqa: SIM115 (closed by the `with` below)
    with out:
        yield out


def _transfer(
    url: str, part: Path, timeout: float, bar: Progress | None, *, resume: bool, limit: int | None
) -> None:
    """One attempt: fetch `url` into `part`, asking (if `resume`) for the bytes not yet there.

    `limit` is the most bytes the file may have (a recorded size); a server that states or
    sends more is refused and what it sent is discarded.
    """
    offset = part.stat().st_size if part.is_file() else 0
    with _open(url, offset if resume else 0, timeout) as response:
        start = _start(response, offset if resume else 0)
        cap = _size_cap(_total_size(response, start), limit)
        length = _body_length(response)
        with _open_part(part) as out, _task(bar, part, cap, start) as progress:
            writer = _PartWriter(out, start, offset, cap)
            try:
                received = _copy_body(response, writer, part, progress)
            except _TooBig:
                with os_errors(part, "write"):
                    out.truncate(writer.keep)  # keep only what was there before this body
                raise
            # http.client returns a short body without complaint when the server hangs up early.
            if length is not None and received != length:
                raise _Transient(
                    f"connection closed after {start + received:,} of {start + length:,} bytes"
                )
            with os_errors(part, "write", RESUME_HINT):
                writer.finish()


@contextmanager
def _task(
    bar: Progress | None, part: Path, total: int | None, done: int
) -> Iterator[Callable[[int], None]]:
    """A progress-bar row for one attempt; yields the function that advances it."""
    if bar is None:
        yield lambda n: None
        return
    task = bar.add_task(part.name.removesuffix(".part"), total=total, completed=done)
    try:
        yield lambda n: bar.advance(task, n)
    finally:
        bar.remove_task(task)


def _fetch_mirror(
    url: str,
    part: Path,
    *,
    retries: int,
    timeout: float,
    backoff: float,
    bar: Progress | None,
    limit: int | None,
    resume: bool,
) -> None:
    """Fetch from one mirror with up to `retries` retries and exponential back-off.

    With `resume`, the bytes after those in `part` are asked for; without, the whole file.
    """
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, bar, resume=resume, limit=limit)
            return
        except _Transient as exc:
            if isinstance(exc, _StaleRange):
                # Ask for the whole file next time; the prefix stays where it matches.
                resume = False
            if attempt == retries:
                raise
            delay = backoff * 2**attempt
            err_console.print(
                f"[yellow]{escape(f'{url}: {exc}')}; retry {attempt + 1}/{retries} "
                f"in {delay:.1f}s[/]",
                highlight=False,
            )
            time.sleep(delay)


def _not_a_folder(dest: Path) -> None:
    """A folder where the archive belongs is the user's to move: never removed or written into."""
    if dest.is_dir():
        raise UserError(
            f"{dest}: is a folder, but the archive {dest.name} belongs there; "
            "move or rename the folder, then run again"
        )


def _present(dest: Path, md5: str) -> FetchResult:
    """A file already at its final name: keep it if its MD5 is right, never overwrite it."""
    _not_a_folder(dest)
    found = md5sum(dest)
    if found != md5:
        raise UserError(
            f"{dest}: checksum mismatch: expected MD5 {md5}, got {found}; "
            "delete the file to download it again"
        )
    return FetchResult(dest.name, dest, md5, str(dest), "present")


def _make_folder(folder: Path) -> None:
    """Create `folder` (and its parents); a file in the way or a read-only disk is a UserError."""
    with os_errors(folder, "create the folder"):
        folder.mkdir(parents=True, exist_ok=True)


def download_file(
    urls: Sequence[str],
    dest: Path,
    md5: str | None,
    *,
    retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 1.0,
    hint: str = "",
    max_size: int | None = None,
) -> FetchResult:
    """Download `dest` from the first mirror in `urls` that serves a file with MD5 `md5`.

    Resumes a ``<dest>.part`` left by an earlier run or by an earlier mirror (the final MD5
    decides). A file already at `dest` with the right MD5 is kept; with the wrong MD5 it is an
    error (it is never overwritten). No more than `max_size` bytes (default: the size recorded
    for a known MD5, else what the server states) are accepted. When every mirror fails, the
    UserError names the URLs tried and ends with `hint`. With `md5` None (none known) the
    first complete download is taken as it is; the caller records its MD5.
    """
    if dest.exists():
        return _present(dest, md5) if md5 is not None else _unchecked(dest, str(dest), "present")
    _make_folder(dest.parent)
    part = dest.with_name(dest.name + ".part")
    _not_a_folder(part)
    limit = max_size if max_size is not None else SIZE_LIMITS.get(md5 or "")
    failures: list[str] = []
    mismatch = False
    with byte_progress() as bar:
        for url in urls:
            fetch = functools.partial(
                _fetch_mirror, url, part, retries=retries, timeout=timeout, backoff=backoff
            )
            try:
                found = _from_mirror(functools.partial(fetch, bar=bar, limit=limit), part, md5)
            except (_Transient, _Skip) as exc:
                # What arrived stays in the .part: the next mirror resumes from it.
                failures.append(f"{url} ({exc})")
                _drop_if_empty(part)
                continue
            if md5 is None or found == md5:
                return _finish_download(part, dest, found, url)
            mismatch = True
            failures.append(f"{url} (got MD5 {found})")
    tried = "; ".join(failures) if failures else "no URLs configured"
    if mismatch:
        # A complete file with the wrong MD5 cannot be resumed into the right one.
        part.unlink(missing_ok=True)
        raise UserError(f"{dest.name}: checksum mismatch: expected MD5 {md5}; tried {tried}")
    raise UserError(f"could not download {dest.name}: tried {tried}. {hint}".rstrip())


def _from_mirror(fetch: Callable[..., None], part: Path, md5: str | None) -> str:
    """Complete `part` with `fetch` (`_fetch_mirror` for one mirror); the result's MD5.

    A ``.part`` this mirror resumed may hold another mirror's (or run's) bytes: when the
    result's MD5 is wrong, the mirror is asked once more for the whole file, which keeps the
    bytes that agree and rewrites the rest from the first difference on.
    """
    resumed = part.is_file() and part.stat().st_size > 0
    fetch(resume=True)
    found = md5sum(part)
    if md5 is not None and found != md5 and resumed:
        fetch(resume=False)
        found = md5sum(part)
    return found


def _drop_if_empty(part: Path) -> None:
    """Remove a ``.part`` that holds nothing (a refused or failed first attempt)."""
    if part.is_file() and part.stat().st_size == 0:
        part.unlink()


def _finish_download(part: Path, dest: Path, md5: str, url: str) -> FetchResult:
    """Give the checked ``.part`` its final name and say where it came from."""
    with os_errors(dest, "write"):
        os.replace(part, dest)
    size = dest.stat().st_size / 1e6
    err_console.print(f"{dest.name}: {size:,.1f} MB from {url}", highlight=False, markup=False)
    return FetchResult(dest.name, dest, md5, url, "downloaded")


# --------------------------------------------------------------------------- local copies


def _link_or_copy(src: Path, dest: Path) -> Action:
    """Put `src` at `dest` atomically: a hard link when possible, else a copy."""
    part = dest.with_name(dest.name + ".part")
    _not_a_folder(part)
    with os_errors(part, "write"):
        part.unlink(missing_ok=True)
    try:
        os.link(src, part)
        action: Action = "linked"
    except OSError:
        # Other file system or no hard links there: copy instead.
        try:
            shutil.copyfile(src, part)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise UserError(f"cannot copy {src} to {dest}: {exc.strerror or exc}") from None
        action = "copied"
    with os_errors(dest, "write"):
        os.replace(part, dest)
    return action


def _present_copy(src: Path, dest: Path, md5: str) -> FetchResult | None:
    """The archive already at `dest`: kept if right, an error if wrong (never replaced)."""
    if not dest.exists():
        return None
    _not_a_folder(dest)
    if dest.samefile(src):
        return FetchResult(dest.name, dest, md5, str(src), "present")
    found = md5sum(dest)
    if found != md5:
        raise UserError(
            f"{dest}: checksum mismatch: expected MD5 {md5}, got {found}; it is not replaced "
            f"by {src}: delete or move it aside, then run again"
        )
    return FetchResult(dest.name, dest, md5, str(src), "present")


def copy_from_dir(src_dir: Path, name: str, md5: str | None, dest_dir: Path) -> FetchResult:
    """Take archive `name` from the user's folder `src_dir` (MD5 checked) into `dest_dir`.

    An archive already in `dest_dir` is kept when its MD5 is right and refused (left as it
    is) when it is wrong. With `md5` None (none known) the copy is taken as it is.
    """
    src, dest = src_dir / name, dest_dir / name
    if not src_dir.is_dir():
        raise UserError(f"--from {src_dir}: not a folder")
    if not src.is_file():
        raise UserError(f"--from {src_dir}: {name} not found there")
    if md5 is None:
        md5 = md5sum(src)  # nothing to check against: the caller records this one
    present = _present_copy(src, dest, md5)
    if present is not None:
        return present
    found = md5sum(src)
    if found != md5:
        raise UserError(f"{src}: checksum mismatch: expected MD5 {md5}, got {found}")
    _make_folder(dest_dir)
    action = _link_or_copy(src, dest)
    return FetchResult(name, dest, md5, str(src), action)


def _wanted(cfg: DownloadConfig, dataset: str) -> list[tuple[str, list[str], str | None, str]]:
    """(archive name, mirrors, MD5 or None, the mirrors' config key) of `dataset`, splits first."""
    if dataset == "ucf101":
        splits = (cfg.ucf101_splits_urls, cfg.ucf101_splits_md5, "download.ucf101_splits_urls")
        videos = (cfg.ucf101_videos_urls, cfg.ucf101_videos_md5, "download.ucf101_videos_urls")
        return [(UCF101_SPLITS_ARCHIVE, *splits), (UCF101_VIDEOS_ARCHIVE, *videos)]
    return [
        (SPLITS_ARCHIVE, cfg.splits_urls, cfg.splits_md5, "download.splits_urls"),
        (VIDEOS_ARCHIVE, cfg.videos_urls, cfg.videos_md5, "download.videos_urls"),
    ]


def record_path(archive: Path) -> Path:
    """``<archive>.md5``: the MD5 recorded at the first complete download (md5sum's format)."""
    return archive.with_name(archive.name + RECORD_SUFFIX)


def recorded_md5(archive: Path) -> str | None:
    """The MD5 recorded for `archive`, or None when there is no record yet."""
    record = record_path(archive)
    if not record.exists():
        return None
    with os_errors(record, "read"):
        text = record.read_text(encoding="utf-8", errors="replace")
    found = text.split()[0] if text.split() else ""
    if not re.fullmatch(r"[0-9a-f]{32}", found):
        raise UserError(
            f"{record}: not an MD5 record; delete it (and {archive.name}) to start over"
        )
    return found


def _record(result: FetchResult) -> FetchResult:
    """Write the MD5 of an archive that had none to check against, and say so once."""
    record = record_path(result.path)
    with os_errors(record, "write"):
        atomic_write_text(record, f"{result.md5}  {result.name}\n")
    err_console.print(
        f"{result.name}: no published MD5 is known; recorded {result.md5} of this complete "
        f"download in {record}, and later runs check the archive against it",
        highlight=False,
        markup=False,
    )
    return result


def _unchecked(dest: Path, source: str, action: Action) -> FetchResult:
    """An archive taken without an MD5 to check (its MD5 is computed, to be recorded)."""
    _not_a_folder(dest)
    return FetchResult(dest.name, dest, md5sum(dest), source, action)


def fetch_archives(
    cfg: DownloadConfig,
    archives_dir: Path,
    *,
    from_dir: Path | None = None,
    backoff: float = 1.0,
    dataset: str = "hmdb51",
) -> list[FetchResult]:
    """Put `dataset`'s two archives (splits, videos) in `archives_dir`, MD5-checked.

    From `from_dir` when given (hard-linked or copied), else from the configured mirrors. An
    archive without a configured MD5 is checked against its record (``<archive>.md5``), or,
    with no record yet, taken as it comes and recorded.
    """
    results = []
    for name, urls, md5, key in _wanted(cfg, dataset):
        known = md5 or recorded_md5(archives_dir / name)
        try:
            result = _fetch_one(cfg, archives_dir, name, urls, known, key, from_dir, backoff)
        except UserError as exc:
            if md5 is None and known is not None and "checksum mismatch" in str(exc):
                record = record_path(archives_dir / name)
                raise UserError(
                    f"{exc} (the expected MD5 is the one {record} recorded at the first "
                    "download: if that download was bad, delete the record too)"
                ) from None
            raise
        results.append(result if known is not None else _record(result))
    return results


def _fetch_one(
    cfg: DownloadConfig,
    archives_dir: Path,
    name: str,
    urls: list[str],
    known: str | None,
    key: str,
    from_dir: Path | None,
    backoff: float,
) -> FetchResult:
    """One archive, from `from_dir` or the mirrors, checked against `known` when given."""
    if from_dir is not None:
        return copy_from_dir(from_dir, name, known, archives_dir)
    hint = (
        f"If you have {name}, pass --from DIR (the folder holding it), "
        f"or set {key} to a mirror (--set '{key}=[\"https://...\"]')."
    )
    return download_file(
        urls,
        archives_dir / name,
        known,
        retries=cfg.retries,
        timeout=cfg.timeout,
        backoff=backoff,
        hint=hint,
        max_size=UCF101_SIZE_LIMITS.get(name),
    )


# --------------------------------------------------------------------------- weights


def fetch_kinetics_weights() -> Path:
    """Download torchvision's R(2+1)D-18 Kinetics-400 weights into torch's hub cache.

    Returns the checkpoint's path; a file already there is used as is. Offline, the UserError
    says where to put the file by hand.
    """
    import torch.hub
    from torchvision.models.video import R2Plus1D_18_Weights

    weights = R2Plus1D_18_Weights.KINETICS400_V1
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        weights.get_state_dict(progress=not err_console.quiet)
    except (OSError, urllib.error.URLError, http.client.HTTPException, RuntimeError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"cannot download the Kinetics-400 weights from {weights.url} ({reason}); "
            f"download that file by hand and put it at {path}"
        ) from None
    return path
