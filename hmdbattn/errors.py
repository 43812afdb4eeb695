"""Errors that are the user's to fix: the CLI prints them as one line, with no traceback."""


class UserError(Exception):
    """A problem with the user's input (a file, a key, a value); exits with `exit_code`."""

    exit_code = 1


class ConfigError(UserError):
    """The configuration is invalid; the message lists every problem found."""

    exit_code = 2
