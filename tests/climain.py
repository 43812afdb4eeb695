"""Running `hmdbattn` in the test's own process, through its console entry point."""

from __future__ import annotations

import sys

import pytest


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run `hmdbattn ARGS` in this process through its entry point: (exit code, stdout, stderr)."""
    from hmdbattn.cli import main

    argv = sys.argv
    sys.argv = ["hmdbattn", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err
