"""``hmdbattn extract-features``: run the frozen CNN once over every clip a head trains on.

What is stored and how it is read: data/features.py. The CNN is the one a training run of the
same config starts from (`build_model`, then model.init's backbone), in evaluation mode (its
BatchNorm statistics as they are), in float32; its outputs are stored in float16.

The run is resumable. The manifest (every video to extract, the settings, the weights' hash) is
written before the first file, and each video's file is written atomically: a rerun keeps every
file that is whole (its shape and dtype are checked), redoes the others and removes the
temporary files a killed run left. A folder holding features of other settings is refused,
never overwritten. One run at a time: a run holds an ``flock`` on ``<features_dir>/.extract.lock``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hmdbattn.config import Config
from hmdbattn.data.datasets import ClipData, EvalClips, Excluded, TrainClips, build_datasets
from hmdbattn.data.datasets import seeded_generator as seeded
from hmdbattn.data.features import (
    LOCK_NAME,
    MANIFEST_NAME,
    FeatureManifest,
    FeatureVideo,
    backbone_hash,
    differences,
    file_damage,
    load_feature_manifest,
    settings,
    weights_record,
    write_rows,
)
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.engine.distributed import pick_device
from hmdbattn.errors import UserError
from hmdbattn.fileio import folder_lock, os_error_text
from hmdbattn.models.classifier import VideoClassifier, build_model, clip_profile
from hmdbattn.models.init import load_init
from hmdbattn.report import progress

# The first word of the crop / flip seeds of stored training clips: the clip windows' stream
# (datasets._CLIPS) is 0, so these draws never repeat those.
_AUGMENT = 1


@dataclass
class ExtractSummary:
    """What an extract-features run did; ``skipped`` videos were whole from an earlier run."""

    folder: Path
    train_videos: int
    eval_videos: int
    extracted: int
    skipped: int
    train_clips: int  # stored training clips (videos x feature_clips)
    eval_rows: int  # stored evaluation clips (windows x crops)
    shape: list[int]
    bytes: int
    seconds: float
    rebuilt: list[str] = field(default_factory=list)  # damaged files made again
    excluded: list[Excluded] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "features_dir": str(self.folder),
            "train_videos": self.train_videos,
            "eval_videos": self.eval_videos,
            "extracted": self.extracted,
            "skipped": self.skipped,
            "train_clips": self.train_clips,
            "eval_rows": self.eval_rows,
            "clip_shape": self.shape,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "rebuilt": self.rebuilt,
            "excluded": [{"path": e.path, "reason": e.reason} for e in self.excluded],
        }


def extractor(config: Config, classes: list[str]) -> VideoClassifier:
    """The model a training run of `config` starts from, as `build_trainer` builds it.

    Only its CNN is used: model.init loads its backbone (unless init_parts leaves it out).
    """
    torch.manual_seed(config.train.seed)  # a random CNN is the run's random CNN
    model = build_model(config, len(classes))
    init, parts = config.model.init, config.model.init_parts
    if init is not None and (parts is None or "backbone" in parts):
        load_init(model, init, ["backbone"], classes)
    return model.eval()


def _plan(
    config: Config, data: ClipData, model: VideoClassifier, frames_from: str
) -> FeatureManifest:
    """The manifest of `data`'s videos for this config and CNN (nothing extracted yet)."""
    _, _, grid = clip_profile(config, len(data.classes))
    evals = _windows_by_video(data.eval)

    def video(v: Any, rows: int) -> FeatureVideo:
        return FeatureVideo(v.path, v.label, v.frames, v.fps, rows)

    clips, views = config.data.feature_clips, config.data.eval_crops
    return FeatureManifest(
        settings=settings(config),
        weights=weights_record(config, backbone_hash(model.backbone)),
        shape=[model.backbone.out_channels, *grid],
        classes=list(data.classes),
        seed=config.train.seed,
        frames_from=frames_from,
        train=[video(v, clips) for v in data.train.videos],
        eval=[video(v, len(evals[n]) * views) for n, v in enumerate(data.eval.videos)],
        excluded=list(data.excluded),
    )


def _windows_by_video(dataset: EvalClips) -> dict[int, list[int]]:
    """Video number -> its items (windows) in `dataset`, in order."""
    by_video: dict[int, list[int]] = {n: [] for n in range(len(dataset.videos))}
    for item, (number, _) in enumerate(dataset.windows):
        by_video[number].append(item)
    return by_video


@contextmanager
def features_lock(folder: Path) -> Iterator[None]:
    """Hold the features folder's lock (an flock: freed however its holder dies)."""
    with folder_lock(folder, LOCK_NAME, f"{folder} is busy: extract-features"):
        yield


def _continue(folder: Path, planned: FeatureManifest) -> None:
    """Refuse a folder holding other features (or files without a manifest)."""
    if not (folder / MANIFEST_NAME).exists():
        if any(p.is_file() for part in ("train", "eval") for p in (folder / part).rglob("*")):
            raise UserError(
                f"{folder}: holds feature files but no manifest.json; delete it or set "
                "data.features_dir to a new folder, then rerun"
            )
        return
    old = load_feature_manifest(folder)
    reasons = [f"made with {d}" for d in differences(old.settings, planned.settings)]
    if old.weights != planned.weights:
        reasons.append(f"made with another CNN's weights ({_weights_change(old, planned)})")
    if [v.path for v in old.train + old.eval] != [v.path for v in planned.train + planned.eval]:
        reasons.append("of other videos (the dataset changed since)")
    if reasons:
        raise UserError(
            f"{folder} holds features {reasons[0]}; set data.features_dir to another folder, "
            f"or delete {folder} to extract them again"
        )


def _weights_change(old: FeatureManifest, new: FeatureManifest) -> str:
    """The first weight key whose value differs, else that the weights changed under it."""
    for key, value in new.weights.items():
        if key != "sha256" and old.weights.get(key) != value:
            return f"{key} = {old.weights.get(key)!r}, this config: {value!r}"
    return "the same weight keys, but the weights changed since"


def _remove_leftovers(folder: Path) -> None:
    """Delete temporary files of writes that a kill interrupted (never whole files)."""
    for tmp in [*folder.rglob(".*.tmp")]:
        tmp.unlink(missing_ok=True)


@torch.no_grad()
def _cnn(model: VideoClassifier, x: torch.Tensor, device: torch.device, batch: int) -> torch.Tensor:
    """The CNN's feature maps of clips `x` (N, 3, T, h, w), `batch` at a time, on the CPU."""
    return torch.cat([model.features(part.to(device)).float().cpu() for part in x.split(batch)])


def train_rows(
    model: VideoClassifier, dataset: TrainClips, index: int, config: Config, device: torch.device
) -> torch.Tensor:
    """Features of clips 0..K-1 of training video `index`: (K, C, T', H', W')."""
    transform = VideoTransform.from_config(config.data, "train")
    clips = []
    for k in range(config.data.feature_clips):
        dataset.set_epoch(k)  # clip k's window: the one TrainClips gives in epoch k
        # Read strictly: the dataset would serve another video's clip for a damaged one.
        frames = dataset.reader.read(dataset.videos[index], dataset.clip_indices(index))
        generator = seeded(_AUGMENT, config.train.seed, k, index)
        clips.append(transform(frames[None], generator))  # (1, 3, T, crop, crop)
    return _cnn(model, torch.cat(clips), device, config.data.batch_size)


def eval_rows(
    model: VideoClassifier,
    dataset: EvalClips,
    items: list[int],
    config: Config,
    device: torch.device,
) -> torch.Tensor:
    """Features of evaluation items `items` (one video's windows): (windows x views, C, ...)."""
    transform = VideoTransform.from_config(config.data, "eval")
    windows = [dataset.windows[item] for item in items]  # read strictly, as in `train_rows`
    frames = torch.stack([dataset.reader.read(dataset.videos[n], w) for n, w in windows])
    # (W, T, H, W, 3)
    return _cnn(model, transform(frames), device, config.eval.batch_size)


def extract_features(
    config: Config, frames_from: str = "cache", device: torch.device | None = None
) -> ExtractSummary:
    """Extract (or finish extracting) the features of `config` into data.features_path.

    `frames_from` is where the frames come from: the frame cache ("cache") or the videos.
    """
    started = time.perf_counter()
    device = device or pick_device()
    folder = config.data.features_path
    data = build_datasets(config.model_copy(update={"data": _frames(config, frames_from)}))
    model = extractor(config, data.classes).to(device)
    planned = _plan(config, data, model, frames_from)
    try:
        with features_lock(folder):
            _continue(folder, planned)
            _remove_leftovers(folder)
            planned.save(folder)  # before any file: every file has a manifest beside it
            done, rebuilt = _extract_all(planned, folder, data, model, config, device)
            planned.complete = True
            planned.save(folder)
    except OSError as exc:
        raise UserError(
            f"cannot write the features in {folder} ({os_error_text(exc)}); set "
            "data.features_dir to a writable folder"
        ) from None
    return _summary(planned, folder, done, rebuilt, time.perf_counter() - started)


def _frames(config: Config, frames_from: str) -> Any:
    if frames_from not in ("cache", "video"):
        raise UserError(f"frames from {frames_from!r}: expected cache or video")
    return config.data.model_copy(update={"source": frames_from})


def _extract_all(
    manifest: FeatureManifest,
    folder: Path,
    data: ClipData,
    model: VideoClassifier,
    config: Config,
    device: torch.device,
) -> tuple[int, list[str]]:
    """Write every file not whole yet; (videos extracted, damaged files redone)."""
    files = manifest.files(folder)
    todo = [
        (part, i, path, damage)
        for part, i, video, path in files
        if (damage := file_damage(path, manifest.row_shape(part, video)))
    ]
    rebuilt = [f"{p}: {d}, extracted again" for _, _, p, d in todo if d != "missing"]
    windows = _windows_by_video(data.eval)
    with progress("videos") as bar:
        task = bar.add_task("extract-features", total=len(files), completed=len(files) - len(todo))
        for part, i, path, _ in todo:
            if part == "train":
                rows = train_rows(model, data.train, i, config, device)
            else:
                rows = eval_rows(model, data.eval, windows[i], config, device)
            write_rows(path, rows)
            bar.advance(task)
    return len(todo), rebuilt


def _summary(
    manifest: FeatureManifest, folder: Path, done: int, rebuilt: list[str], seconds: float
) -> ExtractSummary:
    files = manifest.files(folder)
    return ExtractSummary(
        folder=folder,
        train_videos=len(manifest.train),
        eval_videos=len(manifest.eval),
        extracted=done,
        skipped=len(files) - done,
        train_clips=sum(v.rows for v in manifest.train),
        eval_rows=sum(v.rows for v in manifest.eval),
        shape=list(manifest.shape),
        bytes=sum(path.stat().st_size for *_, path in files),
        seconds=seconds,
        rebuilt=rebuilt,
        excluded=list(manifest.excluded),
    )
