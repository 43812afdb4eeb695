"""Decoding real (tiny) video files, whole, resized, by window, and damaged ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from videofiles import moving_square_frames, write_avi, write_vfr

from hmdbattn.data import decode
from hmdbattn.data.clips import Span, cover, spread
from hmdbattn.data.datasets import ClipVideo, FrameReader
from hmdbattn.data.decode import DecodeError, Pick, _fps, decode_video, probe
from hmdbattn.data.video import (
    Chunked,
    InMemory,
    decode_window,
    nearest_frames,
    open_video,
    spaced_keep,
    spaced_positions,
    target_size,
)


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


def _count_conversions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pts of every frame converted to RGB from now on, in order (a live list)."""
    converted: list[int] = []
    upright = decode._upright

    def counting(frame: av.VideoFrame, size: tuple[int, int] | None, rotation: int) -> np.ndarray:
        converted.append(frame.pts)
        return upright(frame, size, rotation)

    monkeypatch.setattr(decode, "_upright", counting)
    return converted


@pytest.mark.parametrize(
    ("name", "frames", "start"), [("long.avi", 120, 37.0), ("short.avi", 12, 0.0)]
)
def test_clip_converts_only_the_frames_it_keeps(
    clips_videos: Path, monkeypatch: pytest.MonkeyPatch, name: str, frames: int, start: float
) -> None:
    converted = _count_conversions(monkeypatch)
    indices = spread(start, min(60, frames), 16, frames)
    _on_the_fly(clips_videos, (32, 40)).read(ClipVideo(name, 0, frames, 30.0), indices)
    # The window holds 60 (or 12) frames: only the distinct sampled ones are converted, once.
    assert len(converted) == len(set(indices))
    assert len(set(converted)) == len(converted)


# --- Prediction's readers (data/video.py) convert only the frames their clips keep ----------


def _write_rotated(path: Path, num_frames: int = 45) -> Path:
    """H.264 (B-frames reorder) coded 64x48, displayed turned a quarter turn: portrait."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)
        for array in moving_square_frames(num_frames, seed=3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def predict_videos(clips_videos: Path, videos: Path) -> Path:
    """A 4 s AVI, a variable-frame-rate MKV and a rotated MP4, side by side."""
    _write_rotated(clips_videos / "rotated.mp4")
    (clips_videos / "vfr.mkv").write_bytes((videos / "vfr.mkv").read_bytes())
    return clips_videos


def _size(path: Path) -> tuple[int, int]:
    """The size prediction resizes `path` to for data.resize = (32, 40)."""
    info = probe(path)
    return target_size(info.height, info.width, (32, 40))


def _windows(video: InMemory | Chunked) -> list[Span]:
    """Clips of 10 frames covering the video, as predict plans them."""
    return cover(Span(0.0, float(video.video_frames)), 10.0)


@pytest.mark.parametrize("name", ["long.avi", "vfr.mkv", "rotated.mp4"])
def test_whole_video_clips_equal_a_full_decodes(
    predict_videos: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = predict_videos / name
    full = decode_video(path, size=_size(path)).frames
    converted = _count_conversions(monkeypatch)
    video = open_video(path, SimpleNamespace(resize=(32, 40)))  # type: ignore[arg-type]
    assert isinstance(video, InMemory)
    spans = _windows(video)
    used: set[int] = set()
    for span, clip in zip(spans, video.clips(spans, 4), strict=True):
        shown = video.shown[span.indices(4, video.video_frames)]
        np.testing.assert_array_equal(clip, full[shown])
        used.update(shown.tolist())
    # Only the frames some clip shows were converted, each once, out of all those decoded.
    assert len(converted) == len(used) < len(full)
    np.testing.assert_array_equal(video.frames, full)  # the rest, converted when asked for


@pytest.mark.parametrize("name", ["long.avi", "vfr.mkv"])
def test_chunked_clips_equal_a_full_decodes(
    predict_videos: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = predict_videos / name
    size = _size(path)
    full = decode_video(path, size=size)
    assert full.times is not None
    budget = 6 * 64 * 48 * 3  # six decoded 64x48 frames (the converted ones are smaller)
    converted = _count_conversions(monkeypatch)
    video = open_video(path, SimpleNamespace(resize=(32, 40)), budget)  # type: ignore[arg-type]
    assert isinstance(video, Chunked) and video.max_frames == 6
    spans = _windows(video)
    kept = 0
    for span, clip in zip(spans, video.clips(spans, 4), strict=True):
        wanted = np.asarray(span.indices(4, video.video_frames)) / video.fps
        assert clip is not None
        np.testing.assert_array_equal(clip, full.frames[nearest_frames(full.times, wanted)])
        kept += len(set(wanted.tolist()))
    assert len(converted) <= kept < len(full.frames)


def test_whole_video_converts_while_decoding_when_coded_frames_do_not_fit(
    predict_videos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = predict_videos / "long.avi"  # 120 frames: 3840 bytes converted, 9216 decoded
    full = decode_video(path, size=(32, 40)).frames
    converted = _count_conversions(monkeypatch)
    budget = 120 * 5000  # room for the converted frames only
    video = open_video(path, SimpleNamespace(resize=(32, 40)), budget)  # type: ignore[arg-type]
    assert isinstance(video, InMemory)
    assert len(converted) == 120  # every frame converted as it decoded: none held coded
    spans = _windows(video)
    for span, clip in zip(spans, video.clips(spans, 4), strict=True):
        np.testing.assert_array_equal(clip, full[video.shown[span.indices(4, 120)]])
    assert len(converted) == 120


def _window_clip(frames: int, start: float) -> tuple[np.ndarray, float, float, Pick]:
    """A 16-frame clip of a 2 s window at 30 fps: its times, window and `spaced_positions` pick."""
    times = np.asarray(spread(start, min(60, frames), 16, frames), dtype=np.float64) / 30

    def pick(window: np.ndarray, fps: float) -> np.ndarray:
        return spaced_positions(float(window[0]), fps, len(window), times)

    return times, max(0.0, times.min() - 0.5 / 30), times.max() + 0.5 / 30, pick


def test_clip_window_holds_only_the_frames_its_clip_picks(
    clips_videos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    was_held: list[bool] = []
    add = decode.Frames.add

    def recording(self, seconds, frame, convert, held=True):  # type: ignore[no-untyped-def]
        was_held.append(held)
        add(self, seconds, frame, convert, held)

    monkeypatch.setattr(decode.Frames, "add", recording)
    indices = spread(37.0, 60, 16, 120)
    clip = _on_the_fly(clips_videos, (32, 40)).read(ClipVideo("long.avi", 0, 120, 30.0), indices)
    # Every frame of the window from its first sampled frame to its last decodes (58), and
    # only the 16 sampled ones are held (and any after the last, should the window end early).
    assert len(was_held) == indices[-1] - indices[0] + 1 == 58
    assert sum(was_held) == len(set(indices)) == 16
    np.testing.assert_array_equal(
        clip.numpy(), decode_video(clips_videos / "long.avi", (32, 40)).frames[indices]
    )


def test_a_wrong_keep_guess_decodes_the_window_again(clips_videos: Path) -> None:
    path, size = clips_videos / "long.avi", (32, 40)
    times, start, end, pick = _window_clip(120, 37.0)
    expected = decode_window(path, size, start, end, None, pick).frames
    wrong = spaced_keep(times, 20.0)  # the video is 30 fps: most wanted frames are dropped
    np.testing.assert_array_equal(
        decode_window(path, size, start, end, None, pick, wrong).frames, expected
    )
