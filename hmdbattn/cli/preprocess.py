"""`hmdbattn preprocess`."""

from __future__ import annotations

from pathlib import Path

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, resolve_config
from hmdbattn.errors import UserError
from hmdbattn.report import print_json, print_preprocess_summary


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
        print_preprocess_summary(summary)
    if summary.ok == 0:
        raise UserError(
            f"nothing could be cached ({summary.failed} failed, {summary.missing} missing): "
            f"check data.root = {cfg.data.root}"
        )
