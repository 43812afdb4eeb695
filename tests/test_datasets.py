"""Clip datasets on a tiny real dataset: determinism, both sources, exclusions, the loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from videofiles import write_video

from hmdbattn.config import Config
from hmdbattn.data.cache import MANIFEST_NAME
from hmdbattn.data.clips import eval_windows
from hmdbattn.data.datasets import (
    EvalClips,
    FrameReader,
    TrainClips,
    build_datasets,
    build_eval_dataset,
    make_loader,
)
from hmdbattn.data.preprocess import preprocess
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.train import epoch_loader
from hmdbattn.errors import UserError
from hmdbattn.report import quiet

CLASSES = ("jump", "wave")
# (class, name, frames, split-1 id); 30 fps, windows of 1 s = 30 frames
VIDEOS = [
    ("jump", "j0.avi", 75, 1),
    ("jump", "j1.avi", 50, 1),
    ("jump", "j2.avi", 64, 2),
    ("wave", "w0.avi", 70, 1),
    ("wave", "w1.avi", 20, 1),  # shorter than a window
    ("wave", "w2.avi", 90, 2),
    ("wave", "w3.avi", 40, 0),
]
BROKEN = ("wave", "broken_(1)!.avi", 1)  # not a video: fails in preprocess
MISSING = ("jump", "gone.avi", 2)  # listed, no file
CPU = Runtime(torch.device("cpu"))


def smooth_frames(count: int, seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A gradient with a square that moves a pixel per frame: JPEG keeps it nearly intact."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 3, y * 4, (x + y + 20 * seed) % 200], axis=-1).astype(np.uint8)
    frames = np.repeat(base[None], count, axis=0)
    for t in range(count):
        left = (t + 7 * seed) % (width - 12)
        frames[t, 10:22, left : left + 12] = (250, 250, 40)
    return frames


def make_dataset(root: Path) -> None:
    for number, (label, name, frames, _) in enumerate(VIDEOS):
        write_video(root / "videos" / label / name, smooth_frames(frames, number))
    broken = root / "videos" / BROKEN[0] / BROKEN[1]
    broken.write_bytes(b"not a video at all" * 10)
    entries = [(c, n, s) for c, n, _, s in VIDEOS] + [BROKEN, MISSING]
    (root / "splits").mkdir()
    for label in CLASSES:
        for split in (1, 2, 3):
            lines = [f"{n} {sid if split == 1 else 1}" for c, n, sid in entries if c == label]
            (root / "splits" / f"{label}_test_split{split}.txt").write_text("\n".join(lines))


def config_for(root: Path, **data: object) -> Config:
    values = {
        "root": root,
        "resize": (48, 64),
        "crop_size": 32,
        "num_frames": 4,
        "clip_duration": 1.0,
        "batch_size": 2,
        "num_workers": 0,
    }
    values.update(data)
    return Config(data=values, train={"seed": 5})


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hmdb")
    make_dataset(root)
    with quiet():
        preprocess(config_for(root), workers=0)
    return root


def all_clips(dataset: TrainClips) -> list[torch.Tensor]:
    return [dataset[i][0] for i in range(len(dataset))]


def test_build_datasets_and_items(root: Path):
    data = build_datasets(config_for(root))
    assert data.classes == list(CLASSES)
    train_paths = {v.path for v in data.train.videos}
    assert train_paths == {f"{c}/{n}" for c, n, _, s in VIDEOS if s == 1}
    frames, label, index = data.train[0]
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == torch.uint8
    assert data.classes[label] == data.train.videos[index].path.split("/")[0]
    assert len(data.eval.videos) == 2
    expected = sum(len(eval_windows(v.frames, v.fps, 1.0, 4, 0)) for v in data.eval.videos)
    assert len(data.eval) == expected == 3 + 3  # 64 and 90 frames at 30 frames a window
    numbers = [data.eval[i][2] for i in range(len(data.eval))]
    assert numbers == [0, 0, 0, 1, 1, 1]


def test_excluded_videos_with_reasons(root: Path, tmp_path: Path):
    data = build_datasets(config_for(root))
    reasons = dict(data.excluded)
    assert set(reasons) == {"wave/broken_(1)!.avi", "jump/gone.avi"}
    assert reasons["wave/broken_(1)!.avi"].startswith("failed in preprocess")
    assert reasons["jump/gone.avi"].startswith("missing")
    # A video the cache does not know yet (preprocess not rerun) is excluded, not an error.
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache)
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    manifest["videos"] = [v for v in manifest["videos"] if v["path"] != "jump/j0.avi"]
    (cache / MANIFEST_NAME).write_text(json.dumps(manifest))
    data = build_datasets(config_for(root, cache_dir=cache))
    assert "not cached" in dict(data.excluded)["jump/j0.avi"]
    assert "jump/j0.avi" not in {v.path for v in data.train.videos}
    # The video source reports the undecodable file too.
    data = build_datasets(config_for(root, source="video"))
    assert dict(data.excluded)["wave/broken_(1)!.avi"].startswith("cannot read")


def test_same_epoch_same_clips_other_epoch_differs(root: Path):
    config = config_for(root)
    first = build_datasets(config).train
    second = build_datasets(config).train
    epoch0 = all_clips(first)
    assert all(torch.equal(a, b) for a, b in zip(epoch0, all_clips(second), strict=True))
    first.set_epoch(1)
    epoch1 = all_clips(first)
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, epoch1, strict=True))
    first.set_epoch(0)  # resuming at an epoch gives its clips again
    assert all(torch.equal(a, b) for a, b in zip(epoch0, all_clips(first), strict=True))
    config.train.seed = 6
    other_seed = all_clips(build_datasets(config).train)
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, other_seed, strict=True))


def test_cache_and_video_sources_agree(root: Path):
    data = build_datasets(config_for(root)).train
    cache = FrameReader(config_for(root).data)
    video = FrameReader(config_for(root, source="video").data)
    for clip_video in data.videos:
        indices = [0, clip_video.frames // 2, clip_video.frames - 1, 3, 3]
        a = cache.read(clip_video, indices).float()
        b = video.read(clip_video, indices).float()
        assert a.shape == b.shape == (5, 48, 64, 3)
        error = (a - b).abs().mean().item()
        assert error < 3.0  # JPEG at quality 90 on smooth frames
        shifted = video.read(clip_video, [i + 6 if i < 6 else i - 6 for i in indices]).float()
        assert (a - shifted).abs().mean().item() > error  # the right frames, not just similar


def test_video_source_datasets(root: Path):
    config = config_for(root, source="video")
    data = build_datasets(config)
    cached = build_datasets(config_for(root))
    assert [v.frames for v in data.train.videos] == [v.frames for v in cached.train.videos]
    assert data.train.clip_indices(0) == cached.train.clip_indices(0)
    frames, _, _ = data.eval[len(data.eval) - 1]
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == torch.uint8


def test_missing_cache_is_a_user_error(root: Path, tmp_path: Path):
    with pytest.raises(UserError, match=r"hmdbattn preprocess --config FILE.*data\.source"):
        build_datasets(config_for(root, cache_dir=tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"data\.resize"):
        build_datasets(config_for(root, resize=(40, 56)))


def test_build_eval_dataset_subsets(root: Path):
    test = build_eval_dataset(config_for(root), "test")
    assert isinstance(test.dataset, EvalClips) and len(test.dataset.videos) == 2
    unused = build_eval_dataset(config_for(root, clips_per_video=2), "unused")
    assert [v.path for v in unused.dataset.videos] == ["wave/w3.avi"]
    assert len(unused.dataset) == 2
    with pytest.raises(UserError, match="unknown subset"):
        build_eval_dataset(config_for(root), "valid")


def test_loader_with_two_workers(root: Path):
    config = config_for(root, num_workers=2)
    dataset = build_datasets(config).train
    expected = {}
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        expected[epoch] = {i: dataset[i][0] for i in range(len(dataset))}
    sampler, loader = epoch_loader(dataset, config, CPU)  # the trainer's loader
    orders = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)  # reaches the persistent workers
        seen = []
        for frames, labels, indices in loader:
            assert frames.dtype == torch.uint8 and frames.shape[1:] == (4, 48, 64, 3)
            assert labels.dtype == torch.int64
            for clip, index in zip(frames, indices.tolist(), strict=True):
                assert torch.equal(clip, expected[epoch][index])
                seen.append(index)
        assert sorted(seen) == list(range(len(dataset)))
        orders.append(seen)
    assert orders[0] != orders[1]
    # The order of an epoch depends on (seed, epoch) only: a new loader repeats it.
    sampler, loader = epoch_loader(dataset, config_for(root), CPU)
    sampler.set_epoch(1)
    dataset.set_epoch(1)
    assert [i for _, _, idx in loader for i in idx.tolist()] == orders[1]


def test_eval_loader_keeps_order(root: Path):
    config = config_for(root)
    dataset = build_datasets(config).eval
    loader = make_loader(dataset, config, train=False, batch_size=4)
    numbers = [i for _, _, idx in loader for i in idx.tolist()]
    assert numbers == [dataset.windows[k][0] for k in range(len(dataset))]


def test_train_per_class_is_a_seeded_choice_per_class() -> None:
    from hmdbattn.data.hmdb51 import Video, per_class

    videos = [Video(f"{c}/v{i}.avi", c) for c in ("a", "b") for i in range(8)]
    chosen = per_class(videos, 3, seed=0)
    assert [v.label for v in chosen] == ["a"] * 3 + ["b"] * 3
    assert per_class(list(reversed(videos)), 3, seed=0) == chosen  # order of listing is irrelevant
    assert per_class(videos, 3, seed=1) != chosen
    assert len(per_class(videos, 20, seed=0)) == 16  # a class with fewer keeps them all
