"""The `hmdbattn` command: a Typer app whose commands only parse arguments and call the core."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from hmdbattn import __version__
from hmdbattn.errors import UserError
from hmdbattn.report import err_console

app = typer.Typer(
    name="hmdbattn",
    help="Human action recognition on HMDB51: R(2+1)D-18 + a Perceiver-style attention head.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow to the terminal width
)


def _version(value: bool) -> None:
    if value:
        print(f"hmdbattn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Human action recognition on HMDB51."""


def _register() -> None:
    # Each module adds its command(s) to `app`; imported here so `--help` lists them all.
    from hmdbattn.cli import ablate, download, eval, predict, preprocess, synthesize, train  # noqa: F401


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit code."""
    _register()
    try:
        app()
    except UserError as exc:
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
