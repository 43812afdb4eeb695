"""Video decoding (and encoding): the only module of hmdbattn that imports PyAV.

`decode_video` returns the frames decoding actually produced (never the header's frame count),
as RGB uint8, optionally resized by swscale (bilinear) while decoding, optionally limited to a
window ``[start, end)`` of seconds. Times are seconds from the stream's first timestamp, taken
from each frame's own timestamp, so variable-frame-rate files are cut correctly.

Damaged files. Every PyAV/FFmpeg error becomes a `DecodeError` with a short reason. A packet
that fails to decode is skipped and decoding goes on (as the ``ffmpeg`` tool does); a container
that stops early keeps the frames decoded before the break. Such a file is *usable* when at least
one frame decoded: `Decoded.warning` then says what happened ("truncated: decoded 12 of the 40
frames the header announces", "corrupt: 1 packet(s) failed to decode ..."). Only a file with no
decodable frame at all raises. Callers decide how many frames are enough (preprocess's
``min_frames``).

Rotation. Frames come out upright, as a player shows them: the display matrix's rotation
(a phone's "rotate" metadata), rounded to quarter turns, is applied after the resize, and
`size` is the upright (height, width). `probe` reports the upright size too, reading the
rotation from the first frame (PyAV exposes the display matrix on frames only). Mirroring in
the matrix and angles other than quarter turns are ignored.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from hmdbattn.fileio import atomic_writer

# Timestamps are floats computed from integer pts: compare them with a tolerance far below any
# real frame period (1 ms is 1/8 of a frame at 120 fps).
_TIME_EPS = 1e-4
# HMDB51 headers often announce one frame more than decodes; only a larger gap is truncation.
_HEADER_SLACK = 1
_FALLBACK_FPS = 25.0  # FFmpeg's own default when a stream states no rate at all
# Decoder threads for a whole file in a process decoding alone: more buys little on HMDB51's
# small frames and starves the rest of the machine.
_MAX_THREADS = 4

# Which frames of a window to keep: given the window's frame times (seconds) and its frame
# rate, the positions (indices into the window, repeats allowed) of the frames to return.
Pick = Callable[[np.ndarray, float], np.ndarray]
# Which frames to hold while a window decodes, before `Pick` can run: given a frame's position
# in the window and the seconds of the window's first frame, whether it may be picked. The
# others are dropped at once: every decoder frame held is a buffer FFmpeg allocates afresh,
# which cost ~10% of a 2 s window's decode when all 60 frames were held (measured).
Keep = Callable[[int, float], bool]


class DecodeError(Exception):
    """A video could not be decoded; the message is a short human reason ("empty file")."""


@dataclass
class Decoded:
    """Frames decoded from one video (or a window of it)."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    start: float  # seconds of the first returned frame, from the stream's first timestamp
    warning: str | None = None  # set when the file is damaged but frames were recovered
    rotation: int = 0  # degrees counter-clockwise the frames were turned to stand upright
    # (T,) seconds of each frame from the stream's first timestamp (they need not be evenly
    # spaced: variable-frame-rate files)
    times: np.ndarray | None = None


@dataclass
class VideoInfo:
    """What a container header says about its video stream (cheap: nothing is decoded)."""

    fps: float
    duration: float  # seconds
    width: int  # upright, as shown (the coded size turned by `rotation`)
    height: int
    frames: int | None  # the header's frame count, when it has one; may be off by one
    rotation: int = 0  # degrees counter-clockwise the frames are turned to stand upright


def _open(path: Path) -> tuple[InputContainer, VideoStream]:
    """Open `path` and return it with its first video stream, or raise DecodeError."""
    if not path.is_file():
        raise DecodeError("file not found")
    if path.stat().st_size == 0:
        raise DecodeError("empty file")
    try:
        # Some HMDB51 files carry metadata that is not valid UTF-8: it is never used here.
        container = av.open(str(path), metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise DecodeError(f"not a video or damaged container ({_reason(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"cannot open ({exc})") from None
    if not container.streams.video:
        container.close()
        raise DecodeError("not a video (no video stream)")
    return container, container.streams.video[0]


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without PyAV's errno and file name decoration."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def _rate(stream: VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _start_pts(stream: VideoStream) -> int:
    return stream.start_time if stream.start_time is not None else 0


def probe(path: Path) -> VideoInfo:
    """Read fps, duration, size and header frame count of a video without decoding frames."""
    container, stream = _open(Path(path))
    with container:
        fps = _rate(stream) or _FALLBACK_FPS
        header_frames = stream.frames or None
        rotation = _first_rotation(container, stream)
        width, height = _turned(stream.width, stream.height, rotation)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        elif header_frames:
            duration = header_frames / fps
        else:
            duration = _demuxed_duration(container, stream)
        return VideoInfo(fps, duration, width, height, header_frames, rotation)


def _quarter_turns(degrees: float) -> int:
    """A display rotation as counter-clockwise quarter turns, 0 to 3."""
    return round(degrees / 90) % 4


def _turned(width: int, height: int, rotation: int) -> tuple[int, int]:
    """(width, height) after turning by `rotation` degrees (swapped for a quarter turn)."""
    return (height, width) if _quarter_turns(rotation) % 2 else (width, height)


def _first_rotation(container: InputContainer, stream: VideoStream) -> int:
    """The first frame's display rotation in degrees (0, 90, 180, 270); 0 if none decodes.

    Leaves the demuxer after the first frame: `_demuxed_duration` still finds the last
    timestamp, which is all it needs.
    """
    for _, frame in _Reader(container, stream).frames():
        return 90 * _quarter_turns(frame.rotation)
    return 0


def _demuxed_duration(container: InputContainer, stream: VideoStream) -> float:
    """Duration from the packets' timestamps, for headers that state none (no decoding)."""
    last = 0.0
    time_base = stream.time_base or Fraction(1, 1)
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                end = packet.pts + (packet.duration or 0)
                last = max(last, float((end - _start_pts(stream)) * time_base))
    except av.error.FFmpegError:
        pass  # a damaged tail: the duration up to it is the best answer
    return last


class _Reader:
    """Decodes one stream packet by packet, tolerating bad packets and an early end."""

    def __init__(self, container: InputContainer, stream: VideoStream) -> None:
        self.container, self.stream = container, stream
        self.bad_packets = 0
        self.stopped: str | None = None  # why demuxing ended early, if it did
        self._origin = _start_pts(stream)
        self._time_base = float(stream.time_base) if stream.time_base else 0.0
        self._last_time: float | None = None

    def seek(self, seconds: float) -> bool:
        """Seek to the keyframe at or before `seconds`; False when the container cannot."""
        if not self._time_base:
            return False
        try:
            offset = self._origin + int(seconds / self._time_base)
            self.container.seek(offset, stream=self.stream, backward=True)
        except av.error.FFmpegError:
            return False
        self._last_time = None
        return True

    def frames(self) -> Iterator[tuple[float, VideoFrame]]:
        """(seconds, frame) pairs in presentation order until the end or a broken container."""
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.stopped = _reason(exc)
                yield from self._decode(None)  # frames still buffered in the decoder
                return
            yield from self._decode(packet)

    def _decode(self, packet: av.Packet | None) -> Iterator[tuple[float, VideoFrame]]:
        try:
            decoded = self.stream.decode(packet)
        except av.error.FFmpegError:
            self.bad_packets += 1
            return
        for frame in decoded:
            yield self._time(frame), frame

    def _time(self, frame: VideoFrame) -> float:
        if frame.pts is not None and self._time_base:
            seconds = (frame.pts - self._origin) * self._time_base
        elif self._last_time is None:
            seconds = 0.0
        else:  # no timestamp: one nominal frame after the previous one
            seconds = self._last_time + 1.0 / (_rate(self.stream) or _FALLBACK_FPS)
        self._last_time = seconds
        return seconds


def _upright(frame: VideoFrame, size: tuple[int, int] | None, rotation: int) -> np.ndarray:
    """The frame as RGB, resized to `size` (upright height, width), then turned by `rotation`.

    `rotation` is the first frame's (degrees), so that every frame of a video has one shape.
    """
    turns = rotation // 90
    height, width = size if size is not None else (None, None)  # None: keep the size
    if turns % 2:  # swscale works on the coded frame: a quarter turn swaps the sides
        height, width = width, height
    # threads=1: PyAV 18 defaults swscale to automatic threads, set up again for every frame,
    # which made small frames ~50x slower to convert (measured).
    array = frame.to_ndarray(width=width, height=height, format="rgb24", threads=1)
    # np.rot90 turns counter-clockwise, as the display matrix's angle counts; the view is
    # copied by the np.stack in Frames.take.
    return np.rot90(array, turns) if turns else array


class Frames:
    """The frames of a video (or a window of it), each converted on first use.

    Converting a frame (swscale resize and RGB) costs about as much as decoding it, and a clip
    keeps 16 of a 2 s window's 60 frames: holding the decoder's frames and converting only the
    ones asked for (`take`) saves most of that. A held frame stays at the coded size in the
    decoder's pixel format until it is converted; then only the RGB array is kept. Made by
    `decode_frames`.
    """

    def __init__(self, size: tuple[int, int] | None) -> None:
        self.size = size  # upright (height, width) to resize to; None keeps the size
        self.fps = _FALLBACK_FPS  # the window's rate (set once decoding ends)
        self.warning: str | None = None  # set when the file is damaged but frames were recovered
        self.rotation = 0  # degrees counter-clockwise the frames are turned to stand upright
        self._pending: list[VideoFrame | None] = []  # None once converted or dropped
        self._dropped: set[int] = set()  # positions `decode_frames`' `keep` refused
        self._converted: dict[int, np.ndarray] = {}
        self._times: list[float] = []

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def times(self) -> np.ndarray:
        """(N,) seconds of each frame from the stream's first timestamp (VFR: uneven)."""
        return np.asarray(self._times, dtype=np.float64)

    def add(self, seconds: float, frame: VideoFrame, convert: bool, held: bool = True) -> None:
        """Append a decoded frame; `convert` converts it now and drops the decoder's copy.

        A frame not `held` keeps only its time: it can no longer be taken.
        """
        if not self._pending:  # every frame is turned as the first one is
            self.rotation = 90 * _quarter_turns(frame.rotation)
        self._times.append(seconds)
        self._pending.append(frame if held else None)
        if not held:
            self._dropped.add(len(self._pending) - 1)
        elif convert:
            self._convert(len(self._pending) - 1)

    def holds(self, positions: Sequence[int] | np.ndarray) -> bool:
        """Whether every frame at `positions` can be taken (none was dropped)."""
        return not self._dropped.intersection(int(p) for p in positions)

    def _convert(self, position: int) -> np.ndarray:
        array = self._converted.get(position)
        if array is None:
            frame = self._pending[position]
            if frame is None:  # a caller's mistake: check `holds` first
                raise ValueError(f"frame {position} was dropped while decoding")
            try:
                array = _upright(frame, self.size, self.rotation)
            except av.error.FFmpegError as exc:  # e.g. swscale refusing a broken frame size
                raise DecodeError(f"corrupt: {_reason(exc)}") from None
            self._converted[position] = array
            self._pending[position] = None
        return array

    def take(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The frames at `positions` (repeats allowed) as (len, H, W, 3) uint8 RGB, upright.

        Each frame is converted once, the first time it is asked for. Raises DecodeError when
        FFmpeg cannot convert one (a damaged frame).
        """
        return np.stack([self._convert(int(p)) for p in positions])

    def decoded(self, positions: Sequence[int] | np.ndarray) -> Decoded:
        """The frames at `positions` as a `Decoded` (`start` and `fps` stay the window's)."""
        picked = np.asarray(positions, dtype=np.int64)
        times = self.times
        frames = self.take(picked)
        return Decoded(
            frames, self.fps, float(times[0]), self.warning, self.rotation, times[picked]
        )


def decode_frames(
    path: Path,
    size: tuple[int, int] | None = None,
    start: float = 0.0,
    end: float | None = None,
    threads: int | None = None,
    hold: bool = True,
    keep: Keep | None = None,
) -> Frames:
    """Decode the frames of `path` with timestamps in ``[start, end)`` seconds, unconverted.

    As `decode_video`, but the frames are converted (resized to `size`, RGB, upright) only when
    `Frames.take` asks for them. ``hold=False`` converts each frame as it decodes and drops the
    decoder's copy: memory then follows the converted size (a whole video at a small `size`).
    With `keep`, the frames it refuses are dropped as they decode (their times stay).
    Raises DecodeError when the file cannot be opened or not one frame in the window decodes.
    """
    path = Path(path)
    container, stream = _open(path)
    with container:
        stream.thread_type = "AUTO"
        whole = start <= 0 and end is None
        stream.codec_context.thread_count = threads or decoder_threads(whole)
        reader = _Reader(container, stream)
        frames = Frames(size)
        try:
            first = None
            for seconds, frame in _window(reader, start, end):
                first = seconds if first is None else first
                held = keep is None or keep(len(frames), first)
                frames.add(seconds, frame, convert=not hold, held=held)
        except av.error.FFmpegError as exc:  # e.g. swscale refusing a broken frame size
            raise DecodeError(f"corrupt: {_reason(exc)}") from None
        if not len(frames):
            raise DecodeError(_no_frames_reason(reader, start, end))
        frames.fps = _fps(stream, frames.times.tolist())
        frames.warning = _warning(reader, stream, len(frames), whole)
        return frames


def decode_video(
    path: Path,
    size: tuple[int, int] | None = None,
    start: float = 0.0,
    end: float | None = None,
    pick: Pick | None = None,
    threads: int | None = None,
) -> Decoded:
    """Decode the frames of `path` with timestamps in ``[start, end)`` seconds.

    `size` is the upright (height, width) to resize to while decoding (swscale, bilinear);
    frames are turned upright by their display rotation (see the module docstring). With
    ``start > 0`` decoding begins at the keyframe before `start`; it stops at `end`. With
    `pick`, only the frames it picks are converted (resized and made RGB) and returned, in its
    order: `frames` and `times` hold those, `start` and `fps` stay the window's. `threads` is
    the decoder's thread count (None: `decoder_threads`'s choice). Raises DecodeError when the file
    cannot be opened or not one frame in the window decodes; see the module docstring for
    damaged files.
    """
    # Without `pick` every frame is converted as it decodes (and its decoder frame dropped at
    # once, so a whole video never holds them all at the coded size).
    frames = decode_frames(path, size, start, end, threads, hold=pick is not None)
    if pick is None:
        return frames.decoded(np.arange(len(frames)))
    return frames.decoded(pick(frames.times, frames.fps))


def decoder_threads(whole: bool = True) -> int:
    """Decoder threads for one decode: 1 in a worker process or for a window, else up to 4.

    Loader and preprocess workers decode side by side, one video each, so one thread each
    keeps the machine busy without oversubscribing it (FFmpeg's default, a thread per core in
    every worker, starts cores x workers threads). A window is decoded with one thread too:
    frame threads delay each frame by one per thread and refill after every seek (a 2 s window
    of a 320x240 video took 9.2 CPU ms with 2 threads, 6.1 ms with 1). A process decoding a
    whole file alone (predict, preprocess without workers) may use a few of its cores.
    """
    if not whole or multiprocessing.parent_process() is not None:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(_MAX_THREADS, cores or 1))


def _window(
    reader: _Reader, start: float, end: float | None, seek: bool = True
) -> Iterator[tuple[float, VideoFrame]]:
    """(seconds, frame) of the frames in the window, still undecoded to RGB."""
    seeked = seek and start > 0 and reader.seek(start)
    found = False
    for seconds, frame in reader.frames():
        if seeked and not found and seconds > start + _TIME_EPS and reader.seek(0.0):
            # The seek landed after `start` (an inexact index): decode from the beginning.
            yield from _window(reader, start, end, seek=False)
            return
        seeked = False
        if end is not None and seconds >= end - _TIME_EPS:
            return
        if seconds < start - _TIME_EPS:
            continue
        found = True
        yield seconds, frame


def _fps(stream: VideoStream, times: list[float]) -> float:
    """The stream's average rate, else the rate its timestamps show, else a nominal one."""
    if stream.average_rate:
        return float(stream.average_rate)
    if len(times) >= 2 and times[-1] > times[0]:
        return (len(times) - 1) / (times[-1] - times[0])
    return _rate(stream) or _FALLBACK_FPS


def _no_frames_reason(reader: _Reader, start: float, end: float | None) -> str:
    if start > 0 or end is not None:
        window = f"[{start:g}, {end:g})" if end is not None else f"[{start:g}, end)"
        return f"no decodable frames in window {window} s"
    if reader.stopped:
        return f"no decodable frames (container broken: {reader.stopped})"
    if reader.bad_packets:
        return f"no decodable frames ({reader.bad_packets} packet(s) failed to decode)"
    return "no decodable frames"


def _warning(reader: _Reader, stream: VideoStream, decoded: int, whole: bool) -> str | None:
    """A note on recovered damage; the header count is only compared for a full decode."""
    expected = stream.frames or 0
    short = whole and expected - decoded > _HEADER_SLACK
    if reader.bad_packets:
        note = f"corrupt: {reader.bad_packets} packet(s) failed to decode"
        return note + (f"; decoded {decoded} of {expected} frames" if short else "")
    if reader.stopped or short:
        count = f"decoded {decoded} of the {expected} frames the header announces"
        if not short:
            count = f"decoding stopped after {decoded} frames"
        return f"truncated: {count}" + (f" ({reader.stopped})" if reader.stopped else "")
    return None


# ---------------------------------------------------------------------------------------------
# Writing (the synthetic dataset and the tests make real video files)

_CONTAINERS = {".avi": "avi", ".mp4": "mp4", ".mkv": "matroska", ".webm": "webm", ".mov": "mov"}


def encode_video(
    path: Path,
    frames: np.ndarray,
    fps: int,
    codec: str = "mpeg4",
    bit_rate: int | None = None,
) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames into `path`, atomically; the suffix picks the container.

    One encoder thread: with more, the slice layout (hence the bytes) follows the CPU count.
    """
    container_format = _CONTAINERS.get(path.suffix.lower())
    if container_format is None:
        raise ValueError(f"{path}: unknown container suffix (one of {', '.join(_CONTAINERS)})")
    height, width = frames.shape[1:3]
    with atomic_writer(path) as f, av.open(f, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, VideoStream), f"{codec} is not a video codec"
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        stream.codec_context.thread_count = 1
        for array in frames:
            frame = VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
