"""Predict the actions in video files with a trained checkpoint (``hmdbattn predict``).

Everything comes from the checkpoint: the model, the class names and the preprocessing (resize,
crop, frames per clip, clip duration, mean/std, evaluation crops), so no dataset or config file
is needed. The model is loaded once and used for every file.

Geometry. Frames are resized by swscale while decoding. Landscape and square frames go to
``data.resize`` (height, width), exactly as training resized every HMDB51 video. A portrait
frame keeps its aspect ratio instead: its width (the short side) becomes ``min(data.resize)``
and its height follows, so people and objects keep the scale and shape the model was trained
on rather than being squeezed into a landscape frame; the centre crop (``crop_size``, never
wider than the short side) then takes the middle of the picture. Portrait means portrait as
shown once decode.py turns frames upright by their display rotation (`probe` then reports the
upright size); while decode.py ignores rotation metadata, so does this module.

Windows. By default a video is cut exactly as ``hmdbattn eval`` cuts it (`clips.eval_windows`):
``clip_duration`` windows covering the video, each scored by one clip of ``num_frames`` frames.
With ``window`` seconds (and ``stride``, default the window) the video is scanned by windows of
that length every ``stride`` seconds, the last one ending at the end of the video; each window
is scored by the clips of ``clip_duration`` that cover it, placed as evaluation places them, so
the model always sees frames at the rate it was trained on. A video or window not longer than
one clip is a single clip over all of it, frames repeating (the short-video rule of clips.py).

Probabilities. A clip's are the softmax of its logits (mean over crops with ``eval_crops = 3``);
a window's the mean of its clips'; the video's the mean of its windows' (with the default
windows: the mean softmax over clips, as evaluation computes it). Consecutive windows with the
same top class form a segment of the timeline; a segment's edges lie halfway between the
centres of neighbouring windows, so the segments tile the video.

Decoding. A video whose frames fit ``memory_budget`` bytes at the target size is decoded once,
whole, and its windows use the number of frames decoding produced (as the frame cache does).
A longer video is read chunk by chunk (a run of consecutive clips per decode, from the keyframe
before it), so memory stays bounded whatever its length; clips past the end of a file that
stops early are left out, with a warning. Where decode.py reports each frame's timestamp
(`Decoded.times`), frames are picked by time, so a variable-frame-rate video is seen at a
constant rate (`constant_rate`); otherwise they are taken as evenly spaced at the stream's
rate, as training takes them. A file that cannot be decoded raises `DecodeError` from
`Predictor.predict`; `Predictor.predict_all` turns it into a result with an ``error`` and goes
on with the next file.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hmdbattn.config import Config, DataConfig, load_config
from hmdbattn.data.clips import spread, window_frames
from hmdbattn.data.decode import Decoded, DecodeError, decode_video, probe
from hmdbattn.data.transforms import VideoTransform
from hmdbattn.engine.checkpoint import load_checkpoint
from hmdbattn.errors import UserError
from hmdbattn.models.classifier import VideoClassifier, model_from_checkpoint

DEFAULT_TOP_K = 5
# Decoded frames held at once: 512 MiB is about 2 minutes at 128x171 and 30 fps.
MEMORY_BUDGET = 512 * 2**20
# Frame positions are floats (2 s at 29.97 fps is 59.94 frames): compare them with a tolerance.
_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Geometry and windows (pure functions)


def target_size(height: int, width: int, resize: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) frames of an upright `height` x `width` video are resized to.

    Landscape or square: `resize`, as in training. Portrait: the width becomes ``min(resize)``
    and the height keeps the video's aspect ratio (see the module docstring).
    """
    if height <= width:
        return (int(resize[0]), int(resize[1]))
    short = min(resize)
    return (max(short, round(short * height / width)), short)


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
        """The frame indices of a clip of `num_frames` frames over this span (`clips.spread`)."""
        return spread(self.start, self.length, num_frames, video_frames)


@dataclass(frozen=True)
class Window:
    """A window of a video and the clips that score it."""

    span: Span
    clips: tuple[Span, ...]


def cover(span: Span, clip: float, count: int = 0) -> list[Span]:
    """Clips of `clip` frames over `span`, placed as `clips.eval_windows` places them.

    `count` clips are spaced uniformly, the first starting where `span` starts and the last
    ending where it ends; ``count = 0`` takes ``ceil(length / clip)`` of them and ``count = 1``
    the centre one. A span not longer than a clip is one clip: the whole span.
    """
    if span.length <= clip:
        return [span]
    # The tolerance keeps a span of exactly k clips (up to float error) at k clips.
    count = count or max(1, math.ceil(span.length / clip - 1e-6))
    room = span.length - clip
    offsets = [room / 2] if count == 1 else [room * k / (count - 1) for k in range(count)]
    return [Span(span.start + offset, clip) for offset in offsets]


def slide(whole: Span, length: float, step: float) -> list[Span]:
    """Windows of `length` frames every `step` frames; the last one ends where `whole` ends."""
    if whole.length <= length + _EPS:
        return [whole]
    count = math.floor((whole.length - length) / step + _EPS) + 1
    spans = [Span(whole.start + k * step, length) for k in range(count)]
    if spans[-1].end < whole.end - _EPS:
        spans.append(Span(whole.end - length, length))
    return spans


def plan_windows(
    video_frames: int,
    fps: float,
    data: DataConfig,
    window: float | None = None,
    stride: float | None = None,
) -> list[Window]:
    """The windows of a video and their clips (see the module docstring).

    `window` and `stride` are seconds; without `window` the windows are evaluation's, one clip
    each. ``stride`` alone scans with windows of ``clip_duration``.
    """
    clip = window_frames(fps, data.clip_duration)
    whole = Span(0.0, float(video_frames))
    if window is None and stride is None:
        return [Window(c, (c,)) for c in cover(whole, clip, data.clips_per_video)]
    length = (window or data.clip_duration) * fps
    spans = slide(whole, length, (stride or window or data.clip_duration) * fps)
    return [Window(span, tuple(cover(span, clip))) for span in spans]


def check_windows(window: float | None, stride: float | None) -> None:
    """Raise UserError unless `window` and `stride` are positive seconds (or None)."""
    for name, value in (("--window", window), ("--stride", stride)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number of seconds, got {value}")


@dataclass
class Segment:
    """A stretch of the timeline whose windows share their top class."""

    start: float  # seconds
    end: float
    label: str
    confidence: float  # mean probability of `label` over the segment's windows

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "label": self.label,
            "confidence": self.confidence,
        }


def segments(
    spans: Sequence[tuple[float, float]],
    probabilities: np.ndarray,
    classes: Sequence[str],
    duration: float | None = None,
) -> list[Segment]:
    """Merge consecutive windows with the same top class into segments.

    `spans` are the windows' (start, end) seconds in time order and `probabilities` their
    (N, K) class probabilities. Each window answers for the time from halfway to the previous
    window's centre to halfway to the next one's; the first from 0, the last up to `duration`
    (default: the end of the last window).
    """
    if len(spans) != len(probabilities):
        raise ValueError(f"{len(spans)} windows but {len(probabilities)} rows of probabilities")
    if not spans:
        return []
    centres = [(a + b) / 2 for a, b in spans]
    edges = [0.0, *((x + y) / 2 for x, y in itertools.pairwise(centres))]
    edges.append(spans[-1][1] if duration is None else duration)
    top = probabilities.argmax(axis=1)
    out: list[Segment] = []
    first = 0
    for i in range(1, len(spans) + 1):
        if i == len(spans) or top[i] != top[first]:
            label = int(top[first])
            confidence = float(probabilities[first:i, label].mean())
            out.append(Segment(edges[first], edges[i], classes[label], confidence))
            first = i
    return out


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class WindowResult:
    """One window's time range and class probabilities."""

    start: float  # seconds
    end: float
    probabilities: np.ndarray  # (K,)


def ranked(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The `k` most probable classes (k clamped to the class count), most probable first."""
    order = np.argsort(-probabilities, kind="stable")[: max(1, min(k, len(classes)))]
    return [(classes[i], float(probabilities[i])) for i in order]


def _top_dicts(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[dict]:
    return [{"label": c, "probability": p} for c, p in ranked(probabilities, classes, k)]


@dataclass
class VideoPrediction:
    """What `Predictor` says about one file, or why it could not say anything."""

    path: Path
    classes: list[str]
    probabilities: np.ndarray | None = None  # (K,) mean softmax over the windows
    windows: list[WindowResult] = field(default_factory=list)
    duration: float = 0.0  # seconds decoded (or estimated, for a video read in chunks)
    clips: int = 0
    warning: str | None = None  # the file is damaged but frames were recovered
    error: str | None = None
    explanation: Path | None = None

    def top(self, k: int = DEFAULT_TOP_K) -> list[tuple[str, float]]:
        """The `k` most probable classes of the video with their probabilities."""
        if self.probabilities is None:
            return []
        return ranked(self.probabilities, self.classes, k)

    def timeline(self) -> list[Segment]:
        """Segments of consecutive windows sharing their top class."""
        if not self.windows:
            return []
        spans = [(w.start, w.end) for w in self.windows]
        probabilities = np.stack([w.probabilities for w in self.windows])
        return segments(spans, probabilities, self.classes, max(self.duration, spans[-1][1]))

    def to_dict(self, top_k: int = DEFAULT_TOP_K, windows: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; `windows` adds the per-window answers and the timeline."""
        if self.error is not None:
            return {"path": str(self.path), "error": self.error}
        assert self.probabilities is not None
        out: dict[str, Any] = {
            "path": str(self.path),
            "top_k": _top_dicts(self.probabilities, self.classes, top_k),
            "duration": self.duration,
            "num_windows": len(self.windows),
            "num_clips": self.clips,
            "warning": self.warning,
            "error": None,
        }
        if windows:
            out["windows"] = [self._window_dict(w, top_k) for w in self.windows]
            out["timeline"] = [s.to_dict() for s in self.timeline()]
        if self.explanation is not None:
            out["explanation"] = str(self.explanation)
        return out

    def _window_dict(self, window: WindowResult, top_k: int) -> dict[str, Any]:
        label, probability = ranked(window.probabilities, self.classes, 1)[0]
        top = _top_dicts(window.probabilities, self.classes, top_k)
        return {
            "start": window.start,
            "end": window.end,
            "label": label,
            "probability": probability,
            "top_k": top,
        }


# ---------------------------------------------------------------------------------------------
# Frames


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
                positions = np.rint((wanted - decoded.start) * decoded.fps).astype(np.int64)
            else:
                positions = nearest_frames(np.maximum.accumulate(times), wanted)
            yield decoded.frames[np.clip(positions, 0, len(decoded.frames) - 1)]

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
        try:
            return decode_video(self.path, self.size, start, end)
        except DecodeError:
            pass
        try:
            # Look a little earlier (no further than the memory budget allows) for the last
            # frames there are: clips that start before them still get an answer.
            limit = max(end, start + self.max_frames / self.fps)
            return decode_video(self.path, self.size, max(0.0, start - 1.0), limit)
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


# ---------------------------------------------------------------------------------------------
# The predictor


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _batches(items: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Predictor:
    """A trained model ready to predict video files: loaded once, used for many files."""

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        config: Config,
        device: torch.device | None = None,
        memory_budget: int = MEMORY_BUDGET,
    ) -> None:
        self.device = device or default_device()
        self.model = model.to(self.device).eval()
        self.classes = list(classes)
        self.config = config
        self.transform = VideoTransform.from_config(config.data, "eval")
        self.memory_budget = memory_budget

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device | None = None) -> Predictor:
        """The model of one of our checkpoints; anything else is refused with a UserError."""
        ckpt = load_checkpoint(Path(path))
        try:
            # The checkpoint's own config (evaluate.checkpoint_config without overrides),
            # without importing the evaluation machinery.
            config = load_config(None, None, base=ckpt["config"])
            classes = list(ckpt["classes"])
            model = model_from_checkpoint(ckpt, config)
        except (KeyError, TypeError, RuntimeError) as exc:
            reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise UserError(f"{path}: damaged checkpoint ({reason[:200]})") from None
        return cls(model, classes, config, device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from hmdbattn.engine.evaluate import autocast  # CUDA only: spares the CPU the import

        return autocast(self.device, self.config.train.amp)

    @torch.inference_mode()
    def score(self, clips: Iterable[np.ndarray]) -> np.ndarray:
        """Class probabilities of each (T, H, W, 3) uint8 clip, mean over crops: (N, K)."""
        rows = []
        for batch in _batches(clips, self.config.eval.batch_size):
            x = torch.from_numpy(np.stack(batch)).to(self.device)  # (B, T, H, W, 3) uint8
            x = self.transform(x)  # (B * views, 3, T, crop, crop)
            with self._autocast():
                logits = self.model(x).float()
            # (B * views, K) -> (B, views, K): a clip's crops are adjacent
            probs = logits.softmax(dim=-1).view(len(batch), self.transform.views, -1).mean(1)
            rows.append(probs.cpu().numpy())
        return np.concatenate(rows) if rows else np.empty((0, len(self.classes)), np.float32)

    def predict(
        self,
        path: Path,
        window: float | None = None,
        stride: float | None = None,
        explain: Path | None = None,
    ) -> VideoPrediction:
        """Predict one file (raises DecodeError); `explain` names a PNG to draw the map to."""
        check_windows(window, stride)
        path = Path(path)
        data = self.config.data
        video = open_video(path, data, self.memory_budget)
        plan = plan_windows(video.video_frames, video.fps, data, window, stride)
        clips = [clip for w in plan for clip in w.clips]
        probs = self._clip_probabilities(video, clips)  # (num_clips, K)
        windows = _window_results(plan, probs, video.fps)
        if not windows:
            raise DecodeError(video.warning or "no decodable frames")
        result = VideoPrediction(
            path,
            self.classes,
            np.stack([w.probabilities for w in windows]).mean(axis=0),
            windows,
            video.duration,  # read after scoring: a truncated long video knows it by then
            len(clips),
            video.warning,
        )
        if explain is not None:
            result.explanation = self._explain(video, clips, probs, result, explain)
        return result

    def _clip_probabilities(self, video: InMemory | Chunked, clips: list[Span]) -> np.ndarray:
        """(N, K) probabilities of every clip; NaN rows for clips past a truncated file's end."""
        found: list[int] = []

        def decodable() -> Iterator[np.ndarray]:
            for i, frames in enumerate(video.clips(clips, self.config.data.num_frames)):
                if frames is not None:
                    found.append(i)
                    yield frames

        probs = np.full((len(clips), len(self.classes)), np.nan, dtype=np.float32)
        scored = self.score(decodable())
        probs[found] = scored
        return probs

    def predict_all(
        self,
        paths: Sequence[Path],
        window: float | None = None,
        stride: float | None = None,
        explain: Sequence[Path | None] | None = None,
    ) -> Iterator[VideoPrediction]:
        """Predict every file in turn; a file that cannot be decoded gets an ``error``."""
        check_windows(window, stride)
        outputs = list(explain) if explain is not None else [None] * len(paths)
        for path, out in zip(paths, outputs, strict=True):
            try:
                yield self.predict(path, window, stride, out)
            except DecodeError as exc:
                yield VideoPrediction(Path(path), self.classes, error=str(exc))

    def _explain(
        self,
        video: InMemory | Chunked,
        clips: list[Span],
        probs: np.ndarray,
        result: VideoPrediction,
        out: Path,
    ) -> Path:
        """Draw the map of the clip that most supports the video's top class, to `out`."""
        from hmdbattn import explain  # PIL and drawing: only when asked for

        if not isinstance(self.model, VideoClassifier):
            raise UserError("explanations need an hmdbattn VideoClassifier")
        assert result.probabilities is not None
        target = int(result.probabilities.argmax())
        best = int(np.nanargmax(probs[:, target]))
        frames = next(video.clips([clips[best]], self.config.data.num_frames))
        assert frames is not None  # it decoded for scoring, so it decodes again
        found = explain.explain_clip(self.model, self.transform, frames, target, self.device)
        span = clips[best]
        title = (
            f"{self.classes[target]} {result.probabilities[target]:.2f} | clip "
            f"{span.start / video.fps:.1f}-{span.end / video.fps:.1f} s | {found.describe()}"
        )
        try:
            explain.write_png(explain.render(found, title), out)
        except OSError as exc:
            raise UserError(
                f"{out}: cannot write the explanation ({exc.strerror or exc})"
            ) from None
        return out


def _window_results(plan: list[Window], probs: np.ndarray, fps: float) -> list[WindowResult]:
    """Each window's mean probabilities over its clips; windows with no clip decoded drop out."""
    windows, first = [], 0
    for w in plan:
        rows = probs[first : first + len(w.clips)]  # (clips of the window, K)
        rows = rows[~np.isnan(rows[:, 0])]
        if len(rows):
            windows.append(WindowResult(w.span.start / fps, w.span.end / fps, rows.mean(axis=0)))
        first += len(w.clips)
    return windows


def explain_paths(videos: Sequence[Path], out: Path) -> list[Path]:
    """Where ``--explain OUT`` puts each video's picture.

    One video and OUT ending in ``.png`` (and not a directory): OUT itself. Otherwise OUT is a
    directory holding ``<stem>.explain.png`` per video (``<stem>-2.explain.png``... when two
    videos share a stem).
    """
    if out.suffix.lower() == ".png" and not out.is_dir():
        if len(videos) != 1:
            raise UserError(f"--explain {out}: give a directory when predicting several videos")
        return [out]
    taken: dict[str, int] = {}
    paths = []
    for video in videos:
        stem = Path(video).stem
        taken[stem] = taken.get(stem, 0) + 1
        suffix = "" if taken[stem] == 1 else f"-{taken[stem]}"
        paths.append(out / f"{stem}{suffix}.explain.png")
    return paths
