"""The CNN feature cache: the frozen CNN's feature maps of every clip a head trains and is
validated on, written once by ``hmdbattn extract-features`` (engine/extract.py) and read by
``data.source = "features"``.

Layout::

    <features_dir>/manifest.json                what was extracted, with which settings
    <features_dir>/train/<class>/<stem>.npy     (K, C, T', H', W') float16: clip k of the video
    <features_dir>/eval/<class>/<stem>.npy      (windows x views, C, T', H', W') float16

Clip k of training video i is the clip `TrainClips` gives item i in epoch k (window from
``(train.seed, k, i)``), cropped and flipped by the training transform with a generator seeded
by ``(train.seed, k, i)`` too: so clip k of a video is reproducible, whatever else is extracted.
The evaluation rows are every window of `EvalClips` in order, each window's crops adjacent, as
the evaluation transform makes them. A run on features trains on clip ``epoch mod K``.

Files are NumPy arrays (read with ``allow_pickle=False``, memory-mapped: a training item reads
one clip of its file, not all K), each written to a temporary name and renamed into place, so
a file under its final name is whole. The manifest is written before the first file and again,
marked complete, after the last; `FEATURE_KEYS` and the CNN's weights (a SHA-256 of its state
dict) are recorded in it, and a run with other values is refused naming the key.

Sizes (fp16; (C, T', H', W') from reference.md section 2, clips of 16x112x112): 8 blocks
512x2x7x7 = 98 KiB a clip, 4 blocks 128x8x28x28 = 1.53 MiB a clip. HMDB51 split 1 with
``feature_clips = 10``: 35,700 training clips, 3.3 GiB at 8 blocks and 53.4 GiB at 4 blocks,
plus its 1,530 test videos' windows (1 to 5 of 2 s a video, about 2 on average): about
0.3 GiB at 8 blocks and 4.6 GiB at 4 blocks per crop of ``eval_crops``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import nn

from hmdbattn.config import Config
from hmdbattn.data.datasets import (
    ClipData,
    ClipVideo,
    EvalClips,
    EvalData,
    Excluded,
    Item,
    TrainClips,
)
from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_write_text, atomic_writer

FORMAT = "hmdbattn-features"
VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".extract.lock"
SUFFIX = ".npy"
# Keys that change what the stored features are: a run must have the values they were made with.
FEATURE_KEYS = (
    "model.cnn_blocks",
    "data.split",
    "data.resize",
    "data.num_frames",
    "data.clip_duration",
    "data.crop_size",
    "data.mean",
    "data.std",
    "data.hflip",
    "data.feature_clips",
    "data.clips_per_video",
    "data.eval_crops",
    "data.train_per_class",
    "data.subset_seed",
)
# Keys that decide the CNN's weights; the weights' hash is what is compared, these name the cause.
# train.seed last: it decides a CNN that starts random (no pretrained, weights or init).
WEIGHT_KEYS = ("model.pretrained", "model.weights", "model.init", "model.init_parts", "train.seed")


def _dotted(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return config.model_dump(mode="json")[section][name]


def settings(config: Config) -> dict[str, Any]:
    """The values of `FEATURE_KEYS` (as JSON) in `config`."""
    dumped = config.model_dump(mode="json")
    return {key: dumped[key.split(".")[0]][key.split(".")[1]] for key in FEATURE_KEYS}


def backbone_hash(backbone: nn.Module) -> str:
    """SHA-256 of the CNN's state dict (names, shapes, dtypes and values), in key order."""
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_file(folder: Path, part: str, rel_path: str) -> Path:
    """Where the features of video `rel_path` (``<class>/<name>.avi``) are, for `part`."""
    rel = PurePosixPath(rel_path)
    if rel.is_absolute() or ".." in rel.parts or not rel.name:
        raise ValueError(f"{rel_path!r}: expected a path relative to the videos folder")
    return folder.joinpath(part, *rel.parent.parts, rel.stem + SUFFIX)


def write_rows(path: Path, rows: torch.Tensor) -> int:
    """Write `rows` as a float16 .npy atomically; returns the file's size."""
    array = rows.detach().cpu().to(torch.float16).numpy()
    with atomic_writer(path) as f:
        np.save(f, array, allow_pickle=False)
    return path.stat().st_size


def read_rows(path: Path, rows: slice) -> torch.Tensor:
    """Rows `rows` of a features file, float16, reading only them (memory-mapped)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return torch.from_numpy(np.array(array[rows]))


def file_damage(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why the file at `path` is not a whole features file of `shape` (None when it is)."""
    if not path.is_file():
        return "missing"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    if tuple(array.shape) != shape or array.dtype != np.float16:
        return f"holds {array.dtype} {tuple(array.shape)}, expected float16 {shape}"
    return None


# --------------------------------------------------------------------------- the manifest


@dataclass
class FeatureVideo:
    """One video of the features: where its file is, its label and length, and its rows."""

    path: str
    label: int
    frames: int
    fps: float
    rows: int

    def clip_video(self) -> ClipVideo:
        return ClipVideo(self.path, self.label, self.frames, self.fps)


@dataclass
class FeatureManifest:
    """What a features folder holds and the settings it was made with."""

    settings: dict[str, Any]
    weights: dict[str, Any]  # "sha256" and the WEIGHT_KEYS values
    shape: list[int]  # (C, T', H', W') of one clip
    classes: list[str]
    seed: int
    frames_from: str
    train: list[FeatureVideo] = field(default_factory=list)
    eval: list[FeatureVideo] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    complete: bool = False

    def to_json(self) -> dict[str, Any]:
        def videos(items: list[FeatureVideo]) -> list[dict[str, Any]]:
            return [v.__dict__ for v in items]

        return {
            "format": FORMAT,
            "version": VERSION,
            "complete": self.complete,
            "settings": self.settings,
            "weights": self.weights,
            "shape": self.shape,
            "classes": self.classes,
            "seed": self.seed,
            "frames_from": self.frames_from,
            "train": videos(self.train),
            "eval": videos(self.eval),
            "excluded": [{"path": e.path, "reason": e.reason} for e in self.excluded],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureManifest:
        return cls(
            settings=dict(data["settings"]),
            weights=dict(data["weights"]),
            shape=[int(n) for n in data["shape"]],
            classes=[str(c) for c in data["classes"]],
            seed=int(data["seed"]),
            frames_from=str(data["frames_from"]),
            train=[FeatureVideo(**v) for v in data["train"]],
            eval=[FeatureVideo(**v) for v in data["eval"]],
            excluded=[Excluded(e["path"], e["reason"]) for e in data["excluded"]],
            complete=bool(data["complete"]),
        )

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / MANIFEST_NAME, json.dumps(self.to_json()), sync=True)

    def row_shape(self, part: str, video: FeatureVideo) -> tuple[int, ...]:
        """The shape of `video`'s file in `part` ("train" or "eval")."""
        return (video.rows, *self.shape)

    def files(self, folder: Path) -> list[tuple[str, int, FeatureVideo, Path]]:
        """(part, index, video, file) of every video of the manifest, training ones first."""
        return [
            (part, i, video, feature_file(folder, part, video.path))
            for part, videos in (("train", self.train), ("eval", self.eval))
            for i, video in enumerate(videos)
        ]


def load_feature_manifest(folder: Path) -> FeatureManifest:
    """The manifest of the features at `folder`; a UserError when there is none or it is damaged."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserError(
            f"no CNN features at {folder}: run `hmdbattn extract-features --config FILE` first "
            "(with this run's config), or set data.features_dir"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
        return FeatureManifest.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"{path}: not a readable features manifest ({exc}); delete {folder} and rerun "
            "`hmdbattn extract-features`, or set data.features_dir"
        ) from None


def differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key = stored (this config: value)`` for each FEATURE_KEYS value that differs."""
    return [
        f"{key} = {stored.get(key)!r} (this config: {now.get(key)!r})"
        for key in FEATURE_KEYS
        if stored.get(key) != now.get(key)
    ]


def _rerun(folder: Path) -> str:
    return (
        "rerun `hmdbattn extract-features` with this config, with data.features_dir set to a "
        f"new folder (or delete {folder} first)"
    )


def check_settings(manifest: FeatureManifest, config: Config, folder: Path) -> None:
    """A UserError naming the first key whose value differs from the features'."""
    changed = differences(manifest.settings, settings(config))
    if changed:
        raise UserError(f"{folder}: the features were made with {changed[0]}: {_rerun(folder)}")


def check_weights(
    manifest: FeatureManifest,
    config: Config,
    digest: str,
    folder: Path,
    checkpoint: str | None = None,
) -> None:
    """A UserError when the CNN's weights (their hash `digest`) are not the features' CNN's.

    The CNN is a run's (named by the first weight key that differs) or `checkpoint`'s.
    """
    if manifest.weights.get("sha256") == digest:
        return
    named = [
        f"{key} = {manifest.weights.get(key)!r} (this config: {_dotted(config, key)!r})"
        for key in WEIGHT_KEYS
        if manifest.weights.get(key) != _dotted(config, key)
    ]
    cause = named[0] if named else "the same weight keys, but weights that changed since"
    if checkpoint is not None:
        cause = f"not the CNN of {checkpoint}"
    raise UserError(
        f"{folder}: the features were made with another CNN's weights ({cause}): {_rerun(folder)}"
    )


def weights_record(config: Config, digest: str) -> dict[str, Any]:
    """The manifest's ``weights``: the hash and the keys that chose the weights."""
    return {"sha256": digest, **{key: _dotted(config, key) for key in WEIGHT_KEYS}}


# --------------------------------------------------------------------------- datasets


class FeatureTrainClips(TrainClips):
    """`TrainClips` on stored features: item i of epoch e is clip ``e mod K`` of video i.

    Items are ``(features (C, T', H', W') float16, label, index)``.
    """

    def __getitems__(self, indices: list[int]) -> list[Item]:
        return [self[i] for i in indices]  # collated by the loader (no frames to decode)

    def __init__(self, config: Config, manifest: FeatureManifest, folder: Path) -> None:
        super().__init__(config, [v.clip_video() for v in manifest.train], manifest.classes)
        self.files = [feature_file(folder, "train", v.path) for v in manifest.train]
        self.clips = config.data.feature_clips

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        row = self.epoch % self.clips
        features = read_rows(self.files[index], slice(row, row + 1))[0]
        return features, self.videos[index].label, index


class FeatureEvalClips(EvalClips):
    """`EvalClips` on stored features: item j is window j's ``views`` crops, (views, C, ...)."""

    def __getitems__(self, indices: list[int]) -> list[Item]:
        return [self[i] for i in indices]  # collated by the loader

    def __init__(self, config: Config, manifest: FeatureManifest, folder: Path) -> None:
        super().__init__(config, [v.clip_video() for v in manifest.eval], manifest.classes)
        self.files = [feature_file(folder, "eval", v.path) for v in manifest.eval]
        self.views = config.data.eval_crops
        # window j is window number `position` of its video: its rows in the video's file
        seen: dict[int, int] = {}
        self.positions = []
        for number, _ in self.windows:
            self.positions.append(seen.get(number, 0))
            seen[number] = self.positions[-1] + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        number, _ = self.windows[index]
        first = self.positions[index] * self.views
        features = read_rows(self.files[number], slice(first, first + self.views))
        return features, self.videos[number].label, number


def open_features(config: Config) -> tuple[FeatureManifest, Path]:
    """The features of ``data.features_path``, complete, whole and made with `config`'s keys."""
    folder = config.data.features_path
    manifest = load_feature_manifest(folder)
    check_settings(manifest, config, folder)
    files = manifest.files(folder)
    bad = [
        (video.path, damage)
        for part, _, video, path in files
        if (damage := file_damage(path, manifest.row_shape(part, video)))
    ]
    if not manifest.complete or bad:
        first = f" (first: {bad[0][0]}: {bad[0][1]})" if bad else ""
        raise UserError(
            f"{folder}: the features are incomplete, {len(bad)} of {len(files)} videos not "
            f"whole{first}: rerun `hmdbattn extract-features` to finish them"
        )
    return manifest, folder


def feature_datasets(config: Config) -> ClipData:
    """The training and validation datasets of a run on features (data.source = "features")."""
    manifest, folder = open_features(config)
    return ClipData(
        train=FeatureTrainClips(config, manifest, folder),
        eval=FeatureEvalClips(config, manifest, folder),
        classes=list(manifest.classes),
        excluded=list(manifest.excluded),
    )


def feature_eval_dataset(config: Config, subset: str) -> EvalData:
    """The evaluation dataset on features: they hold the test subset's windows only."""
    if subset != "test":
        raise UserError(
            f"eval.subset = {subset!r}: the CNN features hold the test videos only; add --set "
            'data.source="cache" to score the frames'
        )
    manifest, folder = open_features(config)
    dataset = FeatureEvalClips(config, manifest, folder)
    return EvalData(dataset, list(manifest.classes), list(manifest.excluded))
