"""`hmdbattn predict`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.cells import cell_len

from hmdbattn.cli import app
from hmdbattn.cli.common import JsonOption
from hmdbattn.errors import UserError
from hmdbattn.report import console, err_console, print_json, table

if TYPE_CHECKING:
    from hmdbattn.predict import VideoPrediction

DEFAULT_TOP_K = 5  # hmdbattn.predict.DEFAULT_TOP_K, repeated so --help needs no torch import
MAX_WINDOWS = 10_000  # hmdbattn.predict.MAX_WINDOWS, likewise


@app.command("predict")
def predict(
    videos: list[Path] = typer.Argument(
        ..., help="Video files (anything FFmpeg decodes).", show_default=False
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="A checkpoint of `hmdbattn train` (best.pt / last.pt).",
        show_default=False,
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        help="Instead of --checkpoint: a model of `hmdbattn export` (.onnx runs on ONNX "
        "Runtime without torch; .torchscript.pt), its JSON beside it.",
        show_default=False,
    ),
    top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", min=1, help="Classes to list per video."),
    window: float | None = typer.Option(
        None, "--window", help="Seconds per window: per-window predictions and a timeline."
    ),
    stride: float | None = typer.Option(
        None,
        "--stride",
        help="Seconds between window starts (default: the window); at least one frame, and at "
        f"most {MAX_WINDOWS:,} windows per video.",
    ),
    explain: Path | None = typer.Option(
        None,
        "--explain",
        help="Draw where the model looks: a directory (STEM.explain.png per video), "
        "or a .png file for a single video.",
    ),
    json_out: bool = JsonOption,
) -> None:
    """Predict the action in video files with a trained checkpoint or an exported model.

    Class names and preprocessing come from the checkpoint, or from the JSON beside a model of
    `hmdbattn export` (--model). The video-level answer is the mean
    softmax over windows: by default the evaluation windows (clip_duration each, covering the
    video); --window/--stride scan the video and add a timeline. A file that cannot be read is
    reported on stderr and the others are still answered; the exit code is then 1.
    """
    from hmdbattn.predict import Predictor, check_windows

    _check_model_options(checkpoint, model, explain)
    check_windows(window, stride)
    outputs = explain_paths(videos, explain) if explain is not None else None
    if model is not None:
        predictor = Predictor.from_export(model)
    else:
        assert checkpoint is not None  # _check_model_options: one of the two
        predictor = Predictor.from_checkpoint(checkpoint)
    timeline = window is not None or stride is not None
    results = []
    for result in predictor.predict_all(videos, window, stride, outputs):
        results.append(result)
        _report_problems(result)
        if not json_out and result.error is None:
            _print_result(result, top_k, timeline)
    if json_out:
        rows = [r.to_dict(top_k, windows=timeline) for r in results]
        source = {"model": str(model)} if model is not None else {"checkpoint": str(checkpoint)}
        print_json({**source, "results": rows})
    if any(r.error is not None for r in results):
        raise typer.Exit(1)


def _check_model_options(checkpoint: Path | None, model: Path | None, explain: Path | None):
    """Exactly one of --checkpoint and --model; --explain only with a checkpoint."""
    if (checkpoint is None) == (model is None):
        raise UserError(
            "give --checkpoint (a checkpoint of `hmdbattn train`) or --model (a model of "
            "`hmdbattn export`): " + ("not both" if model is not None else "neither was given")
        )
    if model is not None and explain is not None:
        raise UserError("--explain needs --checkpoint: maps are drawn from the PyTorch model")


def _report_problems(result: VideoPrediction) -> None:
    """One line on stderr per failed file (and per damaged but usable one)."""
    if result.error is not None:
        line, style = f"error: {result.path}: {result.error}", "bold red"
    elif result.warning is not None:
        line, style = f"warning: {result.path}: {result.warning}", "yellow"
    else:
        return
    err_console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)


def _print_result(result: VideoPrediction, top_k: int, timeline: bool) -> None:
    """The top classes (and the timeline) of one file as tables on stdout.

    The file name heads the tables on a line of its own that rich never breaks (a table title
    is wrapped to the table's width, mid-name); when the name and its duration do not fit the
    terminal together, the duration goes on the next line.
    """
    facts = f"{result.duration:.1f} s, {len(result.windows)} window(s)"
    heading = f"{result.path} ({facts})"
    for line in [heading] if cell_len(heading) <= console.width else [str(result.path), facts]:
        _print_line(line)
    rows = [(rank, label, p) for rank, (label, p) in enumerate(result.top(top_k), start=1)]
    console.print(table(None, ("#", "class", "probability"), rows))
    if timeline:
        segments = [(s.start, s.end, s.label, s.confidence) for s in result.timeline()]
        columns = ("start s", "end s", "class", "confidence")
        console.print(table("timeline", columns, segments))
    if result.explanation is not None:
        _print_line(f"explanation: {result.explanation}")


def _print_line(line: str) -> None:
    """`line` on stdout as it is: no markup, no highlighting, never wrapped by rich."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


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
