"""Errors that are the user's to fix: the CLI prints them as one line, with no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a file, a key, a value); exits with `exit_code`.

    Raised in a DataLoader worker, it reaches the main process rebuilt from one string that
    torch wraps in the worker's traceback; the constructor keeps only the original message,
    so the user still sees one line.
    """

    exit_code = 1

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(args[0], type(self)),)
        super().__init__(*args)


def _unwrap_worker_message(text: str, kind: type[Exception]) -> str:
    """The message inside torch's "Caught X in DataLoader worker process N" text, else `text`.

    That text ends with the worker's traceback, whose last entry is ``module.X: message``.
    """
    if not (text.startswith(f"Caught {kind.__name__} ") and "Original Traceback" in text):
        return text
    marker = f"\n{kind.__module__}.{kind.__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker) :].rstrip("\n") if at >= 0 else text


class ConfigError(UserError):
    """The configuration is invalid; the message lists every problem found."""

    exit_code = 2
