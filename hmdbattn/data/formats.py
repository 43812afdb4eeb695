"""One entry point for every dataset layout: ``data.format`` -> the same `DatasetIndex`.

=========  =========================================  ============================
format     layout under data.root                     module
=========  =========================================  ============================
hmdb51     videos/<class>/*.avi, splits/*_test_split  hmdbattn.data.hmdb51
ucf101     videos/<Class>/*.avi, splits/classInd.txt  hmdbattn.data.ucf101
folders    <class>/<video>, hmdbattn_split.json       hmdbattn.data.folders
list       the videos named by two list files         hmdbattn.data.listfiles
=========  =========================================  ============================

Everything downstream (datasets, preprocess, pretrain, the classifier's classes) calls
`index_dataset` and never asks which format it is.

The frame cache and the features folder name a video's file by its path less the extension
(``jump/x.mp4`` -> ``jump/x.jpgs``), so ``jump/x.mp4`` and ``jump/x.avi`` would overwrite each
other's file. `index_dataset` refuses such a pair, in every format, before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hmdbattn.data.hmdb51 import DatasetIndex, scan_dataset
from hmdbattn.errors import UserError

if TYPE_CHECKING:
    from hmdbattn.config import DataConfig


def index_dataset(data: DataConfig) -> DatasetIndex:
    """The dataset index of `data.root` read as ``data.format`` says.

    Two videos that would share a cache file are a UserError naming both (`check_cache_names`).
    """
    index = _scan(data)
    check_cache_names((v.path for v in index.videos + index.missing), index.videos_dir)
    return index


def cache_name(rel_path: str) -> str:
    """What the cache and the features call video `rel_path`: its path less the extension.

    The same name `cache.cache_file` and `features.feature_file` give their files (before
    their suffix); computed here without importing them, so that verification stays light.
    """
    path = PurePosixPath(rel_path)
    return (path.parent / path.stem).as_posix()


def check_cache_names(paths: Iterable[str], videos_dir: Path) -> None:
    """Refuse two of `paths` (relative to `videos_dir`) that would share one cache file."""
    seen: dict[str, str] = {}
    for rel in sorted(set(paths)):  # sorted: the same pair is named on every run
        first = seen.setdefault(cache_name(rel), rel)
        if first != rel:
            from hmdbattn.data.cache import SUFFIX  # only now: the cache module imports torch

            raise UserError(
                f"{videos_dir / first} and {videos_dir / rel} would share the cache file "
                f"{cache_name(rel)}{SUFFIX}: rename one of them (the cache and the features "
                "name a video by its folder and stem, not its extension)"
            )


def _scan(data: DataConfig) -> DatasetIndex:
    """The index as the module of ``data.format`` reads it."""
    if data.format == "ucf101":
        from hmdbattn.data.ucf101 import scan_ucf101

        return scan_ucf101(data.root, data.split)
    if data.format == "folders":
        from hmdbattn.data.folders import scan_folders

        skip = data.cache_path if data.cache_path.parent.resolve() == data.root.resolve() else None
        return scan_folders(data.root, data.test_fraction, data.split_seed, skip)
    if data.format == "list":
        from hmdbattn.data.listfiles import scan_lists

        assert data.train_list is not None and data.test_list is not None  # DataConfig checks
        return scan_lists(data.root, data.train_list, data.test_list, data.class_names)
    return scan_dataset(data.root)
