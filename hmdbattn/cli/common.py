"""Options shared by several commands, and what they say when interrupted."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.markup import escape

from hmdbattn.config import Config, load_config
from hmdbattn.report import err_console

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


def command_line(replace: dict[str, str] | None = None, add: str = "") -> str:
    """The command as the user typed it (``hmdbattn ...``), shell-quoted.

    `replace` gives options new values (``{"--splits": "3"}``); `add` appends an option that is
    not there yet (``--overwrite``).
    """
    args = list(sys.argv[1:])
    for option, value in (replace or {}).items():
        for i, arg in enumerate(args):
            if arg == option and i + 1 < len(args):
                args[i + 1] = value
            elif arg.startswith(option + "="):
                args[i] = f"{option}={value}"
    if add and add not in args:
        args.append(add)
    return "hmdbattn " + shlex.join(args)


@contextlib.contextmanager
def on_interrupt(line: Callable[[], str] | None) -> Iterator[None]:
    """On Ctrl-C print ``interrupted: <line()>`` (what was kept, how to go on), then exit 130.

    The KeyboardInterrupt goes on up: typer turns it into exit code 130. `line` None (the
    other ranks of a DDP run) prints nothing.
    """
    try:
        yield
    except KeyboardInterrupt:
        if line is not None:
            err_console.print(
                f"[yellow]interrupted:[/] {escape(line())}", highlight=False, soft_wrap=True
            )
        raise
