"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer

from hmdbattn.config import Config, load_config

ConfigOption = typer.Option(
    None, "--config", "-c", help="TOML config file.", dir_okay=False, show_default=False
)
SetOption = typer.Option(
    None,
    "--set",
    "-s",
    help="Override a key: section.key=value (value read as TOML). Repeatable.",
    show_default=False,
)
JsonOption = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def resolve_config(config: Path | None, overrides: list[str] | None) -> Config:
    """Load the config named on the command line with its --set overrides."""
    return load_config(config, overrides or [])
