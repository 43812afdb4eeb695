"""Clip sampling in time: which frame indices of a video make a clip (pure functions, no I/O).

A clip covers a *window* of ``clip_duration`` seconds and holds ``num_frames`` frames spread
uniformly inside it: frame ``i`` of the clip is the video frame at the centre of the ``i``-th of
``num_frames`` equal parts of the window. Windows are measured in frames (``clip_duration *
fps``) so that the same function serves the cache (frame counts from the manifest) and on-the-fly
decoding (frame counts from the container).

Placement: `cover` is the one formula that places clips over a stretch of video (a `Span`):
evaluation covers the whole video with it (`eval_windows`), and prediction covers each of its
windows (`predict.plan_windows`, windows placed by `slide`).

Short videos: when a video is not longer than one window, the window is the whole video and the
``num_frames`` indices are spread uniformly over it, so frames repeat. The rule is the same for
training and evaluation; evaluation then has a single window per video, whatever
``clips_per_video`` asks for, because identical windows would only repeat the same prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for training clips: predicting with ONNX Runtime never loads it
    import torch

# Frame positions are floats (2 s at 29.97 fps is 59.94 frames): compare them with a tolerance.
_EPS = 1e-6


def _check(video_frames: int, fps: float, clip_duration: float, num_frames: int) -> None:
    if video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {video_frames}")
    if fps <= 0 or clip_duration <= 0 or num_frames < 1:
        raise ValueError(
            f"need fps > 0, clip_duration > 0, num_frames >= 1; "
            f"got {fps}, {clip_duration}, {num_frames}"
        )


def window_frames(fps: float, clip_duration: float) -> float:
    """The length of a window in frames (not rounded: 2 s at 29.97 fps is 59.94 frames)."""
    return clip_duration * fps


def spread(start: float, length: float, num_frames: int, video_frames: int) -> list[int]:
    """`num_frames` indices at the centres of equal parts of ``[start, start + length)``.

    Indices are clamped to ``[0, video_frames - 1]``, which only matters for rounding at the end.
    """
    step = length / num_frames
    last = video_frames - 1
    return [min(last, max(0, math.floor(start + (i + 0.5) * step))) for i in range(num_frames)]


def train_clip_indices(
    video_frames: int,
    fps: float,
    clip_duration: float,
    num_frames: int,
    generator: torch.Generator,
) -> list[int]:
    """Indices of a training clip: a random window of `clip_duration` s, `num_frames` inside it.

    The window's start is drawn uniformly over every position that keeps it inside the video,
    from `generator` only (no global random state), so a seeded generator gives the same clip.
    A video not longer than a window gives the whole video (see the module docstring).
    """
    _check(video_frames, fps, clip_duration, num_frames)
    length = window_frames(fps, clip_duration)
    import torch

    # Draw even for short videos so that the generator advances the same way for every video.
    u = float(torch.rand((), generator=generator))
    if video_frames <= length:
        return spread(0.0, video_frames, num_frames, video_frames)
    return spread(u * (video_frames - length), length, num_frames, video_frames)


def _count(length: float, window: float) -> int:
    """Windows of `window` frames needed to cover `length` frames: ``ceil``, at least 1."""
    # The small tolerance keeps a stretch of exactly k windows (up to float error) at k windows.
    return max(1, math.ceil(length / window - _EPS))


def num_eval_windows(video_frames: int, fps: float, clip_duration: float) -> int:
    """Windows needed to cover the whole video: ``ceil(duration / clip_duration)``, at least 1."""
    return _count(video_frames, window_frames(fps, clip_duration))


@dataclass(frozen=True)
class Span:
    """A stretch of a video in (fractional) frames: a window, or a clip inside one."""

    start: float
    length: float

    @property
    def end(self) -> float:
        """Where the span ends (exclusive), in frames."""
        return self.start + self.length

    def indices(self, num_frames: int, video_frames: int) -> list[int]:
        """The frame indices of a clip of `num_frames` frames over this span (`spread`)."""
        return spread(self.start, self.length, num_frames, video_frames)


def cover(span: Span, clip: float, count: int = 0) -> list[Span]:
    """Clips of `clip` frames over `span`, spaced uniformly so that together they cover it.

    `count` clips: the first starts where `span` starts and the last ends where it ends (they
    overlap when `span` is not a whole number of clips long); ``count = 0`` takes
    ``ceil(length / clip)`` of them and ``count = 1`` the centre one. A span not longer than a
    clip is one clip: the whole span (the short-video rule, see the module docstring).
    """
    if span.length <= clip:
        return [span]
    count = count or _count(span.length, clip)
    room = span.length - clip
    offsets = [room / 2] if count == 1 else [room * k / (count - 1) for k in range(count)]
    return [Span(span.start + offset, clip) for offset in offsets]


def _slide_starts(whole: float, length: float, step: float) -> int:
    """How many windows of `slide` start at a multiple of `step` (all but a last one at the end)."""
    return math.floor((whole - length) / step + _EPS) + 1


def slide_count(whole: float, length: float, step: float) -> int:
    """How many windows `slide` gives over `whole` frames, computed without making them.

    Lets a caller refuse a stride that would make millions of windows before it makes them.
    """
    if whole <= length + _EPS:
        return 1
    starts = _slide_starts(whole, length, step)
    ends_short = (starts - 1) * step + length < whole - _EPS  # then one more, at the end
    return starts + 1 if ends_short else starts


def slide(whole: Span, length: float, step: float) -> list[Span]:
    """Windows of `length` frames every `step` frames; the last one ends where `whole` ends."""
    if whole.length <= length + _EPS:
        return [whole]
    count = _slide_starts(whole.length, length, step)
    spans = [Span(whole.start + k * step, length) for k in range(count)]
    if spans[-1].end < whole.end - _EPS:
        spans.append(Span(whole.end - length, length))
    return spans


def eval_windows(
    video_frames: int,
    fps: float,
    clip_duration: float,
    num_frames: int,
    clips_per_video: int,
) -> list[list[int]]:
    """Frame indices of every evaluation clip of a video, windows in time order.

    ``clips_per_video`` windows of `clip_duration` placed by `cover` over the whole video: the
    first starts at frame 0 and the last ends at the last frame. ``clips_per_video = 0`` means
    every window: ``ceil(duration / clip_duration)`` of them. ``clips_per_video = 1`` takes the
    centre window. A video not longer than a window has one window, the whole video (see the
    module docstring).
    """
    _check(video_frames, fps, clip_duration, num_frames)
    if clips_per_video < 0:
        raise ValueError(f"clips_per_video must be >= 0, got {clips_per_video}")
    windows = cover(Span(0.0, video_frames), window_frames(fps, clip_duration), clips_per_video)
    return [w.indices(num_frames, video_frames) for w in windows]
