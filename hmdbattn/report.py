"""How results look: rich consoles, progress bars, tables, markdown and JSON.

Results go to stdout (`console`); progress and messages go to stderr (`err_console`).
A summary table that would not fit the terminal (rich would cut its cells short with "…") is
printed as key: value lines instead, see `print_table`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from hmdbattn.data.preprocess import PreprocessSummary
    from hmdbattn.data.verify import VerifyResult

MAX_MISSING_SHOWN = 10  # missing videos listed after a failed verification
_UNBOUNDED = 100_000  # characters: wider than any table

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # messages stay one line each


class RateColumn(ProgressColumn):
    """Items per second of a task, e.g. ``123.4 videos/s``."""

    def __init__(self, unit: str = "it") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        text = f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s"
        return Text(text, style="progress.data.speed")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Inside the block nothing goes to stderr: no progress bars, no messages.

    The one switch for silence (tests, scripts, a grid's inner runs); stdout is untouched.
    """
    before = err_console.quiet
    err_console.quiet = True
    try:
        yield
    finally:
        err_console.quiet = before


def progress(unit: str = "it", transient: bool = False, disable: bool = False) -> Progress:
    """A progress bar on stderr showing items done, rate and ETA (none inside `quiet`)."""
    disable = disable or err_console.quiet
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=disable,
    )


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich table; numbers are right-aligned."""
    rows = [list(r) for r in rows]
    t = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) for r in rows)
        t.add_column(name, justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*(fmt(v) for v in r))
    return t


def natural_width(t: Table) -> int:
    """The width `t` takes with every cell on one line (its title aside)."""
    # Measured unbounded: measuring at the console's width would clamp the answer to it.
    unbounded = console.options.update_width(_UNBOUNDED)
    return console.measure(t, options=unbounded).maximum


def print_blocks(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table as key: value lines, for narrow terminals; empty cells are left out.

    Two columns give one ``key: value`` line per row; more give a block per row, headed by its
    first cell, with one indented ``column: value`` line per other cell.
    """
    if title:
        console.print(Text(title, style="italic"))
    for row in rows:
        cells = [(name, fmt(value)) for name, value in zip(columns, row, strict=True)]
        if len(cells) == 2:
            _line(f"{cells[0][1]}: {cells[1][1]}")
            continue
        _line(cells[0][1], style="bold")
        for name, text in cells[1:]:
            if text:
                _line(f"  {name}: {text}")


def _line(text: str, style: str | None = None) -> None:
    # soft_wrap: an overlong path is left to the terminal instead of being cut by rich
    console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    by_column: bool = False,
) -> None:
    """Print a table on stdout, or its key: value lines when it does not fit the terminal.

    `by_column`: narrow, give one block per column (after the first) instead of one per row,
    for tables whose columns are the things compared (e.g. one checkpoint per column).
    """
    rows = [list(r) for r in rows]
    t = table(title, columns, rows)
    width = natural_width(t)
    if width <= console.width:
        if title and len(title) > width:
            # rich would fold a title wider than the table (a path) to the table's width
            t.title = None
            _line(title, style="italic")
        console.print(t)
    elif by_column:
        keys = [columns[0], *(row[0] for row in rows)]
        blocks = [[name, *(row[j] for row in rows)] for j, name in enumerate(columns) if j]
        print_blocks(title, keys, blocks)
    else:
        print_blocks(title, columns, rows)


def fmt(value: Any) -> str:
    """Format a cell: floats to 4 significant digits, the rest as str."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def print_json(data: Any) -> None:
    """Print JSON on stdout for scripts (plain print: no rich markup or wrapping)."""
    print(json.dumps(data, indent=2, default=str))


def millions(n: int) -> str:
    """Parameter counts as the research prints them: ``31.3M``."""
    return f"{n / 1e6:.1f}M"


def print_model_summary(summary: dict[str, Any]) -> None:
    """The dry-run view: resolved config, then parameters, GMACs and the token grid."""
    for section, values in summary["config"].items():
        print_table(f"[{section}]", ("key", "value"), values.items())
    p = summary["params"]
    lines = [
        ("CNN parameters", millions(p["cnn"]), p["cnn"]),
        ("attention parameters", millions(p["attention"]), p["attention"]),
        ("classifier parameters", millions(p["classifier"]), p["classifier"]),
        ("GMACs per clip", f"{summary['gmacs']:.2f}", ""),
        ("token grid (T', H', W')", " x ".join(map(str, summary["token_grid"])), summary["tokens"]),
    ]
    print_table("model", ("", "value", "exact"), lines)
    if "init" in summary:
        console.print(summary["init"], highlight=False, markup=False)


def print_excluded(
    excluded: Sequence[tuple[str, str]], headline: str | None = None, shown: int = 10
) -> None:
    """Say how many videos are left out and why (the first `shown` of them), on stderr."""
    if not excluded:
        return
    headline = headline or f"excluded {len(excluded)} video(s) that cannot be used"
    err_console.print(f"[yellow]{escape(headline)}:[/]", highlight=False)
    for path, reason in list(excluded)[:shown]:
        err_console.print(f"  {path}: {reason}", highlight=False, markup=False)
    if len(excluded) > shown:
        err_console.print(f"  ... and {len(excluded) - shown} more", highlight=False)


def print_run_summary(results: dict[str, dict[str, Any]]) -> None:
    """The end-of-training table: one row per run, its best epoch and last epoch."""
    rows = []
    for run_dir, r in results.items():
        best, last = r["best"], r["last"]
        rows.append(
            (
                run_dir,
                r["epochs"],
                r["best_epoch"],
                best.get("val_video_acc", float("nan")),
                best.get("val_clip_acc", float("nan")),
                last.get("train_loss", float("nan")),
                last.get("val_loss", float("nan")),
                last.get("clips_per_s", float("nan")),
                r["stop_reason"],
            )
        )
    columns = (
        "run",
        "epochs",
        "best epoch",
        "best video acc",
        "its clip acc",
        "last train loss",
        "last val loss",
        "clips/s",
        "stopped",
    )
    print_table("training", columns, rows)


def print_eval(results: Sequence[Any], summary: dict[str, tuple[float, float]]) -> None:
    """Evaluation tables: metrics (one column per checkpoint), per-class accuracy, exclusions."""
    columns = ["metric"] + [f"{r.checkpoint.parent.name}/{r.checkpoint.name}" for r in results]
    rows: list[list[Any]] = [
        ["split / subset"] + [f"{r.split} / {r.subset}" for r in results],
        ["videos / clips"] + [f"{r.metrics.num_videos} / {r.metrics.num_clips}" for r in results],
        ["loss"] + [r.loss for r in results],
    ]
    for name in results[0].metrics.scalars():
        rows.append([name] + [r.metrics.scalars()[name] for r in results])
    if summary:
        columns.append("mean ± std")
        for row in rows:
            m_s = summary.get(row[0])
            row.append(f"{m_s[0]:.4f} ± {m_s[1]:.4f}" if m_s else "")
    print_table("evaluation", columns, rows, by_column=True)
    if len(results) == 1:
        per_class = [
            (c.name, c.videos, c.correct, c.accuracy if c.accuracy is not None else "-")
            for c in results[0].metrics.per_class
        ]
        print_table(
            "per class (mean softmax)", ("class", "videos", "correct", "accuracy"), per_class
        )
    for r in results:
        print_excluded(
            r.excluded, f"{r.checkpoint}: {len(r.excluded)} video(s) could not be evaluated"
        )


def print_dataset_summary(summary: dict[str, Any], result: VerifyResult | None) -> None:
    """What download or synthesize made: archives, extractions, verification, missing files."""
    if "synthetic" in summary:
        print_synthetic_summary(summary)
    if summary.get("archives"):
        rows = [(f["name"], f["action"], f["md5"]) for f in summary["archives"]]
        print_table("Archives", ["archive", "action", "MD5"], rows)
    for e in summary.get("extracted", []):
        done = "already extracted" if e["skipped"] else f"{e['written']} files written"
        kept = f", {e['kept']} kept" if e["kept"] else ""
        _line(f"{e['archive']}: {done}{kept}")
    if result is not None:
        print_table("Verification", ["check", "expected", "found", "status"], result.rows())
        for rel in result.missing[:MAX_MISSING_SHOWN]:
            _line(f"missing: videos/{rel}")
        if len(result.missing) > MAX_MISSING_SHOWN:
            _line(f"... and {len(result.missing) - MAX_MISSING_SHOWN} more missing")
    if "weights" in summary:
        _line(f"Kinetics-400 weights: {summary['weights']}")
    _line(f"dataset root: {summary['root']}")


def print_synthetic_summary(summary: dict[str, Any]) -> None:
    """One line: how many classes and videos the synthetic dataset has."""
    syn = summary["synthetic"]
    console.print(f"synthetic dataset: {len(syn['classes'])} classes, {syn['videos']} videos")


def print_preprocess_summary(summary: PreprocessSummary) -> None:
    """The counts, then every file that was not cached (or was, with a note) and why."""
    rows = [
        ("videos listed", summary.total),
        ("cached now", summary.cached),
        ("already cached", summary.skipped),
        ("failed", summary.failed),
        ("missing", summary.missing),
        ("cache size (MB)", round(summary.bytes / 1e6, 1)),
        ("seconds", round(summary.seconds, 1)),
    ]
    print_table(f"Cache {summary.cache_dir}", ["", "value"], rows)
    problems = [("failed", p.path, p.reason) for p in summary.failed_files]
    problems += [("missing", p.path, p.reason) for p in summary.missing_files]
    problems += [("cached, damaged", p.path, p.reason) for p in summary.warnings]
    if problems:
        print_table("Files needing attention", ["status", "video", "reason"], problems)
