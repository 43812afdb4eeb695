"""Put HMDB51 or UCF101 on disk: fetch the archives, extract them, verify the result.

An extraction that finished earlier is skipped (its marker says so), so a file lost since then
would go unnoticed: when verification fails after a skipped extraction, extraction runs once
more with ``force`` (complete files are kept) and the dataset is verified again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hmdbattn.config import DownloadConfig
from hmdbattn.data.archive import (
    ExtractResult,
    extract_splits,
    extract_ucf101_splits,
    extract_ucf101_videos,
    extract_videos,
)
from hmdbattn.data.download import (
    SPLITS_ARCHIVE,
    UCF101_SPLITS_ARCHIVE,
    UCF101_VIDEOS_ARCHIVE,
    VIDEOS_ARCHIVE,
    FetchResult,
    fetch_archives,
)
from hmdbattn.data.ucf101 import UCF101_EXPECTED, Counts
from hmdbattn.data.verify import (
    HMDB51_EXPECTED,
    Expected,
    VerifyResult,
    verify_dataset,
    verify_ucf101,
)


@dataclass
class Installed:
    """What an install did: archives fetched, extractions, and the final verification."""

    root: Path
    fetched: list[FetchResult]
    extracted: list[ExtractResult]
    verification: VerifyResult

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary `hmdbattn download --json` prints."""
        return {
            "root": str(self.root),
            "archives": [asdict(f) | {"path": str(f.path)} for f in self.fetched],
            "extracted": [
                {
                    "archive": e.archive.name,
                    "written": e.written,
                    "kept": e.kept,
                    "skipped": e.skipped,
                }
                for e in self.extracted
            ],
            "verification": self.verification.to_dict(),
        }


def install_hmdb51(
    cfg: DownloadConfig,
    root: Path,
    *,
    from_dir: Path | None = None,
    expected: Expected = HMDB51_EXPECTED,
) -> Installed:
    """Fetch (or take from `from_dir`), extract and verify HMDB51 under `root`.

    Archives go to ``<root>/archives``. The result may fail verification; the caller decides
    what to say about it.
    """
    fetched = fetch_archives(cfg, root / "archives", from_dir=from_dir)
    archives = {f.name: f.path for f in fetched}

    def extract(force: bool) -> list[ExtractResult]:
        return [
            extract_splits(archives[SPLITS_ARCHIVE], root, force=force),
            extract_videos(archives[VIDEOS_ARCHIVE], root, force=force),
        ]

    return _extract_verified(root, fetched, extract, lambda: verify_dataset(root, expected))


def install_ucf101(
    cfg: DownloadConfig,
    root: Path,
    *,
    from_dir: Path | None = None,
    expected: Counts = UCF101_EXPECTED,
) -> Installed:
    """Fetch (or take from `from_dir`), extract and verify UCF101 under `root`, like HMDB51.

    Archives go to ``<root>/archives``; without a configured MD5 each is checked against the
    MD5 recorded at its first complete download (see hmdbattn.data.download).
    """
    fetched = fetch_archives(cfg, root / "archives", from_dir=from_dir, dataset="ucf101")
    archives = {f.name: f.path for f in fetched}

    def extract(force: bool) -> list[ExtractResult]:
        return [
            extract_ucf101_splits(archives[UCF101_SPLITS_ARCHIVE], root, force=force),
            extract_ucf101_videos(archives[UCF101_VIDEOS_ARCHIVE], root, force=force),
        ]

    return _extract_verified(root, fetched, extract, lambda: verify_ucf101(root, expected))


def _extract_verified(
    root: Path,
    fetched: list[FetchResult],
    extract: Callable[[bool], list[ExtractResult]],
    verify: Callable[[], VerifyResult],
) -> Installed:
    """Extract (skipping finished extractions), verify, and once more with force if needed."""
    extracted = extract(False)
    result = verify()
    if not result.ok and any(e.skipped for e in extracted):
        # Extracted earlier, but files went missing since: extract again (complete files stay).
        extracted = extract(True)
        result = verify()
    return Installed(root, fetched, extracted, result)
