"""Your own videos as ``<root>/<class>/<video>``: classes are the folders, the split is made once.

Layout::

    <root>/<class>/<video>.<ext>     any of VIDEO_EXTENSIONS, in any case (.mp4, .AVI, ...)
    <root>/hmdbattn_split.json       the train/test split, written on first use

The classes are the folder names, sorted; hidden folders, folders without a video and the
frame cache's folder (when it is inside the root) are not classes. On first use every class's
videos are shuffled with ``data.split_seed`` and ``data.test_fraction`` of them (at least one,
never all) become test videos; the rest train. The split file records that, so every later
run (another machine, another seed of training) uses the same split.

A video that appears after the split was written is refused, not slipped into either set: a
test set that grows silently would make earlier and later results incomparable. Delete the
split file to split again with the new videos (the message says so). A video of the split file
that is gone from disk is left out, as a missing video of HMDB51's split files is.

Two videos of a folder that differ only by their extension (``x.mp4``, ``x.avi``) are refused
before the split is made: the frame cache names a video by its folder and stem.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from hmdbattn.data.formats import check_cache_names
from hmdbattn.data.hmdb51 import DatasetIndex, Video, class_order, path_problem
from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_write_text, os_errors

SPLIT_FILE = "hmdbattn_split.json"
SPLIT_VERSION = 1
VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
)


def is_video(path: Path) -> bool:
    """A visible file with a common video extension."""
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def find_videos(root: Path, skip: Path | None = None) -> dict[str, list[str]]:
    """Class folder -> its videos (``<class>/<file>``, sorted); `skip` is not a class."""
    if not root.is_dir():
        raise UserError(
            f'{root}: not a folder; data.format "folders" expects data.root/<class>/<video> '
            "(set data.root)"
        )
    found: dict[str, list[str]] = {}
    skipped = skip.resolve() if skip is not None else None
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir() or folder.resolve() == skipped:
            continue
        videos = sorted(f"{folder.name}/{p.name}" for p in folder.iterdir() if is_video(p))
        if videos and path_problem(videos[0]) is None:
            found[folder.name] = videos
    if len(found) < 2:
        raise UserError(
            f'{root}: {len(found)} class folder(s) holding videos; data.format "folders" '
            f"expects data.root/<class>/<video> (one folder per class, at least 2, videos "
            f"ending in {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    return found


def make_split(found: dict[str, list[str]], test_fraction: float, seed: int) -> dict[str, str]:
    """``<class>/<file>`` -> "train" or "test": per class, a seeded share of test videos.

    Stratified: every class has at least one test and one training video. The choice depends
    only on the names, the fraction and the seed (not on the order the disk lists files in).
    """
    split: dict[str, str] = {}
    for label in sorted(found):
        videos = sorted(found[label])
        if len(videos) < 2:
            raise UserError(
                f"class folder {label!r} holds {len(videos)} video; each class needs at least "
                "2 (one to train on, one to test on): add videos or remove the folder"
            )
        test = min(max(1, round(test_fraction * len(videos))), len(videos) - 1)
        chosen = set(random.Random(f"{seed}/{label}").sample(videos, test))
        split.update({v: "test" if v in chosen else "train" for v in videos})
    return dict(sorted(split.items()))


def _read_split(path: Path) -> dict[str, Any]:
    """The split file's content; a damaged one is a UserError saying to delete it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(data, dict) and data.get("version") == SPLIT_VERSION
        if ok and all(s in ("train", "test") for s in data["videos"].values()):
            return data
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass
    raise UserError(f"{path}: not a readable split file of hmdbattn; delete it to split again")


def _check_settings(path: Path, data: dict[str, Any], test_fraction: float, seed: int) -> None:
    """The file was made with the configured fraction and seed (else say which key differs)."""
    for key, wanted in (("test_fraction", test_fraction), ("split_seed", seed)):
        if data.get(key) != wanted:
            raise UserError(
                f"{path} was made with data.{key} = {data.get(key)}, the config says {wanted}: "
                f"set data.{key} = {data.get(key)} to keep this split, or delete the file to "
                "split again"
            )


def load_or_make_split(
    root: Path, found: dict[str, list[str]], test_fraction: float, seed: int
) -> dict[str, str]:
    """The split of `root`: read from its split file, or made now and written there."""
    path = root / SPLIT_FILE
    if not path.exists():
        split = make_split(found, test_fraction, seed)
        record = {"version": SPLIT_VERSION, "test_fraction": test_fraction, "split_seed": seed}
        text = json.dumps(record | {"videos": split}, indent=1) + "\n"
        with os_errors(path, "write the split file", "; make data.root writable"):
            atomic_write_text(path, text)
        return split
    data = _read_split(path)
    _check_settings(path, data, test_fraction, seed)
    split = dict(data["videos"])
    new = sorted(v for videos in found.values() for v in videos if v not in split)
    if new:
        raise UserError(
            f"{len(new)} video(s) under {root} are not in {path} (e.g. {new[0]}): they came "
            "after the split was made; delete the split file to split again with them (the "
            "test set changes), or move them out"
        )
    return split


def scan_folders(root: Path, test_fraction: float, seed: int, skip: Path | None) -> DatasetIndex:
    """Index ``<root>/<class>/<video>``: classes from the folders, split 1 from the split file.

    `skip` is a folder under the root that is not a class (the frame cache).
    """
    found = find_videos(root, skip)
    # Before the split file is written: a pair renamed afterwards would be "new" videos.
    check_cache_names((v for videos in found.values() for v in videos), root)
    split = load_or_make_split(root, found, test_fraction, seed)
    videos: list[Video] = []
    missing: list[Video] = []
    for rel, subset in split.items():
        problem = path_problem(rel)
        if problem is not None or rel.count("/") != 1:
            raise UserError(f"{root / SPLIT_FILE}: {rel!r} is not <class>/<video>; delete it")
        video = Video(rel, rel.partition("/")[0], {1: 1 if subset == "train" else 2})
        (videos if (root / rel).is_file() else missing).append(video)
    classes = class_order({v.label for v in videos + missing})
    dirs = [root / label for label in classes]
    return DatasetIndex(root, classes, videos, missing, videos_root=root, layout_dirs=dirs)
