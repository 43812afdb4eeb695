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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hmdbattn.data.hmdb51 import DatasetIndex, scan_dataset

if TYPE_CHECKING:
    from hmdbattn.config import DataConfig


def index_dataset(data: DataConfig) -> DatasetIndex:
    """The dataset index of `data.root` read as ``data.format`` says."""
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
