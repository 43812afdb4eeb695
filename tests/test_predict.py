"""`hmdbattn predict`: windows, timeline, containers, damaged files, checkpoints, explanations."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import TINY, tiny_overrides
from PIL import Image
from torch import nn
from videofiles import moving_square_frames, write_avi, write_vfr, write_video

from hmdbattn import load_config
from hmdbattn.checkpoint import load_checkpoint
from hmdbattn.cli.predict import explain_paths
from hmdbattn.data.clips import Span, eval_windows, slide
from hmdbattn.data.synthetic import render_clip, sample_look
from hmdbattn.data.video import Chunked, InMemory, constant_rate, open_video, target_size
from hmdbattn.engine.distributed import Runtime
from hmdbattn.engine.train import train
from hmdbattn.errors import UserError
from hmdbattn.explain import (
    attention_map,
    class_activation_map,
    explain_clip,
    self_attention_outputs,
    strip_size,
)
from hmdbattn.models.classifier import build_model
from hmdbattn.predict import Predictor, TorchScorer, VideoPrediction, WindowResult, plan_windows
from hmdbattn.timeline import segments

CPU = torch.device("cpu")
FPS = 15
# The proposed decode.py change adds these fields: frames upright by their display rotation,
# and each frame's timestamp (for variable frame rates).
VFR_MS = [0, 20, 40, 100, 200, 220, 240, 400, 500, 520, 540, 700, 900]


# ---------------------------------------------------------------------------------------------
# Fixtures: two tiny trained models and a folder of videos, good and bad


@pytest.fixture(scope="module")
def checkpoints(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """best.pt of a tiny Perceiver model and of a tiny pool-head model (one epoch each)."""
    out = tmp_path_factory.mktemp("runs")
    found = {}
    for name, extra in (("perceiver", {}), ("pool", {"model.head": "pool"})):
        overrides = tiny_overrides(tiny_dataset, out, **{"train.name": name, "train.epochs": 1})
        train(load_config(None, {**overrides, **extra}), out / name, Runtime(CPU), False)
        found[name] = out / name / "best.pt"
    return found


def _write_with_audio(path: Path, frames: np.ndarray) -> None:
    """H.264 video and an AAC audio track, interleaved, in MP4."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for i, array in enumerate(frames):
            container.mux(video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
            samples = np.sin(np.arange(1024) / 10 + i).astype(np.float32)[None]  # (1, 1024)
            sound = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 16000, i * 1024
            container.mux(audio.encode(sound))
        container.mux(video.encode())
        container.mux(audio.encode())


def _write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
            sound.sample_rate, sound.pts = 16000, i * 1024
            container.mux(stream.encode(sound))
        container.mux(stream.encode())


def _marked_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Grey frames with a red block in the top-left corner (shows which way is up)."""
    frames = np.full((num_frames, height, width, 3), 90, dtype=np.uint8)
    frames[:, : height // 4, : width // 4] = (250, 20, 20)
    return frames


def _write_rotated(path: Path) -> None:
    """Coded 64x48 landscape, displayed turned 90 degrees counter-clockwise (48x64 portrait)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)
        for array in _marked_frames(20, 48, 64):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good videos in several containers and codecs, and files that are not usable videos."""
    folder = tmp_path_factory.mktemp("predict_videos")
    frames = moving_square_frames(30)  # 2 s at 15 fps
    good = write_avi(folder / "good.avi", num_frames=30, fps=FPS)
    write_video(folder / "clip.mp4", frames, fps=FPS, codec="libx264")
    write_video(folder / "clip.mkv", frames, fps=FPS, codec="libx264")
    write_video(folder / "clip.mov", frames, fps=FPS, codec="mpeg4")
    if "libvpx-vp9" in av.codecs_available:
        write_video(folder / "clip.webm", frames, fps=FPS, codec="libvpx-vp9")
    _write_with_audio(folder / "with_audio.mp4", frames)
    write_vfr(folder / "vfr.mkv", VFR_MS)
    write_video(folder / "portrait.mp4", _marked_frames(20, 64, 48), fps=FPS, codec="libx264")
    _write_rotated(folder / "rotated.mp4")
    # Not usable: empty, text, audio only, random bytes, and a header with no frame after it.
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video\n" * 100, encoding="utf-8")
    _write_audio_only(folder / "audio.m4a")
    (folder / "corrupt.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    data = good.read_bytes()
    (folder / "no_frames.avi").write_bytes(data[: data.index(b"movi") + 4])
    return folder


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: object):
    """Run `hmdbattn predict ARGS` in this process: (exit code, stdout, stderr)."""
    from hmdbattn.cli import main

    monkeypatch.setattr(sys, "argv", ["hmdbattn", "predict", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code or 0, captured.out, captured.err


def _run(*args: object) -> subprocess.CompletedProcess:
    """Run `hmdbattn predict ARGS` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HMDBATTN_")}
    env["COLUMNS"] = "200"
    command = [sys.executable, "-m", "hmdbattn", "predict", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


# ---------------------------------------------------------------------------------------------
# Geometry and windows


def test_landscape_keeps_the_training_resize_and_portrait_keeps_its_aspect() -> None:
    assert target_size(240, 320, (128, 171)) == (128, 171)
    assert target_size(720, 1280, (128, 171)) == (128, 171)  # as training did: resize as is
    assert target_size(100, 100, (128, 171)) == (128, 171)
    assert target_size(1280, 720, (128, 171)) == (228, 128)  # short side 128, 9:16 kept
    assert target_size(64, 48, (24, 32)) == (32, 24)


@pytest.mark.parametrize("fps", [15.0, 29.97])
@pytest.mark.parametrize("clips_per_video", [0, 1, 3])
def test_default_windows_are_exactly_the_evaluation_windows(fps: float, clips_per_video: int):
    data = load_config(None, {**TINY, "data.clips_per_video": clips_per_video}).data
    for frames in (1, 5, 14, 15, 16, 29, 30, 31, 59, 60, 61, 100, 451):
        plan = plan_windows(frames, fps, data)
        ours = [w.clips[0].indices(data.num_frames, frames) for w in plan]
        theirs = eval_windows(frames, fps, data.clip_duration, data.num_frames, clips_per_video)
        assert ours == theirs, (frames, fps)
        assert all(len(w.clips) == 1 for w in plan)


def test_sliding_windows_cover_the_video_and_keep_the_clip_rate() -> None:
    spans = slide(Span(0, 100), 30, 20)
    assert [s.start for s in spans] == [0, 20, 40, 60, 70]  # the last one ends at the end
    assert spans[-1].end == 100
    assert slide(Span(0, 20), 30, 10) == [Span(0, 20)]  # shorter than a window: the whole video
    data = load_config(None, TINY).data  # clip_duration 1 s
    plan = plan_windows(90, 15.0, data, window=2.0, stride=1.0)  # 6 s video, 2 s windows
    assert len(plan) == 5 and plan[-1].span.end == 90
    # A 2 s window is scored by two 1 s clips that cover it: frames at the training rate.
    assert all(len(w.clips) == 2 and w.clips[0].length == 15 for w in plan)
    assert plan[0].clips[0].start == 0 and plan[0].clips[1].end == 30
    short = plan_windows(10, 15.0, data, window=2.0)  # shorter than a clip: one clip, repeats
    assert [w.clips for w in short] == [(Span(0, 10),)]


def test_segments_merge_windows_and_place_the_switch_within_a_stride() -> None:
    stride, length = 0.5, 1.0
    spans = [(k * stride, k * stride + length) for k in range(11)]  # 6 s video
    switch = 3.0
    probs = np.array(
        [[0.9, 0.1] if (a + b) / 2 < switch else [0.2, 0.8] for a, b in spans], dtype=np.float32
    )
    found = segments(spans, probs, ["a", "b"], duration=6.0)
    assert [s.label for s in found] == ["a", "b"]
    assert found[0].start == 0 and found[-1].end == 6.0 and found[0].end == found[1].start
    assert abs(found[0].end - switch) <= stride
    assert found[0].confidence == pytest.approx(0.9) and found[1].confidence == pytest.approx(0.8)
    # a b a: three segments tiling the video; a single window is a segment too
    probs[0] = [0.3, 0.7]
    assert [s.label for s in segments(spans, probs, ["a", "b"])] == ["b", "a", "b"]
    assert segments([], np.empty((0, 2)), ["a", "b"]) == []


def test_explain_paths() -> None:
    assert explain_paths([Path("a/x.mp4")], Path("out.png")) == [Path("out.png")]
    found = explain_paths([Path("a/x.mp4"), Path("b/x.avi"), Path("y.mkv")], Path("out"))
    assert found == [
        Path("out/x.explain.png"),
        Path("out/x-2.explain.png"),
        Path("out/y.explain.png"),
    ]
    with pytest.raises(UserError, match="directory"):
        explain_paths([Path("x.mp4"), Path("y.mp4")], Path("out.png"))


# ---------------------------------------------------------------------------------------------
# Files: containers, codecs, audio, frame rates, orientation


@pytest.mark.slow
def test_every_container_and_codec_is_answered(checkpoints: dict, videos: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoints["perceiver"], CPU)
    names = ["good.avi", "clip.mp4", "clip.mkv", "clip.mov", "with_audio.mp4", "vfr.mkv"]
    names += ["clip.webm"] if (videos / "clip.webm").exists() else []
    for result in predictor.predict_all([videos / n for n in names]):
        assert result.error is None, (result.path, result.error)
        assert result.probabilities is not None and len(result.probabilities) == 4
        assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        if result.path.name != "vfr.mkv":
            assert result.duration == pytest.approx(2.0), result.path
            assert len(result.windows) == 2


def test_variable_frame_rate_is_seen_at_a_constant_rate(videos: Path) -> None:
    data = load_config(None, TINY).data
    video = open_video(videos / "vfr.mkv", data)
    assert isinstance(video, InMemory) and len(video.frames) == len(VFR_MS)
    assert video.fps == 30  # the stream's rate; its 13 frames span 0.9 s
    assert video.video_frames == 28 and video.video_frames / video.fps == pytest.approx(0.93, 0.01)
    for tick, frame in enumerate(video.shown):  # the frame nearest each 1/30 s tick
        gaps = [abs(ms - tick * 1000 / 30) for ms in VFR_MS]
        assert gaps[frame] == min(gaps)
    plan = plan_windows(video.video_frames, video.fps, data, window=0.5, stride=0.25)
    assert [round(w.span.start / video.fps, 2) for w in plan] == [0, 0.25, 0.43]


def test_constant_rate_repeats_and_skips_frames_by_time() -> None:
    assert constant_rate(np.arange(5) / 10, 10).tolist() == [0, 1, 2, 3, 4]  # already constant
    assert constant_rate(np.array([0.0, 0.3, 0.4]), 10).tolist() == [0, 0, 1, 1, 2]
    assert constant_rate(np.array([0.0, 0.05, 0.1, 0.15, 0.2]), 10).tolist() == [0, 2, 4]
    assert constant_rate(np.array([0.5]), 10).tolist() == [0]
    # 29.97 fps in Matroska: timestamps rounded to whole milliseconds, up to 0.5 ms late.
    ntsc = np.round(np.arange(300) * 1001 / 30) / 1000
    assert constant_rate(ntsc, 30000 / 1001).tolist() == list(range(300))


def test_portrait_video_keeps_its_aspect_ratio(videos: Path) -> None:
    data = load_config(None, TINY).data  # resize (24, 32), crop 16
    video = open_video(videos / "portrait.mp4", data)
    assert isinstance(video, InMemory)
    assert video.frames.shape == (20, 32, 24, 3)  # short side 24, height 24 * 64 / 48
    red = (video.frames[0, ..., 0] > 180) & (video.frames[0, ..., 1] < 90)
    rows, cols = red.nonzero()
    assert rows.max() < 12 and cols.max() < 10  # the marker is still top-left


def test_rotated_video_comes_out_upright(videos: Path) -> None:
    data = load_config(None, TINY).data
    video = open_video(videos / "rotated.mp4", data)
    assert isinstance(video, InMemory)
    assert video.frames.shape == (20, 32, 24, 3)  # shown as portrait, so resized as one
    red = (video.frames[0, ..., 0] > 180) & (video.frames[0, ..., 1] < 90)
    rows, cols = red.nonzero()
    # A counter-clockwise quarter turn takes the coded top-left corner to the bottom-left.
    assert rows.min() >= 20 and cols.max() < 10


@pytest.mark.slow
def test_portrait_and_rotated_videos_are_answered(checkpoints: dict, videos: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoints["perceiver"], CPU)
    for result in predictor.predict_all([videos / "portrait.mp4", videos / "rotated.mp4"]):
        assert result.error is None and result.probabilities is not None


@pytest.mark.slow
def test_long_video_read_in_chunks_matches_decoding_it_whole(
    checkpoints: dict, tmp_path: Path
) -> None:
    path = write_avi(tmp_path / "long.avi", num_frames=90, fps=FPS)  # 6 s
    predictor = Predictor.from_checkpoint(checkpoints["perceiver"], CPU)
    whole = predictor.predict(path, window=1.0, stride=0.5)
    predictor.memory_budget = 20 * 24 * 32 * 3  # 20 frames at a time
    assert isinstance(open_video(path, predictor.data, predictor.memory_budget), Chunked)
    chunked = predictor.predict(path, window=1.0, stride=0.5)
    assert len(chunked.windows) == len(whole.windows) == 11
    for a, b in zip(chunked.windows, whole.windows, strict=True):
        assert (a.start, a.end) == (b.start, b.end)
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)


@pytest.mark.slow
def test_truncated_long_video_keeps_the_windows_before_the_cut(
    checkpoints: dict, tmp_path: Path
) -> None:
    data = write_avi(tmp_path / "long.avi", num_frames=90, fps=FPS).read_bytes()  # 6 s
    movi = data.index(b"movi")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: movi + (len(data) - movi) // 2])  # the header still says 90 frames
    predictor = Predictor.from_checkpoint(checkpoints["perceiver"], CPU)
    predictor.memory_budget = 20 * 24 * 32 * 3
    result = predictor.predict(cut, window=1.0, stride=1.0)
    assert result.warning is not None and result.warning.startswith("truncated: no frame")
    assert 2 <= len(result.windows) < 6  # the windows after the cut are left out
    assert [w.start for w in result.windows] == list(range(len(result.windows)))
    assert result.duration == pytest.approx(result.windows[-1].end, abs=0.5)


# ---------------------------------------------------------------------------------------------
# Bad inputs and refused checkpoints


@pytest.mark.slow
def test_bad_files_get_one_line_each_and_the_rest_is_answered(
    checkpoints: dict, videos: Path
) -> None:
    bad = {
        "missing.mp4": "file not found",
        "empty.mp4": "empty file",
        "text.mp4": "not a video",
        "audio.m4a": "no video stream",
        "corrupt.avi": "not a video",
        "no_frames.avi": "no decodable frames",
    }
    files = [videos / "good.avi", *(videos / name for name in bad), videos / "clip.mp4"]
    done = _run(*files, "--checkpoint", checkpoints["perceiver"], "--json")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == len(bad), lines
    for line, (name, reason) in zip(lines, bad.items(), strict=True):
        assert str(videos / name) in line and reason in line, line
    results = json.loads(done.stdout)["results"]
    assert [Path(r["path"]).name for r in results] == [f.name for f in files]
    assert results[0]["error"] is None and results[0]["top_k"]
    assert results[-1]["error"] is None and results[-1]["top_k"]
    assert all(bad[Path(r["path"]).name] in r["error"] for r in results[1:-1])


@pytest.mark.slow
def test_bad_window_is_one_line(monkeypatch, capsys, checkpoints: dict, videos: Path) -> None:
    code, out, err = _cli(
        monkeypatch, capsys, videos / "good.avi", "--checkpoint", checkpoints["pool"],
        "--window", "-1",
    )  # fmt: skip
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "--window must be a positive number" in err


@dataclasses.dataclass
class Payload:
    """Pickled code: unpickling it would create `marker`."""

    marker: str

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused_and_nothing_runs(
    tmp_path: Path, videos: Path
) -> None:
    marker = tmp_path / "code_ran"
    bad = tmp_path / "evil.pt"
    torch.save({"format": "hmdbattn-checkpoint", "payload": Payload(str(marker))}, bad)
    done = _run(videos / "good.avi", "--checkpoint", bad)
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "refused" in lines[0]
    assert not marker.exists()


def test_foreign_checkpoints_are_refused(monkeypatch, capsys, tmp_path: Path, videos: Path):
    state_dict = tmp_path / "weights.pt"
    torch.save(nn.Linear(2, 2).state_dict(), state_dict)
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "hmdbattn-checkpoint", "version": 1}, crafted)
    for path, reason in ((state_dict, "not an hmdbattn checkpoint"), (crafted, "damaged")):
        code, out, err = _cli(monkeypatch, capsys, videos / "good.avi", "--checkpoint", path)
        assert code == 1 and out == "", err
        assert len(err.strip().splitlines()) == 1 and reason in err and str(path) in err


# ---------------------------------------------------------------------------------------------
# Output


@pytest.mark.slow
def test_json_output(monkeypatch, capsys, checkpoints: dict, videos: Path) -> None:
    code, out, err = _cli(
        monkeypatch, capsys, videos / "good.avi", videos / "with_audio.mp4",
        "--checkpoint", checkpoints["perceiver"], "--json", "--top-k", "2",
        "--window", "1", "--stride", "0.5",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["checkpoint"] == str(checkpoints["perceiver"])
    assert len(data["results"]) == 2
    for result in data["results"]:
        assert result["error"] is None and result["warning"] is None
        assert [set(t) for t in result["top_k"]] == [{"label", "probability"}] * 2
        probs = [t["probability"] for t in result["top_k"]]
        assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
        assert result["num_windows"] == len(result["windows"]) == 3  # 2 s: 0-1, 0.5-1.5, 1-2
        assert [(w["start"], w["end"]) for w in result["windows"]] == [(0, 1), (0.5, 1.5), (1, 2)]
        assert {"label", "probability", "top_k"} <= set(result["windows"][0])
        timeline = result["timeline"]
        assert timeline[0]["start"] == 0 and timeline[-1]["end"] == pytest.approx(2.0)
        assert all(set(s) == {"start", "end", "label", "confidence"} for s in timeline)


@pytest.mark.slow
def test_table_output_and_top_k_clamped(
    monkeypatch, capsys, checkpoints: dict, videos: Path
) -> None:
    code, out, _ = _cli(
        monkeypatch, capsys, videos / "good.avi", "--checkpoint", checkpoints["pool"],
        "--top-k", "10",
    )  # fmt: skip
    assert code == 0 and "probability" in out
    classes = load_checkpoint(checkpoints["pool"])["classes"]
    assert len(classes) == 4 and all(name in out for name in classes)
    code, out, _ = _cli(
        monkeypatch, capsys, videos / "good.avi", "--checkpoint", checkpoints["pool"],
        "--top-k", "10", "--json",
    )  # fmt: skip
    assert len(json.loads(out)["results"][0]["top_k"]) == 4  # 10 asked, 4 classes


LONG_NAME = "April_09_brush_hair_u_nm_np1_ba_goo_0_and_a_few_more_words_of_name.avi"


def _narrow_lines(out: str, path: Path) -> list[str]:
    """The lines of `out`, checked to fit 80 columns except a line that is `path` alone."""
    lines = out.splitlines()
    assert str(path) in lines, out  # the name whole, on a line of its own
    assert all(len(line) <= 80 for line in lines if line != str(path)), out
    return lines


def test_table_output_fits_80_columns(monkeypatch, capsys) -> None:
    from hmdbattn.cli.predict import _print_result

    classes = ["brush_hair", "cartwheel", "climb_stairs", "swing_baseball"]
    probs = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    windows = [WindowResult(0.0, 1.0, probs[0]), WindowResult(0.5, 1.5, probs[1])]
    path = Path("videos") / LONG_NAME  # 78 columns: with its duration it takes more than 80
    result = VideoPrediction(path, classes, probs.mean(0), windows, 1.5, 2)
    result.explanation = Path("out/short.explain.png")
    monkeypatch.setenv("COLUMNS", "80")
    _print_result(result, 5, timeline=True)
    lines = _narrow_lines(capsys.readouterr().out, path)
    assert lines[1] == "1.5 s, 2 window(s)"  # the duration on the next line
    assert all(name in "".join(lines) for name in classes)  # class names never cut
    assert lines[-1] == f"explanation: {result.explanation}"
    monkeypatch.setenv("COLUMNS", "200")
    _print_result(result, 5, timeline=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path} (1.5 s, 2 window(s))"  # wide enough: one heading line


@pytest.mark.slow
def test_predict_at_80_columns(monkeypatch, capsys, checkpoints: dict, tmp_path: Path) -> None:
    video = write_avi(tmp_path / LONG_NAME, num_frames=30, fps=FPS)
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = _cli(
        monkeypatch, capsys, video, "--checkpoint", checkpoints["perceiver"],
        "--window", "1", "--stride", "0.5",
    )  # fmt: skip
    assert code == 0, err
    lines = _narrow_lines(out, video)
    assert lines[1] == "2.0 s, 3 window(s)" and "probability" in lines[3]
    assert "timeline" in out


# ---------------------------------------------------------------------------------------------
# The timeline on a video that switches from one class to another


class MeanColour(nn.Module):
    """A stand-in model that is right by construction: red clips are class 0, blue clips 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, h, w) normalised
        red, blue = x[:, 0].mean(dim=(1, 2, 3)), x[:, 2].mean(dim=(1, 2, 3))
        return 10 * torch.stack([red - blue, blue - red], dim=1)  # (B, 2)


def _clip_on(label: str, colour: tuple[int, int, int], seed: int) -> np.ndarray:
    """3 s of the synthetic class `label` (64x48, 15 fps) on a plain background of `colour`."""
    rng = np.random.default_rng(seed)
    look = sample_look(rng, 64, 48)
    background = np.empty_like(look.background)
    background[:] = colour
    look = dataclasses.replace(look, background=background)
    return render_clip(label, rng, 3 * FPS, (64, 48), look=look)


def test_timeline_finds_the_switch_of_a_concatenated_video(tmp_path: Path) -> None:
    # The tiny trained model is not accurate enough to check a boundary against, so the model
    # is a stand-in that reads the clips' colour; everything else (decoding, windows, clips,
    # transform, batching, merging) is the real pipeline.
    first, second = _clip_on("move_right", (200, 40, 40), 1), _clip_on("grow", (40, 40, 200), 2)
    path = write_video(tmp_path / "two.mp4", np.concatenate([first, second]), fps=FPS)
    switch, stride = 3.0, 0.5
    config = load_config(None, TINY)
    classes = ["red_move_right", "blue_grow"]
    predictor = Predictor(TorchScorer(MeanColour(), classes, config.data, CPU))
    result = predictor.predict(path, window=1.0, stride=stride)
    timeline = result.timeline()
    assert [s.label for s in timeline] == ["red_move_right", "blue_grow"]
    assert abs(timeline[0].end - switch) <= stride
    assert timeline[0].start == 0 and timeline[-1].end == pytest.approx(6.0)
    assert min(s.confidence for s in timeline) > 0.9


# ---------------------------------------------------------------------------------------------
# Explanations


def _is_png(path: Path, size: tuple[int, int]) -> bool:
    with Image.open(path) as image:
        image.load()  # decodes every byte: a truncated file fails here
        return image.format == "PNG" and image.size == size


@pytest.mark.slow
def test_explain_writes_pngs_for_both_heads(
    monkeypatch, capsys, checkpoints: dict, videos: Path, tmp_path: Path
) -> None:
    size = strip_size(TINY["data.num_frames"], TINY["data.crop_size"])
    out = tmp_path / "maps"
    code, stdout, err = _cli(
        monkeypatch, capsys, videos / "good.avi", videos / "portrait.mp4",
        "--checkpoint", checkpoints["perceiver"], "--explain", out,
    )  # fmt: skip
    assert code == 0, err
    for stem in ("good", "portrait"):
        assert _is_png(out / f"{stem}.explain.png", size)
        assert f"explanation: {out / stem}.explain.png" in stdout
    single = tmp_path / "pool.png"
    code, stdout, err = _cli(
        monkeypatch, capsys, videos / "clip.mp4", "--checkpoint", checkpoints["pool"],
        "--explain", single, "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["results"][0]["explanation"] == str(single)
    assert _is_png(single, size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps", "pool.png"]  # no temp files


@pytest.mark.slow
def test_map_kinds_follow_the_head(checkpoints: dict, videos: Path) -> None:
    clip = moving_square_frames(4, 24, 32)
    for name, kind in (("perceiver", "attention"), ("pool", "cam")):
        predictor = Predictor.from_checkpoint(checkpoints[name], CPU)
        scorer = predictor.scorer
        assert isinstance(scorer, TorchScorer)
        found = explain_clip(scorer.model, scorer.transform, clip, 0)  # type: ignore[arg-type]
        assert found.kind == kind
        assert found.frames.shape == (4, 16, 16, 3) and found.heat.shape == (4, 16, 16)
        assert found.heat.min() == 0.0 and found.heat.max() == 1.0


def _features(model: nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, TINY["data.num_frames"], 16, 16)
    return model.features(x)  # type: ignore[operator]


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax"])
def test_cam_of_the_pool_head_adds_up_to_the_logit(pool) -> None:
    torch.manual_seed(0)
    config = load_config(None, {**TINY, "model.head": "pool", "model.pool": pool})
    model = build_model(config, 4).eval()
    with torch.no_grad():
        features = _features(model)  # (2, C, T', H', W')
        cam = class_activation_map(model.head, features, 2)  # (2, T', H', W')
        logits = model.head(features)
    bias = model.head.classifier.fc.bias[2]  # type: ignore[index]
    torch.testing.assert_close(cam.mean(dim=(1, 2, 3)) + bias, logits[:, 2])


def test_perceiver_maps_attention_and_cam_without_cross_attention() -> None:
    torch.manual_seed(0)
    model = build_model(load_config(None, TINY), 4).eval()
    with torch.no_grad():
        features = _features(model)
        weights = attention_map(model.head, features)  # type: ignore[arg-type]
    assert weights.shape == (2, *features.shape[2:])
    # The mean over latents and heads of distributions over the tokens is one too.
    torch.testing.assert_close(weights.sum(dim=(1, 2, 3)), torch.ones(2))
    no_cross = build_model(load_config(None, {**TINY, "model.cross_layers": 0}), 4).eval()
    with torch.no_grad():
        features = _features(no_cross)
        cls, tokens = self_attention_outputs(no_cross.head, features)  # type: ignore[arg-type]
        assert cls is not None and tokens.shape[1] == np.prod(features.shape[2:])
        # The replayed path is the head's own: its CLS output gives the head's logits.
        torch.testing.assert_close(no_cross.head.classifier(cls), no_cross.head(features))
        cam = class_activation_map(no_cross.head, features, 1)
    assert cam.shape == (2, *features.shape[2:])
