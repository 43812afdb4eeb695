"""Video classification metrics: each video is scored by several clips (and crops).

Inputs, shared by the functions here:

- ``clip_logits`` (N, K) float: one row of class scores per clip (or clip x crop).
- ``clip_video`` (N,) int: the index, in ``[0, V)``, of the video each clip comes from.
- ``video_labels`` (V,) int: the true class of each video; every video needs at least one clip.

Accuracies are fractions in [0, 1]. Two video-level predictions are used:

- **majority vote** of the clips' top-1 classes (the rule of the research being reproduced),
  see `vote_predictions` for its tie rule;
- **mean softmax**: the class with the highest softmax probability averaged over the clips.
  Top-5, mean class accuracy, per-class accuracy and the confusion matrix use this one, because
  it ranks every class (a vote cannot give a top-5) and rarely ties.

Ties between equal scores always go to the lowest class index (as `torch.argmax` does), so every
result is deterministic and a top-1 hit is always a top-5 hit too.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

# The files are reporting (hmdbattn/confusion.py); re-exported so engine callers keep working.
from hmdbattn.confusion import write_confusion_csv, write_confusion_png

__all__ = [
    "ClassAccuracy",
    "VideoMetrics",
    "clip_accuracy",
    "compute_metrics",
    "confusion_matrix",
    "mean_class_accuracy",
    "per_class_accuracy",
    "summarise_splits",
    "video_accuracy",
    "video_mean_probs",
    "video_vote_accuracy",
    "vote_predictions",
    "write_confusion_csv",
    "write_confusion_png",
]


@dataclass(frozen=True)
class ClassAccuracy:
    """Video accuracy of one class; ``accuracy`` is None when the class has no videos."""

    name: str
    videos: int
    correct: int
    accuracy: float | None


@dataclass(frozen=True)
class VideoMetrics:
    """Every evaluation metric of one run (loss excluded); see the module docstring for rules."""

    num_clips: int
    num_videos: int
    clip_top1: float
    clip_top5: float
    video_vote_top1: float  # majority vote of the clips' top-1 classes
    video_top1: float  # mean softmax over the clips
    video_top5: float
    mean_class_accuracy: float  # mean softmax, over the classes that have videos
    per_class: list[ClassAccuracy]
    confusion: list[list[int]]  # (K, K), rows true, columns predicted (mean softmax)
    class_names: list[str]

    def scalars(self) -> dict[str, float]:
        """The headline accuracies by name, e.g. one split's entry for `summarise_splits`."""
        return {
            "clip_top1": self.clip_top1,
            "clip_top5": self.clip_top5,
            "video_vote_top1": self.video_vote_top1,
            "video_top1": self.video_top1,
            "video_top5": self.video_top5,
            "mean_class_accuracy": self.mean_class_accuracy,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain ints, floats, strings, None and lists, ready for `json.dumps`."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_inputs(
    clip_logits: torch.Tensor, clip_video: torch.Tensor, video_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes and ranges; return CPU copies (logits as float64, indices as int64)."""
    if clip_logits.ndim != 2 or clip_logits.shape[0] == 0 or clip_logits.shape[1] == 0:
        raise ValueError(
            f"clip_logits must be (N, K) with N, K > 0, got {tuple(clip_logits.shape)}"
        )
    if clip_video.shape != (clip_logits.shape[0],):
        raise ValueError(
            f"clip_video must be ({clip_logits.shape[0]},), got {tuple(clip_video.shape)}"
        )
    if video_labels.ndim != 1 or video_labels.shape[0] == 0:
        raise ValueError(f"video_labels must be (V,) with V > 0, got {tuple(video_labels.shape)}")
    # float64 so that equal mean probabilities (the vote's second tie rule) compare exactly
    logits = clip_logits.detach().cpu().double()
    videos = clip_video.detach().cpu().long()
    labels = video_labels.detach().cpu().long()
    num_videos, num_classes = labels.shape[0], logits.shape[1]
    if videos.min() < 0 or videos.max() >= num_videos:
        raise ValueError(f"clip_video values must be in [0, {num_videos})")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"video_labels values must be in [0, {num_classes})")
    empty = int((torch.bincount(videos, minlength=num_videos) == 0).sum())
    if empty:
        raise ValueError(f"{empty} of {num_videos} videos have no clips")
    return logits, videos, labels


def _check_predictions(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (V,) predicted and true classes in [0, num_classes); return CPU int64 copies."""
    if predictions.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(
            f"predictions and labels must be equal (V,) shapes, got "
            f"{tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    both = torch.cat([predictions.detach().cpu().long(), labels.detach().cpu().long()])
    if both.numel() and (both.min() < 0 or both.max() >= num_classes):
        raise ValueError(f"class indices must be in [0, {num_classes})")
    return both[: predictions.shape[0]], both[predictions.shape[0] :]


# ---------------------------------------------------------------------------------------------
# Predictions and accuracies


def _topk_hits(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """(M,) bool: is the target among the top ``min(k, K)`` scores (ties: lower index first).

    Ranking by count rather than `torch.topk` keeps ties deterministic and consistent with argmax.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    target_scores = scores.gather(1, targets[:, None])
    index = torch.arange(scores.shape[1])
    ahead = (scores > target_scores) | ((scores == target_scores) & (index < targets[:, None]))
    return ahead.sum(dim=1) < k  # rank < K always holds, which clamps k to K


def _fraction(hits: torch.Tensor) -> float:
    return int(hits.sum()) / hits.numel()


def clip_accuracy(
    clip_logits: torch.Tensor, clip_video: torch.Tensor, video_labels: torch.Tensor, k: int = 1
) -> float:
    """Top-k accuracy over clips, each clip labelled with its video's class (k clamped to K)."""
    logits, videos, labels = _check_inputs(clip_logits, clip_video, video_labels)
    return _fraction(_topk_hits(logits, labels[videos], k))


def video_mean_probs(
    clip_logits: torch.Tensor, clip_video: torch.Tensor, num_videos: int
) -> torch.Tensor:
    """(V, K) float64: each video's softmax probabilities averaged over its clips."""
    logits = clip_logits.detach().cpu().double()
    videos = clip_video.detach().cpu().long()
    sums = torch.zeros(num_videos, logits.shape[1], dtype=torch.float64)
    sums.index_add_(0, videos, logits.softmax(dim=1))
    counts = torch.bincount(videos, minlength=num_videos).clamp(min=1)
    return sums / counts[:, None]


def vote_predictions(
    clip_logits: torch.Tensor, clip_video: torch.Tensor, num_videos: int
) -> torch.Tensor:
    """(V,) int64: each video's class by majority vote of its clips' top-1 classes.

    Tie rule: each clip votes for its argmax (lowest index among equal logits); among the
    classes with the most votes the one with the highest mean softmax probability over the
    video's clips wins; if that ties too, the lowest class index wins.
    """
    logits = clip_logits.detach().cpu().double()
    videos = clip_video.detach().cpu().long()
    num_classes = logits.shape[1]
    votes = torch.bincount(
        videos * num_classes + logits.argmax(dim=1), minlength=num_videos * num_classes
    ).view(num_videos, num_classes)
    leaders = votes == votes.max(dim=1, keepdim=True).values
    mean_probs = video_mean_probs(logits, videos, num_videos)
    # argmax returns the first maximum, which is the lowest index among equal probabilities
    return mean_probs.masked_fill(~leaders, -1.0).argmax(dim=1)


def video_vote_accuracy(
    clip_logits: torch.Tensor, clip_video: torch.Tensor, video_labels: torch.Tensor
) -> float:
    """Video top-1 accuracy by majority vote of the clips (tie rule in `vote_predictions`)."""
    logits, videos, labels = _check_inputs(clip_logits, clip_video, video_labels)
    return _fraction(vote_predictions(logits, videos, labels.shape[0]) == labels)


def video_accuracy(
    clip_logits: torch.Tensor, clip_video: torch.Tensor, video_labels: torch.Tensor, k: int = 1
) -> float:
    """Video top-k accuracy by mean softmax over the clips (k clamped to K)."""
    logits, videos, labels = _check_inputs(clip_logits, clip_video, video_labels)
    return _fraction(_topk_hits(video_mean_probs(logits, videos, labels.shape[0]), labels, k))


def per_class_accuracy(
    predictions: torch.Tensor, video_labels: torch.Tensor, class_names: Sequence[str]
) -> list[ClassAccuracy]:
    """Videos, correct and accuracy of every class, in class order (accuracy None: no videos)."""
    num_classes = len(class_names)
    preds, labels = _check_predictions(predictions, video_labels, num_classes)
    totals = torch.bincount(labels, minlength=num_classes).tolist()
    correct = torch.bincount(labels[preds == labels], minlength=num_classes).tolist()
    return [
        ClassAccuracy(name, total, right, right / total if total else None)
        for name, total, right in zip(class_names, totals, correct, strict=True)
    ]


def mean_class_accuracy(
    predictions: torch.Tensor, video_labels: torch.Tensor, num_classes: int
) -> float:
    """Mean of the per-class video accuracies over the classes present in ``video_labels``.

    Classes with no videos are left out of the mean rather than counted as 0 or 1.
    """
    names = [str(c) for c in range(num_classes)]
    return _mean_of_present(per_class_accuracy(predictions, video_labels, names))


def _mean_of_present(per_class: Sequence[ClassAccuracy]) -> float:
    accuracies = [c.accuracy for c in per_class if c.accuracy is not None]
    if not accuracies:
        raise ValueError("no videos: mean class accuracy is undefined")
    return sum(accuracies) / len(accuracies)


def confusion_matrix(
    predictions: torch.Tensor, video_labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    preds, labels = _check_predictions(predictions, video_labels, num_classes)
    flat = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes)


def compute_metrics(
    clip_logits: torch.Tensor,
    clip_video: torch.Tensor,
    video_labels: torch.Tensor,
    class_names: Sequence[str],
) -> VideoMetrics:
    """Every metric of `VideoMetrics` from the clips' logits (see the module docstring)."""
    logits, videos, labels = _check_inputs(clip_logits, clip_video, video_labels)
    if len(class_names) != logits.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {logits.shape[1]} logit columns")
    num_videos = labels.shape[0]
    mean_probs = video_mean_probs(logits, videos, num_videos)
    predictions = mean_probs.argmax(dim=1)
    per_class = per_class_accuracy(predictions, labels, class_names)
    return VideoMetrics(
        num_clips=logits.shape[0],
        num_videos=num_videos,
        clip_top1=_fraction(_topk_hits(logits, labels[videos], 1)),
        clip_top5=_fraction(_topk_hits(logits, labels[videos], 5)),
        video_vote_top1=_fraction(vote_predictions(logits, videos, num_videos) == labels),
        video_top1=_fraction(_topk_hits(mean_probs, labels, 1)),
        video_top5=_fraction(_topk_hits(mean_probs, labels, 5)),
        mean_class_accuracy=_mean_of_present(per_class),
        per_class=per_class,
        confusion=confusion_matrix(predictions, labels, len(class_names)).tolist(),
        class_names=list(class_names),
    )


def summarise_splits(results: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single split) of each metric.

    Every result (one per HMDB51 split) must have the same metric names.
    """
    if not results:
        raise ValueError("no results to summarise")
    names = list(results[0])
    for number, result in enumerate(results[1:], start=2):
        if set(result) != set(names):
            raise ValueError(
                f"result {number} has metrics {sorted(result)}, expected {sorted(names)}"
            )
    summary = {}
    for name in names:
        values = [float(result[name]) for result in results]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[name] = (statistics.fmean(values), spread)
    return summary
