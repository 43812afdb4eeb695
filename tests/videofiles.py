"""Make small real video files for tests (PyAV, MPEG-4 part 2 in AVI unless told otherwise)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from hmdbattn.data.decode import encode_video


def moving_square_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0):
    """(T, H, W, 3) uint8 frames of a bright square moving right on a noisy background."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 40, size=(num_frames, height, width, 3), dtype=np.uint8)
    side = max(4, height // 4)
    for t in range(num_frames):
        x = int((width - side) * t / max(1, num_frames - 1))
        frames[t, height // 3 : height // 3 + side, x : x + side] = (250, 200, 30)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int = 30, codec: str = "mpeg4") -> Path:
    """Encode (T, H, W, 3) uint8 frames to `path`; the container follows the file suffix."""
    encode_video(path, frames, fps, codec)
    return path


def write_avi(
    path: Path,
    num_frames: int = 30,
    height: int = 48,
    width: int = 64,
    fps: int = 30,
    seed: int = 0,
) -> Path:
    """A small MPEG-4 AVI like HMDB51's (a moving square), `num_frames` long."""
    return write_video(path, moving_square_frames(num_frames, height, width, seed), fps=fps)


def write_vfr(path: Path, times_ms: list[int]) -> Path:
    """A variable-frame-rate Matroska file (64x48) with one frame at each of `times_ms`."""
    frames = moving_square_frames(len(times_ms))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for array, ms in zip(frames, times_ms, strict=True):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
