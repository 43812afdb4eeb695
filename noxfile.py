"""nox sessions: `nox -s tests lint typecheck` is what CI runs; `nox -s bench` runs benchmarks."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (pytest); extra arguments go to pytest."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks at CPU size (a few minutes); each ends with its line of ratios.

    On a GPU machine run `bash benchmarks/gpu.sh` instead (figures under $OUT).
    """
    session.install("-e", ".[onnx]")  # benchmarks/export.py runs ONNX Runtime
    session.run("python", "benchmarks/loader.py")
    session.run("python", "benchmarks/train_step.py", "--device", "cpu")
    session.run("python", "benchmarks/eval_step.py", "--device", "cpu")
    session.run("python", "benchmarks/pretrain_step.py", "--device", "cpu")
    session.run("python", "benchmarks/predict.py")
    session.run("python", "benchmarks/export.py")
