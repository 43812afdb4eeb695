"""HMDB51's labels, split files and the dataset index (no decoding here).

Layout on disk (the real dataset and the synthetic one alike)::

    <root>/videos/<class>/<video>.avi
    <root>/splits/<class>_test_split<k>.txt   lines "<video>.avi <id>": 1 train, 2 test, 0 unused
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from hmdbattn.errors import UserError

# The 51 labels in the conventional index order (alphabetical).
LABELS: tuple[str, ...] = (
    "brush_hair",
    "cartwheel",
    "catch",
    "chew",
    "clap",
    "climb",
    "climb_stairs",
    "dive",
    "draw_sword",
    "dribble",
    "drink",
    "eat",
    "fall_floor",
    "fencing",
    "flic_flac",
    "golf",
    "handstand",
    "hit",
    "hug",
    "jump",
    "kick",
    "kick_ball",
    "kiss",
    "laugh",
    "pick",
    "pour",
    "pullup",
    "punch",
    "push",
    "pushup",
    "ride_bike",
    "ride_horse",
    "run",
    "shake_hands",
    "shoot_ball",
    "shoot_bow",
    "shoot_gun",
    "sit",
    "situp",
    "smile",
    "smoke",
    "somersault",
    "stand",
    "swing_baseball",
    "sword",
    "sword_exercise",
    "talk",
    "throw",
    "turn",
    "walk",
    "wave",
)

SPLITS = (1, 2, 3)
SUBSET_IDS = {"unused": 0, "train": 1, "test": 2}
SPLIT_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<split>[123])\.txt$")


def split_file_name(label: str, split: int) -> str:
    """The split file of one class, e.g. ``brush_hair_test_split1.txt``."""
    return f"{label}_test_split{split}.txt"


def parse_split_file(path: Path) -> list[tuple[str, int]]:
    """Read ``(video file name, id)`` pairs; a malformed line is an error naming file and line.

    A name must be a plain file name: a path (``/``, ``\\``, a drive, ``..``) could name a file
    outside the class's folder, and every reader joins it to that folder. A name listed twice
    is an error too: the later line would silently decide the video's id.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the split file ({exc})") from None
    entries = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines()):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(f"{path}:{number + 1}: expected '<video>.avi <0|1|2>', got {line!r}")
        problem = name_problem(fields[0])
        if problem is not None:
            raise UserError(
                f"{path}:{number + 1}: {fields[0]!r} is not a plain file name ({problem}); a "
                "split file lists the names of files in videos/<class>/"
            )
        listed_once(seen, fields[0], path, number + 1)
        entries.append((fields[0], int(fields[1])))
    return entries


def listed_once(seen: dict[str, int], entry: str, path: Path, number: int) -> None:
    """Record `entry` as listed on line `number` of `path`; listed before is a UserError."""
    if entry in seen:
        raise UserError(
            f"{path}:{number}: {entry} is listed already on line {seen[entry]}; a list names "
            "each video once: remove one of the lines"
        )
    seen[entry] = number


def name_problem(name: str) -> str | None:
    """Why `name` is not a plain file name (one that stays in the folder it is joined to)."""
    if name in (".", ".."):
        return "a folder reference"
    if any(sep in name for sep in "/\\"):
        return "it holds a path separator"
    if PureWindowsPath(name).drive:
        return "it names a drive"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it holds a control character"
    return None


def path_problem(path: str) -> str | None:
    """Why `path` (a ``/``-separated path from a split or list file) could leave the root.

    The spirit of `name_problem`, for paths with folders: no absolute path, no drive, no
    ``..``, no backslash (a Windows separator) and no control character.
    """
    if not path:
        return "it is empty"
    if path.startswith("/"):
        return "it is an absolute path"
    if "\\" in path:
        return "it holds a backslash (write paths with /)"
    if PureWindowsPath(path).drive:
        return "it names a drive"
    parts = path.split("/")
    if any(part == ".." for part in parts):
        return "it climbs out with .."
    if any(part in ("", ".") for part in parts):
        return "it has an empty or . component"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "it holds a control character"
    return None


@dataclass
class Video:
    """One video of the dataset: where it is, its class and its id in each split."""

    path: str  # relative to the index's videos_dir, e.g. "brush_hair/April_09_brush_..._0.avi"
    label: str
    split_ids: dict[int, int] = field(default_factory=dict)  # split -> 0 unused, 1 train, 2 test


@dataclass
class DatasetIndex:
    """Classes (in a stable order) and videos, from the split files and the videos folder.

    Every format (hmdb51, ucf101, folders, list) makes one of these; nothing downstream
    knows which. `layout_dirs` are the folders the dataset's own files live in, which the
    frame cache must stay out of.
    """

    root: Path
    classes: list[str]
    videos: list[Video]
    missing: list[Video]  # listed in a split file but not on disk
    videos_root: Path | None = None  # what Video.path is relative to; None = <root>/videos
    layout_dirs: list[Path] | None = None  # None = <root>/videos and <root>/splits

    def subset(self, split: int, subset: str) -> list[Video]:
        """The videos with `subset`'s id (train, test or unused) in `split`."""
        wanted = SUBSET_IDS[subset]
        return [v for v in self.videos if v.split_ids.get(split) == wanted]

    @property
    def videos_dir(self) -> Path:
        """The folder the videos' paths are relative to."""
        return self.videos_root if self.videos_root is not None else videos_dir(self.root)

    @property
    def protected_dirs(self) -> list[Path]:
        """Folders of the dataset's own files (the cache may not be inside one)."""
        if self.layout_dirs is not None:
            return self.layout_dirs
        return [videos_dir(self.root), splits_dir(self.root)]


def per_class(videos: list[Video], count: int, seed: int) -> list[Video]:
    """`count` videos of each class, chosen by `seed` (all of a class that has fewer).

    The choice depends only on the names, the count and the seed: the same on every machine,
    whatever order the files were listed in.
    """
    by_class: dict[str, list[Video]] = {}
    for video in sorted(videos, key=lambda v: v.path):
        by_class.setdefault(video.label, []).append(video)
    chosen: list[Video] = []
    for label in sorted(by_class):
        pool = by_class[label]
        rng = random.Random(f"{seed}/{label}")  # str seeds hash the same in every process
        chosen += sorted(rng.sample(pool, min(count, len(pool))), key=lambda v: v.path)
    return chosen


def videos_dir(root: Path) -> Path:
    """The videos folder of the dataset at `root`: ``<root>/videos/<class>/<video>.avi``."""
    return root / "videos"


def splits_dir(root: Path) -> Path:
    """The split files' folder of the dataset at `root`: ``<root>/splits/*.txt``."""
    return root / "splits"


def class_order(labels: set[str] | list[str]) -> list[str]:
    """Stable class order: sorted, which for HMDB51 is the conventional 51-label order."""
    return sorted(labels)


def scan_dataset(root: Path) -> DatasetIndex:
    """Index ``<root>``: classes and split membership from the split files, checked on disk."""
    splits, videos = splits_dir(root), videos_dir(root)
    if not splits.is_dir() or not videos.is_dir():
        raise UserError(
            f'{root}: no HMDB51 dataset here (data.format "hmdb51" expects videos/ and '
            "splits/); run `hmdbattn download` or `hmdbattn synthesize`, or set data.root "
            "(or data.format)"
        )
    by_path: dict[str, Video] = {}
    for split_path in sorted(splits.glob("*_test_split*.txt")):
        match = SPLIT_FILE.match(split_path.name)
        if match is None:
            continue
        label, split = match["label"], int(match["split"])
        if name_problem(label) is not None:  # e.g. ".._test_split1.txt": not a class folder
            raise UserError(f"{split_path}: {label!r} is not a class name; rename the file")
        for name, sid in parse_split_file(split_path):
            rel = f"{label}/{name}"
            video = by_path.setdefault(rel, Video(rel, label))
            video.split_ids[split] = sid
    if not by_path:
        raise UserError(f"{splits}: no split files (<class>_test_split<k>.txt)")
    present = [v for v in by_path.values() if (videos / v.path).is_file()]
    missing = [v for v in by_path.values() if not (videos / v.path).is_file()]
    classes = class_order({v.label for v in by_path.values()})
    return DatasetIndex(root, classes, present, missing)
