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
    from hmdbattn.cli import (  # noqa: F401
        ablate,
        config,
        download,
        eval,
        export,
        extract_features,
        predict,
        preprocess,
        pretrain,
        synthesize,
        train,
    )


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit code.

    So do faults of the environment (an OSError: full disk, read-only folder) that reach here.

    So do command-line mistakes (an unknown command or option, a bad value): one line and exit
    code 2 instead of click's usage text and box.
    """
    _register()
    try:
        code = app(standalone_mode=False)
    except UserError as exc:
        _error(str(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:  # an environment fault no command turned into a UserError itself
        _error(_os_error_line(exc))
        sys.exit(1)
    except _CLICK_EXCEPTION as exc:
        sys.exit(_usage_error(exc))
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# click's base exception, found from typer's BadParameter: newer typer vendors its own click.
_CLICK_EXCEPTION: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"
)


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _os_error_line(exc: OSError) -> str:
    """An OSError as one line: the file(s) it names, what went wrong and what to do."""
    from hmdbattn.fileio import os_error_text

    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    where = " -> ".join(names) + ": " if names else ""
    return where + os_error_text(exc)


def _usage_error(exc: Exception) -> int:
    """Print a click error as one line (with where to find help); its exit code."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
        message = exc.format_message()  # type: ignore[attr-defined]
        hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
        _error(" ".join(message.split()) + hint)
    return int(getattr(exc, "exit_code", 2))
