"""`hmdbattn preprocess`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, resolve_config
from hmdbattn.errors import UserError
from hmdbattn.report import console, print_json, table

if TYPE_CHECKING:
    from hmdbattn.data.preprocess import PreprocessSummary


@app.command("preprocess")
def preprocess_command(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    workers: int | None = typer.Option(
        None,
        "--workers",
        "-w",
        min=0,
        help="Decoding processes (default data.num_workers; 0 = in this process).",
        show_default=False,
    ),
    json_out: bool = JsonOption,
) -> None:
    """Decode every video once into the frame cache that training reads (resumable)."""
    from hmdbattn.data.preprocess import preprocess  # torch and PyAV: only when needed

    cfg = resolve_config(config, overrides)
    summary = preprocess(cfg, workers=workers)
    if json_out:
        print_json(summary.to_dict())
    else:
        print_summary(summary)
    if summary.ok == 0:
        raise UserError(
            f"nothing could be cached ({summary.failed} failed, {summary.missing} missing): "
            f"check data.root = {cfg.data.root}"
        )


def print_summary(summary: PreprocessSummary) -> None:
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
    console.print(table(f"Cache {summary.cache_dir}", ["", "value"], rows))
    problems = [("failed", p.path, p.reason) for p in summary.failed_files]
    problems += [("missing", p.path, p.reason) for p in summary.missing_files]
    problems += [("cached, damaged", p.path, p.reason) for p in summary.warnings]
    if problems:
        console.print(table("Files needing attention", ["status", "video", "reason"], problems))
