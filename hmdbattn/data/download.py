"""Fetch the HMDB51 archives (mirrors, resume, MD5) and torchvision's Kinetics-400 weights.

A download goes to ``<name>.part`` next to its final name and is renamed only once its MD5
matches, so a file under its final name is always complete. An interrupted download resumes
with an HTTP Range request; a server that ignores Range simply sends the whole file again.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hmdbattn import __version__
from hmdbattn.config import DownloadConfig
from hmdbattn.errors import UserError
from hmdbattn.report import err_console

VIDEOS_ARCHIVE = "hmdb51_org.rar"
SPLITS_ARCHIVE = "test_train_splits.rar"
CHUNK = 1 << 20
# 408 and 429 say "try again later"; other 4xx mean this mirror will not serve the file.
RETRY_STATUS = {408, 429}

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
    """The hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
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


def _copy_body(
    response: http.client.HTTPResponse, out: IO[bytes], bar: Progress | None, task: TaskID | None
) -> int:
    """Copy the body to `out`; write errors are the user's (disk full), not the network's."""
    received = 0
    while True:
        try:
            # read1: one recv at most, so a timeout loses nothing already received.
            block = response.read1(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(_reason(exc)) from None
        if not block:
            return received
        try:
            out.write(block)
        except OSError as exc:
            raise UserError(f"cannot write {out.name}: {exc.strerror or exc}") from None
        received += len(block)
        if bar is not None and task is not None:
            bar.advance(task, len(block))


def _transfer(url: str, part: Path, timeout: float, bar: Progress | None) -> None:
    """One attempt: fetch `url` into `part`, continuing after the bytes already there."""
    offset = part.stat().st_size if part.exists() else 0
    with _open(url, offset, timeout) as response:
        start = _start(response, offset)
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        task = None
        if bar is not None:
            total = start + expected if expected is not None else None
            task = bar.add_task(part.name.removesuffix(".part"), total=total, completed=start)
        try:
            with open(part, "r+b" if start else "wb") as out:
                out.seek(start)
                out.truncate()
                received = _copy_body(response, out, bar, task)
        finally:
            if bar is not None and task is not None:
                bar.remove_task(task)
    # http.client returns a short body without complaint when the server hangs up early.
    if expected is not None and received != expected:
        raise _Transient(f"connection closed after {start + received} of {start + expected} bytes")


def _fetch_mirror(
    url: str, part: Path, *, retries: int, timeout: float, backoff: float, bar: Progress | None
) -> None:
    """Fetch from one mirror with up to `retries` retries and exponential back-off."""
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout, bar)
            return
        except _Transient as exc:
            if isinstance(exc, _StaleRange):
                part.unlink(missing_ok=True)
            if attempt == retries:
                raise
            delay = backoff * 2**attempt
            err_console.print(
                f"[yellow]{escape(f'{url}: {exc}')}; retry {attempt + 1}/{retries} "
                f"in {delay:.1f}s[/]",
                highlight=False,
            )
            time.sleep(delay)


def _present(dest: Path, md5: str) -> FetchResult:
    """A file already at its final name: keep it if its MD5 is right, never overwrite it."""
    found = md5sum(dest)
    if found != md5:
        raise UserError(
            f"{dest}: checksum mismatch: expected MD5 {md5}, got {found}; "
            "delete the file to download it again"
        )
    return FetchResult(dest.name, dest, md5, str(dest), "present")


def download_file(
    urls: Sequence[str],
    dest: Path,
    md5: str,
    *,
    retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 1.0,
    hint: str = "",
) -> FetchResult:
    """Download `dest` from the first mirror in `urls` that serves a file with MD5 `md5`.

    Resumes a ``<dest>.part`` left by an earlier run. A file already at `dest` with the right
    MD5 is kept; with the wrong MD5 it is an error (it is never overwritten). When every mirror
    fails, the UserError names the URLs tried and ends with `hint`.
    """
    if dest.exists():
        return _present(dest, md5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    mismatch = False
    with byte_progress() as bar:
        for url in urls:
            try:
                _fetch_mirror(url, part, retries=retries, timeout=timeout, backoff=backoff, bar=bar)
            except (_Transient, _Skip) as exc:
                failures.append(f"{url} ({exc})")
                continue
            found = md5sum(part)
            if found == md5:
                os.replace(part, dest)
                size = dest.stat().st_size / 1e6
                err_console.print(
                    f"{dest.name}: {size:,.1f} MB from {url}", highlight=False, markup=False
                )
                return FetchResult(dest.name, dest, md5, url, "downloaded")
            # Start clean next time: appending to a wrong file can never give the right one.
            part.unlink(missing_ok=True)
            mismatch = True
            failures.append(f"{url} (got MD5 {found})")
    tried = "; ".join(failures) if failures else "no URLs configured"
    if mismatch:
        raise UserError(f"{dest.name}: checksum mismatch: expected MD5 {md5}; tried {tried}")
    raise UserError(f"could not download {dest.name}: tried {tried}. {hint}".rstrip())


# --------------------------------------------------------------------------- local copies


def _link_or_copy(src: Path, dest: Path) -> Action:
    """Put `src` at `dest` atomically: a hard link when possible, else a copy."""
    part = dest.with_name(dest.name + ".part")
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
    os.replace(part, dest)
    return action


def copy_from_dir(src_dir: Path, name: str, md5: str, dest_dir: Path) -> FetchResult:
    """Take archive `name` from the user's folder `src_dir` (MD5 checked) into `dest_dir`."""
    src, dest = src_dir / name, dest_dir / name
    if not src_dir.is_dir():
        raise UserError(f"--from {src_dir}: not a folder")
    if not src.is_file():
        raise UserError(f"--from {src_dir}: {name} not found there")
    if dest.exists() and (dest.samefile(src) or md5sum(dest) == md5):
        return FetchResult(name, dest, md5, str(src), "present")
    found = md5sum(src)
    if found != md5:
        raise UserError(f"{src}: checksum mismatch: expected MD5 {md5}, got {found}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    action = _link_or_copy(src, dest)
    return FetchResult(name, dest, md5, str(src), action)


def fetch_archives(
    cfg: DownloadConfig,
    archives_dir: Path,
    *,
    from_dir: Path | None = None,
    backoff: float = 1.0,
) -> list[FetchResult]:
    """Put ``hmdb51_org.rar`` and ``test_train_splits.rar`` in `archives_dir`, MD5-checked.

    From `from_dir` when given (hard-linked or copied), else from the configured mirrors.
    """
    wanted = [
        (SPLITS_ARCHIVE, cfg.splits_urls, cfg.splits_md5, "download.splits_urls"),
        (VIDEOS_ARCHIVE, cfg.videos_urls, cfg.videos_md5, "download.videos_urls"),
    ]
    results = []
    for name, urls, md5, key in wanted:
        if from_dir is not None:
            results.append(copy_from_dir(from_dir, name, md5, archives_dir))
            continue
        hint = (
            f"If you have {name}, pass --from DIR (the folder holding it), "
            f"or set {key} to a mirror (--set '{key}=[\"https://...\"]')."
        )
        results.append(
            download_file(
                urls,
                archives_dir / name,
                md5,
                retries=cfg.retries,
                timeout=cfg.timeout,
                backoff=backoff,
                hint=hint,
            )
        )
    return results


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
