"""MMAction2-style list files: one ``<path> <label>`` line per video, a train and a test file.

Example (``data.train_list = "train.txt"``, relative list files are taken under data.root)::

    videos/jump/clip_0001.mp4 3
    videos/run/clip_0002.mp4 run

The path is relative to data.root, uses ``/`` and holds no space; the label is a 0-based class
index or a class name. The classes are ``data.class_names`` when set (a list, or a file with
one name a line); otherwise the names the lists use, sorted, or with index labels
``class_0``, ``class_1``, ... up to the largest index. A bad line is an error naming file and
line. The training list is split 1's training set, the test list its test set. A video is
listed once, and no two paths may differ only by their extension (``a/x.mp4``, ``a/x.avi``):
the frame cache names a video by its path less the extension.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hmdbattn.data.hmdb51 import DatasetIndex, Video, class_order, path_problem
from hmdbattn.errors import UserError


@dataclass(frozen=True)
class Line:
    """One entry of a list file, with where it came from (for error messages)."""

    path: str
    label: str  # as written: an index ("3") or a name ("run")
    where: str  # "<file>:<line>"

    @property
    def is_index(self) -> bool:
        return self.label.isdigit()


def under_root(root: Path, path: Path) -> Path:
    """`path` as given when absolute, else under `root` (a config stays valid from any folder)."""
    return path if path.is_absolute() else root / path


def read_list(path: Path, key: str) -> list[Line]:
    """The lines of list file `path` (config key `key`), each path checked to stay in the root."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: list file not found (data.{key}); fix data.{key}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the list file (data.{key}): {exc}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise UserError(
                f"{where}: expected '<path> <label>' (no spaces in the path), got {line!r}"
            )
        problem = path_problem(fields[0])
        if problem is not None:
            raise UserError(f"{where}: {fields[0]!r} is not a path inside data.root ({problem})")
        lines.append(Line(fields[0], fields[1], where))
    if not lines:
        raise UserError(f"{path}: the list file (data.{key}) lists no video")
    return lines


def read_class_names(root: Path, names: list[str] | Path) -> list[str]:
    """``data.class_names``: the list itself, or a file's non-blank lines."""
    if isinstance(names, Path):
        path = under_root(root, names)
        try:
            names = [n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read data.class_names ({exc})") from None
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice or len(names) < 2:
        why = f"names {', '.join(twice)} twice" if twice else f"has {len(names)} name(s)"
        raise UserError(f"data.class_names {why}: list each class once, at least 2")
    return list(names)


def choose_classes(lines: list[Line], names: list[str] | None) -> list[str]:
    """The class list: the given names, else those used, else ``class_<i>`` for index labels."""
    if names is not None:
        return names
    by_name = [line for line in lines if not line.is_index]
    if by_name and len(by_name) < len(lines):
        first = next(line for line in lines if line.is_index)
        raise UserError(
            f"{first.where}: index label {first.label!r} among name labels; without "
            "data.class_names a list uses names or indices, not both: set data.class_names"
        )
    if by_name:
        return class_order({line.label for line in lines})
    return [f"class_{i}" for i in range(max(int(line.label) for line in lines) + 1)]


def label_of(line: Line, classes: list[str]) -> str:
    """The class name of `line`'s label; an unknown name or an index past the end is an error."""
    if line.is_index:
        if int(line.label) >= len(classes):
            raise UserError(
                f"{line.where}: label index {line.label} is out of range: there are "
                f"{len(classes)} classes (0-{len(classes) - 1})"
            )
        return classes[int(line.label)]
    if line.label not in classes:
        raise UserError(
            f"{line.where}: unknown label {line.label!r}; the classes are in data.class_names"
        )
    return line.label


def scan_lists(
    root: Path, train_list: Path, test_list: Path, class_names: list[str] | Path | None
) -> DatasetIndex:
    """Index the videos of the two list files: split 1, train (id 1) and test (id 2)."""
    lists = {
        1: read_list(under_root(root, train_list), "train_list"),
        2: read_list(under_root(root, test_list), "test_list"),
    }
    names = read_class_names(root, class_names) if class_names is not None else None
    classes = choose_classes(lists[1] + lists[2], names)
    seen: dict[str, Line] = {}
    videos: list[Video] = []
    missing: list[Video] = []
    for sid, lines in lists.items():
        for line in lines:
            if line.path in seen:
                raise UserError(
                    f"{line.where}: {line.path} is listed already at {seen[line.path].where}; "
                    "a video is listed once, in one of the two lists"
                )
            seen[line.path] = line
            video = Video(line.path, label_of(line, classes), {1: sid})
            (videos if (root / line.path).is_file() else missing).append(video)
    return DatasetIndex(root, classes, videos, missing, videos_root=root, layout_dirs=[])
