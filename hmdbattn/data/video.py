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
the end of a file that stops early are None, with a warning. Where decode.py reports each
frame's timestamp (`Decoded.times`), frames are picked by time, so a variable-frame-rate video
is seen at a constant rate (`constant_rate`); otherwise they are taken as evenly spaced at the
stream's rate, as training takes them.

`decode_window` is the one "decode the window, else retry one second earlier" rule, shared with
the datasets' on-the-fly decoding (`datasets.FrameReader`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from hmdbattn.config import DataConfig
from hmdbattn.data.clips import Span
from hmdbattn.data.decode import Decoded, DecodeError, Pick, decode_video, probe

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


def decode_window(
    path: Path,
    size: tuple[int, int],
    start: float,
    end: float,
    retry_end: float | None,
    pick: Pick | None = None,
) -> Decoded:
    """The frames of `path` in ``[start, end)`` seconds, else those from one second earlier.

    Headers can announce a frame or two more than decodes, so a window at the very end of a
    video may hold no frame at all: the retry reads from ``start - 1`` up to `retry_end` (None:
    the end of the file) for the last frames there are, so that a clip starting before them
    still gets an answer. `pick` goes to `decode_video` (convert only the frames it picks).
    Raises DecodeError when the retry finds no frame either.
    """
    try:
        return decode_video(path, size, start, end, pick)
    except DecodeError:
        return decode_video(path, size, max(0.0, start - 1.0), retry_end, pick)


def spaced_frames(decoded: Decoded, seconds: np.ndarray) -> np.ndarray:
    """Index of the frame at each of `seconds`, the frames taken as evenly spaced at their rate.

    Counted from the first decoded frame at ``decoded.fps`` (as training takes frames), and
    clamped to the frames there are.
    """
    return spaced_positions(decoded.start, decoded.fps, len(decoded.frames), seconds)


def spaced_positions(first: float, fps: float, count: int, seconds: np.ndarray) -> np.ndarray:
    """`spaced_frames` for `count` frames from `first` seconds at `fps` (a `Pick` builds on it)."""
    positions = np.rint((seconds - first) * fps).astype(np.int64)
    return np.clip(positions, 0, count - 1)


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
    """A video decoded whole at the target size, seen at a constant frame rate."""

    def __init__(self, decoded: Decoded) -> None:
        self.frames = decoded.frames  # (N, H, W, 3) uint8
        self.fps = decoded.fps
        self.warning = decoded.warning
        times = decoded.times
        # Frame of each tick of the constant-rate clock (the identity without timestamps).
        self.shown = (
            np.arange(len(self.frames)) if times is None else constant_rate(times, self.fps)
        )
        self.video_frames = len(self.shown)
        self.duration = self.video_frames / self.fps

    def clips(self, spans: Iterable[Span], num_frames: int) -> Iterator[np.ndarray | None]:
        """The (T, H, W, 3) uint8 frames of each clip, in order (never None)."""
        for span in spans:
            yield self.frames[self.shown[span.indices(num_frames, self.video_frames)]]


class Chunked:
    """A long video read a run of clips at a time, each run decoded once.

    Its length and rate are the header's (`probe`): a long video is never decoded whole to
    count its frames. Frames are taken by time (the frame shown at each clip time). When the
    file ends before its header says (truncated), the clips past its end are None.
    """

    def __init__(
        self, path: Path, size: tuple[int, int], video_frames: int, fps: float, budget: int
    ) -> None:
        self.path, self.size = path, size
        self.video_frames, self.fps = video_frames, fps
        self.max_frames = max(1, budget // (size[0] * size[1] * 3))
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
        decoded = self._window(start, end)
        if decoded is not None:
            self.warning = self.warning or decoded.warning
        times = None if decoded is None else decoded.times
        for indices in run:
            wanted = np.asarray(indices, dtype=np.float64) / self.fps  # (T,) seconds
            if decoded is None or wanted[0] > self._last_time(decoded) + 1 / self.fps:
                self._truncated(float(wanted[0]))
                yield None  # the clip starts after the last frame the file has
                continue
            if times is None:  # evenly spaced frames from the first one decoded
                positions = spaced_frames(decoded, wanted)
            else:
                positions = nearest_frames(np.maximum.accumulate(times), wanted)
            yield decoded.frames[positions]

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

    @staticmethod
    def _last_time(decoded: Decoded) -> float:
        times = decoded.times
        if times is not None:
            return float(times[-1])
        return decoded.start + (len(decoded.frames) - 1) / decoded.fps

    def _window(self, start: float, end: float) -> Decoded | None:
        """Frames in [start, end) seconds; None when the file ended before `start`."""
        if self._ended is not None and start >= self._ended:
            return None
        # The retry looks no further than the memory budget allows.
        retry_end = max(end, start + self.max_frames / self.fps)
        try:
            return decode_window(self.path, self.size, start, end, retry_end)
        except DecodeError:
            self._ended = start
            return None


def open_video(
    path: Path, data: DataConfig, memory_budget: int = MEMORY_BUDGET
) -> InMemory | Chunked:
    """Probe `path` and decode it whole, or prepare to read it in chunks when it is long.

    Raises DecodeError when the file cannot be opened or has no decodable frame.
    """
    info = probe(path)
    size = target_size(info.height, info.width, data.resize)
    estimate = info.frames or round(info.duration * info.fps)
    if estimate * size[0] * size[1] * 3 <= memory_budget:
        return InMemory(decode_video(path, size))
    return Chunked(path, size, estimate, info.fps, memory_budget)
