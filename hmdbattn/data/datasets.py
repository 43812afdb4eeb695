"""Clip datasets for training and evaluation, read from the frame cache or decoded on the fly.

An item is ``(frames, label, video_idx)``: frames uint8 ``(T, H, W, 3)`` at ``data.resize``,
the label's index in the class list, and the video's index in the dataset's ``videos`` (several
evaluation clips share one, which is how their votes are gathered). Cropping, flipping and
normalisation happen later on whole batches (transforms.py), on the GPU when there is one.

Two sources (``data.source``):

- ``"cache"`` (default): the JPEG frame cache written by ``hmdbattn preprocess``; frame counts
  and rates come from its manifest and only videos cached "ok" are used.
- ``"video"``: the original files, each probed once when the dataset is built; a clip decodes
  only its own window, resized while decoding, and takes the frames nearest the sampled times.

(A third, ``"features"``, reads the CNN's stored outputs instead of frames: data/features.py.)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from rich.markup import escape
from torch.utils.data import (
    DataLoader,
    Dataset,
    Sampler,
    Subset,
    default_collate,
    get_worker_info,
)

from hmdbattn.config import Config, DataConfig
from hmdbattn.data.cache import (
    MANIFEST_NAME,
    CachedVideo,
    DamagedCacheFile,
    Manifest,
    cache_damage,
    cache_file,
    load_manifest,
)
from hmdbattn.data.clips import eval_windows, train_clip_indices
from hmdbattn.data.decode import DecodeError, probe
from hmdbattn.data.formats import index_dataset
from hmdbattn.data.hmdb51 import SUBSET_IDS, DatasetIndex, Video, per_class
from hmdbattn.data.video import decode_window, spaced_keep, spaced_positions
from hmdbattn.errors import UserError
from hmdbattn.report import err_console

Item = tuple[torch.Tensor, int, int]  # frames (T, H, W, 3) uint8, label, video index

# Cache readers kept per process: each holds its frame offsets (no open file), so this bounds
# memory, not file handles; evaluation reads a video's windows in a row and hits it.
_OPEN_READERS = 32
MISSING_REASON = "missing: listed in the split (or list) files but not on disk"
# The label of an evaluation window whose video could not be read (its frames are zeros).
UNREADABLE = -1


@dataclass(frozen=True)
class ClipVideo:
    """A usable video: where it is, its label index, and its length for clip sampling."""

    path: str  # relative to <root>/videos
    label: int
    frames: int
    fps: float


class Excluded(NamedTuple):
    """A video of the chosen subsets that the datasets leave out, and why."""

    path: str
    reason: str


class UnreadableVideo(UserError):
    """A video whose frames could not be decoded when a clip needed them (built from one
    string, like any exception a DataLoader worker re-raises)."""


class FrameReader:
    """Reads frames of a video by index from the cache or by decoding the original file."""

    def __init__(self, data: DataConfig) -> None:
        self.source = data.source
        self.videos_dir = data.videos_dir
        self.cache_dir = data.cache_path
        self.resize = data.resize
        self._readers: OrderedDict[str, CachedVideo] = OrderedDict()

    def reset(self) -> None:
        """Forget readers opened so far (a new worker process starts from nothing)."""
        self._readers.clear()

    def read(
        self, video: ClipVideo, indices: Sequence[int], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Frames at `indices` (repeats allowed) as uint8 (len(indices), H, W, 3), in `out`
        when given (the cache decodes straight into it)."""
        if self.source == "cache":
            return self._cached(video.path).read(indices, out)
        frames = self._decode(video, indices)
        return frames if out is None else out.copy_(frames)

    def _cached(self, rel_path: str) -> CachedVideo:
        reader = self._readers.get(rel_path)
        if reader is None:
            reader = CachedVideo(cache_file(self.cache_dir, rel_path))
            self._readers[rel_path] = reader
            if len(self._readers) > _OPEN_READERS:
                self._readers.popitem(last=False)
        else:
            self._readers.move_to_end(rel_path)
        return reader

    def _decode(self, video: ClipVideo, indices: Sequence[int]) -> torch.Tensor:
        """Decode only the window holding `indices`, then take the frame nearest each time."""
        times = np.asarray(indices, dtype=np.float64) / video.fps
        # Half a frame of margin either side absorbs timestamp jitter at the window's edges.
        half = 0.5 / video.fps
        start, end = max(0.0, float(times.min()) - half), float(times.max()) + half
        path = self.videos_dir / video.path

        def pick(window: np.ndarray, fps: float) -> np.ndarray:
            # Only these frames are resized and converted to RGB (not the whole window).
            return spaced_positions(float(window[0]), fps, len(window), times)

        # The frames the pick will not want are dropped as they decode, never held.
        keep = spaced_keep(times, video.fps)
        try:
            # A retry (the window held no frame) reads on to the end of the file.
            decoded = decode_window(path, self.resize, start, end, None, pick, keep)
        except DecodeError as exc:
            raise UnreadableVideo(f"{path}: cannot decode the clip's frames ({exc})") from None
        return torch.from_numpy(decoded.frames)  # (T, H, W, 3) uint8


def seeded_generator(*words: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers, well mixed (numpy's SeedSequence)."""
    # SeedSequence takes non-negative words only; a negative seed wraps around 64 bits.
    state = np.random.SeedSequence([w & 0xFFFF_FFFF_FFFF_FFFF for w in words]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# The first word of every clip-sampling seed: it names the stream, so that another stream
# seeded from train.seed (with another first word) never repeats these draws.
_CLIPS = 0


class _ClipDataset(Dataset[Item]):
    """What both datasets share: the videos, the classes and a frame reader."""

    def __init__(self, config: Config, videos: Sequence[ClipVideo], classes: Sequence[str]) -> None:
        self.config = config
        self.videos = list(videos)
        self.classes = list(classes)
        self.reader = FrameReader(config.data)
        self._unreadable: set[int] = set()  # videos found damaged by this process

    def worker_init(self) -> None:
        """Called in each loader worker: readers copied from the parent are dropped."""
        self.reader.reset()

    def __getitem__(self, index: int) -> Item:
        return self._item(index, None)

    def __getitems__(self, indices: list[int]) -> ClipBatch | list[Item]:
        """Items `indices` as one batch (the loader asks for whole batches this way).

        Each clip is read straight into its slot of the batch, which a loader worker makes in
        shared memory: it reaches the training process without the copy that collating
        separate clips would make.
        """
        data = self.config.data
        frames = _batch_buffer((len(indices), data.num_frames, *data.resize, 3))
        labels, numbers = [], []
        for slot, index in zip(frames, indices, strict=True):
            _, label, number = self._item(index, slot)
            labels.append(label)
            numbers.append(number)
        return ClipBatch(frames, torch.tensor(labels), torch.tensor(numbers))

    def _item(self, index: int, out: torch.Tensor | None) -> Item:
        """Item `index`, its frames in `out` when given."""
        raise NotImplementedError

    def _left_out(self, number: int, exc: UserError, use: str) -> None:
        """Note that video `number` cannot be read, naming it once per process."""
        if number not in self._unreadable:
            self._unreadable.add(number)
            err_console.print(
                f"[yellow]warning:[/] {escape(str(exc))}; left out of {use}", highlight=False
            )


class TrainClips(_ClipDataset):
    """One random clip per video per epoch.

    The clip of item ``i`` in epoch ``e`` comes from a generator seeded by
    ``(train.seed, e, i)`` only, so an epoch gives the same clips whatever the worker count,
    the order of items or a resumption. The epoch lives in shared memory: `set_epoch` in the
    main process reaches persistent loader workers too (call it before iterating the loader).
    """

    def __init__(self, config: Config, videos: Sequence[ClipVideo], classes: Sequence[str]) -> None:
        super().__init__(config, videos, classes)
        self.seed = config.train.seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch whose clips the dataset returns."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Sample the clips of `epoch` from now on."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.videos)

    def clip_indices(self, index: int) -> list[int]:
        """The frame indices of item `index`'s clip in the current epoch."""
        video, data = self.videos[index], self.config.data
        generator = seeded_generator(_CLIPS, self.seed, self.epoch, index)
        return train_clip_indices(
            video.frames, video.fps, data.clip_duration, data.num_frames, generator
        )

    def _item(self, index: int, out: torch.Tensor | None) -> Item:
        """Item `index`'s clip; if its video cannot be read, the next readable video's clip.

        A file damaged after the dataset was built (a corrupt JPEG in a cache file, a video
        that fails to decode mid-way) is named once per process and left out: one bad file
        never stops a run.
        """
        for k in range(len(self.videos)):
            number = (index + k) % len(self.videos)
            if number in self._unreadable:
                continue
            video = self.videos[number]
            try:
                frames = self.reader.read(video, self.clip_indices(number), out)
                return frames, video.label, number
            except (DamagedCacheFile, UnreadableVideo) as exc:
                self._left_out(number, exc, "training")
        raise UserError(f"none of the {len(self.videos)} training videos can be read")


class EvalClips(_ClipDataset):
    """Every evaluation window of every video (`eval_windows`), one item per window."""

    def __init__(self, config: Config, videos: Sequence[ClipVideo], classes: Sequence[str]) -> None:
        super().__init__(config, videos, classes)
        data = config.data
        self.windows: list[tuple[int, list[int]]] = [
            (number, window)
            for number, video in enumerate(self.videos)
            for window in eval_windows(
                video.frames, video.fps, data.clip_duration, data.num_frames, data.clips_per_video
            )
        ]

    def __len__(self) -> int:
        return len(self.windows)

    def _item(self, index: int, out: torch.Tensor | None) -> Item:
        """Window `index`; if its video cannot be read, zeros labelled `UNREADABLE`.

        The evaluation then scores without that video (see `score_clips`): one file damaged
        after the dataset was built never stops an evaluation or a training run's validation.
        """
        number, indices = self.windows[index]
        video = self.videos[number]
        try:
            return self.reader.read(video, indices, out), video.label, number
        except (DamagedCacheFile, UnreadableVideo) as exc:
            self._left_out(number, exc, "the evaluation")
        data = self.config.data
        shape = (data.num_frames, *data.resize, 3)
        frames = out if out is not None else torch.empty(shape, dtype=torch.uint8)
        return frames.zero_(), UNREADABLE, number


# --------------------------------------------------------------------------- building


@dataclass
class ClipData:
    """The datasets of a training run and the videos they leave out."""

    train: TrainClips
    eval: EvalClips
    classes: list[str]
    excluded: list[Excluded]


@dataclass
class EvalData:
    """The dataset of an evaluation and the videos it leaves out."""

    dataset: EvalClips
    classes: list[str]
    excluded: list[Excluded]


def open_cache(data: DataConfig) -> Manifest:
    """The cache's manifest, checked against the config; a UserError when there is none."""
    if not (data.cache_path / MANIFEST_NAME).is_file():
        raise UserError(
            f"no frame cache at {data.cache_path}: run `hmdbattn preprocess --config FILE` "
            'first, or set data.source = "video" to decode the videos while training'
        )
    manifest = load_manifest(data.cache_path)
    manifest.check_compatible(data.resize, data.jpeg_quality)
    return manifest


def _subset(index: DatasetIndex, split: int, subset: str) -> tuple[list[Video], list[Excluded]]:
    """A subset's videos on disk, and its split entries without a file."""
    if subset not in SUBSET_IDS:
        raise UserError(f"unknown subset {subset!r}: expected one of {', '.join(SUBSET_IDS)}")
    wanted = SUBSET_IDS[subset]
    missing = [
        Excluded(v.path, MISSING_REASON) for v in index.missing if v.split_ids.get(split) == wanted
    ]
    return index.subset(split, subset), missing


def _train_choice(data: DataConfig, subset: str, videos: list[Video]) -> list[Video]:
    """``data.train_per_class`` videos per class of the training subset (all when 0)."""
    if subset != "train" or not data.train_per_class:
        return videos
    return per_class(videos, data.train_per_class, data.subset_seed)


def _from_cache(
    data: DataConfig, videos: list[Video], classes: list[str], manifest: Manifest
) -> tuple[list[ClipVideo], list[Excluded]]:
    entries = manifest.by_path()
    usable: list[ClipVideo] = []
    excluded: list[Excluded] = []
    for video in videos:
        entry = entries.get(video.path)
        # "missing" in the manifest, yet on disk now: added since preprocess ran
        if entry is None or entry.status == "missing":
            excluded.append(Excluded(video.path, "not cached yet: rerun `hmdbattn preprocess`"))
        elif entry.status == "failed":
            excluded.append(Excluded(video.path, f"failed in preprocess: {entry.error}"))
        elif entry.frames < 1 or not cache_file(data.cache_path, video.path).is_file():
            excluded.append(Excluded(video.path, "cache file missing: rerun `hmdbattn preprocess`"))
        elif damage := cache_damage(entry, cache_file(data.cache_path, video.path)):
            # Found here, in this process: a DataLoader worker's error would come with a traceback.
            reason = f"damaged cache file ({damage}): rerun `hmdbattn preprocess`"
            excluded.append(Excluded(video.path, reason))
        else:
            label = classes.index(video.label)
            usable.append(ClipVideo(video.path, label, entry.frames, entry.fps))
    return usable, excluded


def _from_videos(
    videos_dir: Path, videos: list[Video], classes: list[str]
) -> tuple[list[ClipVideo], list[Excluded]]:
    usable: list[ClipVideo] = []
    excluded: list[Excluded] = []
    for video in videos:
        try:
            info = probe(videos_dir / video.path)
        except DecodeError as exc:
            excluded.append(Excluded(video.path, f"cannot read: {exc}"))
            continue
        frames = info.frames or round(info.duration * info.fps)
        if frames < 1:
            excluded.append(Excluded(video.path, "no frames"))
            continue
        usable.append(ClipVideo(video.path, classes.index(video.label), frames, info.fps))
    return usable, excluded


def resolve_videos(
    config: Config, index: DatasetIndex, subset: str, manifest: Manifest | None = None
) -> tuple[list[ClipVideo], list[Excluded]]:
    """The usable videos of `subset` in ``data.split``, and the excluded ones with reasons.

    With ``data.source = "cache"`` `manifest` is the cache's (read here when not given).
    """
    data = config.data
    videos, excluded = _subset(index, data.split, subset)
    videos = _train_choice(data, subset, videos)
    if data.source == "cache":
        manifest = manifest if manifest is not None else open_cache(data)
        usable, more = _from_cache(data, videos, index.classes, manifest)
    else:
        usable, more = _from_videos(index.videos_dir, videos, index.classes)
    if not usable:
        raise UserError(
            f"no usable videos in subset {subset!r} of split {data.split} under {data.root} "
            f"({len(videos)} listed, {len(excluded) + len(more)} excluded)"
        )
    return usable, sorted(excluded + more)


def build_datasets(
    config: Config, subset_train: str = "train", subset_eval: str = "test"
) -> ClipData:
    """The training and evaluation datasets of ``data.split`` and the videos they leave out."""
    if config.data.source == "features":  # the CNN's stored outputs (data/features.py)
        from hmdbattn.data.features import feature_datasets

        return feature_datasets(config)
    index = index_dataset(config.data)
    manifest = open_cache(config.data) if config.data.source == "cache" else None
    train_videos, train_excluded = resolve_videos(config, index, subset_train, manifest)
    eval_videos, eval_excluded = resolve_videos(config, index, subset_eval, manifest)
    return ClipData(
        train=TrainClips(config, train_videos, index.classes),
        eval=EvalClips(config, eval_videos, index.classes),
        classes=list(index.classes),
        excluded=train_excluded + eval_excluded,
    )


def build_eval_dataset(config: Config, subset: str = "test") -> EvalData:
    """The evaluation dataset of `subset` in ``data.split`` (for ``hmdbattn eval``)."""
    if config.data.source == "features":
        from hmdbattn.data.features import feature_eval_dataset

        return feature_eval_dataset(config, subset)
    index = index_dataset(config.data)
    videos, excluded = resolve_videos(config, index, subset)
    return EvalData(EvalClips(config, videos, index.classes), list(index.classes), excluded)


# --------------------------------------------------------------------------- loading


class ClipBatch(NamedTuple):
    """A batch as the loader gives it: uint8 frames (B, T, H, W, 3), labels (B,), videos (B,)."""

    frames: torch.Tensor
    labels: torch.Tensor
    videos: torch.Tensor


def _batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a loader worker, in shared memory from the start
    (as torch's default_collate makes its batches), so sending it copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    like = torch.empty(0, dtype=torch.uint8)
    storage = like._typed_storage()._new_shared(math.prod(shape))
    return like.new(storage).resize_(*shape)


def collate_clips(items: ClipBatch | list[Item]) -> ClipBatch | list[torch.Tensor]:
    """A `ClipBatch` as `__getitems__` made it; a list of items (stored features) collated."""
    return items if isinstance(items, ClipBatch) else default_collate(items)


def _worker_init(worker_id: int) -> None:
    """Seeds nothing: clip sampling draws from explicit generators, never global state."""
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    while isinstance(dataset, Subset):  # evaluation shards a dataset across DDP ranks
        dataset = dataset.dataset
    if isinstance(dataset, _ClipDataset):
        dataset.worker_init()


def make_loader(
    dataset: Dataset[Item],
    config: Config,
    train: bool,
    sampler: Sampler[int] | None = None,
    batch_size: int | None = None,
) -> DataLoader[Item]:
    """A DataLoader of uint8 clip batches ``(B, T, H, W, 3)``, labels and video indices.

    Training shuffles unless `sampler` is given, with a generator seeded by ``train.seed``.
    The trainer passes its sampler (`engine.train.epoch_loader`: each epoch's order from
    ``(train.seed, epoch)`` only, so a resumed run repeats it). `batch_size` defaults to
    ``data.batch_size``.
    """
    data = config.data
    workers = data.num_workers
    shuffle = train and sampler is None
    generator = torch.Generator().manual_seed(config.train.seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size or data.batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        # Persistent workers keep their readers between epochs; the epoch reaches them
        # through TrainClips' shared-memory counter.
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
        collate_fn=collate_clips,
        drop_last=False,
    )
