"""UCF101's class index, split lists and the dataset index (no decoding here).

Layout on disk, what ``hmdbattn download --dataset ucf101`` makes of the official archives
(``UCF101.rar``'s ``UCF-101/<Class>/*.avi`` and the splits zip's ``ucfTrainTestlist/*.txt``)::

    <root>/videos/<Class>/v_<Class>_g<group>_c<clip>.avi
    <root>/splits/classInd.txt        lines "1 ApplyEyeMakeup": 1-based index, class name
    <root>/splits/trainlist0<k>.txt   lines "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    <root>/splits/testlist0<k>.txt    lines "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

The classes are in classInd.txt's order. A test list carries no label: the path's folder is the
class. A training line whose label disagrees with its folder is an error naming file and line,
since one of the two is wrong and training on it would teach the wrong class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hmdbattn.data.hmdb51 import (
    SPLITS,
    DatasetIndex,
    Video,
    listed_once,
    name_problem,
    path_problem,
    splits_dir,
    videos_dir,
)
from hmdbattn.errors import UserError

CLASS_INDEX = "classInd.txt"


@dataclass(frozen=True)
class Counts:
    """The counts of a complete UCF101 (per split: splits 1, 2 and 3)."""

    classes: int = 101
    videos: int = 13320
    train: tuple[int, int, int] = (9537, 9586, 9624)
    test: tuple[int, int, int] = (3783, 3734, 3696)


UCF101_EXPECTED = Counts()


def train_list_name(split: int) -> str:
    """``trainlist01.txt`` for split 1."""
    return f"trainlist0{split}.txt"


def test_list_name(split: int) -> str:
    """``testlist01.txt`` for split 1."""
    return f"testlist0{split}.txt"


def _lines(path: Path) -> list[tuple[int, list[str], str]]:
    """``(line number, fields, line)`` of each non-blank line; a UserError when unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise UserError(
            f"{path}: not found; a UCF101 root holds splits/{path.name} (from "
            "UCF101TrainTestSplits-RecognitionTask.zip): run `hmdbattn download --dataset "
            "ucf101` or set data.root"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the split file ({exc})") from None
    return [(n + 1, line.split(), line) for n, line in enumerate(text.splitlines()) if line.split()]


def parse_class_index(path: Path) -> list[str]:
    """The class names of ``classInd.txt`` in index order; indices must run 1, 2, 3, ..."""
    classes: list[str] = []
    for number, fields, line in _lines(path):
        where = f"{path}:{number}"
        if len(fields) != 2 or not fields[0].isdigit():
            raise UserError(f"{where}: expected '<index> <ClassName>', got {line!r}")
        if int(fields[0]) != len(classes) + 1:
            raise UserError(
                f"{where}: class index {fields[0]}, expected {len(classes) + 1} (indices start "
                "at 1 and go up by one)"
            )
        problem = name_problem(fields[1])
        if problem is not None or fields[1] in classes:
            why = problem or "it is listed twice"
            raise UserError(f"{where}: {fields[1]!r} is not a usable class name ({why})")
        classes.append(fields[1])
    if len(classes) < 2:
        raise UserError(f"{path}: lists {len(classes)} class(es); a dataset needs at least 2")
    return classes


def _video_path(where: str, path: str, classes: list[str]) -> str:
    """A list line's ``<Class>/<file>``, checked: inside the root, of a known class."""
    problem = path_problem(path)
    if problem is not None:
        raise UserError(f"{where}: {path!r} is not a path inside videos/ ({problem})")
    folder, _, name = path.partition("/")
    if not name or "/" in name:
        raise UserError(f"{where}: {path!r}: expected '<ClassName>/<video>.avi'")
    if folder not in classes:
        raise UserError(f"{where}: {path!r}: class {folder!r} is not in {CLASS_INDEX}")
    return path


def parse_train_list(path: Path, classes: list[str]) -> list[str]:
    """The videos of a ``trainlist0<k>.txt``; a label that is not its folder's is an error."""
    videos: list[str] = []
    seen: dict[str, int] = {}
    for number, fields, line in _lines(path):
        where = f"{path}:{number}"
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"{where}: expected '<ClassName>/<video>.avi <index>', got {line!r}")
        rel = _video_path(where, fields[0], classes)
        index = int(fields[1])
        folder = rel.partition("/")[0]
        if not 1 <= index <= len(classes) or classes[index - 1] != folder:
            named = classes[index - 1] if 1 <= index <= len(classes) else "no class"
            raise UserError(
                f"{where}: label {index} ({named}) disagrees with the folder {folder!r} "
                f"(index {classes.index(folder) + 1} in {CLASS_INDEX}); fix the line"
            )
        listed_once(seen, rel, path, number)
        videos.append(rel)
    return videos


def parse_test_list(path: Path, classes: list[str]) -> list[str]:
    """The videos of a ``testlist0<k>.txt`` (no label: the folder is the class)."""
    videos: list[str] = []
    seen: dict[str, int] = {}
    for number, fields, line in _lines(path):
        where = f"{path}:{number}"
        if len(fields) != 1:
            raise UserError(f"{where}: expected '<ClassName>/<video>.avi', got {line!r}")
        videos.append(_video_path(where, fields[0], classes))
        listed_once(seen, videos[-1], path, number)
    return videos


def split_lists(splits: Path, split: int) -> list[Path]:
    """The train and test list of `split` (both must be there)."""
    return [splits / train_list_name(split), splits / test_list_name(split)]


def scan_ucf101(root: Path, split: int) -> DatasetIndex:
    """Index a UCF101 root: classes from classInd.txt, membership from the split lists.

    The lists of `split` must be there; the other splits' are read when present, so that
    ``train --splits 1,2,3`` and verification see them too.
    """
    splits, videos = splits_dir(root), videos_dir(root)
    if not (splits / CLASS_INDEX).is_file():
        raise UserError(
            f'{root}: no UCF101 dataset here (data.format "ucf101" expects '
            f"splits/{CLASS_INDEX}, the split lists and videos/<Class>/*.avi); run `hmdbattn "
            "download --dataset ucf101`, or set data.root (or data.format)"
        )
    classes = parse_class_index(splits / CLASS_INDEX)
    by_path: dict[str, Video] = {}
    read = [k for k in SPLITS if k == split or all(p.is_file() for p in split_lists(splits, k))]
    for k in read:
        train, test = split_lists(splits, k)
        _add(by_path, parse_train_list(train, classes), k, 1, train)
        _add(by_path, parse_test_list(test, classes), k, 2, test)
    for video in by_path.values():  # listed in other splits only: unused in this one
        for k in read:
            video.split_ids.setdefault(k, 0)
    present = [v for v in by_path.values() if (videos / v.path).is_file()]
    missing = [v for v in by_path.values() if not (videos / v.path).is_file()]
    return DatasetIndex(root, classes, present, missing)


def _add(by_path: dict[str, Video], paths: list[str], split: int, sid: int, source: Path) -> None:
    """Give each of `paths` id `sid` in `split`; a video in both lists of a split is an error."""
    for rel in paths:
        video = by_path.setdefault(rel, Video(rel, rel.partition("/")[0]))
        if split in video.split_ids:
            raise UserError(
                f"{source}: {rel} is listed twice in split {split}'s lists; a video is "
                "either training or test once, remove one of the lines"
            )
        video.split_ids[split] = sid
