"""Scoring clips: run a model over an evaluation dataset (sharded over ranks) and gather."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import Subset

from hmdbattn.checkpoint import damaged, load_checkpoint
from hmdbattn.config import Config, load_config
from hmdbattn.data.datasets import UNREADABLE, EvalClips, build_eval_dataset, make_loader
from hmdbattn.data.features import (
    FeatureEvalClips,
    backbone_hash,
    check_weights,
    load_feature_manifest,
)
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.engine.distributed import Runtime, gather
from hmdbattn.engine.metrics import (
    VideoMetrics,
    compute_metrics,
    write_confusion_csv,
    write_confusion_png,
)
from hmdbattn.engine.precision import autocast
from hmdbattn.errors import UserError
from hmdbattn.fileio import atomic_write_text, os_error_text
from hmdbattn.models.classifier import VideoClassifier, model_from_checkpoint
from hmdbattn.report import progress


@dataclass
class Scores:
    """Clip logits of a whole evaluation dataset, in dataset order, and its mean loss."""

    logits: torch.Tensor  # (N * views, K): every crop of every window
    video: torch.Tensor  # (N * views,) video index of each row
    video_labels: torch.Tensor  # (V,)
    loss: float
    unreadable: list[int] = field(default_factory=list)  # videos left out: found damaged

    def metrics(self, classes: list[str]) -> VideoMetrics:
        """Every metric over the videos that could be read."""
        kept = torch.ones(len(self.video_labels), dtype=torch.bool)  # (V,)
        kept[self.unreadable] = False
        rows = kept[self.video]  # (N * views,)
        renumbered = kept.cumsum(0) - 1  # (V,) index among the kept videos
        return compute_metrics(
            self.logits[rows], renumbered[self.video[rows]], self.video_labels[kept], classes
        )


@torch.no_grad()
def score_clips(
    model: nn.Module,
    dataset: EvalClips,
    config: Config,
    runtime: Runtime,
    time_reversed: bool = False,
) -> Scores:
    """Logits of every window (and crop) of `dataset`; each rank scores every world_size-th item.

    The result is the same on every rank and equal to a single-process run's. `time_reversed`
    plays every clip backwards (a check that the model uses temporal order). On stored CNN
    features (a `FeatureEvalClips`) the head alone scores them: the CNN ran when they were made.
    """
    model.eval()
    transform = VideoTransform.from_config(config.data, "eval")
    on_features = isinstance(dataset, FeatureEvalClips)
    if on_features and time_reversed:
        raise UserError(
            "--time-reversed plays frames backwards, and the CNN features are already made: "
            'add --set data.source="cache" to score the frames'
        )
    shard = list(range(runtime.rank, len(dataset), runtime.world_size))
    loader = make_loader(
        Subset(dataset, shard), config, train=False, batch_size=config.eval.batch_size
    )
    rows: list[torch.Tensor] = []
    unreadable: set[int] = set()
    precision = partial(autocast, runtime.device, config.train.amp)
    with progress("clips", transient=True, disable=not runtime.is_main) as bar:
        task = bar.add_task("evaluating", total=len(shard))
        for batch, labels, numbers in loader:
            batch = batch.to(runtime.device, non_blocking=True)
            if on_features:
                logits = score_features(cast(VideoClassifier, model), batch, precision)
            else:
                logits = score_batch(model, transform, batch, precision, None, time_reversed)
            unreadable.update(numbers[labels == UNREADABLE].tolist())
            rows.append(logits)
            bar.advance(task, len(labels))
    mine = torch.cat(rows) if rows else torch.empty(0, 0)
    return _assemble(dataset, shard, mine, unreadable, transform.views, runtime)


@torch.no_grad()
def score_batch(
    model: nn.Module,
    transform: VideoTransform,
    frames: torch.Tensor,
    precision: Callable[[], contextlib.AbstractContextManager],
    memory: torch.memory_format | None = None,
    time_reversed: bool = False,
) -> torch.Tensor:
    """The logits (B * views, K), on the CPU, of a uint8 batch `frames` (B, T, H, W, 3).

    The evaluation transform (centre crop or several crops), `memory` layout when given, and
    the forward pass under the autocast that `precision` opens.
    """
    x = transform(frames)  # (B * views, C, T, h, w)
    if memory is not None:
        x = x.contiguous(memory_format=memory)
    if time_reversed:
        x = x.flip(2)
    with precision():
        return model(x).float().cpu()  # (B * views, K); .cpu() waits for the device


@torch.no_grad()
def score_features(
    model: VideoClassifier,
    features: torch.Tensor,
    precision: Callable[[], contextlib.AbstractContextManager],
) -> torch.Tensor:
    """The logits (B * views, K), on the CPU, of stored features (B, views, C, T', H', W')."""
    with precision():
        return model.forward_features(features.flatten(0, 1).float()).float().cpu()


def _assemble(
    dataset: EvalClips,
    shard: list[int],
    logits: torch.Tensor,
    unreadable: set[int],
    views: int,
    runtime: Runtime,
) -> Scores:
    """Put every rank's rows back in dataset order; the loss over the videos that were read."""
    parts = gather((shard, logits, unreadable), runtime)
    k = max(p[1].shape[1] for p in parts if p[1].numel())
    ordered = torch.empty(len(dataset) * views, k)
    for items, rows, _ in parts:
        if items:
            index = torch.tensor(items).repeat_interleave(views) * views
            index += torch.arange(views).repeat(len(items))
            ordered[index] = rows
    left_out = sorted(set().union(*(p[2] for p in parts)))
    if len(left_out) == len(dataset.videos):
        raise UserError(f"none of the {len(left_out)} evaluation videos can be read")
    video = torch.tensor([number for number, _ in dataset.windows]).repeat_interleave(views)
    labels = torch.tensor([v.label for v in dataset.videos])  # (V,)
    read = ~torch.isin(video, torch.tensor(left_out, dtype=torch.long))  # (N * views,)
    # The mean over windows of the mean over a window's views (every window has `views` rows).
    loss = nn.functional.cross_entropy(ordered[read], labels[video[read]]).item()
    return Scores(ordered, video, labels, loss, left_out)


@dataclass
class EvalResult:
    """The evaluation of one checkpoint on one subset of one split."""

    checkpoint: Path
    split: int
    subset: str
    metrics: VideoMetrics
    loss: float
    excluded: list[tuple[str, str]]
    time_reversed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "split": self.split,
            "subset": self.subset,
            "time_reversed": self.time_reversed,
            "loss": self.loss,
            "excluded": [{"path": p, "reason": r} for p, r in self.excluded],
            **self.metrics.to_dict(),
        }


def checkpoint_config(
    ckpt: dict[str, Any], path: Path | None, overrides: list[str], checkpoint: Path | str = "ckpt"
) -> Config:
    """The checkpoint's config (errors in it name `checkpoint`), a file and ``--set`` on top."""
    return load_config(path, overrides, base=ckpt["config"], base_name=str(checkpoint))


def evaluate_checkpoint(
    checkpoint: Path,
    config_path: Path | None = None,
    overrides: list[str] | None = None,
    runtime: Runtime | None = None,
    time_reversed: bool = False,
    write: bool = True,
) -> EvalResult:
    """Score a checkpoint on ``eval.subset`` of ``data.split`` and compute every metric.

    With `write`, rank 0 writes ``eval.json`` and the confusion matrix (CSV and PNG) beside the
    checkpoint (the CLI prints the results first and writes them after: `write_eval_files`).
    A checkpoint that lacks keys or holds another model's weights is a UserError.
    """
    runtime = runtime or Runtime(torch.device("cpu"))
    ckpt = load_checkpoint(checkpoint)
    with damaged(checkpoint):
        config = checkpoint_config(ckpt, config_path, overrides or [], checkpoint)
        trained = list(ckpt["classes"])
    data = build_eval_dataset(config, config.eval.subset)
    if data.classes != trained:
        raise UserError(
            f"{config.data.root} has classes {data.classes[:3]}... but {checkpoint} was trained "
            f"on {trained[:3]}...: point data.root at the dataset it was trained on"
        )
    model = model_from_checkpoint(ckpt, config, checkpoint).to(runtime.device)
    if config.data.source == "features":  # the features must be this checkpoint's CNN's
        folder = config.data.features_path
        digest = backbone_hash(model.backbone)
        check_weights(load_feature_manifest(folder), config, digest, folder, str(checkpoint))
    scores = score_clips(model, data.dataset, config, runtime, time_reversed)
    damaged_now = [
        (data.dataset.videos[n].path, "could not be read during the evaluation (named above)")
        for n in scores.unreadable
    ]
    result = EvalResult(
        checkpoint,
        config.data.split,
        config.eval.subset,
        scores.metrics(data.classes),
        scores.loss,
        sorted([*data.excluded, *damaged_now]),
        time_reversed,
    )
    if write and runtime.is_main:
        write_eval_files(result, checkpoint.parent)
    return result


def write_eval_files(result: EvalResult, folder: Path) -> None:
    """``eval[-<subset>][-reversed].json``, ``confusion*.csv`` and ``confusion*.png``.

    A file that cannot be written (read-only folder, full disk) is a UserError naming it.
    """
    suffix = "" if result.subset == "test" else f"-{result.subset}"
    suffix += "-reversed" if result.time_reversed else ""
    names = result.metrics.class_names
    confusion = result.metrics.confusion
    writers: list[tuple[Path, Callable[[Path], None]]] = [
        (
            folder / f"eval{suffix}.json",
            lambda p: atomic_write_text(p, json.dumps(result.to_dict(), indent=2), sync=True),
        ),
        (folder / f"confusion{suffix}.csv", lambda p: write_confusion_csv(p, confusion, names)),
        (folder / f"confusion{suffix}.png", lambda p: write_confusion_png(p, confusion, names)),
    ]
    for path, write in writers:
        try:
            write(path)
        except OSError as exc:
            raise UserError(
                f"{path}: cannot write ({os_error_text(exc)}); the results printed above are "
                "complete"
            ) from None
