"""Reading clips of video files for prediction: geometry, whole or chunked decoding, timing.

Geometry. Frames are resized by swscale while decoding. Landscape and square frames go to
``data.resize`` (height, width), exactly as training resized every HMDB51 video. A portrait
frame keeps its aspect ratio instead: its width (the short side) becomes ``min(data.resize)``
and its height follows, so people and objects keep the scale and shape the model was trained
on rather than being squeezed into a landscape frame; the centre crop (``crop_size``, never
wider than the short side) then takes the middle of the picture. Portrait means portrait as
shown once decode.py turns frames upright by their display rotation (`probe` then reports the
upright size); while decode.py ignores rotation metadata, so does this module.

Decoding. A video whose frames fit ``memory_budget`` bytes at the target size is decoded once,
whole, and its clips use the number of frames decoding produced (as the frame cache does): an
`InMemory`. A longer video is a `Chunked`: read chunk by chunk (a run of consecutive clips per
decode, from the keyframe before it), so memory stays bounded whatever its length; clips past
the end of a file that stops early are None, with a warning. Frames are picked by their
timestamps, so a variable-frame-rate video is seen at a constant rate (`constant_rate`).

Only the frames a clip keeps are converted (resized and made RGB: about half the cost of
reading a frame), each once (`decode.Frames`): until then the decoder's frames are held at
the coded size, so the memory budget counts them at that size (`held_bytes`). A short video
whose coded frames would not fit is converted whole while it decodes, as before.

`read_window` is the one "decode the window, else retry one second earlier" rule, shared with
the datasets' on-the-fly decoding (`decode_window`, used by `datasets.FrameReader`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from hmdbattn.config import DataConfig
from hmdbattn.data.clips import Span
from hmdbattn.data.decode import (
    Decoded,
    DecodeError,
    Frames,
    Keep,
    Pick,
    VideoInfo,
    decode_frames,
    probe,
)

# Decoded frames held at once: 512 MiB is about 2 minutes at 128x171 and 30 fps.
MEMORY_BUDGET = 512 * 2**20


def target_size(height: int, width: int, resize: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) frames of an upright `height` x `width` video are resized to.

    Landscape or square: `resize`, as in training. Portrait: the width becomes ``min(resize)``
    and the height keeps the video's aspect ratio (see the module docstring).
    """
    if height <= width:
        return (int(resize[0]), int(resize[1]))
    short = min(resize)
    return (max(short, round(short * height / width)), short)


def read_window(
    path: Path,
    size: tuple[int, int],
    start: float,
    end: float,
    retry_end: float | None,
    keep: Keep | None = None,
) -> Frames:
    """The frames of `path` in ``[start, end)`` seconds, else those from one second earlier.

    Headers can announce a frame or two more than decodes, so a window at the very end of a
    video may hold no frame at all: the retry reads from ``start - 1`` up to `retry_end` (None:
    the end of the file) for the last frames there are, so that a clip starting before them
    still gets an answer. The frames are converted as they are taken (`Frames.take`); `keep`
    drops the others as they decode. Raises DecodeError when the retry finds no frame either.
    """
    try:
        return decode_frames(path, size, start, end, keep=keep)
    except DecodeError:
        return decode_frames(path, size, max(0.0, start - 1.0), retry_end, keep=keep)


def decode_window(
    path: Path,
    size: tuple[int, int],
    start: float,
    end: float,
    retry_end: float | None,
    pick: Pick | None = None,
    keep: Keep | None = None,
) -> Decoded:
    """`read_window`'s frames as a `Decoded`: those `pick` keeps (converting only them), or all.

    `keep` guesses while decoding which frames `pick` will want; should it drop one that
    `pick` wants (a wrong guess), the window is decoded again holding every frame.
    """
    frames = read_window(path, size, start, end, retry_end, keep)
    positions = np.arange(len(frames)) if pick is None else pick(frames.times, frames.fps)
    if keep is not None and not frames.holds(positions):
        frames = read_window(path, size, start, end, retry_end)
        positions = np.arange(len(frames)) if pick is None else pick(frames.times, frames.fps)
    return frames.decoded(positions)


def spaced_positions(first: float, fps: float, count: int, seconds: np.ndarray) -> np.ndarray:
    """Index of the frame at each of `seconds`, `count` frames taken as evenly spaced at `fps`.

    Counted from the first frame, at `first` seconds (as training takes frames), and clamped
    to the frames there are; the datasets' `Pick` builds on it.
    """
    positions = np.rint((seconds - first) * fps).astype(np.int64)
    return np.clip(positions, 0, count - 1)


def spaced_keep(seconds: np.ndarray, fps: float) -> Keep:
    """The frames a `spaced_positions` pick of `seconds` wants, if the window's rate is `fps`.

    For `decode_window`'s `keep`: the frame at each of `seconds`, counted from the window's
    first frame, and every frame from the last of those on (a window shorter than its clip
    takes its last frame for the times past its end).
    """
    wanted: dict[float, tuple[set[int], int]] = {}

    def keep(position: int, first: float) -> bool:
        if first not in wanted:
            found = spaced_positions(first, fps, 2**62, seconds)  # no upper clamp yet
            wanted[first] = set(found.tolist()), int(found.max())
        positions, last = wanted[first]
        return position in positions or position >= last

    return keep


def nearest_frames(times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of the frame whose timestamp (sorted `times`) is nearest each `wanted` time.

    Nearest, not the last one before: timestamps rounded to the time base (1 ms in Matroska,
    so 29.97 fps frames land up to 0.5 ms late) still find their own frame.
    """
    if len(times) == 1:
        return np.zeros(len(wanted), dtype=np.int64)
    after = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1)
    before = after - 1
    return np.where(wanted - times[before] <= times[after] - wanted, before, after)


def constant_rate(times: np.ndarray, fps: float) -> np.ndarray:
    """The frame nearest each tick of an `fps` clock started at the first frame: (ticks,).

    A video with a variable frame rate becomes the constant-rate one that clip windows,
    counted in frames, assume: frames repeat across gaps and are skipped where they come
    faster than `fps`. A constant-rate video maps to itself.
    """
    times = np.maximum.accumulate(np.asarray(times, dtype=np.float64))  # damaged: not sorted
    ticks = max(1, round((times[-1] - times[0]) * fps) + 1)
    return nearest_frames(times, times[0] + np.arange(ticks) / fps)


class InMemory:
    """A video decoded whole at the target size, seen at a constant frame rate.

    Its frames are converted as clips ask for them (each once), unless `decode_frames`
    converted them all while decoding.
    """

    def __init__(self, frames: Frames) -> None:
        self._frames = frames
        self.fps = frames.fps
        self.warning = frames.warning
        # Frame of each tick of the constant-rate clock.
        self.shown = constant_rate(frames.times, self.fps)
        self.video_frames = len(self.shown)
        self.duration = self.video_frames / self.fps

    @property
    def frames(self) -> np.ndarray:
        """Every decoded frame, (N, H, W, 3) uint8 (converting those no clip has used yet)."""
        return self._frames.take(np.arange(len(self._frames)))

    def clips(self, spans: Iterable[Span], num_frames: int) -> Iterator[np.ndarray | None]:
        """The (T, H, W, 3) uint8 frames of each clip, in order (never None)."""
        for span in spans:
            yield self._frames.take(self.shown[span.indices(num_frames, self.video_frames)])


class Chunked:
    """A long video read a run of clips at a time, each run decoded once.

    Its length and rate are the header's (`probe`): a long video is never decoded whole to
    count its frames. Frames are taken by time (the frame shown at each clip time), and only
    those are converted. A run holds at most `budget` bytes of frames, each counted at
    `frame_bytes` (the larger of its decoded and converted sizes). When the file ends before
    its header says (truncated), the clips past its end are None.
    """

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        video_frames: int,
        fps: float,
        budget: int,
        frame_bytes: int | None = None,
    ) -> None:
        self.path, self.size = path, size
        self.video_frames, self.fps = video_frames, fps
        self.max_frames = max(1, budget // (frame_bytes or converted_bytes(size)))
        self.warning: str | None = None
        self._ended: float | None = None  # seconds from which nothing decodes, once found
        self._stop: float | None = None  # start of the first clip past the file's end

    def clips(self, spans: Iterable[Span], num_frames: int) -> Iterator[np.ndarray | None]:
        """The (T, H, W, 3) uint8 frames of each clip in order (None: past the file's end)."""
        run: list[list[int]] = []
        for span in spans:
            indices = span.indices(num_frames, self.video_frames)
            low = min([indices[0], *(r[0] for r in run)])
            high = max([indices[-1], *(r[-1] for r in run)])
            if run and high - low + 1 > self.max_frames:
                yield from self._decode(run)
                run = []
            run.append(indices)
        if run:
            yield from self._decode(run)

    def _decode(self, run: list[list[int]]) -> Iterator[np.ndarray | None]:
        low, high = min(r[0] for r in run), max(r[-1] for r in run)
        # Half a frame of margin either side absorbs timestamp jitter at the edges.
        start, end = max(0.0, (low - 0.5) / self.fps), (high + 0.5) / self.fps
        frames = self._window(start, end)
        if frames is not None:
            self.warning = self.warning or frames.warning
            times = np.maximum.accumulate(frames.times)  # damaged files: not always sorted
        for indices in run:
            wanted = np.asarray(indices, dtype=np.float64) / self.fps  # (T,) seconds
            if frames is None or wanted[0] > times[-1] + 1 / self.fps:
                self._truncated(float(wanted[0]))
                yield None  # the clip starts after the last frame the file has
                continue
            yield frames.take(nearest_frames(times, wanted))

    def _truncated(self, seconds: float) -> None:
        """Note that no frame decodes from `seconds` on (clips are read in time order)."""
        if self._stop is None:
            self._stop = seconds
            announced = self.video_frames / self.fps
            self.warning = (
                f"truncated: no frame from {seconds:.1f} s on, of the {announced:.1f} s "
                "the header announces"
            )

    @property
    def duration(self) -> float:
        """Seconds of video: the header's, or up to where frames stopped (once read)."""
        announced = self.video_frames / self.fps
        return announced if self._stop is None else min(announced, self._stop)

    def _window(self, start: float, end: float) -> Frames | None:
        """Frames in [start, end) seconds; None when the file ended before `start`."""
        if self._ended is not None and start >= self._ended:
            return None
        # The retry looks no further than the memory budget allows.
        retry_end = max(end, start + self.max_frames / self.fps)
        try:
            return read_window(self.path, self.size, start, end, retry_end)
        except DecodeError:
            self._ended = start
            return None


def converted_bytes(size: tuple[int, int]) -> int:
    """Bytes of one frame converted to RGB at `size` (height, width)."""
    return size[0] * size[1] * 3


def held_bytes(info: VideoInfo) -> int:
    """Bytes of one decoded frame before conversion, at most: 3 a pixel (8-bit 4:4:4)."""
    return info.width * info.height * 3


def open_video(
    path: Path, data: DataConfig, memory_budget: int = MEMORY_BUDGET
) -> InMemory | Chunked:
    """Probe `path` and decode it whole, or prepare to read it in chunks when it is long.

    Raises DecodeError when the file cannot be opened or has no decodable frame.
    """
    info = probe(path)
    size = target_size(info.height, info.width, data.resize)
    estimate = info.frames or round(info.duration * info.fps)
    frame_bytes = max(held_bytes(info), converted_bytes(size))
    if estimate * frame_bytes <= memory_budget:  # convert only the frames clips keep
        return InMemory(decode_frames(path, size))
    if estimate * converted_bytes(size) <= memory_budget:  # large frames: convert as decoded
        return InMemory(decode_frames(path, size, hold=False))
    return Chunked(path, size, estimate, info.fps, memory_budget, frame_bytes)
