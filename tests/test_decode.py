"""Decoding real (tiny) video files, whole, resized, by window, and damaged ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from videofiles import write_avi, write_vfr

from hmdbattn.data.clips import spread
from hmdbattn.data.datasets import ClipVideo, FrameReader
from hmdbattn.data.decode import DecodeError, _fps, _Reader, decode_video, probe
from hmdbattn.data.video import decode_window


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a good 40-frame AVI and damaged or non-video files next to it."""
    folder = tmp_path_factory.mktemp("videos")
    good = write_avi(folder / "good.avi", num_frames=40)
    data = good.read_bytes()
    movi = data.index(b"movi")
    (folder / "empty.avi").write_bytes(b"")
    (folder / "random.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "text.avi").write_text("not a video\n" * 100, encoding="utf-8")
    (folder / "header_only.avi").write_bytes(data[: movi // 2])
    # Cut inside the frame data: the header still announces 40 frames.
    (folder / "truncated.avi").write_bytes(data[: movi + (len(data) - movi) * 3 // 4])
    _write_wav(folder / "audio.avi")
    write_vfr(folder / "vfr.mkv", [0, 20, 40, 100, 200, 220, 240, 400, 500, 520, 540, 600])
    return folder


def _write_wav(path: Path) -> None:
    """Audio only (WAV data under an .avi name: FFmpeg goes by the content)."""
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1000), dtype=np.int16), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 8000, i * 1000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_decodes_every_frame(videos: Path) -> None:
    decoded = decode_video(videos / "good.avi")
    assert decoded.frames.shape == (40, 48, 64, 3)
    assert decoded.frames.dtype == np.uint8
    assert decoded.fps == pytest.approx(30.0)
    assert decoded.start == 0.0
    assert decoded.warning is None
    # The square is where it was encoded (the noise background is beyond MPEG-4 at this size).
    for t in (0, 20, 39):
        x = (64 - 12) * t // 39
        square = decoded.frames[t, 18:26, x + 2 : x + 10].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(square, (250, 200, 30), atol=25)


def test_resizes_to_height_width(videos: Path) -> None:
    decoded = decode_video(videos / "good.avi", size=(32, 40))
    assert decoded.frames.shape == (40, 32, 40, 3)
    full = decode_video(videos / "good.avi").frames
    assert abs(float(decoded.frames.mean()) - float(full.mean())) < 3


@pytest.mark.parametrize(
    ("start", "end", "first", "stop"),
    [(0.5, 0.8, 15, 24), (1.0, None, 30, 40), (0.0, 0.3, 0, 9), (0.51, 0.52, 16, 16)],
)
def test_window_holds_only_its_frames(
    videos: Path, start: float, end: float | None, first: int, stop: int
) -> None:
    full = decode_video(videos / "good.avi").frames
    if first == stop:  # no frame timestamp falls in the window
        with pytest.raises(DecodeError, match="window"):
            decode_video(videos / "good.avi", start=start, end=end)
        return
    window = decode_video(videos / "good.avi", start=start, end=end)
    assert window.start == pytest.approx(first / 30)
    np.testing.assert_array_equal(window.frames, full[first:stop])


def test_window_past_the_end(videos: Path) -> None:
    with pytest.raises(DecodeError, match="no decodable frames in window"):
        decode_video(videos / "good.avi", start=5.0, end=6.0)


def test_decode_window_retries_one_second_earlier(videos: Path) -> None:
    # The one fallback of predict's chunks and the datasets' on-the-fly decoding.
    path, size = videos / "good.avi", (48, 64)
    full = decode_video(path).frames  # 40 frames at 30 fps: 1.33 s
    inside = decode_window(path, size, 0.5, 0.8, retry_end=None)
    np.testing.assert_array_equal(inside.frames, full[15:24])  # no retry: the window itself
    # No frame in [1.4, 1.5): the retry reads from 0.4 s, to the end or up to `retry_end`.
    np.testing.assert_array_equal(decode_window(path, size, 1.4, 1.5, None).frames, full[12:])
    np.testing.assert_array_equal(decode_window(path, size, 1.4, 1.5, 0.6).frames, full[12:18])
    with pytest.raises(DecodeError, match="no decodable frames in window"):
        decode_window(path, size, 5.0, 6.0, None)  # nothing in the second before either


def test_variable_frame_rate_windows_use_timestamps(videos: Path) -> None:
    assert len(decode_video(videos / "vfr.mkv").frames) == 12
    window = decode_video(videos / "vfr.mkv", start=0.2, end=0.55)
    assert len(window.frames) == 7  # 0.2, 0.22, 0.24, 0.4, 0.5, 0.52, 0.54
    assert window.start == pytest.approx(0.2)


def test_fps_estimated_from_timestamps_without_a_rate() -> None:
    no_rate = SimpleNamespace(average_rate=None, guessed_rate=None)
    assert _fps(no_rate, [0.0, 0.1, 0.2, 0.3]) == pytest.approx(10.0)  # type: ignore[arg-type]
    assert _fps(no_rate, [0.0]) == 25.0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.avi", "empty file"),
        ("random.avi", "not a video or damaged container"),
        ("text.avi", "not a video or damaged container"),
        ("header_only.avi", "not a video or damaged container"),
        ("audio.avi", "not a video (no video stream)"),
        ("absent.avi", "file not found"),
    ],
)
def test_unusable_files_raise_decode_error(videos: Path, name: str, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        decode_video(videos / name)
    with pytest.raises(DecodeError):
        probe(videos / name)


def test_truncated_file_keeps_decoded_frames_with_a_note(videos: Path) -> None:
    decoded = decode_video(videos / "truncated.avi")
    assert 0 < len(decoded.frames) < 40
    assert decoded.warning is not None
    assert decoded.warning.startswith("truncated: decoded")
    assert "of the 40 frames" in decoded.warning
    good = decode_video(videos / "good.avi").frames
    np.testing.assert_array_equal(decoded.frames, good[: len(decoded.frames)])


def test_probe_reads_the_header(videos: Path) -> None:
    info = probe(videos / "good.avi")
    assert (info.width, info.height, info.frames) == (64, 48, 40)
    assert info.fps == pytest.approx(30.0)
    assert info.duration == pytest.approx(40 / 30)
    vfr = probe(videos / "vfr.mkv")
    assert vfr.frames is None
    assert vfr.duration == pytest.approx(0.6, abs=0.05)


# --- The on-the-fly path converts only the frames a clip samples (issue 15) -----------------


def _on_the_fly(folder: Path, resize: tuple[int, int]) -> FrameReader:
    """The frame reader of ``data.source = "video"`` over the videos in `folder`."""
    data = SimpleNamespace(
        source="video", videos_dir=folder, cache_path=folder / "cache", resize=resize
    )
    return FrameReader(data)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clips_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s video (120 frames, a keyframe every 12) and a 0.4 s one, shorter than a window."""
    folder = tmp_path_factory.mktemp("clips")
    write_avi(folder / "long.avi", num_frames=120, seed=1)
    write_avi(folder / "short.avi", num_frames=12, seed=2)
    return folder


# (video, frames, window start in frames): start, middle and end of the video, and a video
# shorter than the 2 s window (its 16 indices repeat some of its 12 frames).
_CLIP_WINDOWS = [("long.avi", 120, 0.0), ("long.avi", 120, 37.0), ("long.avi", 120, 60.0)]


@pytest.mark.parametrize(("name", "frames", "start"), [*_CLIP_WINDOWS, ("short.avi", 12, 0.0)])
def test_clip_frames_equal_a_full_decodes(
    clips_videos: Path, name: str, frames: int, start: float
) -> None:
    size = (32, 40)  # resized while decoding, as training does
    indices = spread(start, min(60, frames), 16, frames)
    clip = _on_the_fly(clips_videos, size).read(ClipVideo(name, 0, frames, 30.0), indices)
    full = decode_video(clips_videos / name, size=size).frames
    assert len(full) == frames
    np.testing.assert_array_equal(clip.numpy(), full[indices])


@pytest.mark.parametrize(
    ("name", "frames", "start"), [("long.avi", 120, 37.0), ("short.avi", 12, 0.0)]
)
def test_clip_converts_only_the_frames_it_keeps(
    clips_videos: Path, monkeypatch: pytest.MonkeyPatch, name: str, frames: int, start: float
) -> None:
    converted: list[int] = []
    upright = _Reader.upright

    def counting(self: _Reader, frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
        converted.append(frame.pts)
        return upright(self, frame, size)

    monkeypatch.setattr(_Reader, "upright", counting)
    indices = spread(start, min(60, frames), 16, frames)
    _on_the_fly(clips_videos, (32, 40)).read(ClipVideo(name, 0, frames, 30.0), indices)
    # The window holds 60 (or 12) frames: only the distinct sampled ones are converted, once.
    assert len(converted) == len(set(indices))
    assert len(set(converted)) == len(converted)
