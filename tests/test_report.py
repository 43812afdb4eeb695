"""Every printed summary stays readable at 80 columns: no cell cut short with "…"."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from hmdbattn import report
from hmdbattn.config import Config
from hmdbattn.data.preprocess import PreprocessSummary, Problem
from hmdbattn.data.verify import Expected, VerifyResult, verify_dataset
from hmdbattn.engine.evaluate import EvalResult
from hmdbattn.engine.metrics import compute_metrics

ELLIPSIS = "…"
Render = Callable[[int], str]


@pytest.fixture
def render(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], Render]:
    """``render(show)(width)``: what `show()` prints on a results console `width` wide."""

    def bind(show: Callable[[], None]) -> Render:
        def at(width: int) -> str:
            out = io.StringIO()
            console = Console(file=out, width=width, color_system=None, legacy_windows=False)
            monkeypatch.setattr(report, "console", console)
            show()
            return out.getvalue()

        return at

    return bind


def run_results() -> dict[str, dict[str, object]]:
    """What `engine.train.summary` gives for two runs of a `--splits` training."""
    run = {
        "epochs": 30,
        "best_epoch": 27,
        "best": {"val_video_acc": 0.9464, "val_clip_acc": 0.9012},
        "last": {"train_loss": 0.0903, "val_loss": 0.2544, "clips_per_s": 123.4},
        "stop_reason": "early stop: no better video accuracy for 5 epochs",
    }
    return {"runs/synthetic-attn-1c1s-split1": run, "runs/synthetic-attn-1c1s-split2": run}


def eval_results(n: int) -> list[EvalResult]:
    """`n` evaluations of 4 videos of 3 classes, one per split."""
    logits = torch.tensor([[3.0, 0, 0], [0, 2, 0], [0, 0, 1], [1, 0, 0], [0, 0, 3]])
    metrics = compute_metrics(
        logits, torch.tensor([0, 1, 2, 3, 3]), torch.tensor([0, 1, 2, 0]), ["run", "walk", "jump"]
    )
    path = "runs/synthetic-attn-1c1s-split{}/best.pt"
    return [
        EvalResult(Path(path.format(k)), k, "test", metrics, 0.6931, [], False)
        for k in range(1, n + 1)
    ]


def preprocess_summary() -> PreprocessSummary:
    return PreprocessSummary(
        cache_dir=Path("data/synthetic/cache/frames-128x171"),
        total=804,
        ok=800,
        skipped=0,
        failed=2,
        missing=1,
        bytes=123_456_789,
        seconds=61.24,
        failed_files=[
            Problem("fade_in/Bob's_(home)_&_co-op!_fade_in_f_cm_np1_fr_goo_3.avi", "empty file"),
            Problem("grow/x.avi", "cannot decode: Invalid data found when processing input"),
        ],
        missing_files=[Problem("grow/ghost.avi", "listed in the split files but not in videos/")],
        warnings=[Problem("shrink/y.avi", "3 damaged frames skipped (repeated the previous one)")],
    )


def dataset_summary(tmp_path: Path) -> tuple[dict[str, Any], VerifyResult]:
    """A download whose verification failed (an empty root), with weights fetched."""
    result = verify_dataset(tmp_path, Expected())
    result.missing = [f"clap/video_{i}.avi" for i in range(12)]
    summary: dict[str, Any] = {
        "root": "data/hmdb51",
        "archives": [
            {"name": "test_train_splits.rar", "action": "downloaded", "md5": "15e6" * 8},
            {"name": "hmdb51_org.rar", "action": "present", "md5": "7b5d" * 8},
        ],
        "extracted": [
            {"archive": "test_train_splits.rar", "written": 153, "kept": 0, "skipped": False},
            {"archive": "hmdb51_org.rar", "written": 6000, "kept": 766, "skipped": False},
        ],
        "weights": "~/.cache/torch/hub/checkpoints/r2plus1d_18-91a641e6.pth",
    }
    return summary, result


def model_summary() -> dict[str, object]:
    params = {"cnn": 31_300_000, "attention": 2_100_000, "classifier": 26_163, "total": 0}
    return {
        "config": Config().model_dump(mode="json"),
        "params": params,
        "gmacs": 40.123,
        "token_grid": [4, 14, 14],
        "tokens": 784,
    }


def assert_readable(text: str, *cells: str) -> None:
    assert ELLIPSIS not in text, text
    for cell in cells:
        assert cell in text, f"{cell!r} not whole in:\n{text}"


def test_train_summary_at_80_columns(render: Callable[..., Render]) -> None:
    at = render(lambda: report.print_run_summary(run_results()))
    wide = at(200)
    assert "┃ run " in wide  # a wide terminal keeps the table
    assert ELLIPSIS not in wide
    narrow = at(80)
    assert_readable(
        narrow,
        "runs/synthetic-attn-1c1s-split1",
        "runs/synthetic-attn-1c1s-split2",
        "best video acc: 0.9464",
        "last train loss: 0.0903",
        "clips/s: 123.4",
        "stopped: early stop: no better video accuracy for 5 epochs",
    )
    assert max(map(len, narrow.splitlines())) <= 80


@pytest.mark.parametrize("checkpoints", [1, 3])
def test_eval_tables_at_80_columns(render: Callable[..., Render], checkpoints: int) -> None:
    results = eval_results(checkpoints)
    summary = {"video_top1": (0.75, 0.0), "clip_top1": (0.8, 0.0)} if checkpoints > 1 else {}
    narrow = render(lambda: report.print_eval(results, summary))(80)
    assert_readable(narrow, "split1/best.pt", "0.6931", "video_top1")
    if checkpoints == 1:
        assert "per class (mean softmax)" in narrow and "jump" in narrow
    else:  # one block per checkpoint, and one for the mean and standard deviation
        assert "mean ± std" in narrow and "0.7500 ± 0.0000" in narrow
        assert "split3/best.pt" in narrow and "split / subset: 3 / test" in narrow


def test_download_verification_at_80_columns(render: Callable[..., Render], tmp_path: Path) -> None:
    summary, result = dataset_summary(tmp_path)
    narrow = render(lambda: report.print_dataset_summary(summary, result))(80)
    assert_readable(
        narrow,
        "Archives",
        "15e6" * 8,
        "Verification",
        "classes (videos/ folders)",
        "DIFFERS",
        "hmdb51_org.rar: 6000 files written, 766 kept",
        "missing: videos/clap/video_9.avi",
        "... and 2 more missing",
        "Kinetics-400 weights: ~/.cache/torch/hub/checkpoints/r2plus1d_18-91a641e6.pth",
        "dataset root: data/hmdb51",
    )


def test_preprocess_summary_at_80_columns(render: Callable[..., Render]) -> None:
    narrow = render(lambda: report.print_preprocess_summary(preprocess_summary()))(80)
    assert_readable(
        narrow,
        "data/synthetic/cache/frames-128x171",
        "already cached",
        "123.5",
        "fade_in/Bob's_(home)_&_co-op!_fade_in_f_cm_np1_fr_goo_3.avi",
        "cannot decode: Invalid data found when processing input",
        "3 damaged frames skipped (repeated the previous one)",
    )


def test_synthetic_summary_at_80_columns(render: Callable[..., Render]) -> None:
    summary = {"root": "data/synthetic-source", "synthetic": {"classes": ["a"] * 8, "videos": 480}}
    narrow = render(lambda: report.print_dataset_summary(summary, None))(80)
    assert_readable(narrow, "synthetic dataset: 8 classes, 480 videos", "data/synthetic-source")


def test_model_summary_at_80_columns(render: Callable[..., Render]) -> None:
    narrow = render(lambda: report.print_model_summary(model_summary()))(80)
    assert_readable(narrow, "CNN parameters", "31.3M", "token grid (T', H', W')", "4 x 14 x 14")


def test_print_table_shapes(render: Callable[..., Render]) -> None:
    """Wide: a table. Narrow: a block per row (or per column), or key: value for two columns."""
    columns = ["name", "a long column header", "another long header"]
    rows = [["x", 1, 2.5], ["y", "", 4.5]]  # an empty cell is left out of the blocks
    assert "┃ name " in render(lambda: report.print_table("t", columns, rows))(80)
    by_row = render(lambda: report.print_table("t", columns, rows))(30)
    assert by_row.splitlines() == [
        "t",
        "x",
        "  a long column header: 1",
        "  another long header: 2.5",
        "y",
        "  another long header: 4.5",
    ]
    by_column = render(lambda: report.print_table("t", columns, rows, by_column=True))(30)
    assert by_column.splitlines() == [
        "t",
        "a long column header",
        "  x: 1",
        "another long header",
        "  x: 2.5",
        "  y: 4.5",
    ]
    pairs = render(lambda: report.print_table("t", ["", "value"], [("a long key name", "v")]))(12)
    assert pairs.splitlines() == ["t", "a long key name: v"]
