"""`hmdbattn train`."""

from __future__ import annotations

from pathlib import Path

import typer

from hmdbattn.cli import app
from hmdbattn.cli.common import ConfigOption, JsonOption, SetOption, resolve_config
from hmdbattn.errors import UserError
from hmdbattn.models.classifier import clip_profile
from hmdbattn.report import print_json, print_model_summary


@app.command()
def train(
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Resolve the config and build the model; touch no data."
    ),
    json_out: bool = JsonOption,
) -> None:
    """Train a model (with --dry-run: show the resolved config and model size)."""
    cfg = resolve_config(config, overrides)
    if not dry_run:
        raise UserError("training is not available yet; use --dry-run to check a config")
    params, gmacs, grid = clip_profile(cfg)
    summary = {
        "config": cfg.model_dump(mode="json"),
        "params": {
            "cnn": params.cnn,
            "attention": params.attention,
            "classifier": params.classifier,
            "total": params.total,
        },
        "gmacs": round(gmacs, 3),
        "token_grid": list(grid),
        "tokens": grid[0] * grid[1] * grid[2],
    }
    if json_out:
        print_json(summary)
    else:
        print_model_summary(summary)
