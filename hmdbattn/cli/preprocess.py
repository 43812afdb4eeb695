"""`hmdbattn preprocess`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.markup import escape

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, resolve_config
from hmdbattn.config import Config
from hmdbattn.errors import UserError
from hmdbattn.report import err_console, print_json, print_preprocess_summary


@app.command("preprocess")
def preprocess_command(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    workers: int | None = typer.Option(
        None,
        "--workers",
        "-w",
        min=0,
        help="Decoding processes (default: one per usable CPU core, fewer for a few dozen "
        "videos; 0 = in this process).",
        show_default=False,
    ),
    json_out: bool = JsonOption,
) -> None:
    """Decode every video once into the frame cache that training reads (resumable)."""
    from hmdbattn.data.preprocess import preprocess  # torch and PyAV: only when needed

    cfg = resolve_config(config, overrides)
    try:
        summary = preprocess(cfg, workers=workers)
    except KeyboardInterrupt:
        _interrupted(cfg)
        raise typer.Exit(130) from None
    if json_out:
        print_json(summary.to_dict())
    else:
        print_preprocess_summary(summary)
    for problem in summary.rebuilt:
        err_console.print(f"[yellow]warning:[/] {escape(problem.path)}: {escape(problem.reason)}")
    if summary.ok == 0:
        raise UserError(
            f"nothing could be cached ({summary.failed} failed, {summary.missing} missing): "
            f"check data.root = {cfg.data.root}"
        )


def _interrupted(cfg: Config) -> None:
    """One line on Ctrl-C: what the cache keeps and the command that resumes."""
    from hmdbattn.data.cache import load_manifest

    cache_dir = cfg.data.cache_path
    try:
        kept = f"{len(load_manifest(cache_dir).ok())} videos cached in {cache_dir} are kept"
    except UserError:  # stopped before the first manifest was written
        kept = f"nothing was cached in {cache_dir} yet"
    again = shlex.join(["hmdbattn", *sys.argv[1:]])
    err_console.print(
        f"[yellow]interrupted:[/] {escape(kept)}; `{escape(again)}` resumes", highlight=False
    )
