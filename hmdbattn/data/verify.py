"""Check an extracted dataset against HMDB51's (reference.md section 3) or UCF101's known counts.

The expected numbers are a parameter so that small fixtures can be checked the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hmdbattn.data import ucf101
from hmdbattn.data.formats import check_cache_names
from hmdbattn.data.hmdb51 import (
    SPLIT_FILE,
    SPLITS,
    SUBSET_IDS,
    parse_split_file,
    splits_dir,
    videos_dir,
)


@dataclass(frozen=True)
class Expected:
    """The counts a complete dataset has; per split means in each of splits 1, 2 and 3."""

    classes: int = 51
    videos: int = 6766
    split_files: int = 153
    train: int = 3570
    test: int = 1530
    unused: int = 1666


HMDB51_EXPECTED = Expected()


@dataclass
class Check:
    """One verified quantity."""

    name: str
    expected: int
    found: int

    @property
    def ok(self) -> bool:
        return self.expected == self.found


@dataclass
class VerifyResult:
    """Every check, and the split entries whose video is not on disk (``<class>/<video>``)."""

    root: Path
    checks: list[Check]
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not self.missing

    def rows(self) -> list[tuple[str, int, int, str]]:
        """Table rows: check, expected, found, status."""
        return [(c.name, c.expected, c.found, "ok" if c.ok else "DIFFERS") for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "root": str(self.root),
            "ok": self.ok,
            "checks": [asdict(c) | {"ok": c.ok} for c in self.checks],
            "missing": self.missing,
        }


def _videos_on_disk(videos_dir: Path) -> tuple[set[str], int]:
    """Class folders (hidden ones aside) and the number of ``.avi`` files in them."""
    if not videos_dir.is_dir():
        return set(), 0
    classes = {p.name for p in videos_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    videos = sum(1 for c in classes for p in (videos_dir / c).glob("*.avi") if p.is_file())
    return classes, videos


def _split_entries(splits_dir: Path) -> tuple[int, Counter[tuple[int, int]], set[str]]:
    """Number of split files, per (split, id) counts, and every listed ``<class>/<video>``."""
    files = sorted(splits_dir.glob("*_test_split*.txt")) if splits_dir.is_dir() else []
    counts: Counter[tuple[int, int]] = Counter()
    listed: set[str] = set()
    n_files = 0
    for path in files:
        match = SPLIT_FILE.match(path.name)
        if match is None:
            continue
        n_files += 1
        for name, sid in parse_split_file(path):
            counts[int(match["split"]), sid] += 1
            listed.add(f"{match['label']}/{name}")
    return n_files, counts, listed


def verify_dataset(root: Path, expected: Expected = HMDB51_EXPECTED) -> VerifyResult:
    """Count classes, videos, split files and per-split subsets under `root`; list missing files.

    A malformed split file raises the UserError of `parse_split_file` (file and line), and so
    do two entries that would share a cache file (`formats.check_cache_names`).
    """
    videos = videos_dir(root)
    classes, n_videos = _videos_on_disk(videos)
    n_files, counts, listed = _split_entries(splits_dir(root))
    check_cache_names(listed, videos)  # x.avi and x.mp4 of one class: preprocess would refuse
    checks = [
        Check("classes (videos/ folders)", expected.classes, len(classes)),
        Check("videos (.avi files)", expected.videos, n_videos),
        Check("split files", expected.split_files, n_files),
    ]
    for split in SPLITS:
        for subset in ("train", "test", "unused"):
            found = counts[split, SUBSET_IDS[subset]]
            checks.append(Check(f"split {split} {subset}", getattr(expected, subset), found))
    missing = sorted(rel for rel in listed if not (videos / rel).is_file())
    checks.append(Check("split entries on disk", len(listed), len(listed) - len(missing)))
    return VerifyResult(root, checks, missing)


def _ucf101_lists(splits: Path, classes: list[str]) -> tuple[dict[tuple[int, str], int], set[str]]:
    """Per (split, "train"/"test") entry counts, and every listed ``<Class>/<video>``."""
    counts: dict[tuple[int, str], int] = {}
    listed: set[str] = set()
    for split in SPLITS:
        train, test = ucf101.split_lists(splits, split)
        for subset, path, parse in (
            ("train", train, ucf101.parse_train_list),
            ("test", test, ucf101.parse_test_list),
        ):
            entries = parse(path, classes) if path.is_file() else []
            counts[split, subset] = len(entries)
            listed.update(entries)
    return counts, listed


def verify_ucf101(root: Path, expected: ucf101.Counts = ucf101.UCF101_EXPECTED) -> VerifyResult:
    """Count UCF101's classes, videos and split-list entries under `root`; list missing files.

    A malformed list raises the UserError of the ucf101 parsers (file and line), and so do
    two entries that would share a cache file.
    """
    videos, splits = videos_dir(root), splits_dir(root)
    index = splits / ucf101.CLASS_INDEX
    classes = ucf101.parse_class_index(index) if index.is_file() else []
    folders, n_videos = _videos_on_disk(videos)
    counts, listed = _ucf101_lists(splits, classes) if classes else ({}, set())
    check_cache_names(listed, videos)
    checks = [
        Check(f"classes ({ucf101.CLASS_INDEX})", expected.classes, len(classes)),
        Check("classes (videos/ folders)", expected.classes, len(folders)),
        Check("videos (.avi files)", expected.videos, n_videos),
    ]
    for split in SPLITS:
        for subset in ("train", "test"):
            wanted = getattr(expected, subset)[split - 1]
            checks.append(Check(f"split {split} {subset}", wanted, counts.get((split, subset), 0)))
    missing = sorted(rel for rel in listed if not (videos / rel).is_file())
    checks.append(Check("split entries on disk", len(listed), len(listed) - len(missing)))
    return VerifyResult(root, checks, missing)
