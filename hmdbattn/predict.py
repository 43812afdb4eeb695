"""Predict the actions in video files with a trained checkpoint (``hmdbattn predict``).

Everything comes from the checkpoint, or from the JSON beside an exported model: the model, the
class names and the preprocessing (resize, crop, frames per clip, clip duration, mean/std,
evaluation crops), so no dataset or config file is needed. The model is loaded once and used for
every file. It is a `Scorer`, the one part that differs between kinds of model: `TorchScorer`
for a checkpoint (or a TorchScript export), `deploy.runtime.OnnxScorer` for an ONNX export;
windows, clips, results and timeline are this module's for all of them, and this module loads
torch only when a PyTorch model is used. Reading the videos (geometry,
whole or chunked decoding, variable frame rates) is `data.video`'s; the timeline of segments
is `timeline`'s; the explanation pictures are `explain`'s.

Windows. By default a video is cut exactly as ``hmdbattn eval`` cuts it (`clips.eval_windows`):
``clip_duration`` windows covering the video, each scored by one clip of ``num_frames`` frames.
With ``window`` seconds (and ``stride``, default the window) the video is scanned by windows of
that length every ``stride`` seconds, the last one ending at the end of the video (`clips.slide`);
each window is scored by the clips of ``clip_duration`` that cover it, placed as evaluation places
them (`clips.cover`), so the model always sees frames at the rate it was trained on. A video or
window not longer than one clip is a single clip over all of it, frames repeating (the short-video
rule of clips.py). A window or stride shorter than one frame of the video, or a scan of more than
`MAX_WINDOWS` windows, is refused with a `WindowError` saying the smallest usable value.

Probabilities. A clip's are the softmax of its logits (mean over crops with ``eval_crops = 3``);
a window's the mean of its clips'; the video's the mean of its windows' (with the default
windows: the mean softmax over clips, as evaluation computes it). Consecutive windows with the
same top class form a segment of the timeline (`timeline.segments`).

Errors. A file that cannot be decoded raises `DecodeError` from `Predictor.predict`;
`Predictor.predict_all` turns it into a result with an ``error`` and goes on with the next
file; clips past the end of a file that stops early are left out, with a warning.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hmdbattn.config import DataConfig, load_config
from hmdbattn.data.clips import Span, cover, slide, slide_count, window_frames
from hmdbattn.data.decode import DecodeError
from hmdbattn.data.video import MEMORY_BUDGET, Chunked, InMemory, open_video
from hmdbattn.errors import UserError
from hmdbattn.timeline import Segment, segments

if TYPE_CHECKING:  # torch is imported where a PyTorch model is used, see TorchScorer
    import torch
    from torch import nn

DEFAULT_TOP_K = 5
# Windows of one video at most: a timeline of hours of video at a one-second stride fits, while
# a stride typed by mistake (1e-6 s) is refused before it makes millions of windows.
MAX_WINDOWS = 10_000


# ---------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class Window:
    """A window of a video and the clips that score it."""

    span: Span
    clips: tuple[Span, ...]


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
    step = (stride or window or data.clip_duration) * fps
    _check_scan(video_frames, fps, length, step, window is not None)
    spans = slide(whole, length, step)
    return [Window(span, tuple(cover(span, clip))) for span in spans]


class WindowError(UserError):
    """``--window`` / ``--stride`` do not suit a video: below one frame, or too many windows."""


def _check_scan(video_frames: int, fps: float, length: float, step: float, window: bool) -> None:
    """Raise WindowError unless windows of `length` frames every `step` frames are usable.

    A window or stride shorter than one frame would only repeat the same frames; the count is
    checked before any window is made. The smallest usable value is given, rounded up.
    """
    frame = 1 / fps
    for option, frames, given in (("--window", length, window), ("--stride", step, True)):
        if given and frames < 1 - 1e-6:
            raise WindowError(
                f"{option} {frames / fps:g} s is shorter than one frame of this video "
                f"({fps:g} fps): use {option} {_round_up(frame)} or more"
            )
    count = slide_count(video_frames, length, step)
    if count > MAX_WINDOWS:
        smallest = (video_frames - length) / (MAX_WINDOWS - 2) / fps  # then count <= the cap
        raise WindowError(
            f"--stride {step / fps:g} s makes {count:,} windows over this {video_frames / fps:.1f}"
            f" s video, more than {MAX_WINDOWS:,}: use --stride {_round_up(smallest)} or more"
        )


def _round_up(seconds: float) -> str:
    """`seconds` rounded up to 4 significant digits, as text (so the value shown is usable)."""
    scale = 10.0 ** (math.floor(math.log10(seconds)) - 3)
    return f"{math.ceil(seconds / scale - 1e-9) * scale:.4g}"


def check_windows(window: float | None, stride: float | None) -> None:
    """Raise UserError unless `window` and `stride` are positive seconds (or None)."""
    for name, value in (("--window", window), ("--stride", stride)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number of seconds, got {value}")


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
# Scorers: the one part that differs between a checkpoint and an exported model


class Scorer(Protocol):
    """Turns a batch of clips into class probabilities; everything else is `Predictor`'s.

    `TorchScorer` runs a PyTorch model (a checkpoint's, or a TorchScript export);
    `hmdbattn.deploy.runtime.OnnxScorer` an ONNX Runtime session, without torch.
    """

    classes: list[str]
    data: DataConfig  # the clip geometry: frames, duration, resize, crops, mean / std
    batch_size: int  # clips per call of `probabilities`

    def probabilities(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """(B, K) probabilities of B (T, H, W, 3) uint8 clips, mean softmax over crops."""
        ...


class TorchScorer:
    """A PyTorch model as a `Scorer`: the evaluation transform, a forward, softmax over crops.

    torch is imported here rather than at the top of the module, so that predicting with an
    ONNX export (which shares the rest of this module) never loads it.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        data: DataConfig,
        device: torch.device | None = None,
        batch_size: int = 8,
        amp: str = "off",
    ) -> None:
        import torch

        from hmdbattn.data.transforms import VideoTransform

        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.classes = list(classes)
        self.data = data
        self.batch_size = batch_size
        self.amp = amp
        self.transform = VideoTransform.from_config(data, "eval")

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device | None = None) -> TorchScorer:
        """The model of one of our checkpoints; anything else is refused with a UserError."""
        from hmdbattn.checkpoint import load_checkpoint
        from hmdbattn.models.classifier import model_from_checkpoint

        ckpt = load_checkpoint(Path(path))
        try:
            # The checkpoint's own config (evaluate.checkpoint_config without overrides),
            # without importing the evaluation machinery.
            config = load_config(None, None, base=ckpt["config"], base_name=str(path))
            classes = list(ckpt["classes"])
            model = model_from_checkpoint(ckpt, config, path)
        except (KeyError, TypeError, RuntimeError) as exc:
            reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise UserError(f"{path}: damaged checkpoint ({reason[:200]})") from None
        return cls(model, classes, config.data, device, config.eval.batch_size, config.train.amp)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from hmdbattn.engine.evaluate import autocast  # CUDA only: spares the CPU the import

        return autocast(self.device, self.amp)

    def probabilities(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """(B, K) probabilities of B (T, H, W, 3) uint8 clips, mean softmax over crops."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.stack(clips)).to(self.device)  # (B, T, H, W, 3) uint8
            x = self.transform(x)  # (B * views, 3, T, crop, crop)
            with self._autocast():
                logits = self.model(x).float()
            # (B * views, K) -> (B, views, K): a clip's crops are adjacent
            probs = logits.softmax(dim=-1).view(len(clips), self.transform.views, -1).mean(1)
            return probs.cpu().numpy()


# ---------------------------------------------------------------------------------------------
# The predictor


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
    """A model ready to predict video files: loaded once, used for many files.

    The model is a `Scorer`: a checkpoint's (`from_checkpoint`) or an export's (`from_export`);
    windows, clips, results and the timeline are the same for both.
    """

    def __init__(self, scorer: Scorer, memory_budget: int = MEMORY_BUDGET) -> None:
        self.scorer = scorer
        self.memory_budget = memory_budget

    @property
    def classes(self) -> list[str]:
        return self.scorer.classes

    @property
    def data(self) -> DataConfig:
        return self.scorer.data

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device | None = None) -> Predictor:
        """The model of one of our checkpoints; anything else is refused with a UserError."""
        return cls(TorchScorer.from_checkpoint(path, device))

    @classmethod
    def from_export(cls, path: Path) -> Predictor:
        """A model `hmdbattn export` wrote (ONNX or TorchScript); anything else is refused."""
        from hmdbattn.deploy.runtime import load_scorer

        return cls(load_scorer(Path(path)))

    def score(self, clips: Iterable[np.ndarray]) -> np.ndarray:
        """Class probabilities of each (T, H, W, 3) uint8 clip, mean over crops: (N, K)."""
        rows = [self.scorer.probabilities(b) for b in _batches(clips, self.scorer.batch_size)]
        return np.concatenate(rows) if rows else np.empty((0, len(self.classes)), np.float32)

    def predict(
        self,
        path: Path,
        window: float | None = None,
        stride: float | None = None,
        explain: Path | None = None,
    ) -> VideoPrediction:
        """Predict one file; `explain` names a PNG to draw the map to.

        Raises DecodeError for a file that cannot be read and WindowError when `window` /
        `stride` do not suit its frame rate or length.
        """
        check_windows(window, stride)
        path = Path(path)
        data = self.data
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
            for i, frames in enumerate(video.clips(clips, self.data.num_frames)):
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
            except (DecodeError, WindowError) as exc:
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
        from hmdbattn.models.classifier import VideoClassifier

        scorer = self.scorer
        if not isinstance(scorer, TorchScorer) or not isinstance(scorer.model, VideoClassifier):
            raise UserError("--explain needs --checkpoint: maps are drawn from the PyTorch model")
        assert result.probabilities is not None
        target = int(result.probabilities.argmax())
        best = int(np.nanargmax(probs[:, target]))
        frames = next(video.clips([clips[best]], self.data.num_frames))
        assert frames is not None  # it decoded for scoring, so it decodes again
        found = explain.explain_clip(scorer.model, scorer.transform, frames, target, scorer.device)
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
