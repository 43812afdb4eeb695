"""Three-crop evaluation end to end, on a case small enough to check by hand.

`score_clips` runs the real loader, the real three-crop transform, the loss and the reassembly
into dataset order; only the frames and the model are stand-ins:

- every frame's pixel holds its own position: red = column, green = row, blue = a tag of the
  window (100 x the video's label + the window's first frame index), so a crop's first pixel
  says where it was cut and from which window;
- normalisation is the identity up to / 255 (mean 0, std 1), so the model reads them back.

Two videos at 10 fps with 1 s windows: video 0 (label 0) has 10 frames, one window (first
frame 2); video 1 (label 1) has 20 frames, two windows (first frames 2 and 12). Batches of
2 windows check the order across batches; the loss takes all three windows in one batch,
labels (0, 1, 1), so a loss that pairs crops with the wrong labels shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from hmdbattn.config import Config
from hmdbattn.data.datasets import ClipVideo, EvalClips
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.evaluate import Scores, score_clips

CPU = Runtime(torch.device("cpu"))
VIDEOS = [ClipVideo("a/v0.avi", 0, 10, 10.0), ClipVideo("b/v1.avi", 1, 20, 10.0)]
# (video label, first frame) of each window, in dataset order: worked out from eval_windows.
WINDOW_TAGS = [0 + 2, 100 + 2, 100 + 12]


class PositionFrames:
    """A stand-in FrameReader: frames whose pixels hold (column, row, window tag)."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def reset(self) -> None:
        """Nothing to forget (the FrameReader interface)."""

    def read(
        self, video: ClipVideo, indices: Sequence[int], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows = torch.arange(self.height).view(-1, 1).expand(self.height, self.width)
        cols = torch.arange(self.width).view(1, -1).expand(self.height, self.width)
        tag = torch.full_like(rows, 100 * video.label + indices[0])
        frame = torch.stack([cols, rows, tag], dim=-1).to(torch.uint8)  # (H, W, 3)
        frames = frame.expand(len(indices), -1, -1, -1)  # (T, H, W, 3)
        return frames.contiguous() if out is None else out.copy_(frames)


def pixel(x: torch.Tensor) -> torch.Tensor:
    """The first pixel of each clip (B, 3, T, h, w) as integers (column, row, tag): (B, 3)."""
    return (x[:, :, 0, 0, 0] * 255).round()


class Probe(nn.Module):
    """Logits = where the crop was cut and from which window: (left, top, tag)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel(x)


class CropLikelihood(nn.Module):
    """Two classes; P(class 0) is 1/2, 1/4, 1/8 for a crop cut at column 0, 4, 8."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = pixel(x)[:, 0]
        p = 0.5 / 2 ** (left / 4)
        return torch.stack([p.log(), (1 - p).log()], dim=1)


def dataset(height: int, width: int, batch: int) -> tuple[EvalClips, Config]:
    config = Config(
        data={
            "resize": (height, width),
            "crop_size": 16,
            "num_frames": 2,
            "clip_duration": 1.0,
            "eval_crops": 3,
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "num_workers": 0,
        },
        eval={"batch_size": batch},
    )
    clips = EvalClips(config, VIDEOS, ["a", "b"])
    clips.reader = PositionFrames(height, width)  # type: ignore[assignment]
    return clips, config


def score(model: nn.Module, height: int = 16, width: int = 24, batch: int = 2) -> Scores:
    clips, config = dataset(height, width, batch)
    return score_clips(model, clips, config, CPU)


@pytest.mark.parametrize(
    ("height", "width", "corners"),
    [
        (16, 24, [(0, 0), (4, 0), (8, 0)]),  # landscape: left, centre, right
        (24, 16, [(0, 0), (0, 4), (0, 8)]),  # portrait: top, centre, bottom
    ],
)
def test_three_crops_of_each_window_come_in_order(height, width, corners) -> None:
    scores = score(Probe(), height, width)
    expected = [[left, top, tag] for tag in WINDOW_TAGS for left, top in corners]
    assert scores.logits.tolist() == expected
    # Each row knows its video: window 0 is video 0's, windows 1 and 2 video 1's.
    assert scores.video.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert scores.video_labels.tolist() == [0, 1]


def test_three_crop_loss_is_the_mean_over_crops_and_windows() -> None:
    scores = score(CropLikelihood(), batch=3)
    # Per window, the mean over its three crops of -log P(label):
    label_0 = (math.log(2) + math.log(4) + math.log(8)) / 3  # P(0) = 1/2, 1/4, 1/8
    label_1 = (math.log(2) + math.log(4 / 3) + math.log(8 / 7)) / 3  # P(1) = 1/2, 3/4, 7/8
    assert scores.loss == pytest.approx((label_0 + 2 * label_1) / 3, rel=1e-6)


def test_three_crop_video_score_averages_every_crop_of_every_window() -> None:
    metrics = score(CropLikelihood()).metrics(["a", "b"])
    assert metrics.num_clips == 9  # 3 windows x 3 crops
    # Video 0: mean P(0) over its crops is 7/24 < 1/2, so it is taken for class 1 (wrong);
    # video 1 is class 1 by every crop but the left one (right).
    assert metrics.video_top1 == 0.5
    assert metrics.confusion == [[0, 1], [0, 1]]
